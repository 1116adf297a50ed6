"""Links and images in editions: absolute against the site, fragments/mailto/tel as written, bad links refused."""

from __future__ import annotations

import re

import pytest

from newsletter.articles import record_to_fields
from newsletter.content import Image, first_image, link_problems, markdown_link_problems, sanitise_html
from newsletter.issues import IssueError, create_issue
from newsletter.models import Article, utcnow
from newsletter.rendering import COLUMN_WIDTH, ArticleView, EditionContent, render_edition

SITE = "https://news.example.org/"


@pytest.fixture
def session(sqlite_url: str):  # type: ignore[no-untyped-def]
    """Issue creation is plain ORM code: SQLite alone is enough here."""
    from newsletter.db import session_factory

    with session_factory(sqlite_url)() as s:
        yield s


NOTE = "Read [our archive](/articles/123), [the top story](#article-1), [write to us](mailto:ed@example.org) or [call](tel:+15551234567)."


def _edition(**kw) -> EditionContent:  # type: ignore[no-untyped-def]
    values = {
        "number": 3, "lang": "en", "title": "Week 3", "date": "1 June 2026", "web_url": f"{SITE}issues/3/en",
        "articles": (ArticleView("Grid rules", "Utilities patch.", "/articles/9", image=Image("/media/grid.jpg", "", 1600, 900)),),
        "editors_note": NOTE, "site_url": SITE,
    }  # fmt: skip
    values.update(kw)
    return EditionContent(**values)


def _hrefs(html: str) -> list[str]:
    return re.findall(r'<a href="([^"]*)"', html)


def test_relative_links_become_absolute_in_html_and_text() -> None:
    out = render_edition(_edition())
    hrefs = _hrefs(out.html)
    assert "https://news.example.org/articles/123" in hrefs
    assert "https://news.example.org/articles/9" in hrefs
    assert not [h for h in hrefs if h.startswith("/")]
    assert "<https://news.example.org/articles/123>" in out.text
    assert "Read more: https://news.example.org/articles/9" in out.text


def test_fragment_mailto_and_tel_stay_as_written() -> None:
    out = render_edition(_edition())
    hrefs = _hrefs(out.html)
    assert {"#article-1", "mailto:ed@example.org", "tel:+15551234567"} <= set(hrefs)
    assert "<mailto:ed@example.org>" in out.text and "<tel:+15551234567>" in out.text
    assert "@@NL_UNSUBSCRIBE_URL@@" in hrefs  # personal markers are not touched by the pass


def test_sanitise_keeps_tel_and_resolves_against_a_base() -> None:
    out = sanitise_html('<a href="tel:+4930123">t</a><a href="../b">r</a><a href="#x">f</a>', base_url="https://src.example/a/c/")
    assert _hrefs(out) == ["tel:+4930123", "https://src.example/a/b", "#x"]


@pytest.mark.parametrize(
    "note, problem",
    [
        ("An [empty link]() here.", "an empty href"),
        ("A [bad one](javascript:alert(1)).", "javascript: URL"),
        ('<a href=" JaVaScRiPt:alert(1)">raw html</a>', "javascript: URL"),
    ],
)
def test_bad_links_in_a_note_are_refused_at_issue_creation(session, note: str, problem: str) -> None:  # type: ignore[no-untyped-def]
    article = Article(external_id="a1", title="T", summary="s", lang="en", published_at=utcnow(), url="https://x.example/a")
    session.add(article)
    session.flush()
    with pytest.raises(IssueError, match=rf"editor's note \(en\): .*{problem}"):
        create_issue(session, [article], notes={"en": note})
    assert markdown_link_problems("A [fine](/a) link and [another](https://x.example).") == []


def test_bad_article_url_is_refused_naming_the_article(session) -> None:  # type: ignore[no-untyped-def]
    article = Article(external_id="evil-7", title="T", summary="s", lang="en", published_at=utcnow(), url="javascript:alert(1)")
    session.add(article)
    session.flush()
    with pytest.raises(IssueError, match="article evil-7: its URL is javascript: URL"):
        create_issue(session, [article])
    assert link_problems('<a href="">x</a>') == ["a link with an empty href"]


def test_images_survive_sanitising_with_https_alt_and_size() -> None:
    html = (
        '<p><img src="https://cdn.example/a.jpg" alt="" width="1200" height="675" onerror="x()" style="width:9000px">'
        '<img src="http://cdn.example/plain.jpg" alt="insecure"><img src="/rel.png" width="50%"></p>'
    )
    out = sanitise_html(html, base_url="https://src.example/post/", image_alt="Grid rules")
    assert out == (
        '<p><img src="https://cdn.example/a.jpg" width="1200" height="675" alt="Grid rules">'
        '<img src="https://src.example/rel.png" alt="Grid rules"></p>'
    )
    assert first_image(out) == Image("https://cdn.example/a.jpg", "Grid rules", 1200, 675)


def test_import_keeps_the_lead_image_with_the_title_as_alt() -> None:
    fields = record_to_fields({"id": "m1", "title": "Ports move faster", "lang": "en", "source_url": "https://www.whitehouse.gov/blog/x/",
                               "body": "Text.\n\n![](/wp-content/uploads/dash.jpg)\n\n[more](/briefing-room/)"})  # fmt: skip
    assert '<img src="https://www.whitehouse.gov/wp-content/uploads/dash.jpg" alt="Ports move faster">' in fields["body_html"]
    assert 'href="https://www.whitehouse.gov/briefing-room/"' in fields["body_html"]


def test_image_in_the_edition_fits_the_column() -> None:
    out = render_edition(_edition())
    img = re.search(r"<img [^>]*>", out.html).group(0)  # type: ignore[union-attr]
    assert 'src="https://news.example.org/media/grid.jpg"' in img
    assert 'alt="Grid rules"' in img  # no alt text: the article title
    assert f'width="{COLUMN_WIDTH}"' in img and 'height="302"' in img  # 1600x900 scaled to 536 wide
    assert "max-width:100%" in img and "height:auto" in img
    assert "![" not in out.text and "grid.jpg" not in out.text  # the text part has no images

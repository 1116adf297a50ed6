"""The public archive (`/`, per language, paginated), editions' web versions with their language switcher,
the Atom feeds, and the rule that no GET of any link in any message changes anything."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter.db import session_factory
from newsletter.issues import create_issue
from newsletter.models import Article, Delivery, Issue, IssueStatus, Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.runner import follow, start_publish
from newsletter.web import create_app
from tests.test_signup import TOPICS, _csrf, links_in, outbox

ATOM = "{http://www.w3.org/2005/Atom}"


def _publish(settings: Any, db_url: str, n: int, *, segment: dict[str, Any] | None = None) -> int:
    with session_factory(db_url)() as session:
        now = utcnow()
        en = Article(external_id=f"en{n}", title=f"Grid rules {n}", summary="Utilities must patch.", lang="en", published_at=now,
                     url=f"https://example.org/en/{n}", category="energy-policy")  # fmt: skip
        zh = Article(external_id=f"zh{n}", title=f"电网安全规则{n}", summary="公用事业须在三十天内修补。", lang="zh-Hans", published_at=now,
                     url=f"https://example.org/zh/{n}", category="国内")  # fmt: skip
        session.add_all([en, zh])
        session.flush()
        issue = create_issue(session, [en, zh], titles={"en": f"Week {n}", "zh-Hans": f"第{n}周"})
        issue.segment = segment
        session.commit()
        number = issue.number
    issue_id, _ = start_publish(settings, number)
    assert follow(settings, issue_id, timeout=60).status == "sent"
    return number


@pytest.fixture
def site(sqlite_url: str, make_settings, tmp_path: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    settings = make_settings(sqlite_url, NEWSLETTER_TOPICS=TOPICS)
    with session_factory(sqlite_url)() as session:
        session.add_all([
            Subscriber(email="ann@example.com", name="Ann", lang="en", topics=["economy", "policy"], attributes={}),
            Subscriber(email="mei@example.tw", name="美玲", lang="zh-Hant", topics=["economy"], attributes={}),
        ])  # fmt: skip
        session.commit()
    return {"settings": settings, "url": sqlite_url, "tmp": tmp_path,
            "client": TestClient(create_app(settings), base_url="https://testserver")}  # fmt: skip


def test_archive_lists_only_issues_that_went_out(site: dict[str, Any]) -> None:
    settings, url, client = site["settings"], site["url"], site["client"]
    first = _publish(settings, url, 1)
    second = _publish(settings, url, 2)
    with session_factory(url)() as session:
        en = Article(external_id="draft", title="Secret draft", lang="en", published_at=utcnow(), url="https://example.org/d")
        session.add(en)
        session.flush()
        draft = create_issue(session, [en], titles={"en": "Unpublished week"}).number
        session.commit()
    page = client.get("/?lang=en")
    assert page.status_code == 200 and "Unpublished week" not in page.text
    assert page.text.index("Week 2") < page.text.index("Week 1")  # newest first
    assert "Energy policy" in page.text  # category tags
    assert 'name="email"' in page.text and _csrf(page.text)  # the subscribe box
    zh_hant = client.get("/", headers={"Accept-Language": "zh-TW"})
    assert "第1週" in zh_hant.text and "國內" in zh_hant.text and "往期" in zh_hant.text  # converted edition, tags converted
    assert client.get(f"/issues/{draft}/en").status_code == 404
    assert client.get(f"/issues/{first}/en").status_code == 200
    with session_factory(url)() as session:  # a cancelled or failed issue leaves the archive too
        issue = session.scalar(select(Issue).where(Issue.number == second))
        assert issue is not None
        issue.status = IssueStatus.CANCELLED
        session.commit()
    assert "Week 2" not in client.get("/?lang=en").text and client.get(f"/issues/{second}/en").status_code == 404


def test_pagination_and_feed(site: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from newsletter.web import archive

    monkeypatch.setattr(archive, "PAGE_SIZE", 1)
    settings, url, client = site["settings"], site["url"], site["client"]
    for n in (1, 2):
        _publish(settings, url, n)
    one = client.get("/?lang=en")
    assert "Week 2" in one.text and "Week 1" not in one.text and 'rel="next"' in one.text
    two = client.get("/?lang=en&page=2")
    assert "Week 1" in two.text and 'rel="prev"' in two.text
    feed = client.get("/feed/zh-Hans.atom")
    assert feed.headers["content-type"].startswith("application/atom+xml")
    root = ET.fromstring(feed.content)
    assert root.findtext(f"{ATOM}title") == "每周评论"
    entries = root.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}title") for e in entries] == ["第2周", "第1周"]
    assert entries[0].find(f"{ATOM}link").get("href") == "https://news.example.org/issues/2/zh-Hans"  # type: ignore[union-attr]
    assert entries[0].find(f"{ATOM}category").get("term") == "国内"  # type: ignore[union-attr]
    assert client.get("/feed/fr.atom").status_code == 404


def test_a_page_or_issue_number_past_the_databases_integers_is_not_a_server_error(site: dict[str, Any]) -> None:
    """Regression (trial): `/?page=99999999999999999999` (and ...999 on PostgreSQL) overflowed the OFFSET, and
    `/issues/99999999999999999999/en` the issue number: a 500 on public pages anyone can request."""
    client = site["client"]
    _publish(site["settings"], site["url"], 1)
    for page in ("99999999999999999999", "999999999999999999"):
        past = client.get(f"/?lang=en&page={page}")
        assert past.status_code == 200 and "Week 1" not in past.text, past.status_code
    assert client.get("/?lang=en&page=1").text.count("Week 1") >= 1
    assert client.get("/issues/99999999999999999999/en", headers={"Accept": "text/html"}).status_code == 404
    assert client.get("/issues/1/en").status_code == 200
    # A number that is not one: a page that does not exist, not a 422 (trial finding).
    for bad in ("abc", "1.0", "-1", "%D9%A3"):
        assert client.get(f"/issues/{bad}/en", headers={"Accept": "text/html"}).status_code == 404, bad


def test_web_version_links_its_other_languages_and_the_archive(site: dict[str, Any]) -> None:
    number = _publish(site["settings"], site["url"], 1)
    page = site["client"].get(f"/issues/{number}/zh-Hant").text
    assert re.search(rf'<a href="https://news.example.org/issues/{number}/en"[^>]*>English</a>', page)
    assert re.search(rf'<a href="https://news.example.org/issues/{number}/zh-Hans"[^>]*>简体</a>', page)
    assert '<strong lang="zh-Hant">繁體</strong>' in page
    assert 'href="https://news.example.org/?lang=zh-Hant"' in page and "/feed/zh-Hant.atom" in page
    assert re.search(r'<a href="#top"[^>]*>回到頂端', page)


def _state(db_url: str) -> list[tuple[Any, ...]]:
    with session_factory(db_url)() as session:
        subscribers = session.execute(select(Subscriber.email, Subscriber.status, Subscriber.topics, Subscriber.lang, Subscriber.paused,
                                             Subscriber.confirmed_at).order_by(Subscriber.id)).all()  # fmt: skip
        suppressed = session.execute(select(Suppression.email, Suppression.reason).order_by(Suppression.id)).all()
        deliveries = session.execute(select(Delivery.id, Delivery.status).order_by(Delivery.id)).all()
        return [tuple(r) for r in (*subscribers, *suppressed, *deliveries)]


def test_a_get_on_any_link_in_any_message_changes_nothing(site: dict[str, Any]) -> None:
    settings, url, client, tmp = site["settings"], site["url"], site["client"], site["tmp"]
    _publish(settings, url, 1, segment={"topics": {"any": ["economy"]}})  # issue messages (topic segment)
    page = client.get("/subscribe")
    for email in ("new@example.com", "ann@example.com"):  # a confirmation request, and an "already subscribed" note
        client.post("/subscribe", data={"csrf_token": _csrf(page.text), "email": email, "topics": ["policy"]})
    [request] = [m for m in outbox(tmp) if str(m["Message-ID"]).startswith("<confirm.")]
    [confirm] = [link.removeprefix(settings.base_url) for link in links_in(request) if "/confirm/" in link]
    form = client.get(confirm)
    client.post(confirm, data={"csrf_token": _csrf(form.text)})  # a welcome message
    with session_factory(url)() as session:  # and a goodbye note, which the reader asked for
        sid = session.scalar(select(Subscriber.id).where(Subscriber.email == "mei@example.tw"))
    from newsletter.links import unsubscribe_url

    leave = unsubscribe_url(settings, sid).removeprefix(settings.base_url)
    client.post(leave, data={"csrf_token": _csrf(client.get(leave).text), "scope": "all", "acknowledge": "1"})
    messages = outbox(tmp)
    kinds = {str(m["Message-ID"]).split(".")[0].strip("<") for m in messages}
    assert {"confirm", "welcome", "already", "goodbye"} <= kinds and any(k.startswith("issue") for k in kinds)
    links = sorted({link for m in messages for link in links_in(m)} | {" ".join(str(m["List-Unsubscribe"]).split()).strip("<>") for m in messages
                                                                       if m["List-Unsubscribe"]})  # fmt: skip
    assert any("/unsubscribe/" in x for x in links) and any("/preferences/" in x for x in links) and any("/confirm/" in x for x in links)
    before = _state(url)
    assert any(row[1] == SubscriberStatus.UNSUBSCRIBED for row in before)  # states worth protecting exist
    for link in links:
        path = link.removeprefix(settings.base_url) or "/"
        got = client.get(path)
        head = client.head(path)
        assert got.status_code < 500 and head.status_code != 405, (path, got.status_code, head.status_code)
        # HEAD answers like GET (a link checker's probe), without the body.
        assert head.status_code == got.status_code and head.content == b"", (path, got.status_code, head.status_code)
        if got.status_code == 200:
            assert head.headers["content-type"] == got.headers["content-type"], path
    for path in ("/", "/issues/1/en", "/feed/en.atom", "/subscribe"):  # the public pages too, not only the links
        head = client.head(path)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0, path
    assert _state(url) == before
    assert len(outbox(tmp)) == len(messages)  # and no GET sent any message

"""Unit tests for newsletter.rendering and newsletter.i18n (real templates, real premailer)."""

from __future__ import annotations

import re

import pytest

from newsletter import i18n
from newsletter.i18n import MissingTranslation, gettext_for
from newsletter.rendering import (
    PERSONAL_FIELDS,
    ArticleView,
    EditionContent,
    RenderedEdition,
    RenderError,
    check_edition,
    greeting,
    marker,
    personalise,
    render_edition,
)

EVIL = "Bad <script>alert(1)</script> title"


def _content(lang: str = "en", **kw) -> EditionContent:  # type: ignore[no-untyped-def]
    values = {
        "number": 7,
        "lang": lang,
        "title": "Weekly\nreview <b>",
        "date": "1 June 2026",
        "web_url": f"https://news.example.org/issues/7/{lang}",
        "articles": (
            ArticleView(
                title=EVIL,
                summary="Rates & more",
                url="https://news.example.org/a/1",
                category="Policy",
                related=(ArticleView(title="Related <one>", summary="One line & more", url="https://news.example.org/r/1"),),
            ),
            ArticleView(title="Second story", summary="", url="https://news.example.org/a/2"),
        ),
    }
    values.update(kw)
    return EditionContent(**values)


@pytest.fixture(scope="module")
def rendered() -> RenderedEdition:
    return render_edition(_content())


def test_title_escaped_in_html(rendered: RenderedEdition) -> None:
    assert "<script>" not in rendered.html
    assert "Bad &lt;script&gt;alert(1)&lt;/script&gt; title" in rendered.html
    assert "Related &lt;one&gt;" in rendered.html and "One line &amp; more" in rendered.html
    # One block, under the first article and before the second.
    assert rendered.html.count("You might also like") == 1
    assert rendered.html.index("Related &lt;one&gt;") < rendered.html.index("Second story")
    assert "Rates &amp; more" in rendered.html
    assert "<script>" not in rendered.web_html


def test_title_verbatim_in_text(rendered: RenderedEdition) -> None:
    assert f"1. {EVIL} [Policy]\n" in rendered.text
    assert "\nRates & more\n" in rendered.text
    assert "2. Second story\n" in rendered.text
    # The block sits under its own article, before the next one.
    block = "   You might also like:\n   - Related <one>\n     One line & more\n     https://news.example.org/r/1\n"
    assert block in rendered.text
    assert rendered.text.index(block) < rendered.text.index("2. Second story")
    assert "&lt;" not in rendered.text and "&amp;" not in rendered.text
    assert rendered.text.endswith("\n") and not rendered.text.endswith("\n\n")


def test_subject_single_line(rendered: RenderedEdition) -> None:
    assert rendered.subject == "Weekly review <b> · Issue 7"
    assert "\n" not in rendered.subject and "\r" not in rendered.subject


def test_css_inlined_and_media_query_kept(rendered: RenderedEdition) -> None:
    html = rendered.html
    assert '<td class="masthead" style=' in html
    assert re.search(r'<div class="article" id="article-1" style="padding:16px 0; border-bottom:1px solid #e5e7eb"', html)
    assert '<body lang="en" dir="ltr" style="margin:0; padding:0; background-color:#f3f4f6"' in html
    style_blocks = re.findall(r"<style[^>]*>(.*?)</style>", html, flags=re.S)
    assert len(style_blocks) == 1
    assert "@media only screen and (max-width: 620px)" in style_blocks[0]
    assert "!important" in style_blocks[0]


def test_placeholders_present(rendered: RenderedEdition) -> None:
    for name in ("GREETING", "EMAIL", "UNSUBSCRIBE_URL", "PREFERENCES_URL"):
        assert marker(name) in rendered.text
    for name in ("GREETING", "EMAIL", "UNSUBSCRIBE_URL", "PREFERENCES_URL"):
        assert marker(name) in rendered.html
    assert '<a href="@@NL_UNSUBSCRIBE_URL@@"' in rendered.html
    assert "Unsubscribe: @@NL_UNSUBSCRIBE_URL@@\n" in rendered.text


def test_web_version_has_no_personal_markers(rendered: RenderedEdition) -> None:
    assert "@@NL_" not in rendered.web_html
    assert "You are reading the web version of issue 7 of The Weekly Review." in rendered.web_html


def test_links_and_view_in_browser(rendered: RenderedEdition) -> None:
    assert rendered.text.startswith(
        "The Weekly Review · Issue 7 · 1 June 2026\nView this email in your browser: https://news.example.org/issues/7/en\n"
    )
    assert 'href="https://news.example.org/a/1"' in rendered.html


def test_render_zh_hans_uses_catalog() -> None:
    out = render_edition(_content("zh-Hans", title="本周要闻", date="2026年6月1日"))
    assert out.subject == "本周要闻 · 第 7 期"
    assert "阅读全文" in out.html and "Read more" not in out.html
    assert "退订：@@NL_UNSUBSCRIBE_URL@@" in out.text  # full-width colon in Chinese
    assert "每周评论" in out.text


def test_render_converted_zh_hant_notes_conversion() -> None:
    out = render_edition(_content("zh-Hant", title="本週要聞", converted_from="zh-Hans"))
    assert "本版由簡體中文自動轉換。" in out.text
    assert "本版由簡體中文自動轉換。" in out.html


def test_missing_zh_hans_translation_is_a_render_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(i18n.catalog("zh-Hans"), "Read more")
    with pytest.raises(RenderError) as info:
        check_edition(_content("zh-Hans"))
    assert isinstance(info.value.cause, MissingTranslation)
    assert info.value.cause.message == "Read more"
    assert (info.value.issue_number, info.value.lang) == (7, "zh-Hans")
    assert "issue 7 edition zh-Hans" in str(info.value)
    assert "missing zh-Hans translation for 'Read more'" in str(info.value)
    with pytest.raises(RenderError):
        render_edition(_content("zh-Hans"))


def test_unknown_language_is_a_render_error() -> None:
    with pytest.raises(RenderError) as info:
        render_edition(_content("fr"))
    assert isinstance(info.value.cause, MissingTranslation)


def test_gettext_for() -> None:
    assert gettext_for("en")("Anything at all") == "Anything at all"
    assert gettext_for("zh-Hans")("Unsubscribe") == "退订"
    assert gettext_for("zh-Hant")("Unsubscribe") == "取消訂閱"
    with pytest.raises(MissingTranslation) as info:
        gettext_for("zh-Hans")("Not in the catalog")
    assert (info.value.lang, info.value.message) == ("zh-Hans", "Not in the catalog")
    with pytest.raises(MissingTranslation):
        gettext_for("de")


def test_catalogs_have_the_same_keys() -> None:
    assert set(i18n.catalog("zh-Hans")) == set(i18n.catalog("zh-Hant"))


# --- personalise / greeting ------------------------------------------------------------------------

VALUES = {
    "GREETING": "Hello O'Brien & <Co>,",
    "EMAIL": "a&b@example.com",
    "UNSUBSCRIBE_URL": "https://n.example/u?a=1&b=2",
    "PREFERENCES_URL": "https://n.example/p",
}


def test_personalise_escapes_in_html_mode() -> None:
    template = '<p>@@NL_GREETING@@</p><a href="@@NL_UNSUBSCRIBE_URL@@">x</a> @@NL_EMAIL@@'
    assert personalise(template, VALUES, escape=True) == (
        '<p>Hello O&#x27;Brien &amp; &lt;Co&gt;,</p><a href="https://n.example/u?a=1&amp;b=2">x</a> a&amp;b@example.com'
    )


def test_personalise_verbatim_in_text_mode() -> None:
    assert personalise("@@NL_GREETING@@ @@NL_EMAIL@@", VALUES, escape=False) == "Hello O'Brien & <Co>, a&b@example.com"


def test_personalise_single_pass_and_missing_value() -> None:
    # A value that looks like a marker is not substituted again.
    assert personalise("@@NL_EMAIL@@", {"EMAIL": "@@NL_GREETING@@"}, escape=False) == "@@NL_GREETING@@"
    with pytest.raises(KeyError):
        personalise("@@NL_EMAIL@@", {}, escape=False)


def test_personalise_fills_a_rendered_edition(rendered: RenderedEdition) -> None:
    html = personalise(rendered.html, VALUES, escape=True)
    text = personalise(rendered.text, VALUES, escape=False)
    assert "@@NL_" not in html and "@@NL_" not in text
    assert "<p>Hello O&#x27;Brien &amp; &lt;Co&gt;,</p>" in html
    assert "Hello O'Brien & <Co>," in text
    assert set(PERSONAL_FIELDS) == set(VALUES)


def test_greeting() -> None:
    assert greeting("en", "Ada") == "Hello Ada,"
    assert greeting("en", "  Ada \n Lovelace ") == "Hello Ada Lovelace,"
    assert greeting("en", "") == "Hello,"
    assert greeting("zh-Hans", "张三") == "张三，您好："
    assert greeting("zh-Hant", "") == "您好，"


def test_root_lang_dir_and_colour_schemes_survive_inlining() -> None:
    from newsletter.rendering import text_direction

    out = render_edition(_content("zh-Hant", title="本週要聞", converted_from="zh-Hans"))
    assert '<html lang="zh-Hant" dir="ltr"' in out.html
    assert '<table role="presentation" class="wrapper" lang="zh-Hant" dir="ltr"' in out.html  # Gmail drops <html>
    assert '<meta name="color-scheme" content="light dark">' in out.html
    style = re.findall(r"<style[^>]*>(.*?)</style>", out.html, flags=re.S)[0]
    assert "@media (prefers-color-scheme: dark)" in style and "[data-ogsc] .content" in style
    assert (text_direction("ar"), text_direction("he-IL"), text_direction("zh-Hans")) == ("rtl", "rtl", "ltr")

"""Unit tests for newsletter.content: sanitising, summaries, zh conversion, link stripping."""

from __future__ import annotations

import pytest

from newsletter.content import markdown_to_html, sanitise_html, strip_links, to_traditional
from newsletter.summaries import summarise

# --- sanitise_html ---------------------------------------------------------------------------------


def test_sanitise_removes_script_element_and_its_content() -> None:
    assert sanitise_html("<p>Hi<script>alert(1)</script> there</p>") == "<p>Hi there</p>"


def test_sanitise_removes_style_element_and_its_content() -> None:
    assert sanitise_html("<style>p { color: red }</style><p>x</p>") == "<p>x</p>"


def test_sanitise_removes_event_handler_and_style_attributes() -> None:
    out = sanitise_html('<p onclick="steal()" style="color:red" onmouseover="x()">z</p>')
    assert out == "<p>z</p>"


@pytest.mark.parametrize(
    "href",
    ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "  javascript:alert(1)", "data:text/html,<script>alert(1)</script>"],
)
def test_sanitise_drops_dangerous_url_schemes(href: str) -> None:
    out = sanitise_html(f'<a href="{href}">x</a>')
    assert out == '<a rel="noopener noreferrer">x</a>'
    assert "javascript" not in out.lower()
    assert "data:" not in out


def test_sanitise_keeps_https_link_and_forces_rel() -> None:
    out = sanitise_html('<a href="https://example.org/a?b=1&amp;c=2" rel="nofollow" target="_blank" title="T">k</a>')
    assert out == '<a href="https://example.org/a?b=1&amp;c=2" title="T" rel="noopener noreferrer">k</a>'


def test_sanitise_keeps_mailto_link() -> None:
    assert sanitise_html('<a href="mailto:ed@example.org">m</a>') == '<a href="mailto:ed@example.org" rel="noopener noreferrer">m</a>'


def test_sanitise_drops_disallowed_tags_but_keeps_their_text() -> None:
    assert sanitise_html('<div><span>kept</span><img src="x" onerror="alert(1)"></div>') == "kept"


def test_sanitise_strips_comments() -> None:
    assert sanitise_html("<p>a<!-- secret -->b</p>") == "<p>ab</p>"


def test_sanitise_repairs_unclosed_tags() -> None:
    assert sanitise_html("<p>one<b>two<p>three") == "<p>one<b>two</b></p><p><b>three</b></p>"
    assert sanitise_html("<ul><li>one<li>two</ul>") == "<ul><li>one</li><li>two</li></ul>"
    assert sanitise_html("<table><tr><td>a</table>") == "<table><tbody><tr><td>a</td></tr></tbody></table>"


def test_sanitise_keeps_colspan_on_cells_only() -> None:
    out = sanitise_html('<table><tr><td colspan="2" width="9">a</td></tr></table>')
    assert out == '<table><tbody><tr><td colspan="2">a</td></tr></tbody></table>'


def test_markdown_to_html_is_sanitised() -> None:
    out = markdown_to_html("Hi <script>x()</script> [l](javascript:alert(1)) [ok](https://example.org)")
    assert "<script" not in out and "x()" not in out
    assert "javascript" not in out
    assert '<a href="https://example.org" rel="noopener noreferrer">ok</a>' in out


# --- summarise -------------------------------------------------------------------------------------


def test_summarise_short_text_is_returned_whole() -> None:
    assert summarise("Short.", "en") == "Short."


def test_summarise_empty() -> None:
    assert summarise("", "en") == ""
    assert summarise("   \n\n  ", "zh-Hans") == ""


def test_summarise_uses_first_real_paragraph() -> None:
    first = "The real first paragraph is the lead of the story and says what happened this week."
    assert summarise(f"A\n\n{first}\n\nSecond paragraph.", "en") == first


def test_summarise_goes_on_after_a_very_short_lead() -> None:
    # A speech opening with "Thank you." says nothing: the next paragraphs follow, cut to the limit.
    assert summarise("A\n\nThank you.\n\nSecond paragraph.", "en") == "Thank you. Second paragraph."


def test_summarise_cuts_at_sentence_boundary_en() -> None:
    text = "The quick brown fox jumps. Over the lazy dog and more words here. Third sentence goes on and on."
    assert summarise(text, "en", limit=50) == "The quick brown fox jumps."
    assert summarise(text, "en", limit=70) == "The quick brown fox jumps. Over the lazy dog and more words here."


def test_summarise_cuts_at_word_boundary_with_ellipsis_en() -> None:
    assert summarise("alpha beta gamma delta epsilon zeta", "en", limit=20) == "alpha beta gamma…"
    # A first sentence shorter than half the limit is not a good cut: fall back to a word boundary.
    assert (
        summarise("Hi. This sentence is quite long and keeps going for a while.", "en", limit=40) == "Hi. This sentence is quite long and…"
    )


def test_summarise_trailing_punctuation_removed_before_ellipsis() -> None:
    assert summarise("one two three, four five six seven", "en", limit=16) == "one two three…"


def test_summarise_default_limit_en_is_300() -> None:
    text = " ".join(["word"] * 100)  # 499 characters, no sentence end
    out = summarise(text, "en")
    assert out == " ".join(["word"] * 60) + "…"  # 60 words = 299 characters


def test_summarise_chinese_sentence_boundary_default_limit_120() -> None:
    sentence = "这是第一句话，内容比较长。"  # 13 characters
    out = summarise(sentence * 20, "zh-Hans")
    assert out == sentence * 9  # 117 characters: the last whole sentence within 120
    assert len(out) == 117


def test_summarise_chinese_without_punctuation_cuts_at_120_characters() -> None:
    out = summarise("中" * 200, "zh-Hant")
    assert out == "中" * 120 + "…"


def test_summarise_chinese_strips_chinese_comma_before_ellipsis() -> None:
    text = "甲" * 119 + "，" + "乙" * 50
    assert summarise(text, "zh-Hans") == "甲" * 119 + "…"


def test_summarise_does_not_cut_inside_a_decimal_number() -> None:
    text = "The new release of the library ships today and it is version 3.14 of the runtime with fixes."
    assert summarise(text, "en", limit=70) == "The new release of the library ships today and it is version 3.14 of…"


def test_summarise_collapses_whitespace_around_line_breaks() -> None:
    assert summarise("Hello \nworld", "en") == "Hello world"


# --- to_traditional / strip_links ------------------------------------------------------------------


def test_to_traditional() -> None:
    assert to_traditional("简体") == "簡體"
    assert to_traditional("简体中文，发展与国际") == "簡體中文，發展與國際"
    assert to_traditional("") == ""
    assert to_traditional("ASCII stays 123") == "ASCII stays 123"


def test_strip_links_keeps_anchor_text() -> None:
    assert strip_links("See [the docs](https://x.org/a) now") == "See the docs now"


def test_strip_links_handles_parentheses_in_target() -> None:
    assert strip_links("[wiki](https://en.wikipedia.org/wiki/Foo_(bar)) end") == "wiki end"


def test_strip_links_removes_bare_urls() -> None:
    assert strip_links("Go to https://y.org/z?q=1 now and http://a.b") == "Go to  now and "


def test_strip_links_leaves_plain_text_alone() -> None:
    assert strip_links("No links [here] (really).") == "No links [here] (really)."


def test_category_slugs_become_labels() -> None:
    from newsletter.content import category_label

    assert category_label("presidential-actions") == "Presidential actions"
    assert category_label("Security") == "Security"
    assert category_label("安全") == "安全"


def test_summary_skips_rules_and_shouted_memo_headers() -> None:
    text = "*** ***\n\nTO: WHITE HOUSE COMMS STAFF FROM: THE PRESS OFFICE\n\nToday the President signed an order."
    assert summarise(text, "en") == "Today the President signed an order."
    assert summarise("*** ***", "en") == "*** ***"  # nothing better: keep what there is


def test_summary_drops_a_leading_rule_glued_to_the_text() -> None:
    assert summarise("*** ***“In one month the economy grew.”", "en") == "“In one month the economy grew.”"

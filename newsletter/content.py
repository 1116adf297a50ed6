"""Article content: Markdown to HTML, allow-list sanitising, HTML to text, summaries, zh conversion."""

from __future__ import annotations

import re
from functools import cache

import html2text
import markdown
import nh3

# Tags and attributes an article body may keep in an email (everything else is dropped, with its
# content for <script>/<style>). Inline styles are removed: the template owns presentation.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "em", "h2", "h3", "h4", "hr", "i", "li", "ol",
    "p", "pre", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}}
URL_SCHEMES = {"http", "https", "mailto"}

_MD_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()\s]|\([^()]*\))*\)")
_BARE_URL = re.compile(r"https?://\S+")
_SPACE = re.compile(r"[ \t\u00a0\u2060\u200b]+")
# A Latin full stop ends a sentence only before white space (not in "3.14"); CJK ones always do.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def sanitise_html(html: str) -> str:
    """Reduce untrusted HTML to the allow-list above (nh3/ammonia); links get ``rel=noopener``.

    Broken markup is repaired by the html5ever parser rather than rejected.
    """
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        clean_content_tags={"script", "style"},
        strip_comments=True,
    ).strip()


def markdown_to_html(text: str) -> str:
    """Render Markdown (or plain text with blank-line paragraphs) to HTML, then sanitise it."""
    return sanitise_html(markdown.markdown(text, output_format="html"))


def html_to_text(html: str, *, links: bool = True) -> str:
    """Plain text for an HTML fragment: paragraphs kept, links as numbered references (or dropped).

    Lines are not hard-wrapped (the MIME layer encodes long lines; wrapping breaks CJK text).
    """
    maker = html2text.HTML2Text()  # keeps state between calls: one per call
    maker.body_width = 0
    maker.ignore_images = True
    maker.ignore_emphasis = True
    maker.unicode_snob = True
    maker.inline_links = False
    maker.protect_links = True
    maker.ignore_links = not links
    text = maker.handle(html)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def strip_links(text: str) -> str:
    """Drop Markdown link targets and bare URLs, keeping anchor text: ``[a](u)`` -> ``a``."""
    return _BARE_URL.sub("", _MD_LINK.sub(r"\1", text))


_RULE_PREFIX = re.compile(r"^(?:[*#=~_-]+\s*)+")
_SLUG = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")


def category_label(category: str) -> str:
    """A reader-facing label: a CMS slug such as ``presidential-actions`` becomes ``Presidential actions``;
    anything else (``Security``, ``安全``) is kept as written."""
    return category.replace("-", " ").replace("_", " ").capitalize() if _SLUG.fullmatch(category) else category


def _readable(paragraph: str) -> bool:
    """Whether a paragraph can open a summary: real words, not a rule of asterisks or a shouted memo header."""
    letters = [ch for ch in paragraph if ch.isalpha()]
    if len([ch for ch in paragraph if ch.isalnum()]) < 8:
        return False
    latin = [ch for ch in letters if ch.isascii()]
    return not (len(latin) > 20 and sum(ch.isupper() for ch in latin) > 0.6 * len(latin))


def summarise(text: str, lang: str, limit: int | None = None) -> str:
    """The first paragraph of ``text`` cut to ``limit`` characters at a sentence or word boundary.

    ``limit`` defaults to 300 characters for Latin scripts and 120 for Chinese, which reads at
    about twice the information per character.
    """
    if limit is None:
        limit = 120 if lang.startswith("zh") else 300
    paragraphs = [_SPACE.sub(" ", p.replace("\n", " ")).strip() for p in re.split(r"\n\s*\n", text)]
    first = next((p for p in paragraphs if _readable(p)), next((p for p in paragraphs if p), ""))
    first = _RULE_PREFIX.sub("", first) or first  # "*** ***“In one month…" -> "“In one month…"
    if len(first) <= limit:
        return first
    cut = first[:limit]
    sentences = _SENTENCE_END.split(cut)
    if len(sentences) > 1 and len(cut) - len(sentences[-1]) > limit // 2:
        return cut[: len(cut) - len(sentences[-1])].rstrip()
    if not lang.startswith("zh") and " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:，；：") + "…"


@cache
def _opencc(config: str):  # type: ignore[no-untyped-def]
    from opencc import OpenCC

    return OpenCC(config)


def to_traditional(text: str) -> str:
    """Convert Simplified Chinese to Traditional Chinese with OpenCC's ``s2t`` table (characters only,
    no regional phrase substitution)."""
    return _opencc("s2t").convert(text) if text else text


def unstorable(value: object) -> bool:
    """Whether ``value`` (a string, or lists and dicts of them, keys included) holds a NUL or an unpaired
    surrogate: text that PostgreSQL refuses and UTF-8 cannot encode, to be rejected at the door."""
    if isinstance(value, str):
        return "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(unstorable(k) or unstorable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(unstorable(v) for v in value)
    return False

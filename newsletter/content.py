"""Article content: Markdown to HTML, allow-list sanitising with absolute links, images, HTML to text.

Summaries live in `newsletter.summaries`, Chinese conversion in `newsletter.zh_hant`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape, unescape
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

# Tags and attributes an article body may keep in an email (everything else is dropped, with its
# content for <script>/<style>). Inline styles are removed: the template owns presentation.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "em", "h2", "h3", "h4", "hr", "i", "img", "li", "ol",
    "p", "pre", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
}
URL_SCHEMES = {"http", "https", "mailto", "tel"}
# Schemes a link in an editor's note or an article may never carry (HTML's "javascript: URL" and kin).
UNSAFE_SCHEMES = ("javascript:", "vbscript:", "data:")

_MD_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()\s]|\([^()]*\))*\)")
_BARE_URL = re.compile(r"https?://\S+")
# nh3 writes every tag alike (attributes double-quoted, in source order), so these match its output exactly.
_IMG = re.compile(r"<img\b([^>]*)>")
_ALT = re.compile(r'\salt="([^"]*)"')


def absolute_url(url: str, base: str | None) -> str:
    """``url`` resolved against ``base`` (RFC 3986 §5.2); ``#fragment``, ``mailto:``, ``tel:`` and other
    URLs with a scheme stay as written, and so does everything when ``base`` is empty."""
    url = url.strip()
    if not base or not url or url.startswith("#") or urlsplit(url).scheme:
        return url
    return urljoin(base, url)


def sanitise_html(html: str, *, base_url: str | None = None, image_alt: str | None = None) -> str:
    """Reduce untrusted HTML to the allow-list above (nh3/ammonia); links get ``rel=noopener``.

    Relative ``href`` and ``src`` values are made absolute against ``base_url`` (see `absolute_url`).
    Images are kept only with an https ``src`` (an email client would fetch anything else over plain
    http or not at all); ``width``/``height`` only as whole pixels; an image without alt text gets
    ``image_alt`` (the article's title), so screen readers and blocked-image views say what it shows.
    Broken markup is repaired by the html5ever parser rather than rejected.
    """

    def attribute(tag: str, name: str, value: str) -> str | None:
        if name in ("href", "src"):
            value = absolute_url(value, base_url)
            if tag == "img" and not value.startswith("https://"):
                return None
        elif name in ("width", "height"):
            return value.strip() if value.strip().isdigit() else None
        return value

    import nh3  # the import costs a CLI command that converts nothing; Python caches it after the first call

    out = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        clean_content_tags={"script", "style"},
        strip_comments=True,
        attribute_filter=attribute,
    ).strip()
    return _IMG.sub(lambda m: _image(m.group(1), image_alt), out) if "<img" in out else out


def _image(attributes: str, alt: str | None) -> str:
    if ' src="' not in attributes:
        return ""  # its src was not https: nothing to show
    found = _ALT.search(attributes)
    if alt and (found is None or not found.group(1).strip()):
        attributes = _ALT.sub("", attributes) + f' alt="{escape(alt, quote=True)}"'
    return f"<img{attributes}>"


def link_problems(html: str) -> list[str]:
    """What is wrong with the links of raw (not yet sanitised) HTML: an ``<a>`` whose ``href`` is
    empty, or a link or image with a ``javascript:``/``vbscript:``/``data:`` URL. ``[]`` when fine.

    Sanitising would silently drop such a URL; an editor should hear about it instead.
    """
    finder = _LinkFinder()
    finder.feed(html)
    finder.close()
    return finder.problems


class _LinkFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if (tag, name) not in (("a", "href"), ("img", "src")):
                continue
            url = "".join((value or "").split()).lower()  # browsers ignore white space inside a scheme
            if not url and tag == "a":
                self.problems.append("a link with an empty href")
            elif url.startswith(UNSAFE_SCHEMES):
                self.problems.append(f"a {url.split(':', 1)[0]}: URL ({(value or '').strip()[:60]})")


@dataclass(frozen=True)
class Image:
    """An image of a sanitised body: https ``src``, ``alt`` text, size in CSS pixels when known."""

    src: str
    alt: str
    width: int | None = None
    height: int | None = None


def first_image(html: str) -> Image | None:
    """The first image of sanitised HTML (`sanitise_html` output), or None."""
    match = _IMG.search(html)
    if match is None:
        return None
    attrs = dict(re.findall(r'\s([a-z]+)="([^"]*)"', match.group(1)))
    if "src" not in attrs:
        return None

    def size(name: str) -> int | None:
        return int(attrs[name]) if attrs.get(name, "").isdigit() and int(attrs[name]) > 0 else None

    return Image(src=unescape(attrs["src"]), alt=unescape(attrs.get("alt", "")), width=size("width"), height=size("height"))


def markdown_to_html(text: str, *, base_url: str | None = None) -> str:
    """Render Markdown (or plain text with blank-line paragraphs) to HTML, then sanitise it."""
    import markdown

    return sanitise_html(markdown.markdown(text, output_format="html"), base_url=base_url)


def markdown_link_problems(text: str) -> list[str]:
    """`link_problems` of Markdown text (``[x]()`` is an empty href, ``[x](javascript:…)`` unsafe)."""
    import markdown

    return link_problems(markdown.markdown(text, output_format="html"))


def html_to_text(html: str, *, links: bool = True) -> str:
    """Plain text for an HTML fragment: paragraphs kept, links as numbered references (or dropped).

    Lines are not hard-wrapped (the MIME layer encodes long lines; wrapping breaks CJK text).
    """
    import html2text

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


# Plain text for the related-articles index, made without a Markdown or HTML parser (~0.1 ms for a White House
# article, against ~10 ms for Markdown, sanitising and html2text). Block tags separate words, inline tags
# (<sup>th</sup>) join them as a browser shows them; script and style keep nothing, as `sanitise_html`.
_SKIPPED = re.compile(r"<(script|style)\b.*?(?:</\1\s*>|\Z)", re.S | re.I)
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\((?:[^()\s]|\([^()]*\))*\)")
_MD_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:.*$", re.M)
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)(?=[\s/>])[^<>]*>|<!--.*?-->", re.S)  # not <a@b.org> (an autolink)
_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure", "footer", "h1", "h2",
    "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot",
    "th", "thead", "tr", "ul",
})  # fmt: skip


def _tag_gap(match: re.Match[str]) -> str:
    return "\n" if (match.group(2) or "").lower() in _BLOCK_TAGS else ""


def markdown_plain_text(text: str) -> str:
    """Plain text of Markdown (or HTML) for indexing, without converting it: images, link reference
    definitions, tags and the content of ``<script>``/``<style>`` dropped, character references decoded,
    link targets and bare URLs dropped (`strip_links`). Emphasis and list markers stay: the index reads
    words only (`newsletter.related.text.tokens`). On the White House corpus the index terms equal those of
    the converted text (`html_to_text` of the sanitised HTML) for 95% of the articles; the others differ
    only where the index cuts a long text (`newsletter.related.text.MAX_CHARS`)."""
    # Each pattern needs a fixed string ("<s" or "<S", "<", "![", "]:"): one without it is not run (a regex
    # pass reads every character; an import makes this text for every article).
    if "<" in text:
        if "<s" in text or "<S" in text:
            text = _SKIPPED.sub(" ", text)
        text = _TAG.sub(_tag_gap, text)
    if "![" in text:
        text = _MD_IMAGE.sub(" ", text)
    if "]:" in text:
        text = _MD_REFERENCE.sub("", text)
    return strip_links(unescape(text) if "&" in text else text)


def html_plain_text(html: str) -> str:
    """Plain text of sanitised HTML for indexing (see `markdown_plain_text`): tags dropped, references decoded."""
    return unescape(_TAG.sub(_tag_gap, html))


def strip_links(text: str) -> str:
    """Drop Markdown link targets and bare URLs, keeping anchor text: ``[a](u)`` -> ``a``."""
    # A link needs "](" and a URL "://": without them the text is returned with no regex pass (most of an
    # import's index texts; the regexes scan every character).
    if "](" in text:
        text = _MD_LINK.sub(r"\1", text)
    if "://" in text:
        text = _BARE_URL.sub("", text)
    return text


_SLUG = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")


def category_label(category: str) -> str:
    """A reader-facing label: a CMS slug such as ``presidential-actions`` becomes ``Presidential actions``;
    anything else (``Security``, ``安全``) is kept as written."""
    return category.replace("-", " ").replace("_", " ").capitalize() if _SLUG.fullmatch(category) else category


def to_traditional(text: str, conversion: str = "s2twp", extra: tuple[str, ...] = ()) -> str:
    """Simplified to Traditional Chinese; see `newsletter.zh_hant.to_traditional` (OpenCC ``s2twp`` plus
    the project's phrase dictionary by default)."""
    from newsletter.zh_hant import to_traditional as convert

    return convert(text, conversion, extra)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL, or a surrogate (paired ones never reach a str)


def unstorable(value: object) -> bool:
    """Whether ``value`` (a string, or lists and dicts of them, keys included) holds a NUL or an unpaired
    surrogate: text that PostgreSQL refuses and UTF-8 cannot encode, to be rejected at the door."""
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(unstorable(k) or unstorable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(unstorable(v) for v in value)
    return False

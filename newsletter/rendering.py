"""Edition rendering: Jinja2 templates -> premailer (once per edition and variant) -> personalisation.

Personal values (greeting, address, unsubscribe and preference links) are left in the rendered
edition as ``@@NL_NAME@@`` markers and substituted per subscriber by `personalise`, so CSS inlining
runs once per edition and never once per subscriber.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from newsletter.branding import Branding
from newsletter.content import Image, absolute_url, html_to_text, markdown_to_html
from newsletter.i18n import gettext_for

if TYPE_CHECKING:
    import jinja2

PLACEHOLDER = re.compile(r"@@NL_([A-Z_]+)@@")
PERSONAL_FIELDS = ("GREETING", "EMAIL", "UNSUBSCRIBE_URL", "PREFERENCES_URL")


def marker(name: str) -> str:
    """The placeholder text for personal field ``name`` (one of `PERSONAL_FIELDS`)."""
    return f"@@NL_{name}@@"


def templates_dir() -> Path:
    """The template folder: packaged inside ``newsletter/`` in a wheel, ``templates/`` in a checkout."""
    packaged = Path(__file__).with_name("templates")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "templates"


LANGUAGE_NAMES = {"en": "English", "zh-Hans": "简体", "zh-Hant": "繁體"}  # the switcher's labels, each in its own script


def template_loader(override: Path | None = None) -> jinja2.BaseLoader:
    """Templates from ``override`` (NEWSLETTER_TEMPLATES) first, then the packaged ones: a file at the
    same relative path replaces the packaged file, and may still ``extend`` the packaged layouts."""
    import jinja2  # here, not at import: a CLI command that renders nothing does not pay for it

    packaged = jinja2.FileSystemLoader(templates_dir())
    return jinja2.ChoiceLoader([jinja2.FileSystemLoader(override), packaged]) if override else packaged


@cache
def environment(autoescape: bool, override: Path | None = None) -> jinja2.Environment:
    """The Jinja2 environment: StrictUndefined always; autoescape only for HTML; ``override`` see `template_loader`."""
    import jinja2

    return jinja2.Environment(
        loader=template_loader(override),
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class RenderError(Exception):
    """An edition failed to render; the message names the issue, edition and template."""

    def __init__(self, issue_number: int, lang: str, template: str, cause: BaseException) -> None:
        super().__init__(f"issue {issue_number} edition {lang}: {template}: {type(cause).__name__}: {cause}")
        self.issue_number, self.lang, self.template, self.cause = issue_number, lang, template, cause


# The content column of the layout: 600 px wide less 2 x 32 px padding (templates/email/_base/body.html).
COLUMN_WIDTH = 536


@dataclass(frozen=True)
class ArticleView:
    """What a template shows of an article; all plain text except ``url`` and ``image`` (its lead image).
    ``related`` is the article's "You might also like" block (title, one-line summary, url each)."""

    title: str
    summary: str
    url: str
    category: str | None = None
    image: Image | None = None
    related: tuple[ArticleView, ...] = ()


@dataclass(frozen=True)
class EditionContent:
    """Everything one edition shows. ``editors_note`` is Markdown, sanitised when rendered."""

    number: int
    lang: str
    title: str
    date: str
    web_url: str
    articles: tuple[ArticleView, ...]
    editors_note: str = ""
    converted_from: str | None = None
    site_url: str = ""  # relative links of the note and articles are made absolute against it
    languages: tuple[str, ...] = ()  # every edition language of the issue: the web version's switcher
    branding: Branding = field(default_factory=Branding)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderedEdition:
    """An edition ready to personalise: ``html`` and ``text`` still hold the personal markers."""

    subject: str
    html: str
    text: str
    web_html: str


def translator(lang: str, autoescape: bool) -> Callable[..., str]:
    """The ``_`` of templates: ``_("Issue %(number)s", number=3)`` translated (strictly, see
    `newsletter.i18n`) and filled in; in HTML the parameters are escaped, the catalog string is not."""
    gettext = gettext_for(lang)

    def translate(message: str, **params: Any) -> str:
        text = gettext(message)
        if autoescape:
            # Markup's % escapes the parameters, never the trusted catalog string.
            return Markup(text) % params if params else Markup(text)
        return text % params if params else text

    return translate


def inline_css(document: str) -> str:
    """Inline the ``<style>`` rules into ``style`` attributes with premailer.

    ``<style>`` blocks are kept for ``@media`` rules (which cannot be inlined), the network is never
    touched, and MSO conditional comments survive. premailer does not copy CSS ``width``/``height`` into
    attributes (it would write ``height="auto"`` on images): the templates set those attributes themselves.
    Links are made absolute before rendering (`EditionContent.site_url`), not here, so the personal
    markers in ``href`` stay intact.
    """
    from premailer import Premailer  # imported here: it pulls in cssutils and lxml, slow for the CLI to start

    return Premailer(
        document,
        allow_network=False,
        disable_basic_attributes=["width", "height"],
        keep_style_tags=True,
        remove_classes=False,
        strip_important=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
    ).transform(pretty_print=False)


def _absolute(view: ArticleView, base: str) -> ArticleView:
    image = view.image
    if image is not None:
        src = absolute_url(image.src, base)
        width = min(image.width, COLUMN_WIDTH) if image.width else None
        # Outlook on Windows sizes by the attributes, not CSS: never wider than the column, height to scale.
        height = round(image.height * width / image.width) if image.height and width and image.width else None
        image = Image(src=src, alt=image.alt or view.title, width=width, height=height) if src.startswith("https://") else None
    related = tuple(_absolute(r, base) for r in view.related)
    return ArticleView(view.title, view.summary, absolute_url(view.url, base), view.category, image, related)


def text_direction(lang: str) -> str:
    """``rtl`` for right-to-left scripts (Arabic, Hebrew, Persian, Urdu), else ``ltr`` (HTML's ``dir``)."""
    return "rtl" if lang.split("-")[0] in ("ar", "he", "fa", "ur", "yi", "ps", "sd", "ug") else "ltr"


def _context(content: EditionContent, *, autoescape: bool, web: bool) -> dict[str, Any]:
    base = content.site_url
    note_html = markdown_to_html(content.editors_note, base_url=base or None) if content.editors_note else ""
    preheader = content.articles[0].title if content.articles else content.title
    return {
        "lang": content.lang,
        "dir": text_direction(content.lang),
        "number": content.number,
        "title": content.title,
        "date": content.date,
        "list_name": content.branding.list_name(content.lang),
        "brand": content.branding,
        "site_url": base,
        "languages": [(lang, LANGUAGE_NAMES.get(lang, lang)) for lang in content.languages],
        "web_url": content.web_url,
        "articles": tuple(_absolute(a, base) for a in content.articles),
        "converted_from": content.converted_from,
        "editors_note_html": Markup(note_html),
        "editors_note_text": html_to_text(note_html) if note_html else "",
        "preheader": preheader,
        "web": web,
        "greeting": Markup(marker("GREETING")) if autoescape else marker("GREETING"),
        "email": marker("EMAIL"),
        "unsubscribe_url": marker("UNSUBSCRIBE_URL"),
        "preferences_url": marker("PREFERENCES_URL"),
        "_": translator(content.lang, autoescape),
        **content.extra,
    }


def _render(content: EditionContent, name: str, *, web: bool = False) -> str:
    autoescape = name.endswith(".html")
    try:
        template = environment(autoescape, content.branding.templates).get_template(name)
        return template.render(_context(content, autoescape=autoescape, web=web))
    except Exception as exc:  # any template failure becomes one error naming the edition
        raise RenderError(content.number, content.lang, name, exc) from exc


def check_edition(content: EditionContent, template: str = "email/issue") -> None:
    """Render the edition's templates without inlining, to fail fast before a publish starts.

    Raises:
        RenderError: a template error, an undefined variable or a missing translation.
    """
    for part in ("subject.txt", "body.txt", "body.html"):
        _render(content, f"{template}/{part}")


def render_edition(content: EditionContent, template: str = "email/issue") -> RenderedEdition:
    """Render subject, text, email HTML (CSS inlined) and the web version of one edition.

    Raises:
        RenderError: see `check_edition`.
    """
    subject = " ".join(_render(content, f"{template}/subject.txt").split())  # never a header break
    text = _render(content, f"{template}/body.txt").strip() + "\n"
    html_doc = inline_css(_render(content, f"{template}/body.html"))
    web_doc = inline_css(_render(content, f"{template}/body.html", web=True))
    return RenderedEdition(subject=subject, html=html_doc, text=text, web_html=web_doc)


def greeting(lang: str, name: str) -> str:
    """The salutation for a subscriber, e.g. ``Hello Ada,`` or ``Ada，您好：``."""
    gettext = gettext_for(lang)
    name = " ".join(name.split())
    return gettext("Hello %(name)s,") % {"name": name} if name else gettext("Hello,")


def personalise(template: str, values: Mapping[str, str], *, escape: bool) -> str:
    """Replace every ``@@NL_X@@`` marker with ``values[X]`` in one pass (HTML-escaped if ``escape``).

    Raises:
        KeyError: a marker has no value.
    """
    if escape:
        values = {k: html.escape(v, quote=True) for k, v in values.items()}
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)

"""Rendering reader pages in the reader's language: negotiation, the translator, branding, the CSRF token.

A page's language is, in order: the subscriber's own (pages behind a signed link), a ``lang`` query or
form value, the browser's ``Accept-Language`` (RFC 9110 §12.5.4, matched by Babel), else English.
"""

from __future__ import annotations

from typing import Any

from babel import negotiate_locale
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from newsletter.i18n import N_
from newsletter.models import LANGUAGES, Subscriber
from newsletter.rendering import LANGUAGE_NAMES, translator
from newsletter.signup import known_topics
from newsletter.subscribers import normalise_lang
from newsletter.tokens import BadToken, verify
from newsletter.web.csrf import csrf_protect, csrf_token
from newsletter.web.deps import WebState

CSRF = [Depends(csrf_protect)]  # dependencies of every reader form's POST (not the one-click unsubscribe)
INVALID_LINK = N_("This link is not valid. Please use the latest message we sent you.")

# Babel's matching works on POSIX-style identifiers; map them back to our BCP 47 tags.
_POSIX = {"en": "en", "zh_Hans": "zh-Hans", "zh_Hant": "zh-Hant", "zh_CN": "zh-Hans", "zh_SG": "zh-Hans", "zh_TW": "zh-Hant",
          "zh_HK": "zh-Hant", "zh_MO": "zh-Hant", "zh": "zh-Hans"}  # fmt: skip


def accepted(header: str) -> list[str]:
    """The language ranges of an ``Accept-Language`` header, best first (q-values honoured, ``q=0`` dropped)."""
    ranges: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and q > 0:
            ranges.append((-q, i, tag.strip().replace("-", "_")))
    return [tag for _, _, tag in sorted(ranges)]


def page_lang(request: Request, given: str | None = None) -> str:
    """The language to show a page in (see the module docstring), one of `LANGUAGES`."""
    for value in (given, request.query_params.get("lang")):
        if value:
            try:
                return normalise_lang(value)
            except ValueError:
                pass
    preferred = accepted(request.headers.get("accept-language", ""))
    match = negotiate_locale(preferred, list(_POSIX), sep="_") if preferred else None
    return _POSIX.get(match or "", "en")


def shown_lang(request: Request, lang: str) -> str:
    """``lang``, unless the reader picked another on the page's language switcher (``?lang=`` of a GET)."""
    if request.method in ("GET", "HEAD") and request.query_params.get("lang"):
        return page_lang(request)
    return lang


def reader_page(web: WebState, request: Request, template: str, lang: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``templates/web/<template>`` in ``lang`` (see `shown_lang`) with ``_``, branding, the language
    switcher and the CSRF token its forms carry. ``Content-Language`` tells caches which language it is."""
    lang = shown_lang(request, lang)
    branding = web.settings.branding
    html = web.pages.get_template(template).render(
        _=translator(lang, True),
        lang=lang,
        languages=[(code, LANGUAGE_NAMES[code]) for code in LANGUAGES],
        list_name=branding.list_name(lang),
        brand=branding,
        csrf_token=csrf_token(request),
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers={"Content-Language": lang, "Vary": "Accept-Language, Cookie"})


def message_page(
    web: WebState, request: Request, lang: str, title: str, message: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A short page (``message.html``): ``title`` and ``message`` are English msgids, translated here."""
    lang = shown_lang(request, lang)
    _ = translator(lang, True)
    return reader_page(web, request, "message.html", lang, status_code, title=_(title), message=_(message), **context)


def topic_choices(session: Session, web: WebState, lang: str) -> list[tuple[str, str]]:
    """The topics a form offers as checkboxes: ``(slug, readable label in lang)``."""
    return [(slug, labels.get(lang) or labels.get("en") or slug) for slug, labels in known_topics(session, web.settings)]


ERRORS = {
    403: (N_("This form has expired"), N_("Please reload the page and try again.")),
    404: (N_("Page not found"), N_("There is nothing at this address.")),
    429: (N_("Too many requests"), N_("Please try again later.")),
}
BAD_REQUEST = (N_("Something is wrong with this request"), N_("Please go back and try again."))
SERVER_ERROR = (N_("Something went wrong"), N_("Please try again later."))


def error_page(web: WebState, request: Request, status: int, headers: dict[str, str] | None = None) -> HTMLResponse:
    """An error of a reader page (CSRF failure, unknown page, server error) in the reader's language."""
    title, message = ERRORS.get(status) or (SERVER_ERROR if status >= 500 else BAD_REQUEST)
    response = message_page(web, request, page_lang(request), title, message, status)
    response.headers.update(headers or {})
    return response


def token_subscriber(session: Session, web: WebState, token: str, purpose: str) -> Subscriber | None:
    """The subscriber a signed link names, or None (bad signature, wrong purpose, unknown id). Every
    secret key verifies, so a key rotation keeps the links already in mailboxes working."""
    try:
        subscriber_id = verify(web.settings.secret_keys, purpose, token)[0]
    except BadToken:
        return None
    return session.get(Subscriber, subscriber_id)


def invalid_link(web: WebState, request: Request) -> HTMLResponse:
    """The 400 page of a forged, truncated or outdated link."""
    return message_page(web, request, page_lang(request), N_("Link not valid"), INVALID_LINK, 400)

"""Pages a subscriber opens from a message: the web version, unsubscribe (RFC 8058) and preferences.

No GET or HEAD changes anything: mail scanners and link previewers follow links (RFC 8058 §1). The
signed token in the URL is what authorises a change; a forged or truncated one gets a 400 page.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from newsletter.models import LANGUAGES, Edition, Issue, IssueStatus, Subscriber
from newsletter.subscribers import unsubscribe, update_preferences
from newsletter.tokens import BadToken, verify
from newsletter.web.deps import DB, State, WebState, page

router = APIRouter(tags=["reader pages"])

INVALID_LINK = {"unsubscribe": "This unsubscribe link is not valid.", "preferences": "This preferences link is not valid."}


def _verified(web: WebState, token: str, purpose: str) -> int | None:
    """The subscriber id a signed link names, or None when the signature does not hold."""
    try:
        return verify(web.settings.secret_keys, purpose, token)[0]  # every key verifies: rotation keeps old links
    except BadToken:
        return None


def _message(web: WebState, title: str, message: str, status_code: int = 200, form: bool = False) -> HTMLResponse:
    return page(web, "message.html", status_code, title=title, message=message, form=form)


def _unknown(web: WebState) -> HTMLResponse:
    return _message(web, "Unknown subscriber", "We could not find this subscription.", 404)


@router.get("/issues/{number}/{lang}", response_class=HTMLResponse)
def edition(number: int, lang: str, session: DB) -> HTMLResponse:
    """The "view in browser" page of an edition, once its issue is sending or sent."""
    found = session.execute(
        select(Edition.web_html)
        .join(Issue)
        .where(Issue.number == number, Edition.lang == lang, Issue.status.in_([IssueStatus.SENDING, IssueStatus.SENT]))
    ).scalar_one_or_none()
    if not found:
        raise HTTPException(404, "no such edition")
    return HTMLResponse(found)


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_form(token: str, web: State) -> HTMLResponse:
    """Ask before unsubscribing; changes nothing."""
    if _verified(web, token, "unsubscribe") is None:
        return _message(web, "Link not valid", INVALID_LINK["unsubscribe"], 400)
    return _message(web, "Unsubscribe", "Stop receiving this newsletter?", form=True)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_post(
    token: str, web: State, session: DB, one_click: Annotated[str | None, Form(alias="List-Unsubscribe")] = None
) -> HTMLResponse:
    """Unsubscribe: a person's click on the form, or a mail client's one-click POST (RFC 8058 §3.2)."""
    subscriber_id = _verified(web, token, "unsubscribe")
    if subscriber_id is None:
        return _message(web, "Link not valid", INVALID_LINK["unsubscribe"], 400)
    if unsubscribe(session, subscriber_id, source="one-click" if one_click is not None else "page") is None:
        return _unknown(web)
    return _message(web, "Unsubscribed", "You will not receive further issues.")


def _preferences(web: WebState, subscriber: Subscriber, message: str = "", status_code: int = 200) -> HTMLResponse:
    return page(web, "preferences.html", status_code, s=subscriber, message=message, languages=LANGUAGES)


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences_form(token: str, web: State, session: DB) -> HTMLResponse:
    """Show a subscriber's language and topics (signed link from every message)."""
    subscriber_id = _verified(web, token, "preferences")
    if subscriber_id is None:
        return _message(web, "Link not valid", INVALID_LINK["preferences"], 400)
    subscriber = session.get(Subscriber, subscriber_id)
    return _unknown(web) if subscriber is None else _preferences(web, subscriber)


@router.post("/preferences/{token}", response_class=HTMLResponse)
def preferences_post(
    token: str, web: State, session: DB, lang: Annotated[str, Form()] = "", topics: Annotated[str, Form()] = ""
) -> HTMLResponse:
    """Change a subscriber's language and topics."""
    subscriber_id = _verified(web, token, "preferences")
    if subscriber_id is None:
        return _message(web, "Link not valid", INVALID_LINK["preferences"], 400)
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return _unknown(web)
    try:
        update_preferences(session, subscriber_id, lang, topics.split(","))
    except ValueError as exc:
        return _preferences(web, subscriber, str(exc), 400)
    session.refresh(subscriber)
    return _preferences(web, subscriber, "Saved.")

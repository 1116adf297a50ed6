"""Reader pages: subscribe (form and JSON), confirm, unsubscribe (RFC 8058), preferences, re-subscribe.

No GET or HEAD changes anything: mail scanners and link previewers follow links (RFC 8058 §1), so
every link in a message opens a page whose button POSTs. The signed token in the URL is what authorises
a change; a forged, truncated or expired one gets an error page in the reader's language. Forms of
these pages carry the CSRF token (`newsletter.web.csrf`), except the unsubscribe POST, which mail
clients send without cookies (RFC 8058 §3.2) and which the token alone authorises.

The sign-up answers alike whether or not the address is known (see `newsletter.signup`); it is rate
limited per client address (a 429 naming the wait) and per subscriber address (silently: the answer
stays the same, only the message is not sent again).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from newsletter.i18n import N_
from newsletter.links import preferences_url, unsubscribe_url
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.rendering import translator
from newsletter.signup import (
    SignupForm,
    check_form,
    clean_topics,
    confirm_subscription,
    leave,
    plan_subscription,
    topic_label,
    topics_of_issue,
)
from newsletter.subscribers import normalise_address, update_preferences
from newsletter.tokens import BadToken, ExpiredToken, verify, verify_until
from newsletter.web.csrf import csrf_protect
from newsletter.web.deps import DB, State, WebState
from newsletter.web.problems import problem_response
from newsletter.web.readerpage import message_page, page_lang, reader_page, shown_lang, topic_choices

router = APIRouter(tags=["reader pages"])
CSRF = [Depends(csrf_protect)]

INVALID_LINK = N_("This link is not valid. Please use the latest message we sent you.")
CHECK_INBOX = N_(
    "If the address can receive our messages, a confirmation is on its way. Please open it and confirm to start receiving the newsletter."
)


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _address_key(email: str) -> str:
    # Keys in Redis carry a hash, not the address (no personal data in the broker).
    with contextlib.suppress(ValueError):
        email = normalise_address(email)
    return hashlib.sha256(email.lower().encode()).hexdigest()[:32]


def _signup(session: DB, web: WebState, request: Request, form: SignupForm, later: BackgroundTasks) -> int:
    """Rate-limit, then act on a valid sign-up; its message is sent after the response (``later``), so
    neither the answer nor its timing depends on the address. Returns seconds to wait when the client is
    limited (0: done)."""
    client = f"ip:{_client(request)}"
    wait = web.signup_client_limiter.blocked(client)
    if wait:
        return wait
    web.signup_client_limiter.hit(client)
    key = _address_key(form.email)
    if web.signup_address_limiter.blocked(key):
        return 0  # the same answer as any sign-up: a limit per address must not tell that the address is known
    web.signup_address_limiter.hit(key)
    notice = plan_subscription(session, web.settings, form)
    if notice is not None:
        later.add_task(notice.send, web.settings)
    return 0


def _too_many(web: WebState, request: Request, lang: str, wait: int) -> HTMLResponse:
    response = message_page(
        web, request, lang, N_("Too many requests"), N_("Too many sign-ups from your network. Please try again later."), 429
    )
    response.headers["Retry-After"] = str(wait)
    return response


@router.get("/subscribe", response_class=HTMLResponse)
def subscribe_form(request: Request, web: State, session: DB) -> HTMLResponse:
    """The sign-up form in the reader's language (``?lang=``, else ``Accept-Language``)."""
    lang = page_lang(request)
    blank = {"email": "", "name": "", "lang": lang, "topics": []}
    return reader_page(web, request, "subscribe.html", lang, form=blank, errors={}, topics=topic_choices(session, web, lang))


@router.post("/subscribe", response_class=HTMLResponse, dependencies=CSRF)
def subscribe_post(
    request: Request,
    web: State,
    session: DB,
    later: BackgroundTasks,
    email: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    lang: Annotated[str, Form()] = "",
    topics: Annotated[list[str] | None, Form()] = None,
) -> HTMLResponse:
    """Sign up from the form: the same "check your inbox" page for every valid address."""
    shown = page_lang(request, lang)
    form = SignupForm(email=email, name=name, lang=lang or shown, topics=tuple(topics or ()), source="form")
    if errors := check_form(form):
        values = {"email": email, "name": name, "lang": shown, "topics": list(form.topics)}
        return reader_page(
            web, request, "subscribe.html", shown, 400, form=values, errors=errors, topics=topic_choices(session, web, shown)
        )
    if wait := _signup(session, web, request, form, later):
        return _too_many(web, request, shown, wait)
    return message_page(web, request, shown, N_("Check your inbox"), CHECK_INBOX, status_role=True)


class SubscriptionRequest(BaseModel):
    """A sign-up by JSON (``POST /subscriptions``); ``topics`` are topic slugs (unknown ones are ignored)."""

    email: str = Field(max_length=320)
    name: str = Field("", max_length=256)
    lang: str = Field("en", max_length=16)
    topics: list[str] = Field(default_factory=list, max_length=50)


@router.post("/subscriptions", status_code=202, response_model=None, responses={202: {"description": "Sign-up accepted"}})
def subscribe_json(body: SubscriptionRequest, request: Request, web: State, session: DB, later: BackgroundTasks) -> Response:
    """Sign up by JSON: ``202 {"status": "confirmation-sent"}`` for every valid address, known or not.

    Errors are problem details: 415 unless the body is ``application/json`` (a cross-site form cannot
    send that without a CORS preflight, which this app never grants), 422 naming the field, 429 with
    ``Retry-After`` when the client sent too many.
    """
    if not request.headers.get("content-type", "").startswith("application/json"):
        return problem_response(request, 415, "send the sign-up as application/json")
    form = SignupForm(email=body.email, name=body.name, lang=body.lang, topics=tuple(body.topics), source="api")
    if errors := check_form(form):
        return problem_response(
            request, 422, "the sign-up is not valid", slug="invalid", errors=[(f, f"{f} is {p}") for f, p in errors.items()]
        )
    if wait := _signup(session, web, request, form, later):
        return problem_response(request, 429, "too many sign-ups from this client", slug="rate-limited", headers={"Retry-After": str(wait)})
    return JSONResponse({"status": "confirmation-sent", "detail": "if the address can receive mail, a confirmation link is on its way"},
                        status_code=202)  # fmt: skip


def _subscriber(session: DB, web: WebState, token: str, purpose: str) -> Subscriber | None:
    try:
        subscriber_id = verify(web.settings.secret_keys, purpose, token)[0]  # every key verifies: rotation keeps old links
    except BadToken:
        return None
    return session.get(Subscriber, subscriber_id)


def _invalid(web: WebState, request: Request) -> HTMLResponse:
    return message_page(web, request, page_lang(request), N_("Link not valid"), INVALID_LINK, 400)


def _confirming(session: DB, web: WebState, request: Request, token: str) -> Subscriber | HTMLResponse:
    try:
        subscriber_id = verify_until(web.settings.secret_keys, "confirm", token, time.time())
    except ExpiredToken:
        lang = page_lang(request)
        return message_page(web, request, lang, N_("Link expired"), N_("This confirmation link has expired. Please subscribe again."), 410,
                            link=(f"/subscribe?lang={lang}", translator(lang, True)("Subscribe")))  # fmt: skip
    except BadToken:
        return _invalid(web, request)
    subscriber = session.get(Subscriber, subscriber_id)
    return subscriber if subscriber is not None else _invalid(web, request)


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_form(token: str, request: Request, web: State, session: DB) -> HTMLResponse:
    """Ask the reader to confirm (a button); changes nothing."""
    found = _confirming(session, web, request, token)
    if isinstance(found, HTMLResponse):
        return found
    if found.status == SubscriberStatus.ACTIVE:
        return message_page(web, request, found.lang, N_("Subscribed"), N_("Your subscription is confirmed."), status_role=True)
    return reader_page(web, request, "confirm.html", found.lang, email=found.email)


@router.post("/confirm/{token}", response_class=HTMLResponse, dependencies=CSRF)
def confirm_post(token: str, request: Request, web: State, session: DB) -> HTMLResponse:
    """Confirm the sign-up (or re-subscription) and send the welcome message."""
    found = _confirming(session, web, request, token)
    if isinstance(found, HTMLResponse):
        return found
    subscriber = confirm_subscription(session, web.settings, found.id)
    if subscriber is None or subscriber.status != SubscriberStatus.ACTIVE:
        return message_page(web, request, found.lang, N_("Not subscribed"), N_("This address cannot be subscribed."), 409)
    link = (preferences_url(web.settings, subscriber.id), translator(subscriber.lang, True)("Manage preferences"))
    return message_page(web, request, subscriber.lang, N_("Subscribed"), N_("Your subscription is confirmed."), status_role=True, link=link)


def _unsubscribed_page(web: WebState, request: Request, subscriber: Subscriber, token: str) -> HTMLResponse:
    _ = translator(shown_lang(request, subscriber.lang), True)
    message = _("You will not receive further issues.")
    resubscribe = f"/resubscribe/{token}" if subscriber.status == SubscriberStatus.UNSUBSCRIBED else ""
    return reader_page(
        web, request, "unsubscribed.html", subscriber.lang, title=_("Unsubscribed"), message=message, resubscribe_url=resubscribe
    )


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_form(token: str, request: Request, web: State, session: DB) -> HTMLResponse:
    """Ask before unsubscribing, offering to leave only the topic the issue was sent for; changes nothing."""
    subscriber = _subscriber(session, web, token, "unsubscribe")
    if subscriber is None:
        return _invalid(web, request)
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
        return _unsubscribed_page(web, request, subscriber, token)
    issue_id = verify(web.settings.secret_keys, "unsubscribe", token)[1]
    mine = [t for t in topics_of_issue(session, issue_id) if t in (subscriber.topics or ())]
    labels = "、".join if subscriber.lang.startswith("zh") else ", ".join
    return reader_page(web, request, "unsubscribe.html", subscriber.lang,
                       topic_labels=labels(topic_label(web.settings, t, subscriber.lang) for t in mine) if mine else "",
                       preferences_url=preferences_url(web.settings, subscriber.id))  # fmt: skip


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_post(
    token: str,
    request: Request,
    web: State,
    session: DB,
    one_click: Annotated[str | None, Form(alias="List-Unsubscribe")] = None,
    scope: Annotated[str, Form()] = "topic",
    acknowledge: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """Unsubscribe: a mail client's one-click POST (RFC 8058 §3.2), or a button of the page.

    An issue sent to a topic segment is left like a separate newsletter: its topics go, the others stay
    (the whole list goes when none is left). ``scope=all`` leaves everything. A goodbye message is sent
    only when the reader ticked ``acknowledge``; a one-click POST never sends one.
    """
    subscriber = _subscriber(session, web, token, "unsubscribe")
    if subscriber is None:
        return _invalid(web, request)
    issue_id = verify(web.settings.secret_keys, "unsubscribe", token)[1]
    topics = topics_of_issue(session, issue_id) if scope != "all" else ()
    source = "one-click" if one_click is not None else "page"
    result = leave(session, web.settings, subscriber.id, topics, source=source, acknowledge=bool(acknowledge) and one_click is None)
    assert result is not None  # the subscriber exists
    _ = translator(subscriber.lang, True)
    if not result.unsubscribed:
        shown = "、".join if subscriber.lang.startswith("zh") else ", ".join
        text = _(
            "You left %(topics)s. You still receive your other topics.",
            topics=shown(topic_label(web.settings, t, subscriber.lang) for t in result.left),
        )
        return reader_page(web, request, "message.html", subscriber.lang, title=_("Topic left"), message=text, status_role=True,
                           link=(preferences_url(web.settings, subscriber.id), _("Manage preferences")))  # fmt: skip
    return _unsubscribed_page(web, request, subscriber, token)


@router.post("/resubscribe/{token}", response_class=HTMLResponse, dependencies=CSRF)
def resubscribe_post(token: str, request: Request, web: State, session: DB, later: BackgroundTasks) -> HTMLResponse:
    """After unsubscribing: send a new confirmation (the reader confirms again before any issue)."""
    subscriber = _subscriber(session, web, token, "unsubscribe")
    if subscriber is None:
        return _invalid(web, request)
    form = SignupForm(
        email=subscriber.email, name=subscriber.name, lang=subscriber.lang, topics=tuple(subscriber.topics or ()), source="resubscribe"
    )
    if wait := _signup(session, web, request, form, later):
        return _too_many(web, request, subscriber.lang, wait)
    return message_page(web, request, subscriber.lang, N_("Check your inbox"), CHECK_INBOX, status_role=True)


def _preferences(web: WebState, request: Request, session: DB, s: Subscriber, status_code: int = 200, **context: Any) -> HTMLResponse:
    topics = topic_choices(session, web, s.lang)
    known = {slug for slug, _ in topics}
    topics += [(t, t) for t in s.topics or () if t not in known]  # keep a topic given by an import visible
    values = {"message": "", "error": "", **context}
    return reader_page(web, request, "preferences.html", s.lang, status_code, s=s, topics=topics,
                       unsubscribe_url=unsubscribe_url(web.settings, s.id), **values)  # fmt: skip


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences_form(token: str, request: Request, web: State, session: DB) -> HTMLResponse:
    """Show a subscriber's language, topics (checkboxes) and pause switch (signed link from every message)."""
    subscriber = _subscriber(session, web, token, "preferences")
    if subscriber is None:
        return _invalid(web, request)
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
        return _unsubscribed_page(web, request, subscriber, _unsubscribe_token(web, subscriber))
    return _preferences(web, request, session, subscriber)


def _unsubscribe_token(web: WebState, subscriber: Subscriber) -> str:
    return unsubscribe_url(web.settings, subscriber.id).rsplit("/", 1)[1]


@router.post("/preferences/{token}", response_class=HTMLResponse, dependencies=CSRF)
def preferences_post(
    token: str,
    request: Request,
    web: State,
    session: DB,
    lang: Annotated[str, Form()] = "",
    topics: Annotated[list[str] | None, Form()] = None,
    paused: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """Change a subscriber's language, topics and pause (a topic unknown to this list is ignored)."""
    subscriber = _subscriber(session, web, token, "preferences")
    if subscriber is None:
        return _invalid(web, request)
    chosen = clean_topics(session, web.settings, topics or ())
    chosen += [t for t in topics or () if t in (subscriber.topics or ()) and t not in chosen]  # an imported topic may stay
    try:
        update_preferences(session, subscriber.id, lang, chosen, paused=bool(paused))
    except ValueError:
        _ = translator(subscriber.lang, True)
        return _preferences(web, request, session, subscriber, 400, error=_("Please choose a language from the list."))
    session.refresh(subscriber)
    _ = translator(subscriber.lang, True)  # the language just saved
    return _preferences(web, request, session, subscriber, message=_("Saved."))

"""Joining: the sign-up form and its JSON twin, the confirmation page, and subscribing again.

The sign-up answers alike whether or not the address is known (see `newsletter.signup`); its message is
queued with the change and handed on after the response (`newsletter.notice_queue.dispatch`), by the
same background task whether or not anything was queued. It is rate limited per client address (a 429
naming the wait) and per subscriber address (silently: the answer stays the same, only the message is
not sent again). No GET changes anything: the confirmation link opens a page whose button POSTs (with
the CSRF token).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from newsletter.i18n import N_
from newsletter.links import preferences_url
from newsletter.models import LANGUAGES, Subscriber, SubscriberStatus
from newsletter.notice_queue import dispatch
from newsletter.rendering import translator
from newsletter.signup import SignupForm, check_form, confirm_subscription, known_topics, plan_subscription
from newsletter.subscribers import NAME_LENGTH, normalise_address
from newsletter.tokens import BadToken, ExpiredToken, verify_until
from newsletter.web.deps import DB, State, WebState
from newsletter.web.problems import problem_response
from newsletter.web.readerpage import CSRF, invalid_link, message_page, page_lang, reader_page, token_subscriber, topic_choices

router = APIRouter(tags=["reader pages"])

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
    """Rate-limit, then act on a valid sign-up; its message, queued with the change, is handed on after the
    response (``later``), so neither the answer nor its timing depends on the address. Returns seconds to
    wait when the client is limited (0: done)."""
    client = f"ip:{_client(request)}"
    wait = web.signup_client_limiter.blocked(client)
    if wait:
        return wait
    web.signup_client_limiter.hit(client)
    key = _address_key(form.email)
    if web.signup_address_limiter.blocked(key):
        later.add_task(dispatch, web.settings, [])  # the same answer and path as any sign-up: a limit per address
        return 0  # must not tell that the address is known
    web.signup_address_limiter.hit(key)
    notice_id = plan_subscription(session, web.settings, form)
    # Always the same task, even with nothing queued: the path taken must not depend on the address.
    later.add_task(dispatch, web.settings, [] if notice_id is None else [notice_id])
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
    """A sign-up by JSON (``POST /subscriptions``); ``topics`` are topic slugs (an unknown one is refused)."""

    email: str = Field(max_length=320)
    name: str = Field("", max_length=256)
    lang: str = Field("en", max_length=16)
    topics: list[str] = Field(default_factory=list, max_length=50)


# What a JSON client is told per field `check_form` refuses ("lang is invalid" did not say what is valid).
_JSON_PROBLEMS = {
    "email": "email is not a valid address",
    "lang": f"lang must be one of {', '.join(LANGUAGES)}",
    "name": f"name must be at most {NAME_LENGTH} characters, without control characters",
}


def _json_only(request: Request) -> None:
    """Refuse a body that is not ``application/json`` with 415 (RFC 9110 section 15.5.16). A dependency runs
    before the body is validated, so a form or text body gets 415, not a 422 about the shape of the body.

    Raises:
        HTTPException: 415.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, "send the sign-up as application/json")


@router.post("/subscriptions", status_code=202, dependencies=[Depends(_json_only)], response_model=None,
             responses={202: {"description": "Sign-up accepted"}, 415: {"description": "The body is not application/json"}})  # fmt: skip
def subscribe_json(body: SubscriptionRequest, request: Request, web: State, session: DB, later: BackgroundTasks) -> Response:
    """Sign up by JSON: ``202 {"status": "confirmation-sent"}`` for every valid address, known or not.

    Errors are problem details: 415 unless the body is ``application/json`` (a cross-site form cannot
    send that without a CORS preflight, which this app never grants); 422 naming the field for a bad
    address, language or name, or a topic slug the list does not have; 429 with ``Retry-After`` when
    the client sent too many.
    """
    form = SignupForm(email=body.email, name=body.name, lang=body.lang, topics=tuple(body.topics), source="api")
    problems = [(f, _JSON_PROBLEMS.get(f, f"{f} is {p}")) for f, p in check_form(form).items()]
    known = {slug for slug, _ in known_topics(session, web.settings)}
    if unknown := sorted({t for t in body.topics if t.strip() not in known}):
        # A client sending a slug we do not have would otherwise sign up for less than it asked for, silently.
        problems.append(("topics", f"unknown topics: {', '.join(unknown)} (known: {', '.join(sorted(known)) or 'none'})"))
    if problems:
        return problem_response(request, 422, "the sign-up is not valid", slug="invalid", errors=problems)
    if wait := _signup(session, web, request, form, later):
        return problem_response(request, 429, "too many sign-ups from this client", slug="rate-limited", headers={"Retry-After": str(wait)})
    return JSONResponse({"status": "confirmation-sent", "detail": "if the address can receive mail, a confirmation link is on its way"},
                        status_code=202)  # fmt: skip


def _confirming(session: DB, web: WebState, request: Request, token: str) -> Subscriber | HTMLResponse:
    try:
        subscriber_id = verify_until(web.settings.secret_keys, "confirm", token, time.time())
    except ExpiredToken:
        lang = page_lang(request)
        return message_page(web, request, lang, N_("Link expired"), N_("This confirmation link has expired. Please subscribe again."), 410,
                            link=(f"/subscribe?lang={lang}", translator(lang, True)("Subscribe")))  # fmt: skip
    except BadToken:
        return invalid_link(web, request)
    subscriber = session.get(Subscriber, subscriber_id)
    return subscriber if subscriber is not None else invalid_link(web, request)


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
def confirm_post(token: str, request: Request, web: State, session: DB, later: BackgroundTasks) -> HTMLResponse:
    """Confirm the sign-up (or re-subscription); the welcome message is queued and sent after the response."""
    found = _confirming(session, web, request, token)
    if isinstance(found, HTMLResponse):
        return found
    subscriber = confirm_subscription(session, web.settings, found.id, handoff=lambda ids: later.add_task(dispatch, web.settings, ids))
    if subscriber is None or subscriber.status != SubscriberStatus.ACTIVE:
        return message_page(web, request, found.lang, N_("Not subscribed"), N_("This address cannot be subscribed."), 409)
    link = (preferences_url(web.settings, subscriber.id), translator(subscriber.lang, True)("Manage preferences"))
    return message_page(web, request, subscriber.lang, N_("Subscribed"), N_("Your subscription is confirmed."), status_role=True, link=link)


@router.post("/resubscribe/{token}", response_class=HTMLResponse, dependencies=CSRF)
def resubscribe_post(token: str, request: Request, web: State, session: DB, later: BackgroundTasks) -> HTMLResponse:
    """After unsubscribing: send a new confirmation (the reader confirms again before any issue)."""
    subscriber = token_subscriber(session, web, token, "unsubscribe")
    if subscriber is None:
        return invalid_link(web, request)
    form = SignupForm(
        email=subscriber.email, name=subscriber.name, lang=subscriber.lang, topics=tuple(subscriber.topics or ()), source="resubscribe"
    )
    if wait := _signup(session, web, request, form, later):
        return _too_many(web, request, subscriber.lang, wait)
    return message_page(web, request, subscriber.lang, N_("Check your inbox"), CHECK_INBOX, status_role=True)

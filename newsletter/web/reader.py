"""Leaving and choosing: unsubscribe (RFC 8058 one-click, or the page's buttons) and the preference centre.

No GET or HEAD changes anything: mail scanners and link previewers follow links (RFC 8058 §1), so
every link in a message opens a page whose button POSTs. The signed token in the URL is what authorises
a change; a forged or truncated one gets an error page in the reader's language. The forms carry the
CSRF token (`newsletter.web.csrf`). A mail client's one-click unsubscribe POST carries none, since it
is sent without cookies (RFC 8058 §3.2): its body ``List-Unsubscribe=One-Click`` says what it is, and the
signed token authorises it. An unsubscribe POST with neither that body nor the page's form token (a bare
``curl -X POST``, a prefetcher) changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Form, Request
from fastapi.responses import HTMLResponse

from newsletter.i18n import N_
from newsletter.links import preferences_url, unsubscribe_url
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.notice_queue import dispatch
from newsletter.rendering import translator
from newsletter.signup import clean_topics, leave, topic_label, topics_of_issue
from newsletter.subscribers import update_preferences
from newsletter.tokens import verify
from newsletter.web.csrf import FIELD, check_token
from newsletter.web.deps import DB, State, WebState
from newsletter.web.readerpage import CSRF, invalid_link, message_page, reader_page, shown_lang, token_subscriber, topic_choices

router = APIRouter(tags=["reader pages"])

# A bare POST (no one-click body, no form token): nothing is changed, and the page says what is missing.
NOT_A_REQUEST = (
    N_("Nothing was changed"),
    N_("This request carries neither the one-click field List-Unsubscribe=One-Click (RFC 8058) nor the form token "
       "of the unsubscribe page: use the button on that page."),
)  # fmt: skip


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
    subscriber = token_subscriber(session, web, token, "unsubscribe")
    if subscriber is None:
        return invalid_link(web, request)
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
    later: BackgroundTasks,
    one_click: Annotated[str | None, Form(alias="List-Unsubscribe")] = None,
    scope: Annotated[str, Form()] = "topic",
    acknowledge: Annotated[str, Form()] = "",
    form_token: Annotated[str | None, Form(alias=FIELD)] = None,
) -> HTMLResponse:
    """Unsubscribe: a mail client's one-click POST (RFC 8058 §3.2: the body ``List-Unsubscribe=One-Click``,
    form-encoded or multipart), or a button of the page (its form carries the CSRF token; a wrong one gets
    the 403 page). A POST with neither gets a 400 page saying what is missing, and changes nothing.

    An issue sent to a topic segment is left like a separate newsletter: its topics go, the others stay
    (the whole list goes when none is left). ``scope=all`` leaves everything. A goodbye message is sent
    only when the reader ticked ``acknowledge`` (queued with the change, sent after the response); a
    one-click POST never sends one.
    """
    subscriber = token_subscriber(session, web, token, "unsubscribe")
    if subscriber is None:
        return invalid_link(web, request)
    one_click = one_click if one_click is not None and one_click.strip().lower() == "one-click" else None
    if one_click is None:
        if form_token is None:
            return message_page(web, request, subscriber.lang, *NOT_A_REQUEST, 400)
        check_token(request, form_token)
    issue_id = verify(web.settings.secret_keys, "unsubscribe", token)[1]
    topics = topics_of_issue(session, issue_id) if scope != "all" else ()
    source = "one-click" if one_click is not None else "page"
    result = leave(session, web.settings, subscriber.id, topics, source=source, acknowledge=bool(acknowledge) and one_click is None,
                   handoff=lambda ids: later.add_task(dispatch, web.settings, ids))  # fmt: skip
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
    subscriber = token_subscriber(session, web, token, "preferences")
    if subscriber is None:
        return invalid_link(web, request)
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
    subscriber = token_subscriber(session, web, token, "preferences")
    if subscriber is None:
        return invalid_link(web, request)
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

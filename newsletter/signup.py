"""Joining and leaving: double opt-in sign-up, confirmation, topics as separate lists, re-subscribing.

A sign-up never reveals whether an address is known (no list probing): whatever the address's state,
`plan_subscription` either queues a message to its owner or nothing, and the caller answers alike (the web
hands the queue on after the response, whatever was queued). Every message is queued in the same
transaction as the change it accompanies and sent with retries (`newsletter.notice_queue`). Only the
owner of the mailbox can act on what arrives there:

- unknown address: a ``pending`` subscriber is stored (source and requested language and topics) and
  asked to confirm by a signed link that expires (``NEWSLETTER_CONFIRM_HOURS``);
- ``pending``: its choices are updated and the confirmation is sent again;
- ``unsubscribed``: the re-subscribe path; nothing changes until the owner confirms again;
- ``active``: a reminder that the address is subscribed, with its preferences link;
- bounced, complained, erased, or suppressed for another reason than unsubscribing: nothing is sent.

Consent is recorded as ``confirmed_at`` (the moment the owner confirmed) and ``source`` (form, api,
import). Topic segments act as separate newsletters: leaving the topic an issue was sent for keeps the
others (`leave`), and leaving the last one leaves the list (CAN-SPAM, RFC 8058 §1: one action suffices).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.links import confirm_url, preferences_url, unsubscribe_url
from newsletter.models import Issue, Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.notice_queue import dispatch, queue_notice
from newsletter.segments import issue_topics
from newsletter.subscribers import clean_name, normalise_address, normalise_lang, unsubscribe

_TOPICS_SEEN: dict[str, tuple[float, list[str]]] = {}  # database URL -> (monotonic time, topics)
TOPICS_SEEN_SECONDS = 300.0


def known_topics(session: Session, settings: Settings) -> list[tuple[str, dict[str, str]]]:
    """The topics readers choose from, as ``(slug, labels by language)``: ``NEWSLETTER_TOPICS`` when set,
    else the topics active subscribers already have (labelled by their slug), sorted. The fallback reads
    every active subscriber, so its answer is kept for `TOPICS_SEEN_SECONDS` per process."""
    if settings.branding.topics:
        return [(t.slug, t.labels) for t in settings.branding.topics]
    cached = _TOPICS_SEEN.get(settings.database_url)
    if cached is None or time.monotonic() - cached[0] > TOPICS_SEEN_SECONDS:
        seen: set[str] = set()
        for topics in session.scalars(select(Subscriber.topics).where(Subscriber.status == SubscriberStatus.ACTIVE)):
            seen.update(t for t in topics or () if isinstance(t, str))
        cached = _TOPICS_SEEN[settings.database_url] = (time.monotonic(), sorted(seen))
    return [(slug, {}) for slug in cached[1]]


def topic_label(settings: Settings, slug: str, lang: str) -> str:
    """The readable label of topic ``slug`` in ``lang`` (the slug when none is configured)."""
    for topic in settings.branding.topics:
        if topic.slug == slug:
            return topic.label(lang)
    return slug


def clean_topics(session: Session, settings: Settings, topics: Iterable[str]) -> list[str]:
    """The chosen topics that are known (`known_topics`), de-duplicated and sorted; unknown ones are
    dropped, so a hand-made request cannot invent a topic."""
    known = {slug for slug, _ in known_topics(session, settings)}
    return sorted({t.strip() for t in topics if t.strip() in known})


@dataclass(frozen=True)
class SignupForm:
    """A sign-up as given: address, name, language tag and topic slugs; ``source`` is ``form`` or ``api``."""

    email: str
    name: str = ""
    lang: str = "en"
    topics: tuple[str, ...] = ()
    source: str = "form"


def check_form(form: SignupForm) -> dict[str, str]:
    """Problems of a sign-up form by field name (empty when it is fine). Says nothing about the list."""
    problems: dict[str, str] = {}
    try:
        normalise_address(form.email)
    except ValueError:
        problems["email"] = "invalid"
    try:
        normalise_lang(form.lang)
    except ValueError:
        problems["lang"] = "invalid"
    try:
        clean_name(form.name)
    except ValueError:
        problems["name"] = "invalid"
    return problems


# Called with the ids of the notices a change queued, once it is committed (the default: `dispatch` now).
# The web passes one that runs after the response, so the reply never waits on a relay.
Handoff = Callable[[Sequence[int]], None]


def _hand_on(settings: Settings, handoff: Handoff | None, ids: Sequence[int]) -> None:
    if handoff is not None:
        handoff(list(ids))
    elif ids:
        dispatch(settings, list(ids))


def plan_subscription(session: Session, settings: Settings, form: SignupForm) -> int | None:
    """Store what a sign-up changes (see the module docstring) and the message it calls for, in one
    transaction, and commit; return the queued notice's id, or None when nothing is sent. Callers show
    the same answer whatever this returns (no probing) and hand the id on (`newsletter.notice_queue.dispatch`).

    Raises:
        ValueError: the form has problems (`check_form`); nothing was stored.
    """
    if problems := check_form(form):
        raise ValueError(", ".join(sorted(problems)))
    email, lang, name = normalise_address(form.email), normalise_lang(form.lang), clean_name(form.name)
    topics = clean_topics(session, settings, form.topics)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == email))
    suppression = session.scalar(select(Suppression.reason).where(Suppression.email == email))
    if subscriber is None:
        if suppression is not None:
            return None  # a bounce or complaint without a subscriber row: never mailed again
        subscriber = Subscriber(
            email=email, name=name, lang=lang, topics=topics, attributes={}, status=SubscriberStatus.PENDING, source=form.source
        )
        session.add(subscriber)
        session.flush()  # its id goes into the confirmation link, committed together with the notice
    elif subscriber.status == SubscriberStatus.PENDING:
        subscriber.name, subscriber.lang, subscriber.topics, subscriber.source = name, lang, topics, form.source
    elif subscriber.status == SubscriberStatus.ACTIVE:
        notice = queue_notice(session, settings, "already", email, subscriber.name, subscriber.lang, subscriber_id=subscriber.id,
                              context={"preferences_url": preferences_url(settings, subscriber.id)})  # fmt: skip
        session.commit()
        return notice.id
    elif subscriber.status != SubscriberStatus.UNSUBSCRIBED or suppression not in (None, "unsubscribe"):
        return None  # bounced, complained or erased: the address is not mailed, whoever asks
    # An unsubscribed reader re-subscribing gets the request in the language just chosen.
    context: dict[str, object] = {"confirm_url": confirm_url(settings, subscriber.id), "hours": int(settings.confirm_hours)}
    notice = queue_notice(session, settings, "confirm", email, name or subscriber.name, lang, subscriber_id=subscriber.id, context=context)
    session.commit()
    return notice.id


def confirm_subscription(session: Session, settings: Settings, subscriber_id: int, *, handoff: Handoff | None = None) -> Subscriber | None:
    """Confirm a sign-up (or a re-subscription): ``pending``/``unsubscribed`` -> ``active``, consent time
    recorded, an unsubscribe suppression lifted, and a welcome message queued in the same transaction;
    commits, then hands the welcome on (``handoff``, default `dispatch` at once).

    Idempotent: an ``active`` subscriber stays as is and gets no second welcome. Bounced, complained or
    erased subscribers are left alone. Returns None for an unknown id.
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.status not in (SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED):
        return subscriber
    other = session.scalar(select(Suppression.reason).where(Suppression.email == subscriber.email, Suppression.reason != "unsubscribe"))
    if other is not None:
        return subscriber  # a hard bounce or complaint outranks a click
    session.execute(delete(Suppression).where(Suppression.email == subscriber.email, Suppression.reason == "unsubscribe"))
    subscriber.status, subscriber.confirmed_at, subscriber.unsubscribed_at, subscriber.paused = (
        SubscriberStatus.ACTIVE,
        utcnow(),
        None,
        False,
    )
    context = {
        "unsubscribe": unsubscribe_url(settings, subscriber.id),
        "preferences_url": preferences_url(settings, subscriber.id),
        "archive_url": f"{settings.base_url}/?lang={subscriber.lang}",
    }
    notice = queue_notice(session, settings, "welcome", subscriber.email, subscriber.name, subscriber.lang, subscriber_id=subscriber.id,
                          context=context)  # fmt: skip
    session.commit()
    _hand_on(settings, handoff, [notice.id])
    return subscriber


def topics_of_issue(session: Session, issue_id: int) -> tuple[str, ...]:
    """`issue_topics` of issue ``issue_id`` (empty for 0 or an unknown issue)."""
    segment = session.scalar(select(Issue.segment).where(Issue.id == issue_id)) if issue_id else None
    return issue_topics(segment)


@dataclass(frozen=True)
class LeaveResult:
    """What leaving did: ``left`` the topics removed; ``unsubscribed`` True when the whole list was left."""

    subscriber: Subscriber
    left: tuple[str, ...]
    unsubscribed: bool


def leave(
    session: Session,
    settings: Settings,
    subscriber_id: int,
    topics: Iterable[str] = (),
    *,
    source: str = "page",
    acknowledge: bool = False,
    handoff: Handoff | None = None,
) -> LeaveResult | None:
    """Leave ``topics`` (the ones the subscriber has), or the whole list when ``topics`` is empty or no
    topic would be left; commits. ``acknowledge``: queue a goodbye note in the same transaction (only
    when the reader asked, never for a one-click POST), handed on by ``handoff`` (default: `dispatch`
    at once) after the commit. Idempotent. Returns None for an unknown id.
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    wanted = set(topics)
    mine = set(subscriber.topics or ())
    left = tuple(sorted(mine & wanted))
    if wanted and not left:  # already gone (a second click): leaving a topic never widens into leaving the list
        return LeaveResult(subscriber, (), unsubscribed=subscriber.status == SubscriberStatus.UNSUBSCRIBED)
    if wanted and mine - wanted:
        subscriber.topics = sorted(mine - wanted)
        session.commit()
        return LeaveResult(subscriber, left, unsubscribed=False)
    was_active = subscriber.status == SubscriberStatus.ACTIVE
    if wanted and left:
        subscriber.topics = []
    goodbye = None
    if acknowledge and was_active:
        context = {"resubscribe_url": f"{settings.base_url}/subscribe?lang={subscriber.lang}"}
        goodbye = queue_notice(session, settings, "goodbye", subscriber.email, subscriber.name, subscriber.lang,
                               subscriber_id=subscriber.id, context=context)  # fmt: skip
    unsubscribe(session, subscriber_id, source=source)  # commits the goodbye with the change
    if goodbye is not None:
        _hand_on(settings, handoff, [goodbye.id])
    return LeaveResult(subscriber, left, unsubscribed=True)


def send_confirmations(session: Session, settings: Settings, emails: Iterable[str], *, handoff: Handoff | None = None) -> list[int]:
    """Ask each ``pending`` subscriber among ``emails`` to confirm (an import that does not assume
    consent, ``newsletter subscribers import --confirm``): one confirmation request each is queued, all
    in one transaction, then handed on (``handoff``, default `dispatch`: sent here over one connection
    in the embedded mode, by workers with a broker). Other statuses are skipped. Returns the notice ids.
    """
    queued = []
    wanted = list(emails)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        query = select(Subscriber).where(Subscriber.email.in_(chunk), Subscriber.status == SubscriberStatus.PENDING)
        for s in session.scalars(query.order_by(Subscriber.id)):
            context = {"confirm_url": confirm_url(settings, s.id), "hours": int(settings.confirm_hours)}
            queued.append(queue_notice(session, settings, "confirm", s.email, s.name, s.lang, subscriber_id=s.id, context=context))
    session.commit()
    notice_ids = [n.id for n in queued]
    _hand_on(settings, handoff, notice_ids)
    return notice_ids

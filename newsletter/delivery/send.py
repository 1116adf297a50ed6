"""Sending one batch of deliveries over one mailer connection."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import dkim, logs, metrics
from newsletter.bounces import verp_address
from newsletter.config import Settings
from newsletter.delivery import ledger
from newsletter.delivery.backoff import next_attempt
from newsletter.delivery.errors import DeliveryError, PermanentDeliveryError
from newsletter.delivery.mailers import Mailer
from newsletter.links import preferences_url, unsubscribe_url
from newsletter.message_template import edition_template
from newsletter.mime import HeaderInjection, ascii_address
from newsletter.models import Delivery, Edition, Issue, IssueStatus, Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.rendering import greeting
from newsletter.segments import issue_topics
from newsletter.suppressions import is_dead_address, mark_bounced, suppress
from newsletter.sweeper import pause_if_failing

log = logging.getLogger(__name__)

SENDABLE_ISSUE_STATES = (IssueStatus.PUBLISHING, IssueStatus.SENDING)
STATUS_CHECK_EVERY = 10  # messages between checks for a pause or cancel during a batch


@dataclass
class BatchResult:
    """Outcomes of one batch, counted by name (``sent``, ``deferred``, ``failed``, ``skipped:<reason>``,
    ``lost`` for claims another worker took over, ``busy`` for ids someone else holds or that used
    their last attempt, ``released`` for claims handed back at a pause or cancel, ``abandoned`` for
    claims left to expire because the database stayed away)."""

    outcomes: Counter[str]


def send_batch(
    session: Session,
    settings: Settings,
    issue_id: int,
    delivery_ids: Sequence[int],
    mailer_factory: Callable[[], Mailer],
) -> BatchResult:
    """Claim, personalise, build and send the due deliveries among ``delivery_ids``.

    This may run more than once for the same ids (broker redelivery, the sweeper): it is safe because
    only deliveries this call claims are sent, a `LeaseKeeper` keeps those claims ours for as long as
    this call works on them (however slow the relay), and the outcome is committed right after the
    relay's reply, on a fresh connection if the database restarted meanwhile. One mailer connection
    serves the whole batch and reconnects after a drop. A delivery already claimed
    ``settings.retry.max_attempts`` times is not claimed again.

    Every `STATUS_CHECK_EVERY` messages the issue's status is read again (a pause or cancel stops the
    batch), and when this batch has failed more messages than it sent, the auto-pause rule is applied
    (`sweeper.pause_if_failing`).
    """
    outcomes: Counter[str] = Counter()
    issue = session.get(Issue, issue_id)
    if issue is None or issue.status not in SENDABLE_ISSUE_STATES:
        outcomes["issue-not-sending"] += len(delivery_ids)
        return BatchResult(outcomes)
    claims = ledger.claim(session, issue_id, delivery_ids, settings.lease_seconds, max_attempts=settings.retry.max_attempts)
    outcomes["busy"] += len(delivery_ids) - len(claims)
    if not claims:
        return BatchResult(outcomes)

    with ledger.LeaseKeeper(sessionmaker(bind=session.get_bind(), expire_on_commit=False), claims, settings.lease_seconds) as keeper:
        editions = {e.lang: e for e in session.scalars(select(Edition).where(Edition.issue_id == issue_id))}
        rows = session.execute(
            select(Delivery, Subscriber)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.id.in_([c.id for c in claims]))
            .execution_options(populate_existing=True)  # see the claim's new attempts count
        ).all()
        by_id = {d.id: (d, s) for d, s in rows}
        suppressed = set(session.scalars(select(Suppression.email).where(Suppression.email.in_([d.email for d, _ in rows]))))
        mailer = mailer_factory()
        try:
            for n, claim_ in enumerate(claims):
                if n and n % STATUS_CHECK_EVERY == 0 and _should_stop(session, settings, issue_id, outcomes):
                    outcomes["released"] += _stop(session, issue_id, [c for c in claims[n:] if not keeper.lost(c.id)])
                    break
                delivery, subscriber = by_id[claim_.id]
                if not keeper.wait_until_held(claim_.id, settings.lease_seconds / 2):
                    if keeper.lost(claim_.id):
                        log.warning("delivery %s: claim taken over by another worker before sending; left to it", claim_.id)
                        outcomes["lost"] += 1
                        continue
                    # No renewal got through for half a lease (the database is away): send nothing more
                    # on claims that may run out; the sweeper hands them out again once they expire.
                    log.warning("issue id %s: cannot renew claims; leaving %s unsent deliveries to the sweeper", issue_id, len(claims) - n)
                    outcomes["abandoned"] += len(claims) - n
                    break
                with logs.bound(delivery_id=delivery.id):
                    outcome = _send_one(session, settings, issue, editions, delivery, subscriber, suppressed, claim_, mailer)
                keeper.done(claim_.id)
                metrics.record_outcome(outcome)
                outcomes[outcome] += 1
            else:
                if outcomes["failed"] > outcomes["sent"]:
                    _auto_pause(session, settings, issue_id)
        finally:
            mailer.close()
    return BatchResult(outcomes)


def _should_stop(session: Session, settings: Settings, issue_id: int, outcomes: Counter[str]) -> bool:
    """True when the batch must stop: the issue was paused or cancelled, or this batch fails more than
    it sends and the issue's failures reach the auto-pause threshold (which pauses it)."""
    if outcomes["failed"] > outcomes["sent"] and _auto_pause(session, settings, issue_id):
        return True
    return _issue_status(session, issue_id) not in SENDABLE_ISSUE_STATES


def _auto_pause(session: Session, settings: Settings, issue_id: int) -> bool:
    return ledger.retrying(session, lambda: pause_if_failing(session, settings, issue_id), f"issue id {issue_id}: auto-pause check")


def _send_one(
    session: Session,
    settings: Settings,
    issue: Issue,
    editions: dict[str, Edition],
    delivery: Delivery,
    subscriber: Subscriber,
    suppressed: set[str],
    claim_: ledger.Claim,
    mailer: Mailer,
) -> str:
    if subscriber.status != SubscriberStatus.ACTIVE:
        reason = str(subscriber.status)
        return f"skipped:{reason}" if ledger.mark_skipped(session, claim_, reason) else "lost"
    if subscriber.paused:
        return "skipped:paused" if ledger.mark_skipped(session, claim_, "paused") else "lost"
    if (topics := issue_topics(issue.segment)) and not set(topics) & set(subscriber.topics or ()):
        # The reader left this issue's topic after planning: a topic is a newsletter of its own.
        return "skipped:left-topic" if ledger.mark_skipped(session, claim_, "left-topic") else "lost"
    if delivery.email in suppressed:
        return "skipped:suppressed" if ledger.mark_skipped(session, claim_, "suppressed") else "lost"
    edition = editions.get(delivery.lang)
    try:
        if edition is None or edition.html is None or edition.text is None or edition.subject is None:
            raise PermanentDeliveryError(f"edition {delivery.lang} of issue {issue.number} is not rendered")
        unsub = unsubscribe_url(settings, subscriber.id, issue.id)
        values = {
            "GREETING": greeting(edition.lang, subscriber.name),
            "EMAIL": delivery.email,
            "UNSUBSCRIBE_URL": unsub,
            "PREFERENCES_URL": preferences_url(settings, subscriber.id),
        }
        try:
            # The edition's message is encoded once per process; only the personal bytes are written here
            # (the same message as mime.build_message would build: tests/test_message_template.py).
            template = edition_template(settings.from_address, edition.subject, settings.list_id, edition.lang, edition.text, edition.html)
            raw = template.render(
                to_address=delivery.email, to_name=subscriber.name, message_id=delivery.message_id, unsubscribe_url=unsub, values=values
            )
            if settings.dkim is not None:  # the one place a message is signed: final bytes, after personalisation
                raw = dkim.sign(raw, settings.dkim)
        except (HeaderInjection, ValueError) as exc:
            raise PermanentDeliveryError(f"subscriber {subscriber.id}: cannot build message: {exc}") from exc
        with metrics.SEND_SECONDS.time():
            mailer.send(verp_address(settings, delivery.id), ascii_address(delivery.email), raw)  # RFC 5321 §4.1.1.2 return path
    except DeliveryError as exc:
        return _record_failure(session, settings, delivery, claim_, exc, mailer.name)
    if ledger.mark_sent(session, claim_, mailer.name):
        return "sent"
    log.warning("delivery %s: sent, but its claim had been taken over", delivery.id)
    return "lost"


def _issue_status(session: Session, issue_id: int) -> IssueStatus | None:
    return ledger.retrying(
        session, lambda: session.scalar(select(Issue.status).where(Issue.id == issue_id)), f"issue id {issue_id}: status"
    )


def _stop(session: Session, issue_id: int, claims: Sequence[ledger.Claim]) -> int:
    """The issue was paused or cancelled mid-batch: hand back (or skip) the claims not yet sent."""
    if _issue_status(session, issue_id) == IssueStatus.CANCELLED:
        for claim_ in claims:
            ledger.mark_skipped(session, claim_, "cancelled")
    else:
        ledger.release(session, claims)
    return len(claims)


def _record_failure(session: Session, settings: Settings, delivery: Delivery, claim_: ledger.Claim, exc: DeliveryError, relay: str) -> str:
    relay = exc.relay or relay
    if isinstance(exc, PermanentDeliveryError):
        if ledger.mark_failed(session, claim_, str(exc), exc.smtp_code, relay) and is_dead_address(exc.enhanced_code):
            # The relay says the mailbox does not exist: as final as a hard bounce, so never again.
            def bounce() -> None:
                suppress(session, delivery.email, "hard-bounce", f"{relay}: {exc}")
                mark_bounced(session, delivery.subscriber_id, delivery.email)
                session.commit()

            ledger.retrying(session, bounce, f"delivery {delivery.id}: suppressing a dead address")
        log.info("delivery %s failed permanently: %s", delivery.id, exc)
        return "failed"
    now = utcnow()
    attempts = delivery.attempts  # already counts this attempt (the claim incremented it)
    when = next_attempt(settings.retry, attempts, delivery.first_attempt_at or now, now)
    if when is None:
        ledger.mark_failed(session, claim_, f"gave up after {attempts} attempts: {exc}", exc.smtp_code, relay)
        return "failed"
    ledger.mark_deferred(session, claim_, when, str(exc), exc.smtp_code, relay)
    log.info("delivery %s deferred until %s: %s", delivery.id, when.isoformat(), exc)
    return "deferred"

"""The notice queue: one-off subscription messages kept in the database until a relay took them.

The transactional outbox: a sign-up, confirmation, leaving or an import adds its `Notice` row in the same
transaction as the subscriber change (`queue_notice`), so a relay outage or a process dying after the
commit loses nothing. After the commit the caller hands the ids to `dispatch`: a worker sends them when a
broker is configured (``tasks.notices``), else this process does, at once. A send (`send_queued`) claims
the row with one conditional UPDATE (``queued`` and due -> ``sending``, or a ``sending`` claim whose lease
expired), so two workers never send the same notice twice; the outcome is recorded only by the claim's
holder (its ``claim_token``). Failures are classified as for deliveries (`newsletter.delivery.errors`):
transient ones (4xx, refused or lost connection) go back to ``queued`` with exponential backoff and full
jitter (`newsletter.delivery.backoff.next_attempt`, the same `RetryPolicy`), permanent ones (5xx, an
address that cannot be sent to) become ``failed`` and are never retried. The sweeper (beat, or
`send_due` in the embedded mode) picks up due retries and notices whose first send was lost.

With a broker, notices have a queue of their own (``notices``, `tasks.app.QUEUES`), so a confirmation never
waits behind an issue's send batches. Each hand-off to the broker is noted in the row (``enqueued_at``,
`mark_enqueued`): beat hands a due notice on once, and again only when it becomes due anew (a retry, an
expired claim) or when that hand-off went unclaimed for `REHANDOFF_AFTER` (the broker lost it).

A notice expires: a confirmation request once its link no longer works (``NEWSLETTER_CONFIRM_HOURS``),
the others after the retry window (``NEWSLETTER_RETRY_WINDOW``); an expired notice is ``failed``, never
sent late. A notice that is no longer wanted when its turn comes (the subscriber confirmed meanwhile,
bounced, complained or was erased) is ``skipped``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.delivery.backoff import next_attempt
from newsletter.delivery.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from newsletter.delivery.ledger import end_leases_held_by, new_token
from newsletter.delivery.mailers import Mailer
from newsletter.models import Notice, NoticeStatus, Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.notices import KINDS, default_mailer, deliver_notice

log = logging.getLogger(__name__)

# A queued notice whose first attempt has not been made this long after queueing lost its hand-off (the
# process died after the commit, or the broker was away): the sweeper sends it. Shorter would race the
# hand-off itself (harmless, one claim wins, but a wasted task).
DISPATCH_GRACE = timedelta(seconds=60)
DUE_BATCH = 200  # notices one sweep hands on at most; the next sweep takes the rest
# A hand-off that no worker claimed within this time was lost (Redis restarted empty, or no worker consumes the
# notices queue): the sweeper hands it on again. On the queue of its own a notice is claimed within seconds.
REHANDOFF_AFTER = timedelta(minutes=5)
# SMTP round trips one notice's send may take at most (connect, EHLO, STARTTLS, EHLO, AUTH, MAIL, RCPT, DATA,
# the message, QUIT), each bounded by SMTP_TIMEOUT: its claim must outlast them all (no LeaseKeeper renews it).
NOTICE_SMTP_STEPS = 10
OPEN_STATES = (NoticeStatus.QUEUED, NoticeStatus.SENDING)


def queue_notice(
    session: Session,
    settings: Settings,
    kind: str,
    email: str,
    name: str,
    lang: str,
    *,
    subscriber_id: int | None = None,
    context: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Notice:
    """Add notice ``kind`` for ``email`` to ``session`` (not committed: the caller commits it with the change
    it accompanies) and return it; its ``id`` is known after the commit. ``context`` fills the template and
    may hold ``unsubscribe`` (the ``List-Unsubscribe`` URL); it must be JSON (strings, numbers).

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    now = now or utcnow()
    expires = now + timedelta(seconds=settings.retry.window)
    if kind == "confirm":  # the link in it (`links.confirm_url`, made now) stops working then
        expires = now + timedelta(hours=settings.confirm_hours)
    notice = Notice(
        kind=kind,
        subscriber_id=subscriber_id,
        email=email,
        name=name,
        lang=lang,
        context=dict(context or {}),
        status=NoticeStatus.QUEUED,
        attempts=0,
        next_attempt_at=now,
        expires_at=expires,
        created_at=now,
        updated_at=now,
    )
    session.add(notice)
    return notice


def lease_seconds(settings: Settings) -> float:
    """How long a notice's claim lasts (seconds): ``NEWSLETTER_LEASE_SECONDS``, but at least one whole send at
    the SMTP timeout (`NOTICE_SMTP_STEPS` x ``SMTP_TIMEOUT``; 300 s by default), since nothing renews it while
    the relay is slow and a claim that ran out mid-send would let the sweeper send the notice a second time."""
    return max(settings.lease_seconds, NOTICE_SMTP_STEPS * settings.smtp_timeout)


def _claimable(now: datetime) -> Any:
    due = and_(Notice.status == NoticeStatus.QUEUED, or_(Notice.next_attempt_at.is_(None), Notice.next_attempt_at <= now))
    return or_(due, and_(Notice.status == NoticeStatus.SENDING, Notice.claimed_until < now))


def claim(session: Session, settings: Settings, notice_id: int, now: datetime | None = None) -> str | None:
    """Claim notice ``notice_id`` for one send attempt: its claim token, or None when it is not due or
    another worker holds it. One conditional UPDATE: of two claimers at once exactly one wins. The claim
    lasts `lease_seconds`; a worker that dies holding it lets the sweeper claim it again once it expired
    (the message may then go out twice, if the relay had taken it: at least once). Commits."""
    now = now or utcnow()
    token = new_token()  # begins with this process's mark, if it has one: see `expire_claim_of`
    won = session.execute(
        update(Notice)
        .where(Notice.id == notice_id, _claimable(now))
        .values(
            status=NoticeStatus.SENDING,
            claim_token=token,
            claimed_until=now + timedelta(seconds=lease_seconds(settings)),
            attempts=Notice.attempts + 1,
            updated_at=now,
        )
        .returning(Notice.id)  # rowcount is not reliable on every driver; RETURNING counts exactly
        .execution_options(synchronize_session=False)
    ).first()
    session.commit()
    return token if won is not None else None


def expire_claim_of(session: Session, notice_id: int, mark: str, now: datetime | None = None) -> int:
    """End now the claim of notice ``notice_id`` if a dead process held it (its token begins with that
    process's ``mark``, `newsletter.delivery.ledger.holder_mark`), so that it is claimed again at once; commits.
    Returns 1 if ended, else 0. The row stays ``sending`` under its token until then, as when a claim runs out.
    Only the caller knows the holder is dead (a worker's main process that saw its pool process die)."""
    return end_leases_held_by(session, Notice, NoticeStatus.SENDING, [notice_id], mark, now)


def _finish(session: Session, notice_id: int, token: str, now: datetime, status: NoticeStatus, **values: Any) -> bool:
    """Record an attempt's outcome, if ``token`` still holds the claim; commits. True when recorded."""
    done = session.execute(
        update(Notice)
        .where(Notice.id == notice_id, Notice.claim_token == token, Notice.status == NoticeStatus.SENDING)
        .values(status=status, claimed_until=None, claim_token=None, updated_at=now, **values)
        .returning(Notice.id)
        .execution_options(synchronize_session=False)
    ).first()
    session.commit()
    return done is not None


def _unwanted(session: Session, notice: Notice) -> str | None:
    """Why ``notice`` should not be sent any more (None: send it)."""
    suppressed = session.scalar(select(Suppression.reason).where(Suppression.email == notice.email, Suppression.reason != "unsubscribe"))
    if suppressed is not None:
        return f"the address is suppressed ({suppressed})"
    if notice.subscriber_id is None:
        return None
    status = session.scalar(select(Subscriber.status).where(Subscriber.id == notice.subscriber_id))
    if status is None or status == SubscriberStatus.ERASED:
        return "the subscriber was erased"
    if status in (SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED):
        return f"the subscriber {status}"
    if notice.kind == "confirm" and status == SubscriberStatus.ACTIVE:
        return "the subscriber confirmed already"
    return None


def send_queued(
    session: Session,
    settings: Settings,
    notice_id: int,
    *,
    mailer: Mailer | None = None,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> str:
    """Claim notice ``notice_id`` and try to send it once; commits. Returns the outcome: ``sent``,
    ``deferred`` (transient failure, queued again for ``next_attempt_at``), ``failed`` (permanent
    failure, the last attempt, or expired), ``skipped`` (no longer wanted), or ``not-claimed`` (not due,
    already final, or another worker holds it: nothing was done). Never raises for a failed send.

    May run more than once for the same id (a task redelivered, a sweep and a hand-off at once): safe,
    because only the claim's winner sends.
    """
    now = now or utcnow()
    token = claim(session, settings, notice_id, now)
    if token is None:
        return "not-claimed"
    notice = session.get_one(Notice, notice_id, populate_existing=True)
    if notice.expires_at <= now:
        _finish(session, notice_id, token, now, NoticeStatus.FAILED, last_error="expired before it could be sent")
        log.warning("%s notice id %s expired unsent", notice.kind, notice_id)
        return "failed"
    if reason := _unwanted(session, notice):
        _finish(session, notice_id, token, now, NoticeStatus.SKIPPED, last_error=reason)
        return "skipped"
    context = dict(notice.context or {})
    try:
        deliver_notice(settings, notice.kind, notice.email, notice.name, notice.lang, mailer=mailer, **context)
    except (TemporaryDeliveryError, OSError) as exc:  # OSError: the outbox could not be written (disk full)
        error = exc if isinstance(exc, DeliveryError) else TemporaryDeliveryError(f"{type(exc).__name__}: {exc}")
        when = next_attempt(settings.retry, notice.attempts, notice.created_at, now, rng)
        if when is None or when >= notice.expires_at:
            tries = f"{notice.attempts} attempt{'s' if notice.attempts > 1 else ''}"
            _finish(session, notice_id, token, now, NoticeStatus.FAILED, last_error=f"gave up after {tries}: {error}",
                    last_smtp_code=error.smtp_code, next_attempt_at=None)  # fmt: skip
            log.warning("%s notice id %s failed after %s: %s", notice.kind, notice_id, tries, error)
            return "failed"
        _finish(session, notice_id, token, now, NoticeStatus.QUEUED, last_error=str(error), last_smtp_code=error.smtp_code,
                next_attempt_at=when)  # fmt: skip
        log.info("%s notice id %s deferred until %s: %s", notice.kind, notice_id, when.isoformat(), error)
        return "deferred"
    except PermanentDeliveryError as exc:
        _finish(
            session, notice_id, token, now, NoticeStatus.FAILED, last_error=str(exc), last_smtp_code=exc.smtp_code, next_attempt_at=None
        )
        log.warning("%s notice id %s failed: %s", notice.kind, notice_id, exc)
        return "failed"
    except Exception as exc:  # a broken template or translation: retrying cannot mend it, and it must not stay claimed
        log.exception("%s notice id %s cannot be rendered", notice.kind, notice_id)
        _finish(session, notice_id, token, now, NoticeStatus.FAILED, last_error=f"{type(exc).__name__}: {exc}", next_attempt_at=None)
        return "failed"
    _finish(session, notice_id, token, now, NoticeStatus.SENT, sent_at=now, last_error=None, next_attempt_at=None)
    return "sent"


def due(session: Session, now: datetime | None = None, limit: int = DUE_BATCH) -> list[int]:
    """Ids of notices a sweep should send (or hand on) now, oldest first: queued retries that are due, first
    attempts whose hand-off was lost (never handed on, queued over `DISPATCH_GRACE` ago), and claims whose
    lease expired; each only if it was not handed to the broker since it became due (``enqueued_at``), unless
    that hand-off is older than `REHANDOFF_AFTER` and still unclaimed (the broker lost it). So beat, which
    runs every ``NEWSLETTER_SWEEP_INTERVAL``, enqueues a notice once however long the workers take to get to
    it (call `mark_enqueued` with what was handed on)."""
    now = now or utcnow()
    stale = Notice.enqueued_at < now - REHANDOFF_AFTER
    never = Notice.enqueued_at.is_(None)
    first_lost = and_(never, or_(Notice.attempts > 0, Notice.created_at <= now - DISPATCH_GRACE))
    retry = and_(
        Notice.status == NoticeStatus.QUEUED,
        Notice.next_attempt_at <= now,
        or_(first_lost, Notice.enqueued_at < Notice.next_attempt_at, stale),
    )
    expired_claim = and_(
        Notice.status == NoticeStatus.SENDING, Notice.claimed_until < now, or_(never, Notice.enqueued_at < Notice.claimed_until, stale)
    )
    return list(session.scalars(select(Notice.id).where(or_(retry, expired_claim)).order_by(Notice.id).limit(limit)))


def mark_enqueued(session: Session, ids: Sequence[int], now: datetime | None = None) -> None:
    """Note that a send task for each of ``ids`` was handed to the broker (see `due`); commits. Leaves
    ``updated_at`` alone: a hand-off is no change of the notice."""
    if ids:
        session.execute(
            update(Notice).where(Notice.id.in_(list(ids))).values(enqueued_at=now or utcnow()).execution_options(synchronize_session=False)
        )
        session.commit()


def send_many(settings: Settings, session: Session, ids: Iterable[int], now: datetime | None = None) -> Counter[str]:
    """`send_queued` each of ``ids`` in this process over one mailer connection; outcomes counted."""
    outcomes: Counter[str] = Counter()
    mailer: Mailer | None = None
    try:
        for notice_id in ids:
            if mailer is None:
                mailer = default_mailer(settings)
            outcomes[send_queued(session, settings, notice_id, mailer=mailer, now=now)] += 1
    finally:
        if mailer is not None:
            mailer.close()
    return outcomes


def retry_now(session: Session, now: datetime | None = None) -> int:
    """Make every queued retry due at ``now`` (default: the current time), e.g. once the relay that deferred
    them is fixed, so they need not wait out their backoff; attempts still count towards the limit. Commits.
    Returns how many were moved."""
    moved = session.execute(
        update(Notice).where(Notice.status == NoticeStatus.QUEUED, Notice.attempts > 0).values(next_attempt_at=now or utcnow())
    ).rowcount
    session.commit()
    return int(moved or 0)


def send_due(session: Session, settings: Settings, now: datetime | None = None) -> Counter[str]:
    """The embedded mode's sweep of notices (no beat runs there): send every `due` notice here."""
    return send_many(settings, session, due(session, now), now)


# The embedded mode's retry timer per database URL: (when it fires, the timer).
_timers: dict[str, tuple[datetime, threading.Timer]] = {}
_timers_lock = threading.Lock()


def _arm_retry(settings: Settings, session: Session) -> None:
    """Without a broker no beat runs: wake this process when the earliest deferred notice is due (a daemon
    timer, one per database, moved earlier when a new retry is due sooner). If the process ends first, the
    row waits for the next sweep (`newsletter sweep`, a followed publish, the next notice handed on)."""
    earliest = session.scalar(select(func.min(Notice.next_attempt_at)).where(Notice.status == NoticeStatus.QUEUED, Notice.attempts > 0))
    if earliest is None:
        return
    when = max(earliest, utcnow()) + timedelta(seconds=1)
    with _timers_lock:
        current = _timers.get(settings.database_url)
        if current is not None and current[1].is_alive() and current[0] <= when:
            return
        if current is not None:
            current[1].cancel()
        timer = threading.Timer((when - utcnow()).total_seconds(), _retry_due, args=(settings,))
        timer.daemon = True
        _timers[settings.database_url] = (when, timer)
        timer.start()


def stop_retry_timers() -> None:
    """Cancel this process's retry timers (tests, shutdown); the rows stay queued for the next sweep."""
    with _timers_lock:
        for _when, timer in _timers.values():
            timer.cancel()
        _timers.clear()


def _retry_due(settings: Settings) -> None:
    from newsletter.db import session_factory

    with _timers_lock:
        current = _timers.get(settings.database_url)
        if current is not None and current[1] is threading.current_thread():  # not a newer timer armed meanwhile
            del _timers[settings.database_url]
    try:
        with session_factory(settings.database_url)() as session:
            send_due(session, settings)
            _arm_retry(settings, session)
    except Exception as exc:  # the database went away: the rows wait for the next sweep
        log.warning("due notices not retried (%s); the next sweep sends them", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def dispatch(settings: Settings, ids: Sequence[int]) -> None:
    """Hand committed notices on, after the response (a web request) or the change (the CLI): with a
    broker one task each (``tasks.notices``), else sent in this process, followed by any other notice that
    is due (a retry: no beat runs in the embedded mode; a timer wakes this process for the next one).
    Never raises: whatever fails here, the rows are queued and the sweeper sends them."""
    from newsletter.db import session_factory

    try:
        if settings.embedded:
            with session_factory(settings.database_url)() as session:
                send_many(settings, session, ids)
                send_due(session, settings)
                _arm_retry(settings, session)
            return
        from tasks.app import is_broker_error, use_settings  # Celery lives at the edge
        from tasks.notices import enqueue_notice

        use_settings(settings)
        handed: list[int] = []
        try:
            for notice_id in ids:
                enqueue_notice(notice_id)
                handed.append(notice_id)
        except Exception as exc:
            if not is_broker_error(exc):
                raise
            # An outage, not a bug: one line, no traceback per sign-up; beat enqueues them once the broker is back.
            log.warning("notices %s not handed on, the broker is away (%s); the sweeper sends them", list(ids), str(exc).splitlines()[0])
        finally:
            if handed:  # so that beat does not hand them on again while they wait for a worker
                with session_factory(settings.database_url)() as session:
                    mark_enqueued(session, handed)
    except Exception:
        log.exception("notices %s not handed on; the sweeper sends them", list(ids))


def counts(session: Session) -> dict[tuple[str, str], int]:
    """Notices by ``(status, kind)``."""
    rows = session.execute(select(Notice.status, Notice.kind, func.count()).group_by(Notice.status, Notice.kind))
    return {(str(status), kind): n for status, kind, n in rows}


def of_subscriber(session: Session, subscriber_id: int, limit: int = 10) -> list[Notice]:
    """A subscriber's latest notices, newest first."""
    query = select(Notice).where(Notice.subscriber_id == subscriber_id).order_by(Notice.id.desc()).limit(limit)
    return list(session.scalars(query))


def listing(session: Session, statuses: Sequence[NoticeStatus] | None = None, limit: int = 100) -> list[Notice]:
    """Notices in ``statuses`` (default: queued, sending or failed: what a person may need to look at), newest first."""
    statuses = statuses or (NoticeStatus.QUEUED, NoticeStatus.SENDING, NoticeStatus.FAILED)
    query = select(Notice).where(Notice.status.in_(list(statuses))).order_by(Notice.id.desc()).limit(limit)
    return list(session.scalars(query))


def status_counts(session: Session, ids: Sequence[int]) -> dict[str, int]:
    """How many of the notices ``ids`` are in each status (``{"sent": 3, "queued": 1}``)."""
    found: Counter[str] = Counter()
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        for status, n in session.execute(select(Notice.status, func.count()).where(Notice.id.in_(chunk)).group_by(Notice.status)):
            found[str(status)] += n
    return dict(found)

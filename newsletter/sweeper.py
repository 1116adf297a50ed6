"""The periodic sweeper: fires due schedules, re-enqueues what is due, finishes issues that are done.

Losing Redis loses no delivery: the ledger knows what is pending, and the sweeper rebuilds the queue.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter import logs
from newsletter.config import Settings
from newsletter.delivery import breaker, ledger
from newsletter.models import FINAL_DELIVERY_STATES, Delivery, DeliveryStatus, Issue, IssueStatus, utcnow
from newsletter.publishing import Enqueue, finish_if_done
from newsletter.scheduling import fire_due_schedules

log = logging.getLogger(__name__)


# Leases without progress after which a publish step or a queued batch counts as lost (its worker died, or the
# broker lost its message) and is enqueued again: 300 s at the default lease of 60 s, as before leases were cut
# from 300 s. A publish step heartbeats only between steps, and one of a large issue (the related index's first
# fit on a big archive, a loaded machine) can take minutes: restarting it every lease would run it twice over.
STALL_LEASES = 5


def stall_seconds(settings: Settings) -> float:
    """Seconds without progress after which the sweeper takes a publish step or a queued batch for lost."""
    return STALL_LEASES * settings.lease_seconds


@dataclass
class SweepResult:
    """What one sweep did: batches enqueued per issue, and issues finished."""

    enqueued: dict[int, int] = field(default_factory=dict)
    finished: list[int] = field(default_factory=list)
    fired: list[int] = field(default_factory=list)
    cancelled_leftovers: int = 0
    auto_paused: list[int] = field(default_factory=list)
    restarted: list[int] = field(default_factory=list)
    exhausted: int = 0  # expired claims failed because their last allowed attempt was used


def sweep(
    session: Session,
    settings: Settings,
    enqueue: Enqueue,
    now: datetime | None = None,
    requeue_after: float | None = None,
    start: Callable[[int], None] | None = None,
) -> SweepResult:
    """Fire due schedules (handing each fired issue id to ``start``), re-enqueue what is due (retries,
    expired claims, lost broker messages) and finish done issues.

    Only issues in ``sending`` are swept, so rows still being planned are left to the planner.
    Safe to run from several processes at once: a delivery enqueued twice is claimed once.
    """
    now = now or utcnow()
    requeue_after = stall_seconds(settings) if requeue_after is None else requeue_after
    result = SweepResult()
    if start is not None:
        for issue_id in fire_due_schedules(session, now):
            try:
                start(issue_id)
            except Exception:  # the pipeline marked the issue failed with the reason; keep sweeping
                log.exception("scheduled %s failed to start", logs.issue_name(session, issue_id), extra={"issue_id": issue_id})
            result.fired.append(issue_id)
    if start is not None:
        result.restarted = restart_stalled_pipelines(session, now, requeue_after, start)
    result.auto_paused = auto_pause_failing(session, settings)
    result.exhausted = ledger.fail_exhausted_claims(session, now, settings.retry.max_attempts, settings.lease_seconds)
    sending = set(session.scalars(select(Issue.id).where(Issue.status == IssueStatus.SENDING)))
    due: dict[int, list[int]] = defaultdict(list)
    for issue_id, delivery_id in ledger.due_for_enqueue(session, now, requeue_after, lease_seconds=settings.lease_seconds):
        if issue_id in sending:
            due[issue_id].append(delivery_id)
    for issue_id, ids in due.items():
        ledger.mark_enqueued(session, ids, now)
        session.commit()
        batches = [ids[i : i + settings.batch_size] for i in range(0, len(ids), settings.batch_size)]
        for batch in batches:
            enqueue(issue_id, batch)
        result.enqueued[issue_id] = len(batches)
    for issue_id in sending:
        if finish_if_done(session, issue_id):
            result.finished.append(issue_id)
    result.cancelled_leftovers = skip_cancelled_leftovers(session, now)
    return result


def next_due_in(session: Session, now: datetime | None = None) -> timedelta | None:
    """Time until the earliest deferred delivery is due (None when nothing is deferred)."""
    now = now or utcnow()
    earliest = session.scalar(select(func.min(Delivery.next_attempt_at)).where(Delivery.status == DeliveryStatus.DEFERRED))
    return None if earliest is None else max(earliest - now, timedelta(0))


def skip_cancelled_leftovers(session: Session, now: datetime) -> int:
    """Skip what a cancel could not reach: deliveries of cancelled issues that were claimed at the moment
    of the cancel and came back ``deferred``, or whose claim expired. Commits; returns the count."""
    cancelled = select(Issue.id).where(Issue.status == IssueStatus.CANCELLED)
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.issue_id.in_(cancelled),
            or_(
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]),
                and_(Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_until < now),
            ),
        )
        .values(status=DeliveryStatus.SKIPPED, skip_reason="cancelled", claimed_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def first_failures_limit(settings: Settings) -> int:
    """K of the small-list rule: pause once a relay's first K final answers for an issue were all
    permanent failures (``NEWSLETTER_PAUSE_AFTER_FIRST_FAILURES``, never above
    ``NEWSLETTER_PAUSE_AFTER_FAILURES``; 0 when either is 0, i.e. auto-pause is off)."""
    if settings.pause_after_failures <= 0 or settings.pause_after_first_failures <= 0:
        return 0
    return min(settings.pause_after_first_failures, settings.pause_after_failures)


@dataclass
class _Counts:
    """One issue's deliveries: failed, sent and open in all, and per relay (failed, accepted)."""

    failed: int = 0
    sent: int = 0
    open: int = 0
    relays: dict[str, tuple[int, int]] = field(default_factory=dict)


def _counts(session: Session, issue_ids: Select[tuple[int]] | list[int]) -> dict[int, _Counts]:
    failed = func.count().filter(Delivery.status == DeliveryStatus.FAILED)
    sent = func.count().filter(Delivery.status == DeliveryStatus.SENT)
    accepted = func.count().filter(Delivery.status.in_(breaker.ACCEPTED_STATES))
    still_open = func.count().filter(Delivery.status.not_in(FINAL_DELIVERY_STATES))
    out: dict[int, _Counts] = {}
    for issue_id, relay, n_failed, n_sent, n_accepted, n_open in session.execute(
        select(Delivery.issue_id, Delivery.relay, failed, sent, accepted, still_open)
        .where(Delivery.issue_id.in_(issue_ids))
        .group_by(Delivery.issue_id, Delivery.relay)
    ):
        c = out.setdefault(issue_id, _Counts())
        c.failed, c.sent, c.open = c.failed + n_failed, c.sent + n_sent, c.open + n_open
        if relay is not None:
            c.relays[relay] = (n_failed, n_accepted)
    return out


def _pause_for(session: Session, settings: Settings, issue_id: int, c: _Counts) -> bool:
    """Apply the two auto-pause rules to one issue's counts; True if this call paused it."""
    limit = first_failures_limit(settings)
    if limit and c.open:
        # A relay that refused its first K recipients and accepted none refuses everyone: pause before it
        # gets through a small list (the threshold rule below needs 50 failures).
        for relay, (n_failed, n_accepted) in sorted(c.relays.items()):
            if n_accepted == 0 and n_failed >= limit:
                return _pause(session, issue_id, n_failed, c.sent, relay=relay)
    if settings.pause_after_failures > 0 and c.failed >= settings.pause_after_failures and c.failed > c.sent:
        return _pause(session, issue_id, c.failed, c.sent)
    return False


def auto_pause_failing(session: Session, settings: Settings) -> list[int]:
    """Pause every issue under way whose permanent failures reach ``settings.pause_after_failures`` and
    outnumber its sent messages — a relay refusing everything, not a few dead addresses — or one of
    whose relays refused its first `first_failures_limit` recipients and accepted none (the same on a
    small list, which never reaches 50 failures), instead of burning the whole list against it. The
    reason goes into ``Issue.error``; `resume` continues. Commits. Returns the ids paused. (The sender
    applies the same rules during a batch: `pause_if_failing`.)
    """
    if settings.pause_after_failures <= 0:
        return []
    under_way = select(Issue.id).where(Issue.status.in_([IssueStatus.PUBLISHING, IssueStatus.SENDING]))
    return [issue_id for issue_id, c in _counts(session, under_way).items() if _pause_for(session, settings, issue_id, c)]


def pause_if_failing(session: Session, settings: Settings, issue_id: int) -> bool:
    """`auto_pause_failing` for one issue, as the sender checks it during a batch that sees more
    failures than messages sent: the pause then holds back what is not yet sent even when the whole
    issue would otherwise finish between two sweeps. Pauses only while deliveries are still open (a
    finished issue is reported as it ended, see `publishing.finish_if_done`). Commits; True if paused.
    """
    if settings.pause_after_failures <= 0:
        return False
    c = _counts(session, [issue_id]).get(issue_id)
    if c is None or not c.open:
        session.commit()  # end the read transaction
        return False
    return _pause_for(session, settings, issue_id, c)


def _pause(session: Session, issue_id: int, n_failed: int, n_sent: int, relay: str | None = None) -> bool:
    last = session.scalar(
        select(Delivery.last_error)
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.FAILED, *([Delivery.relay == relay] if relay else []))
        .order_by(Delivery.updated_at.desc())
        .limit(1)
    )
    if relay is None:
        error = f"auto-paused: {n_failed} failed vs {n_sent} sent; last error: {last}"
        if held := breaker.held_count(session, issue_id):
            error += f"; {held} refused as unknown by a relay that did not vouch for them are held, not suppressed"
    else:
        number = session.scalar(select(Issue.number).where(Issue.id == issue_id))
        held = breaker.held_count(session, issue_id)
        error = f"auto-paused: relay {relay} refused the first {n_failed} recipients and accepted none (last error: {last}); "
        if held:  # no count: messages in flight at the pause may add refusals after this line is written
            error += "no address was suppressed: those refused as unknown are held; "
        error += f"check the relay (credentials, recipient verification), then 'newsletter issue resume {number}'"
        error += " sends the held ones and the rest" if held else " sends the rest"
        if n_failed > held:  # no count either: "the other 7 failed" stood beside a status of 12 failed
            error += f", and then 'newsletter issue requeue {number}' the ones that failed ('newsletter issue status {number}' counts them)"
    won = session.execute(
        update(Issue)
        .where(Issue.id == issue_id, Issue.status.in_([IssueStatus.PUBLISHING, IssueStatus.SENDING]))
        .values(status=IssueStatus.PAUSED, error=error[:4000])
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if won:
        log.warning("%s %s", logs.issue_name(session, issue_id), error, extra={"issue_id": issue_id})
    return bool(won)


def restart_stalled_pipelines(session: Session, now: datetime, stale_after: float, start: Callable[[int], None]) -> list[int]:
    """Enqueue the publish pipeline again for every ``publishing`` issue whose heartbeat is older than
    ``stale_after`` seconds: its worker died and its broker message is gone (or waits out Redis's
    visibility timeout). Every step is idempotent, so a pipeline run twice does no harm; one
    conditional UPDATE per issue makes sure that two sweepers restart it once. Returns the ids."""
    stale = now - timedelta(seconds=stale_after)
    is_stale = and_(Issue.status == IssueStatus.PUBLISHING, or_(Issue.pipeline_heartbeat_at.is_(None), Issue.pipeline_heartbeat_at < stale))
    restarted = []
    for issue_id in session.scalars(select(Issue.id).where(is_stale)).all():
        won = session.execute(
            update(Issue)
            .where(Issue.id == issue_id, is_stale)
            .values(pipeline_heartbeat_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
        if won:
            log.warning(
                "%s: publish pipeline stalled since before %s; restarting it",
                logs.issue_name(session, issue_id),
                stale.isoformat(),
                extra={"issue_id": issue_id},
            )
            try:
                start(issue_id)
            except Exception:  # the pipeline marked the issue failed with the reason; keep sweeping
                log.exception("%s: restart failed", logs.issue_name(session, issue_id), extra={"issue_id": issue_id})
            restarted.append(issue_id)
    return restarted

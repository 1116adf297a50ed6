"""The periodic sweeper: fires due schedules, re-enqueues what is due, finishes issues that are done.

Losing Redis loses no delivery: the ledger knows what is pending, and the sweeper rebuilds the queue.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.delivery import ledger
from newsletter.models import FINAL_DELIVERY_STATES, Delivery, DeliveryStatus, Issue, IssueStatus, utcnow
from newsletter.publishing import Enqueue, finish_if_done
from newsletter.scheduling import fire_due_schedules

log = logging.getLogger(__name__)


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
    requeue_after = settings.lease_seconds if requeue_after is None else requeue_after
    result = SweepResult()
    if start is not None:
        for issue_id in fire_due_schedules(session, now):
            try:
                start(issue_id)
            except Exception:  # the pipeline marked the issue failed with the reason; keep sweeping
                log.exception("scheduled issue id %s failed to start", issue_id)
            result.fired.append(issue_id)
    if start is not None:
        result.restarted = restart_stalled_pipelines(session, now, requeue_after, start)
    result.auto_paused = auto_pause_failing(session, settings)
    result.exhausted = ledger.fail_exhausted_claims(session, now, settings.retry.max_attempts)
    sending = set(session.scalars(select(Issue.id).where(Issue.status == IssueStatus.SENDING)))
    due: dict[int, list[int]] = defaultdict(list)
    for issue_id, delivery_id in ledger.due_for_enqueue(session, now, requeue_after):
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


def auto_pause_failing(session: Session, settings: Settings) -> list[int]:
    """Pause every issue under way whose permanent failures reach ``settings.pause_after_failures`` and
    outnumber its sent messages — a relay refusing everything, not a few dead addresses — instead of
    burning the whole list against it. The reason goes into ``Issue.error``; `resume` continues. Commits.
    Returns the ids paused. (The sender applies the same rule during a batch: `pause_if_failing`.)
    """
    if settings.pause_after_failures <= 0:
        return []
    failed = func.count().filter(Delivery.status == DeliveryStatus.FAILED)
    sent = func.count().filter(Delivery.status == DeliveryStatus.SENT)
    rows = session.execute(
        select(Delivery.issue_id, failed, sent)
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Issue.status.in_([IssueStatus.PUBLISHING, IssueStatus.SENDING]))
        .group_by(Delivery.issue_id)
    ).all()
    return [
        issue_id
        for issue_id, n_failed, n_sent in rows
        if n_failed >= settings.pause_after_failures and n_failed > n_sent and _pause(session, issue_id, n_failed, n_sent)
    ]


def pause_if_failing(session: Session, settings: Settings, issue_id: int) -> bool:
    """`auto_pause_failing` for one issue, as the sender checks it during a batch that sees more
    failures than messages sent: the pause then holds back what is not yet sent even when the whole
    issue would otherwise finish between two sweeps. Pauses only while deliveries are still open (a
    finished issue is reported as it ended, see `publishing.finish_if_done`). Commits; True if paused.
    """
    if settings.pause_after_failures <= 0:
        return False
    n_failed, n_sent, n_open = session.execute(
        select(
            func.count().filter(Delivery.status == DeliveryStatus.FAILED),
            func.count().filter(Delivery.status == DeliveryStatus.SENT),
            func.count().filter(Delivery.status.not_in(FINAL_DELIVERY_STATES)),
        ).where(Delivery.issue_id == issue_id)
    ).one()
    if n_failed >= settings.pause_after_failures and n_failed > n_sent and n_open:
        return _pause(session, issue_id, n_failed, n_sent)
    return False


def _pause(session: Session, issue_id: int, n_failed: int, n_sent: int) -> bool:
    last = session.scalar(
        select(Delivery.last_error)
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.FAILED)
        .order_by(Delivery.updated_at.desc())
        .limit(1)
    )
    won = session.execute(
        update(Issue)
        .where(Issue.id == issue_id, Issue.status.in_([IssueStatus.PUBLISHING, IssueStatus.SENDING]))
        .values(status=IssueStatus.PAUSED, error=f"auto-paused: {n_failed} failed vs {n_sent} sent; last error: {last}")
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if won:
        log.warning("issue id %s auto-paused: %s failed vs %s sent", issue_id, n_failed, n_sent)
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
            log.warning("issue id %s: publish pipeline stalled since before %s; restarting it", issue_id, stale.isoformat())
            try:
                start(issue_id)
            except Exception:  # the pipeline marked the issue failed with the reason; keep sweeping
                log.exception("issue id %s: restart failed", issue_id)
            restarted.append(issue_id)
    return restarted

"""What `issue status` shows: counts per state, language and relay, the retry queue, the last errors."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.delivery import ledger
from newsletter.models import Delivery, DeliveryStatus, Issue


@dataclass
class IssueReport:
    """What `issue status` prints: counts per (state, language) and per (relay, state), the retry
    queue (deferred deliveries: how many, the next due time, attempts so far) and the latest errors."""

    number: int
    status: str
    error: str | None
    counts: dict[tuple[str, str], int]
    last_errors: list[tuple[str, str]]
    by_relay: dict[tuple[str, str], int] = field(default_factory=dict)
    retry_queue: int = 0
    next_retry_at: datetime | None = None
    retry_attempts: dict[int, int] = field(default_factory=dict)
    claimed: int = 0
    leases_until: datetime | None = None
    scheduled_at: datetime | None = None
    skip_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_state(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (state, _lang), n in self.counts.items():
            out[state] += n
        return dict(out)


def report(session: Session, issue: Issue, errors: int = 5) -> IssueReport:
    """Counts, per-relay outcomes, the retry queue and the latest errors of an issue.

    ``claimed`` is the ``sending`` count of ``counts`` itself, not a second count: each statement reads
    the ledger afresh, and a batch claimed in between (a whole batch goes ``sending`` at once) made the
    two disagree (``sending 116`` in the table, "in flight: 17" below it).
    """
    counts = ledger.counts(session, issue.id)
    last = session.execute(
        select(Delivery.email, Delivery.last_error)
        .where(Delivery.issue_id == issue.id, Delivery.last_error.is_not(None))
        .order_by(Delivery.updated_at.desc())
        .limit(errors)
    ).all()
    relays = session.execute(
        select(Delivery.relay, Delivery.status, func.count())
        .where(Delivery.issue_id == issue.id, Delivery.relay.is_not(None))
        .group_by(Delivery.relay, Delivery.status)
    ).all()
    deferred = Delivery.status == DeliveryStatus.DEFERRED
    queue, next_at = session.execute(
        select(func.count(), func.min(Delivery.next_attempt_at)).where(Delivery.issue_id == issue.id, deferred)
    ).one()
    claimed = sum(n for (state, _lang), n in counts.items() if state == DeliveryStatus.SENDING)
    leases_until = session.scalar(
        select(func.max(Delivery.claimed_until)).where(Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.SENDING)
    )
    skips = session.execute(
        select(Delivery.skip_reason, func.count())
        .where(Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.SKIPPED)
        .group_by(Delivery.skip_reason)
    ).all()
    attempts = session.execute(
        select(Delivery.attempts, func.count()).where(Delivery.issue_id == issue.id, deferred).group_by(Delivery.attempts)
    ).all()
    return IssueReport(
        issue.number,
        str(issue.status),
        issue.error,
        counts,
        [(e, m or "") for e, m in last],
        by_relay={(r, str(st)): n for r, st, n in relays},
        retry_queue=queue or 0,
        next_retry_at=next_at,
        retry_attempts={a: n for a, n in attempts},
        claimed=claimed or 0,
        leases_until=leases_until,
        scheduled_at=issue.scheduled_at,
        skip_reasons={reason or "unknown": n for reason, n in skips},
    )

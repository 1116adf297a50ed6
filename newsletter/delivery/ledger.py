"""The delivery ledger: planning rows and atomic state changes.

Every transition is one conditional UPDATE whose WHERE clause names the state it leaves, so running
the same step twice (a redelivered task, two workers, a sweeper) changes nothing the second time.

    pending -> sending -> sent
    sending -> deferred -> sending ...   (transient failure, `next_attempt_at` set)
    sending -> failed                    (permanent, attempts exhausted, or retry window passed)
    pending|sending -> skipped           (unsubscribed or suppressed after planning)

A claim sets ``claimed_until`` (a lease). The lease value doubles as a fencing token: only the worker
whose claim is current may record the outcome; an expired lease may be claimed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.models import FINAL_DELIVERY_STATES, Delivery, DeliveryStatus, utcnow


def insert_ignore(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """INSERT delivery rows, skipping any whose (issue, subscriber) already exists. Returns rows inserted."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    stmt = (
        module.insert(Delivery)
        .on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])
        .returning(Delivery.id)  # rowcount is not reliable here on psycopg; RETURNING counts exactly
    )
    # Parameters as a list: SQLAlchemy's "insertmanyvalues" batches them into multi-row INSERTs from
    # one cached compiled statement, instead of compiling a fresh 1,000-row VALUES clause per chunk.
    return len(session.execute(stmt, list(rows)).all())


def _claimable(now: datetime) -> Any:
    return or_(
        Delivery.status == DeliveryStatus.PENDING,
        and_(Delivery.status == DeliveryStatus.DEFERRED, Delivery.next_attempt_at <= now),
        and_(Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_until < now),
    )


@dataclass(frozen=True)
class Claim:
    """A delivery this worker now holds until ``lease``."""

    id: int
    lease: datetime


def claim(session: Session, issue_id: int, ids: Sequence[int], lease_seconds: float, now: datetime | None = None) -> list[Claim]:
    """Atomically take the deliveries among ``ids`` that are due, and commit.

    One ``UPDATE … WHERE status IN (…) RETURNING id``: on PostgreSQL a concurrent claimer blocks on
    the row lock and then re-checks the WHERE clause, so two workers never hold the same delivery.
    Each claim counts as an attempt.
    """
    if not ids:
        return []
    now = now or utcnow()
    lease = now + timedelta(seconds=lease_seconds)
    stmt = (
        update(Delivery)
        .where(Delivery.issue_id == issue_id, Delivery.id.in_(list(ids)), _claimable(now))
        .values(
            status=DeliveryStatus.SENDING,
            claimed_until=lease,
            attempts=Delivery.attempts + 1,
            first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
            updated_at=now,
        )
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
    claimed = sorted(session.scalars(stmt))
    session.commit()
    return [Claim(id=i, lease=lease) for i in claimed]


def renew(session: Session, claim_: Claim, lease_seconds: float, now: datetime | None = None) -> Claim | None:
    """Make sure we still hold ``claim_`` with at least half a lease left before acting on it; commits
    when it renews. Returns the claim to use from now on, or None if another worker took it over.

    A batch is claimed at once, but its last message may be sent long after (a slow relay): without
    this, a lease could expire mid-batch, the sweeper could hand the rest to another worker, and both
    would send them. While more than half the lease is left nobody can have taken it, so fast batches
    cost no extra query.
    """
    now = now or utcnow()
    if claim_.lease - now > timedelta(seconds=lease_seconds / 2):
        return claim_
    lease = now + timedelta(seconds=lease_seconds)
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == claim_.id, Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_until == claim_.lease)
        .values(claimed_until=lease, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return Claim(id=claim_.id, lease=lease) if result.rowcount else None  # type: ignore[attr-defined]


def _finish(session: Session, claim_: Claim, values: dict[str, Any]) -> bool:
    """Apply an outcome only if our claim is still the current one; commit at once."""
    now = utcnow()
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == claim_.id, Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_until == claim_.lease)
        .values(updated_at=now, claimed_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_sent(session: Session, claim_: Claim, relay: str) -> bool:
    """sending -> sent. Returns False if the claim was lost (lease expired and taken by another)."""
    return _finish(session, claim_, {"status": DeliveryStatus.SENT, "sent_at": utcnow(), "relay": relay, "last_error": None})


def mark_deferred(session: Session, claim_: Claim, when: datetime, error: str, code: int | None, relay: str | None) -> bool:
    """sending -> deferred until ``when`` after a transient failure."""
    return _finish(
        session,
        claim_,
        {"status": DeliveryStatus.DEFERRED, "next_attempt_at": when, "last_error": error[:2000], "last_smtp_code": code, "relay": relay},
    )


def mark_failed(session: Session, claim_: Claim, error: str, code: int | None, relay: str | None) -> bool:
    """sending -> failed (permanent error, or retries exhausted). Never retried."""
    return _finish(session, claim_, {"status": DeliveryStatus.FAILED, "last_error": error[:2000], "last_smtp_code": code, "relay": relay})


def mark_skipped(session: Session, claim_: Claim, reason: str) -> bool:
    """sending -> skipped with a named reason (``unsubscribed``, ``suppressed`` ...); not an attempt."""
    return _finish(session, claim_, {"status": DeliveryStatus.SKIPPED, "skip_reason": reason, "attempts": Delivery.attempts - 1})


def release(session: Session, claims: Sequence[Claim]) -> None:
    """Give claims back unsent (sending -> pending), e.g. when the issue stopped mid-batch."""
    for c in claims:
        _finish(session, c, {"status": DeliveryStatus.PENDING, "attempts": Delivery.attempts - 1})


def mark_enqueued(session: Session, ids: Sequence[int], now: datetime | None = None) -> None:
    """Record that a send task for ``ids`` was handed to the broker (for the sweeper's bookkeeping)."""
    if ids:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(list(ids)))
            .values(enqueued_at=now or utcnow())
            .execution_options(synchronize_session=False)
        )


def due_for_enqueue(session: Session, now: datetime, requeue_after: float, limit: int = 10000) -> list[tuple[int, int]]:
    """``(issue_id, delivery_id)`` pairs whose send task must be (re-)enqueued, in id order.

    Due: a deferred row whose retry time has come and that was not enqueued since it was deferred;
    an expired claim (its worker died); and any non-final row enqueued longer than ``requeue_after``
    seconds ago without progress (its broker message was lost, e.g. Redis restarted).
    """
    stale = now - timedelta(seconds=requeue_after)
    never_or_stale = or_(Delivery.enqueued_at.is_(None), Delivery.enqueued_at < stale)
    query = (
        select(Delivery.issue_id, Delivery.id)
        .where(
            or_(
                and_(
                    Delivery.status == DeliveryStatus.DEFERRED,
                    Delivery.next_attempt_at <= now,
                    or_(never_or_stale, Delivery.enqueued_at < Delivery.next_attempt_at),
                ),
                and_(Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_until < now, never_or_stale),
                and_(Delivery.status == DeliveryStatus.PENDING, never_or_stale),
            )
        )
        .order_by(Delivery.id)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in session.execute(query)]


def count_open(session: Session, issue_id: int) -> int:
    """Deliveries of the issue that are not yet final."""
    return (
        session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.issue_id == issue_id, Delivery.status.not_in(FINAL_DELIVERY_STATES))
        )
        or 0
    )


def counts(session: Session, issue_id: int) -> dict[tuple[str, str], int]:
    """``{(status, lang): count}`` for one issue."""
    rows = session.execute(
        select(Delivery.status, Delivery.lang, func.count()).where(Delivery.issue_id == issue_id).group_by(Delivery.status, Delivery.lang)
    )
    return {(str(status), lang): n for status, lang, n in rows}

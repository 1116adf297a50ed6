"""Editor controls over an issue under way: pause, resume, cancel, requeue failed deliveries."""

from __future__ import annotations

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.delivery import breaker, ledger
from newsletter.issues import IssueStateError
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, Suppression, utcnow
from newsletter.publishing import Enqueue, finish_if_done, is_rendered, planned_ids


def pause_issue(session: Session, issue: Issue) -> None:
    """Stop sending: batches under way hand back their unsent claims within a few messages; commits.

    Raises:
        IssueError: the issue is not publishing or sending.
    """
    if issue.status == IssueStatus.PAUSED:
        # Issue.error holds why the sweeper paused it (an editor's pause leaves none); its text may already
        # say how to go on (a relay refusing everyone), so the resume hint is added only when it does not.
        why = issue.error or "paused by an editor"
        hint = "" if "issue resume" in why else f"; continue with: newsletter issue resume {issue.number}"
        raise IssueStateError(f"issue {issue.number} is already paused ({why}){hint}")
    if issue.status not in (IssueStatus.PUBLISHING, IssueStatus.SENDING):
        raise IssueStateError(f"issue {issue.number} is {issue.status}; only a publishing or sending issue can be paused")
    issue.status = IssueStatus.PAUSED
    session.commit()


def resume_issue(session: Session, settings: Settings, issue: Issue, enqueue: Enqueue) -> int:
    """Continue a paused issue exactly where it stopped; commits. Returns the batches enqueued.

    Every non-final delivery is enqueued again; sent ones are final, so nothing is sent twice, and
    the ledger's claims make a message for a delivery already in flight a no-op. Deferred deliveries are
    due at once: an editor resumes after fixing what deferred them (a relay), and should not wait out the
    backoff the old error set (their attempts still count towards ``NEWSLETTER_MAX_ATTEMPTS``). Held deliveries
    (refused as unknown by a relay that did not vouch for it, e.g. one refusing everyone, which the
    auto-pause stopped; see `newsletter.delivery.breaker`) are pending again with fresh attempts. If planning
    had not finished, the issue goes back to ``publishing`` and the caller must re-run the plan step. If
    its editions were not rendered (it was paused before its render step ended, and that step failed or is
    still running), nothing is enqueued and the caller must run the whole publish pipeline again: rendering
    hands the planned rows over (`newsletter.publishing.render_editions`).

    Raises:
        IssueError: the issue is not paused.
    """
    if issue.status != IssueStatus.PAUSED:
        raise IssueStateError(f"issue {issue.number} is {issue.status}, not paused")
    rendered = is_rendered(session, issue.id)
    issue.status = IssueStatus.SENDING if issue.planned_at and rendered else IssueStatus.PUBLISHING
    issue.error = None
    if not rendered:
        session.commit()
        return 0
    session.execute(
        update(Delivery).where(Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.DEFERRED).values(next_attempt_at=utcnow())
    )
    breaker.reopen_held(session, issue.id, enqueued_at=None)
    session.commit()
    ids = planned_ids(session, issue.id, [DeliveryStatus.PENDING, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING])
    ledger.mark_enqueued(session, ids)
    session.commit()
    batches = [ids[i : i + settings.batch_size] for i in range(0, len(ids), settings.batch_size)]
    for batch in batches:
        enqueue(issue.id, batch)
    finish_if_done(session, issue.id)
    return len(batches)


def cancel_issue(session: Session, issue: Issue) -> int:
    """Stop an issue for good: every delivery not yet sent becomes ``skipped`` (reason ``cancelled``);
    batches under way stop within a few messages. Commits. Returns the deliveries skipped now.

    Raises:
        IssueError: the issue already finished.
    """
    if issue.status in (IssueStatus.SENT, IssueStatus.CANCELLED):
        raise IssueStateError(f"issue {issue.number} is {issue.status}; it cannot be cancelled")
    issue.status = IssueStatus.CANCELLED
    issue.finished_at = utcnow()
    session.commit()
    result = session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue.id, Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]))
        .values(status=DeliveryStatus.SKIPPED, skip_reason="cancelled", updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def in_flight(session: Session, issue: Issue) -> int:
    """The issue's deliveries claimed by a batch under way (``sending``): after `cancel_issue` they are
    skipped (reason ``cancelled``) as their batches notice, not by the cancel itself."""
    return int(session.scalar(select(func.count()).where(Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.SENDING)) or 0)


def suppressed_failures(session: Session, issue: Issue) -> int:
    """The issue's failed deliveries whose address is suppressed (hard bounce, complaint, unsubscription):
    the ones `requeue_failed` leaves failed."""
    return int(
        session.scalar(
            select(func.count()).where(
                Delivery.issue_id == issue.id,
                Delivery.status == DeliveryStatus.FAILED,
                exists().where(Suppression.email == Delivery.email),
            )
        )
        or 0
    )


def requeue_failed(session: Session, settings: Settings, issue: Issue, enqueue: Enqueue) -> int:
    """Give an issue's failed deliveries another round (after fixing a relay or a template); commits.

    Failed rows become pending with their attempts reset, except those whose address has since been
    suppressed; a finished issue goes back to ``sending``. Nothing sent is touched. Returns the count.

    Raises:
        IssueError: the issue is not sending, sent or failed after planning, or its latest publish did not
            render its editions (a template error): its planned rows must never go out with no rendering, so
            only publishing it again sends them.
    """
    if issue.status not in (IssueStatus.SENDING, IssueStatus.SENT, IssueStatus.FAILED) or issue.planned_at is None:
        raise IssueStateError(f"issue {issue.number} is {issue.status}; only a planned issue's failed deliveries can be requeued")
    if not is_rendered(session, issue.id):
        raise IssueStateError(
            f"issue {issue.number} is {issue.status} and its editions were not rendered ({issue.error or 'no rendering'}); "
            f"fix the cause, then 'newsletter issue publish {issue.number}' publishes it again"
        )
    now = utcnow()
    ids = list(
        session.scalars(
            update(Delivery)
            .where(
                Delivery.issue_id == issue.id,
                Delivery.status == DeliveryStatus.FAILED,
                ~exists().where(Suppression.email == Delivery.email),
            )
            .values(status=DeliveryStatus.PENDING, attempts=0, first_attempt_at=None, next_attempt_at=None, enqueued_at=now, updated_at=now)
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        )
    )
    if ids:
        issue.status, issue.finished_at, issue.error = IssueStatus.SENDING, None, None
    session.commit()
    ids.sort()
    for start in range(0, len(ids), settings.batch_size):
        enqueue(issue.id, ids[start : start + settings.batch_size])
    return len(ids)

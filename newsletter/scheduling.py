"""Scheduled publishing: an issue that publishes itself at a set time, fired exactly once by the sweeper."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.issues import IssueError, IssueStateError
from newsletter.models import Issue, IssueStatus, utcnow
from newsletter.publishing import check_publishable, freeze_audience, start_afresh

log = logging.getLogger(__name__)


def describe_time(when: datetime, zone_name: str | None) -> str:
    """``2026-12-07 09:00 Asia/Taipei (01:00 UTC)``: a scheduled time in the zone the editor scheduled it in
    (``Issue.timezone``: a zone name or an offset such as ``+08:00``), and in UTC; just ``… UTC`` when that
    zone is UTC or unknown. The one format of every schedule message (CLI, API, admin pages)."""
    from newsletter.publishing import zone

    utc = when.astimezone(UTC)
    if not zone_name or zone_name in ("UTC", "+00:00"):
        return f"{utc:%Y-%m-%d %H:%M} UTC"
    return f"{when.astimezone(zone(zone_name)):%Y-%m-%d %H:%M} {zone_name} ({utc:%H:%M} UTC)"


def schedule_issue(session: Session, settings: Settings, issue: Issue, at: datetime, now: datetime | None = None) -> None:
    """Schedule a draft (or re-schedule a scheduled) issue to publish itself at ``at``; commits.

    The issue is checked now as for an immediate publish, and the audience is frozen when it fires.
    The zone of ``at`` is kept with the issue: its editions show their date there (`zone_name`).

    Raises:
        IssueError: ``at`` is naive, a local time its zone skips (summer time), or not in the future, or the
            issue is not a draft or scheduled.
        RenderError: an edition does not render.
    """
    if at.tzinfo is None:
        raise IssueError("the schedule time needs a timezone (e.g. 2026-12-07T09:00+08:00)", "at")
    if at.astimezone(UTC).astimezone(at.tzinfo).replace(tzinfo=None) != at.replace(tzinfo=None):
        # A wall time the clocks skip (02:30 when summer time starts at 02:00) was taken with the offset
        # before the change and published an hour later than written, shown as the time asked for.
        raise IssueError(
            f"{at:%Y-%m-%d %H:%M} does not exist in {zone_name(at)} (the clocks skip it when summer time starts): "
            "give a time after the change",
            "at",
        )
    if at <= (now or utcnow()):
        raise IssueError(f"the schedule time {at.isoformat()} is not in the future", "at")
    if issue.status not in (IssueStatus.DRAFT, IssueStatus.SCHEDULED):
        raise IssueStateError(f"issue {issue.number} is {issue.status}; only a draft can be scheduled")
    issue.timezone = zone_name(at)  # the editions' dates are shown in the zone the editor scheduled in
    check_publishable(session, settings, issue)
    issue.status = IssueStatus.SCHEDULED
    issue.scheduled_at = at
    session.commit()


def zone_name(at: datetime) -> str:
    """The zone of an aware time: its IANA key (``Asia/Taipei``) or, for a bare offset, ``+08:00``."""
    key = getattr(at.tzinfo, "key", None)
    if key:
        return str(key)
    offset = at.strftime("%z")  # "+0800"
    return f"{offset[:3]}:{offset[3:]}"


def unschedule_issue(session: Session, issue: Issue) -> None:
    """Take a scheduled issue back to draft, until it fires; commits.

    Raises:
        IssueError: the issue is not scheduled (it may have fired already).
    """
    result = session.execute(
        update(Issue)
        .where(Issue.id == issue.id, Issue.status == IssueStatus.SCHEDULED)
        .values(status=IssueStatus.DRAFT, scheduled_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if not result.rowcount:  # type: ignore[attr-defined]
        session.refresh(issue)
        raise IssueStateError(f"issue {issue.number} is {issue.status}, not scheduled")
    session.refresh(issue)


def fire_due_schedules(session: Session, now: datetime | None = None) -> list[int]:
    """Move every scheduled issue whose time has come to ``publishing``; commits. Returns their ids.

    Each issue is taken with one conditional UPDATE (``WHERE status = 'scheduled'``), so when two
    sweepers run at once (two beat processes started by mistake) exactly one of them fires it.
    """
    now = now or utcnow()
    due = list(session.scalars(select(Issue.id).where(Issue.status == IssueStatus.SCHEDULED, Issue.scheduled_at <= now)))
    fired = []
    for issue_id in due:
        won = session.execute(
            update(Issue)
            .where(Issue.id == issue_id, Issue.status == IssueStatus.SCHEDULED)
            .values(status=IssueStatus.PUBLISHING, published_at=now, error=None, pipeline_heartbeat_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
        if won:
            start_afresh(session, issue_id)  # a failed issue may have been scheduled: its old rendering must not count
            issue = session.get_one(Issue, issue_id)
            session.refresh(issue)
            freeze_audience(session, issue)
            session.commit()
            fired.append(issue_id)
            log.info("scheduled issue %s fired", issue.number)
    return fired

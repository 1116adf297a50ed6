"""The batch that makes an issue's last delivery final ends the issue at once, not the next sweep (up to
NEWSLETTER_SWEEP_INTERVAL later), also when it started before the planner moved the issue to ``sending``."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from newsletter import publishing
from newsletter.db import session_factory
from newsletter.models import Issue, IssueStatus
from tests.conftest import sqlite_draft
from tests.smtp_server import SMTPServer


@pytest.mark.parametrize("query", ["", "?connections=2"])
def test_the_last_batch_ends_the_issue_that_planning_moved_on_meanwhile(tmp_path: Path, make_settings, query: str) -> None:  # type: ignore[no-untyped-def]
    """Guard (trial report: "all sent, still sending until the next sweep"): the send task ends the issue
    after its batch (`publishing.finish_if_done` in `tasks.publish.send_batch`), on the one-connection
    and the several-connection paths, also when the batch started while the planner still had the issue
    ``publishing`` and moved it on while the batch was at the relay (its session loaded the issue first)."""
    from tasks.app import use_settings
    from tasks.publish import send_batch

    url = sqlite_draft(tmp_path / "last.db", 3)
    planner = session_factory(url)()
    flipped: list[bool] = []

    def planner_moves_on(_rcpt: str, _attempt: int) -> None:
        # The planner ends its run while the batch is at the relay: the issue is now sending.
        if not flipped:
            flipped.append(True)
            planner.execute(update(Issue).values(status=IssueStatus.SENDING))
            planner.commit()

    with SMTPServer(rcpt_fault=planner_moves_on) as smtp:
        settings = make_settings(url, SMTP_URL=smtp.url + query, REDIS_URL="")
        use_settings(settings)
        batches: list[list[int]] = []
        with session_factory(url)() as session:
            session.execute(update(Issue).values(status=IssueStatus.PUBLISHING, audience_max_subscriber_id=3))
            session.commit()
            issue_id = session.scalar(select(Issue.id))
            publishing.render_editions(session, settings, issue_id)
            publishing.plan_deliveries(session, settings, issue_id, lambda _issue, ids: batches.append(ids))
            # As when the batch runs before the planner's last UPDATE: the issue is still publishing.
            session.execute(update(Issue).values(status=IssueStatus.PUBLISHING))
            session.commit()
        [ids] = batches
        assert send_batch.apply(args=(issue_id, ids)).get() == {"busy": 0, "sent": 3}
    planner.close()
    assert flipped and smtp.recorder.recipients() == {"r0@example.org": 1, "r1@example.org": 1, "r2@example.org": 1}
    with session_factory(url)() as session:
        assert session.scalar(select(Issue.status)) == IssueStatus.SENT

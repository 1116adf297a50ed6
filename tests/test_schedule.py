"""Scheduled publishing: validation, unscheduling, and firing exactly once under concurrent sweepers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from newsletter import scheduling
from newsletter.db import session_factory
from newsletter.issues import IssueError, create_issue
from newsletter.models import Article, Issue, IssueStatus, Subscriber, utcnow


def _draft(session) -> Issue:  # type: ignore[no-untyped-def]
    now = utcnow()
    article = Article(external_id="s1", title="Grid security rules", summary="Patch in 30 days.", lang="en", published_at=now)
    session.add_all([article, Subscriber(email="ann@example.com", name="Ann", lang="en", topics=[], attributes={})])
    session.flush()
    issue = create_issue(session, [article])
    session.commit()
    return issue


def test_schedule_validates_time_and_state(session, make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url)
    issue = _draft(session)
    with pytest.raises(IssueError, match="needs a timezone"):
        scheduling.schedule_issue(session, settings, issue, datetime(2030, 1, 1, 9, 0))
    with pytest.raises(IssueError, match="not in the future"):
        scheduling.schedule_issue(session, settings, issue, utcnow() - timedelta(minutes=1))
    at = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    scheduling.schedule_issue(session, settings, issue, at)
    assert (issue.status, issue.scheduled_at) == (IssueStatus.SCHEDULED, at)
    assert scheduling.fire_due_schedules(session, now=at - timedelta(seconds=1)) == []
    scheduling.unschedule_issue(session, issue)
    assert (issue.status, issue.scheduled_at) == (IssueStatus.DRAFT, None)
    with pytest.raises(IssueError, match="not scheduled"):
        scheduling.unschedule_issue(session, issue)


def test_a_local_time_the_clocks_skip_is_refused(session, make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """Regression (trial): 02:30 on the day New York's summer time starts (02:00 -> 03:00) was accepted, shown
    as "02:30 America/New_York (07:30 UTC)" and fired at 03:30 local time. The hour repeated in autumn is a
    real time (its first occurrence) and stays accepted."""
    from zoneinfo import ZoneInfo

    settings = make_settings(db_url)
    issue = _draft(session)
    new_york = ZoneInfo("America/New_York")
    with pytest.raises(IssueError, match="2030-03-10 02:30 does not exist in America/New_York"):
        scheduling.schedule_issue(session, settings, issue, datetime(2030, 3, 10, 2, 30, tzinfo=new_york))
    assert issue.status == IssueStatus.DRAFT
    scheduling.schedule_issue(session, settings, issue, datetime(2030, 11, 3, 1, 30, tzinfo=new_york))
    assert issue.scheduled_at is not None and issue.scheduled_at.astimezone(UTC) == datetime(2030, 11, 3, 5, 30, tzinfo=UTC)
    scheduling.schedule_issue(session, settings, issue, datetime(2030, 3, 10, 3, 30, tzinfo=new_york))
    assert issue.scheduled_at.astimezone(UTC) == datetime(2030, 3, 10, 7, 30, tzinfo=UTC)


def test_due_issue_fires_once_and_freezes_its_audience(session, make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url)
    issue = _draft(session)
    at = utcnow() + timedelta(hours=1)
    scheduling.schedule_issue(session, settings, issue, at)
    assert scheduling.fire_due_schedules(session, now=at) == [issue.id]
    assert scheduling.fire_due_schedules(session, now=at) == []
    session.refresh(issue)
    assert issue.status == IssueStatus.PUBLISHING and issue.audience_max_subscriber_id is not None


def test_two_sweepers_racing_fire_a_schedule_exactly_once(pg_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(pg_url)
    factory = session_factory(pg_url)
    with factory() as session:
        issue = _draft(session)
        issue_id = issue.id
    for _round in range(15):
        with factory() as session:
            issue = session.get_one(Issue, issue_id)
            issue.status, issue.audience_max_subscriber_id = IssueStatus.DRAFT, None
            session.commit()
            at = utcnow() + timedelta(hours=1)
            scheduling.schedule_issue(session, settings, issue, at)
        barrier = threading.Barrier(2)
        fired: list[list[int]] = []

        def sweeper(barrier: threading.Barrier = barrier, at: datetime = at, fired: list[list[int]] = fired) -> None:
            with factory() as s:
                barrier.wait()
                fired.append(scheduling.fire_due_schedules(s, now=at))

        threads = [threading.Thread(target=sweeper) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(len(f) for f in fired) == [0, 1]


def test_schedule_command(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from newsletter.cli import main
    from newsletter.db import upgrade

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    for key in ("REDIS_URL", "SMTP_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("NEWSLETTER_HOME", str(tmp_path))
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "schedule-secret-key")
    monkeypatch.setenv("NEWSLETTER_BASE_URL", "https://news.example.org")
    with session_factory(url)() as session:
        _draft(session)
    runner = CliRunner()
    naive = runner.invoke(main, ["issue", "schedule", "1", "--at", "2030-01-01T09:00"])
    assert naive.exit_code == 2 and "give an offset" in naive.output
    ok = runner.invoke(main, ["issue", "schedule", "1", "--at", "2030-01-01T09:00", "--tz", "Asia/Shanghai"])
    assert ok.exit_code == 0, ok.output
    # One format for every schedule message (it said "2030-01-01T09:00:00+08:00 (2030-01-01 01:00:00 UTC)" here)
    assert "issue 1 scheduled for 2030-01-01 09:00 Asia/Shanghai (01:00 UTC)\n" in ok.output, ok.output
    # The list and the status show it in the editor's zone too (they said only "01:00 UTC").
    assert "at 2030-01-01 09:00 Asia/Shanghai (01:00 UTC)" in runner.invoke(main, ["issue", "list"]).output
    assert "scheduled for 2030-01-01 09:00 Asia/Shanghai (01:00 UTC)" in runner.invoke(main, ["issue", "status", "1"]).output
    both = runner.invoke(main, ["issue", "schedule", "1", "--at", "2030-01-01T09:00+08:00", "--tz", "Asia/Tokyo"])
    assert both.exit_code == 2 and "not both" in both.output
    with session_factory(url)() as session:
        assert session.scalar(select(Issue.scheduled_at)) == datetime(2030, 1, 1, 1, 0, tzinfo=UTC)
    assert runner.invoke(main, ["issue", "unschedule", "1"]).exit_code == 0

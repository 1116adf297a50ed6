"""Planning runs at the same time as related -> render (`tasks.publish.publish_pipeline`): whichever finishes
second hands the planned rows to the send queue, under the issue's row lock. Messages are counted at the
receiving SMTP server (aiosmtpd): every row exactly once in both finish orders, nothing for an issue whose
rendering failed (until it is published again), a crash between marking rows enqueued and enqueueing them
recovered by the sweeper, and the embedded default (SQLite, in-process) unchanged.

The finish order is forced with PostgreSQL's own locks, taken by the test on a connection of its own after
the worker is ready: ``related_index`` locked keeps the related step (hence rendering) waiting before it
takes any lock of the issue, so planning finishes first; ``subscribers`` locked keeps planning waiting at its
first range, so rendering finishes first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, func, insert, select, text, update
from sqlalchemy.engine import Connection

from newsletter import publishing, sweeper
from newsletter.config import Settings
from newsletter.db import normalise_url, session_factory
from newsletter.delivery.mailers import SmtpMailer
from newsletter.delivery.send import send_batch
from newsletter.issues import IssueStateError, create_issue, require_editable
from newsletter.models import Article, Delivery, Edition, Issue, IssueStatus, Subscriber, utcnow
from tests.smtp_server import SMTPServer
from tests.test_integration_worker import start_worker

N = 60  # subscribers; with NEWSLETTER_PLAN_CHUNK=10 planning commits and hands over 6 ranges


def address(i: int) -> str:
    return f"reader{i:02d}@example.org"


def make_issue(url: str) -> int:
    """Two English articles (one to be the other's related pick) and ``N`` active subscribers; a draft issue
    of the newer article. Returns the issue's number."""
    with session_factory(url)() as session:
        older = Article(external_id="o1", title="Grid operators patch control systems", summary="Patching.", lang="en",
                        body_text="Grid operators patch control systems after the security rules.",
                        published_at=datetime(2026, 11, 1, tzinfo=UTC))  # fmt: skip
        newer = Article(external_id="n1", title="Grid security rules tightened", summary="Rules.", lang="en",
                        body_text="Utilities must patch control systems within 30 days under the grid security rules.",
                        published_at=datetime(2026, 11, 16, tzinfo=UTC))  # fmt: skip
        session.add_all([older, newer])
        session.execute(insert(Subscriber), [{"email": address(i), "name": f"R{i}", "lang": "en", "topics": [], "attributes": {},
                                              "status": "active", "created_at": utcnow()} for i in range(N)])  # fmt: skip
        session.commit()
        from newsletter.related.store import index_articles

        index_articles(session, [older, newer])
        issue = create_issue(session, [newer])
        session.commit()
        return issue.number


def wait_for(what: str, check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def state(url: str, number: int) -> tuple[IssueStatus, bool, bool, int, int]:
    """(status, every edition rendered, planned, deliveries, deliveries handed over)."""
    with session_factory(url)() as session:
        issue = session.scalar(select(Issue).where(Issue.number == number))
        assert issue is not None
        rendered = publishing.is_rendered(session, issue.id)
        rows = session.scalar(select(func.count()).where(Delivery.issue_id == issue.id)) or 0
        handed = session.scalar(select(func.count()).where(Delivery.issue_id == issue.id, Delivery.enqueued_at.is_not(None))) or 0
        return issue.status, rendered, issue.planned_at is not None, rows, handed


@contextlib.contextmanager
def table_locked(url: str, table: str) -> Iterator[Connection]:
    """``table`` locked ACCESS EXCLUSIVE (no reads either) until the block ends."""
    engine = create_engine(normalise_url(url))
    conn = engine.connect()
    try:
        conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        yield conn
    finally:
        conn.rollback()
        conn.close()
        engine.dispose()


@pytest.fixture
def overlap_worker(pg_url: str, redis_available: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], SMTPServer]]:
    """A real ``celery worker -B -c 2`` on PostgreSQL and Redis, with an aiosmtpd relay; ready when yielded."""
    redis.Redis.from_url(redis_available).flushdb()
    with SMTPServer() as smtp:
        env = {
            "DATABASE_URL": pg_url, "REDIS_URL": redis_available, "SMTP_URL": smtp.url, "NEWSLETTER_HOME": str(tmp_path / "home"),
            "NEWSLETTER_SECRET_KEY": "overlap-secret", "NEWSLETTER_BASE_URL": "https://news.example.org",
            "NEWSLETTER_SWEEP_INTERVAL": "0.5", "NEWSLETTER_BATCH_SIZE": "7", "NEWSLETTER_PLAN_CHUNK": "10",
        }  # fmt: skip
        log = tmp_path / "worker.log"
        proc = start_worker(env, log, tmp_path / "beat-schedule")
        try:
            # Ready only after warming (which reads the related index): the test's table locks come after it.
            wait_for("the worker", lambda: b" ready." in log.read_bytes(), 120)
            yield env, smtp
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(log.read_text(errors="replace")[-4000:])


def publish(env: dict[str, str], number: int) -> int:
    from newsletter.config import load_settings
    from newsletter.runner import start_publish

    issue_id, _ = start_publish(load_settings({**os.environ, **env}), number)
    return issue_id


def wait_sent(url: str, number: int, smtp: SMTPServer) -> None:
    wait_for("the issue to end sent", lambda: state(url, number)[0] == IssueStatus.SENT, 90)
    time.sleep(1.0)  # a second sweep and any late duplicate would show at the server by now
    assert smtp.recorder.recipients() == {address(i): 1 for i in range(N)}


@pytest.mark.integration
def test_planning_first_then_rendering_hands_every_row_over_once(pg_url: str, overlap_worker: tuple[dict[str, str], SMTPServer]) -> None:
    env, smtp = overlap_worker
    number = make_issue(pg_url)
    with table_locked(pg_url, "related_index"):
        publish(env, number)
        wait_for("planning to finish", lambda: state(pg_url, number)[2])
        status, rendered, planned, rows, handed = state(pg_url, number)
        # Planned while the related step waited: nothing handed over, nothing sent, still publishing.
        assert (status, rendered, planned, rows, handed) == (IssueStatus.PUBLISHING, False, True, N, 0)
        time.sleep(1.0)  # sweeps run meanwhile (every 0.5 s): they leave a publishing issue's rows alone
        assert state(pg_url, number)[4] == 0 and smtp.recorder.recipients() == {}
    wait_sent(pg_url, number, smtp)


@pytest.mark.integration
def test_rendering_first_then_planning_streams_every_range_once(pg_url: str, overlap_worker: tuple[dict[str, str], SMTPServer]) -> None:
    from newsletter.config import load_settings
    from newsletter.issues import get_issue
    from tasks.app import use_settings
    from tasks.publish import publish_pipeline

    env, smtp = overlap_worker
    number = make_issue(pg_url)
    settings = load_settings({**os.environ, **env})
    use_settings(settings)
    with session_factory(pg_url)() as session:  # as start_publish does, before the lock: it counts the audience
        issue = get_issue(session, number)
        publishing.request_publish(session, settings, issue)
        issue_id = issue.id
    with table_locked(pg_url, "subscribers"):
        publish_pipeline(issue_id).apply_async()
        wait_for("rendering to finish", lambda: state(pg_url, number)[1])
        assert state(pg_url, number) == (IssueStatus.PUBLISHING, True, False, 0, 0)
    wait_sent(pg_url, number, smtp)


@pytest.mark.integration
def test_a_rendering_failure_after_planning_sends_nothing_until_published_again(
    pg_url: str, overlap_worker: tuple[dict[str, str], SMTPServer]
) -> None:
    from newsletter.config import load_settings
    from newsletter.runner import requeue_publish

    env, smtp = overlap_worker
    number = make_issue(pg_url)
    with table_locked(pg_url, "related_index"):
        publish(env, number)
        wait_for("planning to finish", lambda: state(pg_url, number)[2])
        with session_factory(pg_url)() as session:  # an edition no catalog exists for (as in test_pipeline_failure)
            session.execute(update(Edition).values(lang="fr"))
            session.commit()
    wait_for("the issue to fail", lambda: state(pg_url, number)[0] == IssueStatus.FAILED)
    with session_factory(pg_url)() as session:
        issue = session.scalar(select(Issue).where(Issue.number == number))
        assert issue is not None and issue.error is not None
        assert issue.error.startswith(f"newsletter.render_editions: RenderError: issue {number} edition fr:"), issue.error
        assert issue.planned_at is not None
    time.sleep(2.0)  # four sweeps
    # The rows planned meanwhile were never handed over: deleted with the failure, nothing sent, and the
    # issue can be changed again as after a failure before planning.
    assert state(pg_url, number)[3:] == (0, 0) and smtp.recorder.recipients() == {}
    with session_factory(pg_url)() as session:
        require_editable(session, session.get_one(Issue, issue.id))
        session.rollback()
    settings = load_settings({**os.environ, **env})
    with pytest.raises(IssueStateError, match="editions were not rendered"):
        requeue_publish(settings, number)
    with session_factory(pg_url)() as session:  # fixed: published again, every planned row goes out once
        session.execute(update(Edition).values(lang="en"))
        session.commit()
    publish(env, number)
    wait_sent(pg_url, number, smtp)


class Killed(BaseException):
    """The process dies here (SIGKILL): nothing after it runs, no ``except Exception`` sees it."""


def _kill(_issue_id: int, _ids: list[int]) -> None:
    raise Killed


@pytest.mark.parametrize("dies_in", ["render", "plan"])
def test_a_crash_between_marking_and_enqueueing_is_recovered_by_the_sweeper(
    db_url: str, make_settings: Callable[..., Settings], dies_in: str
) -> None:
    """``render``: rendering finishes second, marks the rows planned meanwhile enqueued and moves the issue
    to ``sending``, commits, and dies before the broker has them: the sweeper re-enqueues them once the
    issue made no progress for its stall time. ``plan``: planning dies after committing its first range
    handed over, the issue stays ``publishing``: the sweeper restarts the pipeline once its heartbeat is
    stale, then re-enqueues the range never handed over. Each message once at the server."""
    with SMTPServer() as smtp:
        settings = make_settings(db_url, NEWSLETTER_PLAN_CHUNK="10", NEWSLETTER_BATCH_SIZE="7", SMTP_URL=smtp.url)
        number = make_issue(db_url)
        factory = session_factory(db_url)
        batches: list[list[int]] = []

        def collect(_issue_id: int, ids: list[int]) -> None:
            batches.append(list(ids))

        with factory() as session:
            issue = session.scalar(select(Issue).where(Issue.number == number))
            assert issue is not None
            issue_id = issue.id
            publishing.request_publish(session, settings, issue)
            publishing.attach_related(session, settings, issue_id)
            if dies_in == "render":
                assert publishing.plan_deliveries(session, settings, issue_id, collect) == N and batches == []
                with pytest.raises(Killed):
                    publishing.render_editions(session, settings, issue_id, _kill)
                assert state(db_url, number) == (IssueStatus.SENDING, True, True, N, N)
            else:
                publishing.render_editions(session, settings, issue_id, collect)
                with pytest.raises(Killed):
                    publishing.plan_deliveries(session, settings, issue_id, _kill)
                assert state(db_url, number) == (IssueStatus.PUBLISHING, True, False, 10, 10)
        assert batches == []

        def restart(restarted_id: int) -> None:  # the pipeline again, in-process (the worker's tasks do the same)
            with factory() as own:
                publishing.attach_related(own, settings, restarted_id)
                publishing.render_editions(own, settings, restarted_id, collect)
                publishing.plan_deliveries(own, settings, restarted_id, collect)

        later = utcnow() + timedelta(seconds=sweeper.stall_seconds(settings) + 1)
        with factory() as session:
            sweeper.sweep(session, settings, collect, now=later, start=restart)
            # Every row is in the queue again. Some may be twice (the restarted planning hands its new ranges
            # over and the same sweep finds the issue still stalled): a delivery enqueued twice is claimed once.
            every = set(session.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id)))
            assert {i for b in batches for i in b} == every and len(every) == N
            for ids in batches:
                send_batch(session, settings, issue_id, ids, lambda: SmtpMailer(smtp.url, timeout=10))
            publishing.finish_if_done(session, issue_id)
        assert state(db_url, number)[0] == IssueStatus.SENT
        assert smtp.recorder.recipients() == {address(i): 1 for i in range(N)}


def test_the_embedded_default_sends_every_row_once(sqlite_url: str, make_settings: Callable[..., Settings]) -> None:
    """No broker: the canvas runs in order in this process (related, render, then plan handing over each
    range as it commits, the batches sent inside), on SQLite."""
    from newsletter.runner import follow, start_publish

    with SMTPServer() as smtp:
        settings = make_settings(sqlite_url, NEWSLETTER_PLAN_CHUNK="10", NEWSLETTER_BATCH_SIZE="7", SMTP_URL=smtp.url)
        assert settings.embedded
        number = make_issue(sqlite_url)
        issue_id, thread = start_publish(settings, number)
        assert thread is not None
        outcome = follow(settings, issue_id, timeout=120)
        thread.join(timeout=30)
        assert outcome.status == "sent" and outcome.by_state == {"sent": N}
        assert smtp.recorder.recipients() == {address(i): 1 for i in range(N)}

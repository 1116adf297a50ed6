"""Operating faults, end to end (issue 6): a relay slower than the lease, a PostgreSQL restart while
sending, Redis lost during planning or at publish, no worker listening, two publishes at once.

Real parts throughout: PostgreSQL (a private cluster this test starts with initdb/pg_ctl for the
restart, never the shared one), a private Redis, `celery -A tasks worker` and `celery -A tasks beat`
processes, the `newsletter` command, and an aiosmtpd server where duplicates and losses are counted.
Each test prints what it measured at the server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from newsletter import publishing
from newsletter.db import get_engine, session_factory, upgrade
from newsletter.issues import IssueError, create_issue
from newsletter.models import Article, Delivery, DeliveryStatus, Issue, IssueStatus, utcnow
from newsletter.runner import follow, start_publish
from tests.conftest import ROOT, unavailable
from tests.smtp_server import SMTPServer, free_port
from tests.test_faults import Fleet, RedisServer, add_subscribers, email_of

pytestmark = pytest.mark.integration

SECRET = "operations-secret-key"


def base_env(database_url: str, redis_url: str, smtp_url: str, home: Path, **extra: str) -> dict[str, str]:
    """The environment every process of a test shares (short leases and sweeps, so faults heal fast)."""
    env = {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "SMTP_URL": smtp_url, "NEWSLETTER_HOME": str(home),
        "NEWSLETTER_SECRET_KEY": SECRET, "NEWSLETTER_BASE_URL": "https://news.example.org",
        "NEWSLETTER_BACKOFF_BASE": "0.2", "NEWSLETTER_BACKOFF_CAP": "1", "NEWSLETTER_SWEEP_INTERVAL": "0.5",
        "NEWSLETTER_LEASE_SECONDS": "2",
    }  # fmt: skip
    env.update(extra)
    return env


def load(env: dict[str, str]):  # type: ignore[no-untyped-def]
    from newsletter.config import load_settings

    return load_settings(env)


def draft_issue(url: str, subscribers: int, langs: tuple[str, ...] = ("en",)) -> int:
    """``subscribers`` active subscribers and one draft issue of one English article; returns its number."""
    with session_factory(url)() as session:
        if subscribers:
            add_subscribers(session, subscribers, langs)
        article = Article(external_id=f"op{time.monotonic_ns()}", title="Grid security rules", summary="Patch in 30 days.",
                          body_html="<p>Patch.</p>", body_text="Patch.", lang="en", published_at=utcnow())  # fmt: skip
        session.add(article)
        session.flush()
        number = create_issue(session, [article]).number
        session.commit()
        return number


def measured(smtp: SMTPServer, expected: set[str]) -> tuple[int, int]:
    """``(duplicates, lost)`` counted at the server: extra copies by Message-ID, and expected recipients
    who got nothing."""
    duplicates = sum(n - 1 for n in smtp.recorder.by_message_id().values() if n > 1)
    lost = len(expected - set(smtp.recorder.recipients()))
    return duplicates, lost


def count(url: str, issue_id: int, *states: DeliveryStatus) -> int:
    """Deliveries of the issue (in ``states``, if given); -1 while the database does not answer."""
    try:
        with session_factory(url)() as session:
            query = select(func.count()).select_from(Delivery).where(Delivery.issue_id == issue_id)
            if states:
                query = query.where(Delivery.status.in_(states))
            return session.scalar(query) or 0
    except DBAPIError:
        return -1


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def follow_supervised(settings, issue_id: int, fleet: Fleet, timeout: float) -> tuple[object, int]:  # type: ignore[no-untyped-def]
    """Follow the issue to its end while restarting any worker or beat process that exited, as a process
    supervisor does (compose's ``restart: unless-stopped``, systemd's ``Restart=``). Celery's worker can
    die of its own broker-reconnection bugs when Redis vanishes ("Unrecoverable error: AttributeError
    ... 'hostname'", kombu's Redis transport); nothing of ours must depend on that process surviving.
    Returns the outcome and the number of restarts."""
    deadline = time.monotonic() + timeout
    restarts = 0
    while True:
        outcome = follow(settings, issue_id, timeout=2)
        if outcome.status in ("sent", "failed", "paused", "cancelled") or time.monotonic() > deadline:
            return outcome, restarts
        for name, proc in list(fleet.workers.items()):
            if proc.poll() is not None:
                fleet.start_worker(name)
                restarts += 1
        if fleet.beat is not None and fleet.beat.poll() is not None:
            fleet.start_beat()
            restarts += 1


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


# -- 1. a relay slower than the lease ------------------------------------------------------------------
def test_a_relay_slower_than_the_lease_sends_each_message_once(pg_url: str, redis_server: RedisServer, tmp_path: Path) -> None:
    """DATA is answered after 3 s with a 2 s lease: every claim outlives its lease on the wire. Each
    subscriber gets one message, no address is even RCPT'd twice (never in flight on two connections),
    no delivery is attempted twice, and the issue finishes."""
    total = 6  # two batches of three on four worker processes: two are free to take expired claims over
    number = draft_issue(pg_url, total)
    with SMTPServer(data_delay=3.0) as smtp:
        env = base_env(pg_url, redis_server.url, smtp.url, tmp_path / "home", SMTP_TIMEOUT="10", NEWSLETTER_BATCH_SIZE="3",
                       NEWSLETTER_MAX_ATTEMPTS="3")  # fmt: skip
        settings = load(env)
        fleet = Fleet(env, tmp_path)
        try:
            fleet.start_beat()
            fleet.start_worker("a")
            fleet.start_worker("b")
            issue_id, _ = start_publish(settings, number)
            outcome = follow(settings, issue_id, timeout=120)
        finally:
            fleet.stop_all()
        expected = {email_of(i) for i in range(total)}
        duplicates, lost = measured(smtp, expected)
        rcpt_twice = {a: n for a, n in smtp.recorder.attempts.items() if n > 1}
        print(f"\nslow relay (DATA after 3 s, lease 2 s): {len(smtp.recorder.messages)} messages for {total} subscribers; "
              f"duplicates at the server: {duplicates}, lost: {lost}, addresses in flight twice: {len(rcpt_twice)}")  # fmt: skip
    assert outcome.status == "sent", outcome
    assert (duplicates, lost, rcpt_twice) == (0, 0, {})
    with session_factory(pg_url)() as session:
        attempts = session.scalar(select(func.max(Delivery.attempts)).where(Delivery.issue_id == issue_id))
    assert attempts == 1


# -- 2. PostgreSQL restarted while sending ----------------------------------------------------------
class PostgresCluster:
    """A private PostgreSQL cluster (initdb, pg_ctl) on a free port, which the test may stop and start.

    Runs as the ``postgres`` user when the tests run as root (PostgreSQL refuses root), in a folder
    of its own under the system temp dir (pytest's tmp_path is private to root).
    """

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            unavailable("PostgreSQL server binaries are not installed (apt-get install postgresql)")
        self.bindir = Path(bins[-1]).parent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="nl-pg-"))
        self.data = self.dir / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                unavailable("runuser is needed to run PostgreSQL as the postgres user")
            shutil.chown(self.dir, user="postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._pg(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str) -> None:
        self._pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str, down: float) -> None:
        """Stop with ``mode`` (fast: connections terminated; immediate: a crash, recovery at start),
        stay down ``down`` seconds, start again."""
        self.stop(mode)
        time.sleep(down)
        self.start()

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.init()
        upgrade(cluster.url)
        yield cluster
    finally:
        get_engine(cluster.url).dispose()
        cluster.destroy()


def test_a_database_restart_mid_send_loses_and_repeats_nothing(
    private_pg: PostgresCluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    """PostgreSQL goes down for a second twice while two workers send (``-m fast``, then ``-m
    immediate``, a crash). Outcomes the relay gave meanwhile are recorded on fresh connections: 0
    duplicates, 0 lost, the issue finishes."""
    total = 240
    url = private_pg.url
    number = draft_issue(url, total)
    with SMTPServer() as smtp:
        env = base_env(url, redis_server.url, smtp.url + "?rate=40", tmp_path / "home", NEWSLETTER_BATCH_SIZE="20",
                       NEWSLETTER_LEASE_SECONDS="4")  # fmt: skip
        settings = load(env)
        fleet = Fleet(env, tmp_path)
        try:
            fleet.start_beat()
            fleet.start_worker("a")
            fleet.start_worker("b")
            issue_id, _ = start_publish(settings, number)
            wait_until(lambda: len(smtp.recorder.messages) >= 40, 60, "40 messages")
            private_pg.restart("fast", down=1.0)
            at_second = len(smtp.recorder.messages)
            wait_until(lambda: len(smtp.recorder.messages) >= at_second + 60, 60, "60 more messages")
            private_pg.restart("immediate", down=1.0)
            in_flight_after = len(smtp.recorder.messages)
            outcome = follow(settings, issue_id, timeout=180)
        finally:
            fleet.stop_all()
        duplicates, lost = measured(smtp, {email_of(i) for i in range(total)})
        print(f"\nPostgreSQL restarted (-m fast, -m immediate, 1 s down each) after {at_second} and {in_flight_after} of "
              f"{total} messages: duplicates at the server: {duplicates}, lost: {lost}")  # fmt: skip
    assert outcome.status == "sent", outcome
    assert (duplicates, lost) == (0, 0)
    assert count(url, issue_id, DeliveryStatus.SENT) == total


def test_after_a_database_restart_longer_than_the_lease_no_claim_is_taken_from_its_living_holder(
    private_pg: PostgresCluster, make_settings
) -> None:  # type: ignore[no-untyped-def]
    """Regression: with leases renewed every quarter lease, PostgreSQL down for longer than a lease left every
    claim looking expired when it came back, and a second worker could take over a claim whose message the
    relay had accepted (its holder still retrying the record, RECORD_RETRY_SECONDS) and send it again. For a
    lease after the restart no claim counts as run out: the holder renews and records; a claim nobody renews
    is taken over once that lease has passed."""
    from newsletter.delivery import ledger

    url = private_pg.url
    lease = 2.0
    settings = make_settings(url, NEWSLETTER_LEASE_SECONDS=str(lease))
    number = draft_issue(url, 4)
    factory = session_factory(url)
    with factory() as session:
        issue = session.scalar(select(Issue).where(Issue.number == number))
        assert issue is not None
        publishing.request_publish(session, settings, issue)
        publishing.attach_related(session, settings, issue.id)
        publishing.render_editions(session, settings, issue.id)
        planned: list[int] = []
        publishing.plan_deliveries(session, settings, issue.id, lambda _issue, ids: planned.extend(ids))
        issue_id = issue.id
        time.sleep(lease)  # the server has been up longer than a lease: claims can run out as usual
        living = ledger.claim(session, issue_id, planned[:3], lease)  # a worker sending; the relay took the first
        (abandoned,) = ledger.claim(session, issue_id, planned[3:], lease)  # its worker died
    private_pg.restart("fast", down=lease + 1.5)  # longer than the lease: every claim ran out while it was down
    started = time.monotonic()
    with factory() as session:
        taken = ledger.retrying(session, lambda: ledger.claim(session, issue_id, planned, lease), "take over")
        assert taken == [], "a claim was taken over right after the restart"
        assert ledger.renew(session, living, lease) == set(planned[:3])  # the holder is back: its claims are its own
        assert ledger.mark_sent(session, living[0], "relay:25")
    wait_until(lambda: time.monotonic() - started > lease + 0.5, 10, "a lease after the restart")
    with factory() as session:
        (late,) = ledger.claim(session, issue_id, [abandoned.id], lease)  # nobody renewed this one: taken over now
        assert late.token != abandoned.token
        assert ledger.mark_sent(session, abandoned, "relay:25") is False
    get_engine(url).dispose()


# -- 3. the broker lost during planning, or down at publish ------------------------------------------
def test_redis_lost_during_planning_resumes_by_itself(pg_url: str, redis_server: RedisServer, tmp_path: Path) -> None:
    """Redis is killed while the worker plans (rows partly planned, send tasks partly enqueued) and
    comes back empty 1.5 s later. The issue never ends ``failed``; planning resumes by itself (the
    sweeper restarts the stalled pipeline) and every subscriber gets one message."""
    total = 120
    number = draft_issue(pg_url, total)
    with SMTPServer() as smtp:
        env = base_env(pg_url, redis_server.url, smtp.url, tmp_path / "home", NEWSLETTER_PLAN_CHUNK="10", NEWSLETTER_BATCH_SIZE="10")
        settings = load(env)
        fleet = Fleet(env, tmp_path)
        statuses: set[str] = set()
        try:
            fleet.start_beat()
            fleet.start_worker("a")
            issue_id, _ = start_publish(settings, number)
            wait_until(lambda: count(pg_url, issue_id) > 0, 60, "planning to start", step=0.005)
            redis_server.stop()
            planned_at_kill = count(pg_url, issue_id)
            for _ in range(15):  # 1.5 s without a broker
                with session_factory(pg_url)() as session:
                    status, error = session.execute(select(Issue.status, Issue.error).where(Issue.id == issue_id)).one()
                    statuses.add(str(status) if status != IssueStatus.FAILED else f"failed: {error}")
                time.sleep(0.1)
            redis_server.start()
            outcome, restarts = follow_supervised(settings, issue_id, fleet, timeout=180)
        finally:
            fleet.stop_all()
        duplicates, lost = measured(smtp, {email_of(i) for i in range(total)})
        print(f"\nRedis killed with {planned_at_kill} of {total} deliveries planned, back after 1.5 s: issue states meanwhile "
              f"{sorted(statuses)}; Celery processes restarted by the supervisor: {restarts}; "
              f"duplicates at the server: {duplicates}, lost: {lost}")  # fmt: skip
    assert 0 < planned_at_kill < total, "the broker must go away in the middle of planning"
    assert not [s for s in statuses if s.startswith("failed")], statuses
    assert outcome.status == "sent", outcome
    assert (duplicates, lost) == (0, 0)


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = {**{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SMTP_URL", "DATABASE_URL")}, **env}
    return subprocess.run(
        [sys.executable, "-m", "newsletter.cli", *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout
    )


def test_broker_down_at_publish_and_no_worker_listening_are_one_line_each(pg_url: str, redis_server: RedisServer, tmp_path: Path) -> None:
    """``issue publish`` with Redis down: one line saying the broker is unreachable, exit 1, no
    traceback, the issue unchanged. With Redis up but no worker: within about 15 s the editor is told
    no worker has taken the work and how to start one; the work stays queued."""
    total = 5
    number = draft_issue(pg_url, total)
    with SMTPServer() as smtp:
        env = base_env(pg_url, f"redis://127.0.0.1:{free_port()}/0", smtp.url, tmp_path / "home")
        down = cli(env, "issue", "publish", str(number))
        assert down.returncode == 1, down
        assert down.stderr.count("\n") == 1 and "Traceback" not in down.stderr
        assert down.stderr.startswith("Error: cannot reach the broker at redis://127.0.0.1:")
        assert f"issue {number} was not changed" in down.stderr
        with session_factory(pg_url)() as session:
            assert session.scalar(select(Issue.status).where(Issue.number == number)) == IssueStatus.DRAFT

        env = base_env(pg_url, redis_server.url, smtp.url, tmp_path / "home")
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "newsletter.cli", "issue", "publish", str(number)], cwd=ROOT,
                                env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        errors: list[str] = []
        warned_at: list[float] = []

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                errors.append(line)
                if "no worker answers" in line and not warned_at:
                    warned_at.append(time.monotonic() - started)

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()

        def queued() -> bool:
            with session_factory(pg_url)() as session:
                return session.scalar(select(Issue.status).where(Issue.number == number)) == IssueStatus.PUBLISHING

        wait_until(lambda: queued() or proc.poll() is not None, 60, "the publish to be queued", step=0.1)
        queued_at = time.monotonic() - started
        wait_until(lambda: bool(warned_at) or proc.poll() is not None, 60, "the no-worker warning", step=0.1)
        try:
            proc.send_signal(signal.SIGINT)  # the editor stops following; the work stays queued
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(timeout=10)
        warning = "".join(errors)
        waited = (warned_at[0] if warned_at else float("inf")) - queued_at
        print(f"\nno worker: warned {waited:.1f} s after the publish was queued")
        assert "no worker answers on the broker" in warning and "celery -A tasks worker -Q render,plan,send,notices" in warning
        assert waited < 20  # STALL_WARNING_SECONDS (15) and a one-second ping
        assert proc.returncode == 130 and "stopped following; the workers go on" in warning
        with session_factory(pg_url)() as session:  # still queued for the first worker that comes
            assert session.scalar(select(Issue.status).where(Issue.number == number)) == IssueStatus.PUBLISHING
        assert smtp.recorder.messages == []


# -- 11. two publishes at once ------------------------------------------------------------------------
def test_two_publishes_at_once_exactly_one_wins(pg_url: str, redis_server: RedisServer, tmp_path: Path) -> None:
    """Released at the same instant from two connections (ten times), exactly one publish moves the
    issue; the other is told the issue is already being published. The same through two commands."""
    env = base_env(pg_url, redis_server.url, "smtp://127.0.0.1:25", tmp_path / "home")
    settings = load(env)
    wins = []
    for trial in range(10):
        number = draft_issue(pg_url, 2 if trial == 0 else 0)
        barrier = threading.Barrier(2)
        results: list[str] = []

        def publish(number: int = number, barrier: threading.Barrier = barrier, results: list[str] = results) -> None:
            with session_factory(pg_url)() as session:
                issue = session.scalar(select(Issue).where(Issue.number == number))
                barrier.wait()
                try:
                    publishing.request_publish(session, settings, issue)
                    results.append("won")
                except IssueError as exc:
                    results.append(str(exc))

        threads = [threading.Thread(target=publish) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(results, key=lambda r: r != "won")[0] == "won", results
        assert results.count("won") == 1 and f"issue {number} is already being published (publishing)" in results
        wins.append(results.count("won"))

    number = draft_issue(pg_url, 0)
    procs = [
        subprocess.Popen([sys.executable, "-m", "newsletter.cli", "issue", "publish", str(number), "--no-wait"], cwd=ROOT,
                         env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    print(f"\ntwo publishes at once: {sum(wins)} winners in {len(wins)} trials; commands exited {sorted(o[0] for o in outputs)}")
    assert sorted(o[0] for o in outputs) == [0, 1]
    won = next(o for o in outputs if o[0] == 0)
    lost = next(o for o in outputs if o[0] == 1)
    assert f"issue {number} queued" in won[1] and "no worker answers on the broker" in won[2]  # and nobody listens yet
    assert f"issue {number} is already being published" in lost[2] and "Traceback" not in lost[2]

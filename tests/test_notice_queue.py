"""The notice queue: subscription messages survive a relay outage, are retried with backoff, fail for good
on a permanent refusal, expire with their link, and are sent once however many workers claim them.

A real SMTP server (aiosmtpd, tests.smtp_server) answers 451 or 550 on demand; SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter import notice_queue
from newsletter.db import session_factory
from newsletter.erasure import erase_subscriber
from newsletter.models import Notice, Subscriber, SubscriberStatus
from newsletter.signup import SignupForm, confirm_subscription, plan_subscription
from newsletter.web import create_app
from tests.smtp_server import SMTPServer
from tests.test_signup import _csrf


class Relay:
    """An aiosmtpd relay whose RCPT answer the test switches: None accepts, else the reply line."""

    def __init__(self) -> None:
        self.reply: str | None = None
        self.server = SMTPServer(rcpt_fault=lambda _address, _attempt: self.reply)

    @property
    def recorder(self) -> Any:
        return self.server.recorder


@pytest.fixture
def relay() -> Any:
    r = Relay()
    with r.server:
        yield r
    notice_queue.stop_retry_timers()  # a deferred notice must not be retried against the next test's database


def _notices(db_url: str) -> list[Notice]:
    with session_factory(db_url)() as session:
        found = list(session.scalars(select(Notice).order_by(Notice.id)))
        session.expunge_all()
        return found


def _sign_up(session: Any, settings: Any, email: str, **form: Any) -> int:
    notice_id = plan_subscription(session, settings, SignupForm(email=email, **form))
    assert notice_id is not None
    return notice_id


def test_web_sign_up_during_a_relay_outage_is_sent_once_when_the_relay_is_back(db_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, SMTP_URL=relay.server.url)
    client = TestClient(create_app(settings), base_url="https://testserver")
    relay.reply = "451 4.3.0 try again later"
    page = client.get("/subscribe")
    done = client.post("/subscribe", data={"csrf_token": _csrf(page.text), "email": "ann@example.org", "name": "Ann"})
    assert done.status_code == 200  # the same "check your inbox" page as ever
    notice_queue.stop_retry_timers()  # this test is the sweeper (the process's own timer has a test of its own)
    # The background task tried once, the relay refused: no message, but nothing lost either.
    assert relay.recorder.messages == [] and relay.recorder.rejected["451"] == 1
    [row] = _notices(db_url)
    assert (row.kind, row.email, row.status, row.attempts, row.last_smtp_code) == ("confirm", "ann@example.org", "queued", 1, 451)
    # The first retry waits uniform(0, NEWSLETTER_BACKOFF_BASE) after the attempt (full jitter).
    assert row.next_attempt_at is not None and row.updated_at <= row.next_attempt_at <= row.updated_at + timedelta(
        seconds=settings.retry.base
    )
    assert "try again later" in (row.last_error or "")

    relay.reply = None
    with session_factory(db_url)() as session:
        later = row.next_attempt_at + timedelta(seconds=1)
        assert notice_queue.send_due(session, settings, now=later) == Counter(sent=1)
        assert notice_queue.send_due(session, settings, now=later + timedelta(hours=1)) == Counter()  # nothing left to send
    assert relay.recorder.recipients() == Counter({"ann@example.org": 1})
    [sent] = _notices(db_url)
    assert (sent.status, sent.attempts, sent.last_error, sent.sent_at) == ("sent", 2, None, later)
    # The link in the retried message works, and the welcome goes through the queue too.
    link = re.search(r"https://news\.example\.org(/confirm/\S+)", relay.recorder.messages[0].get_body(("plain",)).get_content())
    assert link is not None
    confirm_page = client.get(link.group(1))
    assert client.post(link.group(1), data={"csrf_token": _csrf(confirm_page.text)}).status_code == 200
    assert [str(m["Subject"]) for m in relay.recorder.messages][1].startswith("Welcome")
    assert [(n.kind, n.status) for n in _notices(db_url)] == [("confirm", "sent"), ("welcome", "sent")]


def test_a_permanent_refusal_fails_and_is_never_retried(db_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, SMTP_URL=relay.server.url)
    relay.reply = "550 5.1.1 no such user"
    with session_factory(db_url)() as session:
        notice_id = _sign_up(session, settings, "gone@example.org")
        assert notice_queue.send_queued(session, settings, notice_id) == "failed"
        relay.reply = None
        for hours in (1, 5, 23):  # however long the sweeper keeps running
            assert notice_queue.send_due(session, settings, now=notice_queue.utcnow() + timedelta(hours=hours)) == Counter()
        assert notice_queue.send_queued(session, settings, notice_id) == "not-claimed"
    assert relay.recorder.attempts["gone@example.org"] == 1 and relay.recorder.messages == []
    [row] = _notices(db_url)
    assert (row.status, row.attempts, row.last_smtp_code, row.next_attempt_at) == ("failed", 1, 550, None)
    assert "no such user" in (row.last_error or "")


def test_transient_failures_give_up_after_the_last_attempt(db_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, SMTP_URL=relay.server.url, NEWSLETTER_MAX_ATTEMPTS="3")
    relay.reply = "421 4.7.0 too busy"
    with session_factory(db_url)() as session:
        notice_id = _sign_up(session, settings, "busy@example.org")
        outcomes = []
        now = notice_queue.utcnow()
        for _ in range(5):
            now += timedelta(hours=1)  # past any backoff (cap 1 h), within the 24 h window
            outcomes.append(notice_queue.send_queued(session, settings, notice_id, now=now))
    assert outcomes == ["deferred", "deferred", "failed", "not-claimed", "not-claimed"]
    assert relay.recorder.attempts["busy@example.org"] == 3
    [row] = _notices(db_url)
    assert row.status == "failed" and row.attempts == 3 and (row.last_error or "").startswith("gave up after 3 attempts: 421")


def test_a_confirmation_is_not_sent_after_its_link_expired(db_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    import random

    settings = make_settings(db_url, SMTP_URL=relay.server.url, NEWSLETTER_CONFIRM_HOURS="2", NEWSLETTER_BACKOFF_CAP="86400",
                             NEWSLETTER_BACKOFF_BASE="86400")  # fmt: skip
    relay.reply = "451 4.3.0 later"
    with session_factory(db_url)() as session:
        notice_id = _sign_up(session, settings, "late@example.org")
        row = session.get_one(Notice, notice_id)
        assert row.expires_at == row.created_at + timedelta(hours=2)  # the link's own expiry (links.confirm_url)
        # The backoff draws 0.134 of a day (3.2 h, random.Random(1)): past the link's life, so no retry is planned.
        assert random.Random(1).uniform(0, 86400) > 2 * 3600
        outcome = notice_queue.send_queued(session, settings, notice_id, now=row.created_at, rng=random.Random(1))
        relay.reply = None
        assert outcome == "failed" and notice_queue.send_due(session, settings, now=row.created_at + timedelta(hours=1)) == Counter()
    [row] = _notices(db_url)
    assert (row.status, row.next_attempt_at) == ("failed", None)
    assert (row.last_error or "").startswith("gave up after 1 attempt: 451")
    assert relay.recorder.messages == []


def test_an_expired_link_is_recorded_as_such(db_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, SMTP_URL=relay.server.url, NEWSLETTER_CONFIRM_HOURS="1")
    with session_factory(db_url)() as session:
        notice_id = _sign_up(session, settings, "slow@example.org")  # the hand-off was lost; nothing tried
        created = session.get_one(Notice, notice_id).created_at
        assert notice_queue.send_due(session, settings, now=created + timedelta(hours=1, seconds=1)) == Counter(failed=1)
    [row] = _notices(db_url)
    assert (row.status, row.last_error, row.attempts) == ("failed", "expired before it could be sent", 1)
    assert relay.recorder.attempts == Counter()


def test_two_workers_claiming_at_once_send_each_notice_once(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    with SMTPServer(data_delay=0.05) as server:  # a slow relay: both claims happen while a send is under way
        settings = make_settings(db_url, SMTP_URL=server.url)
        with session_factory(db_url)() as session:
            ids = [_sign_up(session, settings, f"r{i}@example.org") for i in range(6)]
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def worker(barrier: threading.Barrier, notice_id: int) -> None:
            with session_factory(db_url)() as session:
                barrier.wait()
                outcome = notice_queue.send_queued(session, settings, notice_id)
            with lock:
                outcomes[outcome] += 1

        for notice_id in ids:
            barrier = threading.Barrier(2)
            threads = [threading.Thread(target=worker, args=(barrier, notice_id)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        assert outcomes == Counter({"sent": 6, "not-claimed": 6})
        assert server.recorder.recipients() == Counter({f"r{i}@example.org": 1 for i in range(6)})
    assert {(n.status, n.attempts) for n in _notices(db_url)} == {("sent", 1)}


def test_the_sweep_picks_up_a_notice_whose_hand_off_was_lost(db_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, SMTP_URL=relay.server.url)
    with session_factory(db_url)() as session:
        notice_id = _sign_up(session, settings, "lost@example.org")  # committed; the process "died" before the hand-off
        created = session.get_one(Notice, notice_id).created_at
        assert notice_queue.due(session, created + timedelta(seconds=5)) == []  # the hand-off may still be under way
        assert notice_queue.due(session, created + notice_queue.DISPATCH_GRACE) == [notice_id]
        # A worker that died holding the claim: once the lease expired, the sweep claims it again.
        assert notice_queue.claim(session, settings, notice_id, created) is not None
        lease = notice_queue.lease_seconds(settings)  # at least a whole send at the SMTP timeout: nothing renews it
        assert lease == max(settings.lease_seconds, notice_queue.NOTICE_SMTP_STEPS * settings.smtp_timeout)
        assert notice_queue.due(session, created + timedelta(seconds=lease - 1)) == []
        later = created + timedelta(seconds=lease + 1)
        assert notice_queue.send_due(session, settings, now=later) == Counter(sent=1)
    assert relay.recorder.recipients() == Counter({"lost@example.org": 1})


def test_a_notice_no_longer_wanted_is_skipped(db_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, SMTP_URL=relay.server.url)
    handed: list[int] = []
    with session_factory(db_url)() as session:
        first = _sign_up(session, settings, "quick@example.org")
        subscriber_id = session.scalar(select(Subscriber.id).where(Subscriber.email == "quick@example.org"))
        assert subscriber_id is not None
        # Confirmed (from a second request's link) before the first request went out: it is not sent any more.
        confirm_subscription(session, settings, subscriber_id, handoff=handed.extend)
        assert notice_queue.send_queued(session, settings, first) == "skipped"
        assert notice_queue.send_queued(session, settings, handed[0]) == "sent"
        # An erasure removes the subscriber's notices, sent or not: they hold the address and the name.
        other = _sign_up(session, settings, "forget@example.org")
        forget = session.scalar(select(Subscriber.id).where(Subscriber.email == "forget@example.org"))
        assert forget is not None and erase_subscriber(session, forget)
        assert session.get(Notice, other) is None
    assert [str(m["Subject"]).startswith("Welcome") for m in relay.recorder.messages] == [True]
    assert [(n.kind, n.status, n.last_error) for n in _notices(db_url)] == [
        ("confirm", "skipped", "the subscriber confirmed already"),
        ("welcome", "sent", None),
    ]


def test_an_active_address_gets_the_reminder_through_the_queue(db_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, SMTP_URL=relay.server.url)
    with session_factory(db_url)() as session:
        session.add(Subscriber(email="on@example.org", name="On", lang="en", topics=[], attributes={}, status=SubscriberStatus.ACTIVE))
        session.commit()
        notice_id = _sign_up(session, settings, "on@Example.ORG")
        assert notice_queue.send_queued(session, settings, notice_id) == "sent"
    [row] = _notices(db_url)
    assert (row.kind, row.status, row.subscriber_id is not None) == ("already", "sent", True)
    assert "preferences_url" in row.context


def test_failed_notices_are_shown_by_the_cli_and_counted_in_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relay: Relay) -> None:
    from newsletter.cli import main

    env = {"NEWSLETTER_HOME": str(tmp_path / "home"), "NEWSLETTER_SECRET_KEY": "cli-secret", "NEWSLETTER_BASE_URL": "https://news.example.org",
           "SMTP_URL": relay.server.url, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}  # fmt: skip
    monkeypatch.delenv("REDIS_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
    csv_path = tmp_path / "people.csv"
    csv_path.write_text("email,name,lang\nbad@example.org,Bad,en\nwait@example.org,Wait,en\nok@example.org,Ok,en\n", encoding="utf-8")
    relay.reply = None
    replies = {"bad@example.org": "550 5.1.1 unknown user", "wait@example.org": "451 4.7.1 greylisted"}
    relay.server.controller.handler.rcpt_fault = lambda address, _attempt: replies.get(address)
    result = CliRunner().invoke(main, ["subscribers", "import", "--confirm", str(csv_path)], catch_exceptions=False)
    assert result.exit_code == 0
    assert "1 confirmation request sent (1 queued for a retry, 1 failed, see `newsletter notices list`)" in result.output
    shown = CliRunner().invoke(main, ["subscribers", "show", "bad@example.org"], catch_exceptions=False).output
    assert "confirm notice to bad@example.org: failed" in shown and "after 1 attempt — 550 5.1.1 unknown user" in shown
    shown = CliRunner().invoke(main, ["subscribers", "show", "wait@example.org"], catch_exceptions=False).output
    assert "confirm notice to wait@example.org: queued, next attempt " in shown and "451 4.7.1 greylisted" in shown
    listed = CliRunner().invoke(main, ["notices", "list"], catch_exceptions=False).output
    assert listed.splitlines()[0] == "queued 1, sent 1, failed 1"
    assert len(listed.splitlines()) == 3  # the sent one is not listed without --all
    from newsletter.config import load_settings

    metrics = TestClient(create_app(load_settings())).get("/metrics").text
    assert 'newsletter_notices{kind="confirm",status="failed"} 1.0' in metrics
    assert 'newsletter_notices{kind="confirm",status="queued"} 1.0' in metrics


def _queued_tasks(client: Any, name: str) -> list[tuple[bytes, list[Any]]]:
    """``(raw message, args)`` of the task messages named ``name`` waiting in the ``notices`` queue."""
    import base64
    import json

    found = []
    for raw in client.lrange("notices", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == name:
            found.append((raw, json.loads(base64.b64decode(message["body"]))[0]))
    return found


def test_with_a_broker_the_notice_goes_to_the_notices_queue_and_the_task_sends_it(  # type: ignore[no-untyped-def]
    sqlite_url: str, make_settings, relay: Relay, redis_available: str
) -> None:
    import redis

    from tasks.app import use_settings
    from tasks.notices import enqueue_due_notices, send_notice

    settings = make_settings(sqlite_url, SMTP_URL=relay.server.url, REDIS_URL=redis_available)
    client = redis.Redis.from_url(redis_available)
    try:
        with session_factory(sqlite_url)() as session:
            notice_id = _sign_up(session, settings, "queued@example.org")
        notice_queue.dispatch(settings, [notice_id])  # what the web's background task does
        mine = [(raw, args) for raw, args in _queued_tasks(client, "newsletter.send_notice") if args == [notice_id]]
        assert len(mine) == 1 and relay.recorder.messages == []  # the web process sent nothing itself
        for raw, _ in mine:
            client.lrem("notices", 1, raw)
        assert send_notice(notice_id) == "sent"  # the task body, as a worker runs it
        assert send_notice(notice_id) == "not-claimed"  # a redelivered message sends nothing
        assert relay.recorder.recipients() == Counter({"queued@example.org": 1})
        # Beat's sweep enqueues what is due (a lost hand-off) for the workers.
        with session_factory(sqlite_url)() as session:
            lost = _sign_up(session, settings, "lost@example.org")
            session.get_one(Notice, lost).created_at -= notice_queue.DISPATCH_GRACE
            session.commit()
        assert enqueue_due_notices() == 1
        mine = [(raw, args) for raw, args in _queued_tasks(client, "newsletter.send_notice") if args == [lost]]
        assert len(mine) == 1
        for raw, _ in mine:
            client.lrem("notices", 1, raw)
    finally:
        use_settings(make_settings(sqlite_url, REDIS_URL=""))


def test_without_a_broker_the_web_process_retries_by_itself(sqlite_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    import time

    settings = make_settings(sqlite_url, SMTP_URL=relay.server.url, NEWSLETTER_BACKOFF_BASE="0.2", NEWSLETTER_BACKOFF_CAP="0.2")
    client = TestClient(create_app(settings), base_url="https://testserver")
    relay.reply = "451 4.3.0 try again later"
    assert client.post("/subscriptions", json={"email": "patient@example.org"}).status_code == 202
    assert relay.recorder.messages == [] and [n.status for n in _notices(sqlite_url)] == ["queued"]
    relay.reply = None  # no further request, no sweep: the process's own timer sends it when due
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not relay.recorder.messages:
        time.sleep(0.1)
    assert relay.recorder.recipients() == Counter({"patient@example.org": 1})
    deadline = time.monotonic() + 10  # the outcome is recorded just after the relay took it
    while time.monotonic() < deadline and _notices(sqlite_url)[0].status != "sent":
        time.sleep(0.1)
    # Sent on the first attempt after the relay came back (a slow test may see one more 451 before that).
    assert [(n.status, n.attempts) for n in _notices(sqlite_url)] == [("sent", 1 + relay.recorder.rejected["451"])]


def test_the_admin_page_of_a_subscriber_shows_a_refused_confirmation(sqlite_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    from tests.editor_setup import make_site, sign_in

    site = make_site(make_settings(sqlite_url, SMTP_URL=relay.server.url))
    relay.reply = "550 5.1.1 mailbox unavailable"
    assert site.client.post("/subscriptions", json={"email": "nobody@example.org"}).status_code == 202
    with session_factory(sqlite_url)() as session:
        subscriber_id = session.scalar(select(Subscriber.id).where(Subscriber.email == "nobody@example.org"))
    sign_in(site.client)
    page = site.client.get(f"/admin/subscribers/{subscriber_id}").text
    row = page[page.index("<h2>Subscription messages</h2>") :]
    assert "<td>confirm</td><td>failed</td><td>1</td>" in row and "550 5.1.1 mailbox unavailable" in row


def test_send_due_now_retries_queued_notices_without_waiting_out_the_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relay: Relay
) -> None:
    """Regression: once the relay was back, a queued confirmation waited for its backoff (two minutes in a
    trial) and `notices send-due` said "no notice due"; `--now` retries it at once."""
    from newsletter.cli import main

    env = {"NEWSLETTER_HOME": str(tmp_path / "home"), "NEWSLETTER_SECRET_KEY": "cli-secret", "NEWSLETTER_BASE_URL": "https://news.example.org",
           "SMTP_URL": relay.server.url, "DATABASE_URL": f"sqlite:///{tmp_path / 'now.db'}", "NEWSLETTER_BACKOFF_BASE": "3600"}  # fmt: skip
    monkeypatch.delenv("REDIS_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
    csv_path = tmp_path / "people.csv"
    csv_path.write_text("email,name,lang\nwait@example.org,Wait,en\n", encoding="utf-8")
    relay.reply = "451 4.7.1 greylisted"
    assert CliRunner().invoke(main, ["subscribers", "import", "--confirm", str(csv_path)], catch_exceptions=False).exit_code == 0
    notice_queue.stop_retry_timers()
    relay.reply = None
    waiting = CliRunner().invoke(main, ["notices", "send-due"], catch_exceptions=False).output
    [row] = _notices(env["DATABASE_URL"])
    if row.status == "queued":  # full jitter may have drawn a wait of a few seconds only; then it went out above
        assert "no notice due" in waiting
        now = CliRunner().invoke(main, ["notices", "send-due", "--now"], catch_exceptions=False).output
        assert "1 queued notice due now" in now and "sent 1" in now
    assert relay.recorder.recipients() == Counter({"wait@example.org": 1})
    [sent] = _notices(env["DATABASE_URL"])
    assert (sent.status, sent.attempts) == ("sent", 2)


def test_beat_hands_a_due_notice_on_once_however_often_it_sweeps(  # type: ignore[no-untyped-def]
    sqlite_url: str, make_settings, relay: Relay, redis_available: str
) -> None:
    """Regression: every sweep (beat, every NEWSLETTER_SWEEP_INTERVAL) enqueued each due notice again while the
    workers were busy (one sweep after another put the same confirmation on the queue; only the claim kept it
    from going out more than once). Now the hand-off is noted in the row and a notice is handed on once."""
    import redis

    from tasks.app import use_settings
    from tasks.notices import enqueue_due_notices, send_notice

    settings = make_settings(sqlite_url, SMTP_URL=relay.server.url, REDIS_URL=redis_available)
    client = redis.Redis.from_url(redis_available)
    client.delete("notices")
    try:
        with session_factory(sqlite_url)() as session:
            lost = _sign_up(session, settings, "lost@example.org")  # its process died before the hand-off
            session.get_one(Notice, lost).created_at -= notice_queue.DISPATCH_GRACE
            session.commit()
            handed = _sign_up(session, settings, "handed@example.org")
        notice_queue.dispatch(settings, [handed])  # handed on at once, as the web does; a worker will take it
        for _ in range(5):  # five sweeps while no worker got to them
            enqueue_due_notices()
        queued = Counter(args[0] for _, args in _queued_tasks(client, "newsletter.send_notice"))
        assert queued == Counter({lost: 1, handed: 1})
        assert send_notice(lost) == "sent" and send_notice(handed) == "sent"
        assert relay.recorder.recipients() == Counter({"lost@example.org": 1, "handed@example.org": 1})
    finally:
        client.delete("notices")
        use_settings(make_settings(sqlite_url, REDIS_URL=""))


def test_a_handed_on_notice_is_due_again_only_when_due_anew_or_its_hand_off_was_lost(db_url: str, make_settings, relay: Relay) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, SMTP_URL=relay.server.url)
    with session_factory(db_url)() as session:
        notice_id = _sign_up(session, settings, "later@example.org")
        t0 = session.get_one(Notice, notice_id).created_at
        notice_queue.mark_enqueued(session, [notice_id], t0)
        for seconds in (0, 61, 299):  # handed on; the workers have not got to it yet
            assert notice_queue.due(session, t0 + timedelta(seconds=seconds)) == []
        # Not claimed five minutes after its hand-off: the broker lost it (Redis restarted empty).
        assert notice_queue.due(session, t0 + notice_queue.REHANDOFF_AFTER + timedelta(seconds=1)) == [notice_id]
        # A retry is due again when its time comes, once.
        relay.reply = "451 4.3.0 try again later"
        assert notice_queue.send_queued(session, settings, notice_id, now=t0 + timedelta(seconds=1)) == "deferred"
        retry_at = session.get_one(Notice, notice_id, populate_existing=True).next_attempt_at
        assert retry_at is not None
        assert notice_queue.due(session, retry_at - timedelta(seconds=0.5)) == []
        assert notice_queue.due(session, retry_at) == [notice_id]
        notice_queue.mark_enqueued(session, [notice_id], retry_at)
        assert notice_queue.due(session, retry_at + timedelta(seconds=30)) == []
        # A claim whose worker died is due once its lease ran out, and handed on once.
        assert notice_queue.claim(session, settings, notice_id, retry_at + timedelta(seconds=1)) is not None
        expired = retry_at + timedelta(seconds=notice_queue.lease_seconds(settings) + 2)
        assert notice_queue.due(session, expired) == [notice_id]
        notice_queue.mark_enqueued(session, [notice_id], expired)
        assert notice_queue.due(session, expired + timedelta(seconds=30)) == []


@pytest.mark.integration
def test_a_confirmation_goes_out_within_seconds_while_a_worker_sends_a_large_issue(  # type: ignore[no-untyped-def]
    pg_url: str, make_settings, tmp_path: Path
) -> None:
    """Regression: notices went to the ``send`` queue, so a sign-up during a publish waited behind every
    batch of it (minutes at 100,000 subscribers). On the ``notices`` queue it waits at most for one batch in
    progress to end. One `celery worker` (two processes, all queues, as documented), a relay answering each
    DATA after 0.2 s: the issue's 15 batches of 20 take about 30 s; the confirmation must arrive within 8 s."""
    import os
    import signal
    import time

    from newsletter.runner import follow, start_publish
    from tasks.app import use_settings
    from tests.test_fault_operations import draft_issue
    from tests.test_faults import RedisServer
    from tests.test_integration_worker import start_worker

    redis_server = RedisServer(tmp_path)  # a private one: nothing else may flush the queued batches
    redis_server.start()
    redis_available = redis_server.url
    total = 300
    with SMTPServer(data_delay=0.2) as smtp:
        env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_available, "SMTP_URL": smtp.url, "NEWSLETTER_HOME": str(tmp_path / "home"),
               "NEWSLETTER_SECRET_KEY": "notice-secret", "NEWSLETTER_BASE_URL": "https://news.example.org",
               "NEWSLETTER_BATCH_SIZE": "20", "NEWSLETTER_SWEEP_INTERVAL": "1"}  # fmt: skip
        settings = make_settings(pg_url, **env)
        number = draft_issue(pg_url, total)
        worker = start_worker(env, tmp_path / "worker.log", tmp_path / "beat-schedule")
        try:
            issue_id, _ = start_publish(settings, number)
            deadline = time.monotonic() + 120
            while len(smtp.recorder.messages) < 10:  # both processes are on batches, 13 more wait on `send`
                assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(0.05)
            with session_factory(pg_url)() as session:
                notice_id = _sign_up(session, settings, "newcomer@example.org")
            started = time.monotonic()
            notice_queue.dispatch(settings, [notice_id])  # what the web's background task does
            while "newcomer@example.org" not in smtp.recorder.recipients():
                assert time.monotonic() - started < 60, "no confirmation"
                time.sleep(0.05)
            waited = time.monotonic() - started
            issue_messages = sum(1 for m in list(smtp.recorder.messages) if str(m["To"].addresses[0].addr_spec) != "newcomer@example.org")
            outcome = follow(settings, issue_id, timeout=120)
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            use_settings(make_settings(pg_url, REDIS_URL=""))
            redis_server.stop()
        print(f"\nconfirmation during a publish of {total} at 0.2 s per message: arrived after {waited:.1f} s, "
              f"with {issue_messages} of the issue's {total} messages sent")  # fmt: skip
        assert issue_messages < total - 40, "the publish must still be under way"
        assert waited < 8.0
        assert outcome.status == "sent", outcome
        assert smtp.recorder.recipients()["newcomer@example.org"] == 1


@pytest.mark.integration
def test_a_notice_whose_pool_process_was_killed_goes_out_at_once(pg_url: str, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A worker's pool process killed while it sends a confirmation (the relay holds its RCPT): the worker's main
    process ends that process's claim before Celery gives the task back, so the confirmation goes out within
    seconds, not when its claim (at least 10 x SMTP_TIMEOUT: 300 s) ran out and a sweep came by (no beat runs
    here). The message the dead process was sending never reached DATA: one copy at the relay."""
    import os
    import signal
    import time

    from tasks.app import use_settings
    from tests.test_faults import Fleet, RedisServer, _pool_processes

    redis_server = RedisServer(tmp_path)
    redis_server.start()
    held = threading.Event()

    def slow_first_rcpt(_address: str, attempt: int) -> str | None:
        if attempt == 1:
            held.set()
            time.sleep(3)  # the relay thinks; the sender is killed meanwhile
        return None

    try:
        with SMTPServer(rcpt_fault=slow_first_rcpt) as smtp:
            env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_server.url, "SMTP_URL": smtp.url, "NEWSLETTER_HOME": str(tmp_path / "home"),
                   "NEWSLETTER_SECRET_KEY": "notice-secret", "NEWSLETTER_BASE_URL": "https://news.example.org"}  # fmt: skip
            settings = make_settings(pg_url, **env)
            fleet = Fleet(env, tmp_path)
            try:
                fleet.start_worker("n")
                with session_factory(pg_url)() as session:
                    notice_id = _sign_up(session, settings, "killed@example.org")
                notice_queue.dispatch(settings, [notice_id])
                assert held.wait(120), "the worker never sent the confirmation"
                for pid in _pool_processes(fleet.workers["n"].pid):
                    os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                while "killed@example.org" not in smtp.recorder.recipients():
                    assert time.monotonic() - killed < 30, "the confirmation waits for its claim to run out"
                    time.sleep(0.05)
                took = time.monotonic() - killed
                while _notices(pg_url)[0].status != "sent":  # recorded just after the relay took it
                    assert time.monotonic() - killed < 40, _notices(pg_url)[0].status
                    time.sleep(0.05)
            finally:
                fleet.stop_all()
                use_settings(make_settings(pg_url, REDIS_URL=""))
            log = "".join(p.read_text(errors="replace") for p in tmp_path.glob("n-*.log"))
            print(f"\nconfirmation's pool process killed: sent again {took:.1f} s later")
            assert smtp.recorder.recipients() == Counter({"killed@example.org": 1})
    finally:
        redis_server.stop()
    assert "claim released for the redelivered task" in log
    assert took < 15
    [row] = _notices(pg_url)
    assert (row.status, row.attempts) == ("sent", 2)

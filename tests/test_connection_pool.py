"""Per-relay connection limits (``SMTP_URL=…?connections=N``): Redis slots that expire, and an aiosmtpd
relay that counts the connections open at once while two worker processes send one issue."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from newsletter.delivery.errors import DeliveryError, PermanentDeliveryError
from newsletter.delivery.mailers import SmtpMailer
from newsletter.delivery.pool import ConnectionPool, LocalSlots, RedisSlots, relay_connections
from newsletter.models import DeliveryStatus
from newsletter.runner import follow, start_publish
from tests.smtp_server import Handler, Recorder, free_port
from tests.test_fault_operations import base_env, count, draft_issue, load
from tests.test_faults import Fleet, RedisServer, email_of


@pytest.fixture
def slots_client(redis_available: str) -> Any:
    client = redis.Redis.from_url(os.environ.get("TEST_REDIS_URL", redis_available))
    yield client
    for key in client.scan_iter("newsletter:slot*:test-*"):
        client.delete(key)


def test_relay_connections_parses_the_url() -> None:
    assert relay_connections("smtp://mx:25") is None
    assert relay_connections("smtp://mx:25?rate=5&connections=50") == 50
    with pytest.raises(ValueError):
        relay_connections("smtp://mx:25?connections=0")


def test_redis_slots_hold_the_limit_and_a_dead_holder_s_slot_comes_back(slots_client: Any) -> None:
    relay = f"test-{uuid.uuid4().hex[:8]}"
    a = RedisSlots(slots_client, relay, limit=2, ttl=0.4)
    b = RedisSlots(slots_client, relay, limit=2, ttl=0.4)  # another process, same relay
    assert a.acquire("a1") and b.acquire("b1")
    assert not a.acquire("a2") and not b.acquire("b2")
    assert b.has_waiters()  # b2 and a2 asked: holders hand idle connections over
    a.release("a1")
    assert b.acquire("b2")
    assert not a.acquire("a3")
    # b's process dies (no more renewals): after the TTL its slots are free again; a renewed one is kept.
    c = RedisSlots(slots_client, relay, limit=3, ttl=0.4)
    assert c.acquire("c1")
    for _ in range(4):
        time.sleep(0.15)
        assert c.renew(["c1"]) == 1
    assert c.renew(["b1", "b2"]) == 0  # expired
    assert c.acquire("c2") and c.acquire("c3")
    assert not c.acquire("c4")  # c1 (renewed), c2, c3 hold the 3 slots
    assert c.renew(["c1"]) == 1


class _Counting:
    """Connections open at the server right now, and the most at once."""

    def __init__(self) -> None:
        self.lock, self.open, self.most, self.total = threading.Lock(), 0, 0, 0

    def change(self, delta: int) -> None:
        with self.lock:
            self.open += delta
            self.most = max(self.most, self.open)
            self.total += max(delta, 0)


class _CountingController(Controller):
    def __init__(self, counting: _Counting, *args: Any, **kwargs: Any) -> None:
        self.counting = counting
        super().__init__(*args, **kwargs)

    def factory(self) -> SMTP:
        counting = self.counting

        class CountingSMTP(SMTP):
            def connection_made(self, transport: Any) -> None:
                counting.change(+1)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                counting.change(-1)
                super().connection_lost(error)

        return CountingSMTP(self.handler, **self.SMTP_kwargs)


def test_pool_reuses_connections_across_batches_in_a_process() -> None:
    made: list[object] = []

    class Fake:
        name = "fake"

        def send(self, sender: str, recipient: str, message: bytes) -> None: ...

        def close(self) -> None: ...

    def make() -> Fake:
        made.append(object())
        return Fake()

    pool = ConnectionPool(make, LocalSlots(2), connections=2, idle=60)
    first = [pool.get(wait=False), pool.get(wait=False)]
    assert all(first) and pool.get(wait=False) is None  # the limit
    for m in first:
        assert m is not None
        m.close()
    again = [pool.get(wait=False), pool.get(wait=False)]
    assert {id(m) for m in again} == {id(m) for m in first}  # the next batch reuses them
    assert len(made) == 2
    assert pool.close_idle() == 0  # lent, not idle
    for m in again:
        assert m is not None
        m.close()
    assert pool.close_idle() == 2
    assert pool.get(wait=False) is not None  # slots were given back


@pytest.mark.integration
def test_two_worker_processes_share_one_relay_limit(pg_url: str, tmp_path: Path) -> None:
    """Two celery workers (2 pool processes each) send 60 messages to a relay that answers DATA after
    0.2 s, with ``?connections=3``: the relay sees 3 connections at once and never more, slots are
    held by more than one process, and every subscriber gets exactly one message."""
    total, limit = 60, 3
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    counting, recorder = _Counting(), Recorder()
    port = free_port()
    controller = _CountingController(counting, Handler(recorder, data_delay=0.2), hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    number = draft_issue(pg_url, total)
    env = base_env(pg_url, redis_server.url, f"smtp://127.0.0.1:{port}?connections={limit}", tmp_path / "home", NEWSLETTER_BATCH_SIZE="6")
    settings = load(env)
    fleet = Fleet(env, tmp_path)
    client = redis.Redis.from_url(redis_server.url)
    holders: set[str] = set()
    most_slots = 0
    try:
        fleet.start_worker("a")
        fleet.start_worker("b")
        issue_id, _ = start_publish(settings, number)
        deadline = time.monotonic() + 120
        while len(recorder.messages) < total and time.monotonic() < deadline:
            members = [m.decode() for m in client.zrange(f"newsletter:slots:127.0.0.1:{port}", 0, -1)]
            most_slots = max(most_slots, len(members))
            holders.update(m.split(":")[0] for m in members)
            time.sleep(0.02)
        outcome = follow(settings, issue_id, timeout=60)
    finally:
        fleet.stop_all()
        controller.stop()
        redis_server.stop()
    duplicates = sum(n - 1 for n in recorder.by_message_id().values() if n > 1)
    print(f"\nconnections open at once at the relay: at most {counting.most} (limit {limit}); connections made: {counting.total}; "
          f"slots held at once: at most {most_slots}; holder processes: {len(holders)}; duplicates: {duplicates}")  # fmt: skip
    assert outcome.status == "sent", outcome
    assert counting.most == limit  # used concurrently, never exceeded
    assert most_slots <= limit
    assert len(holders) >= 2
    assert measured_ok(recorder, total)
    assert count(pg_url, issue_id, DeliveryStatus.SENT) == total


def measured_ok(recorder: Recorder, total: int) -> bool:
    """Every subscriber got exactly one message."""
    return sorted(recorder.recipients().elements()) == sorted(email_of(i) for i in range(total))


@pytest.mark.parametrize("pipelining", [True, False])
def test_smtp_mailer_outcomes_with_and_without_pipelining(pipelining: bool) -> None:
    """Accepted, refused at RCPT (permanent), refused at DATA (temporary) and a 421 that closes: the same
    errors on both paths, the connection usable after each, and the body arrives dot-stuffed and intact."""
    recorder = Recorder()

    def rcpt(addr: str, attempt: int) -> str | None:
        return "550 5.1.1 no such user" if addr.startswith("gone") else None

    def data(addr: str, attempt: int) -> str | None:
        return {"busy@example.org": "451 4.3.0 try later", "closing@example.org": "421 4.3.2 shutting down"}.get(addr)

    port = free_port()
    handler = Handler(recorder, rcpt_fault=rcpt, data_fault=data, pipelining=pipelining)
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    body = b"Subject: t\r\n\r\n.leading dot\r\n..two\r\nend.\r\n"
    outcomes: list[str] = []
    try:
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}")
        for to in (
            "a@example.org",
            "gone@example.org",
            "b@example.org",
            "busy@example.org",
            "c@example.org",
            "closing@example.org",
            "d@example.org",
        ):
            try:
                mailer.send("bounce@example.org", to, body)
                outcomes.append("ok")
            except DeliveryError as exc:
                outcomes.append(f"{exc.smtp_code}:{'permanent' if isinstance(exc, PermanentDeliveryError) else 'temporary'}")
        assert mailer._conn is not None
        assert mailer._conn.has_extn("pipelining") == pipelining
        mailer.close()
    finally:
        controller.stop()
    assert outcomes == ["ok", "550:permanent", "ok", "451:temporary", "ok", "421:temporary", "ok"]
    assert len(recorder.raw) == 4  # a, b, c and d
    assert all(raw.replace(b"\r\n", b"\n") == body.replace(b"\r\n", b"\n") for raw in recorder.raw)


def test_a_slow_rate_limit_turns_off_pipelining_the_next_envelope() -> None:
    """The relay waits for a body whose envelope went out ahead: not for longer than `PIPELINE_MAX_WAIT`, so a
    ``?rate=`` that could hold a message back that long (rate x wait < connections) sends without it."""
    from newsletter.delivery.pool import PIPELINE_MAX_WAIT
    from newsletter.delivery.ratelimit import LocalTokenBucket

    def lent(rate: float | None, connections: int) -> bool:
        limiter = LocalTokenBucket(rate) if rate is not None else None
        pool = ConnectionPool(lambda: SmtpMailer("smtp://127.0.0.1:9"), LocalSlots(connections), connections, limiter)
        mailer = pool.get(wait=True)
        assert mailer is not None
        return mailer.pipelines

    assert lent(None, 1) and lent(None, 50)
    assert lent(5.0, 50) and not lent(4.0, 50)  # 50 connections share 5 (4) messages/s: 10 s (12.5 s) between bodies
    assert not lent(0.05, 1) and PIPELINE_MAX_WAIT == 10.0

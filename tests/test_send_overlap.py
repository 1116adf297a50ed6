"""A batch on one pooled SMTP connection works while the relay takes a body (`send._send_pipelined` with a mailer
that splits its send): message k's body is written, message k+2 is built and k-1's record settled, and only then
is k's reply read. These tests pin down the order and that nothing more is sent than before: a message built
ahead is dropped unsent when the batch stops first, and a connection lost between a body's write and its reply
records that message as deferred and sends the next one once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from newsletter import control
from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.delivery import send
from newsletter.delivery.mailers import SmtpMailer
from newsletter.delivery.pool import ConnectionPool, LocalSlots
from newsletter.delivery.send import STATUS_CHECK_EVERY, send_batch
from newsletter.models import Delivery, DeliveryStatus, Issue
from tests.smtp_server import Handler, Recorder, free_port
from tests.test_unit_delivery import _deliveries, _publish
from tests.test_unit_mailers import _DataDroppingHandler


@pytest.fixture
def settings(db_url: str, make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(db_url, NEWSLETTER_BATCH_SIZE="2")


class _Relay:
    """An aiosmtpd relay with ``handler`` and a one-connection pool to it."""

    def __init__(self, handler: Handler) -> None:
        self.port = free_port()
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port, decode_data=False)
        self.pool = ConnectionPool(lambda: SmtpMailer(f"smtp://127.0.0.1:{self.port}"), LocalSlots(1), 1)

    def __enter__(self) -> ConnectionPool:
        self.controller.start()
        return self.pool

    def __exit__(self, *exc: object) -> None:
        self.pool.close_idle()
        self.controller.stop()


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """The order of the batch's steps: ("build", address), ("write", address) and ("read", address)."""
    seen: list[tuple[str, str]] = []
    prepare, begin, end = send._prepare, SmtpMailer.send_begin, SmtpMailer.send_end

    def building(ctx: Any, row: Any, claim_: Any, relay: str) -> Any:
        seen.append(("build", row.email))
        return prepare(ctx, row, claim_, relay)

    def writing(self: SmtpMailer, sender: str, recipient: str, message: bytes, then: Any = None) -> None:
        seen.append(("write", recipient))
        begin(self, sender, recipient, message, then)

    def reading(self: SmtpMailer) -> None:
        if self._conn is not None and self._conn.awaiting:
            seen.append(("read", self._conn._unread_for))
        end(self)

    monkeypatch.setattr(send, "_prepare", building)
    monkeypatch.setattr(SmtpMailer, "send_begin", writing)
    monkeypatch.setattr(SmtpMailer, "send_end", reading)
    yield seen


def test_the_message_after_next_is_built_while_the_relay_takes_a_body(session, settings: Settings, steps) -> None:  # type: ignore[no-untyped-def]
    """Between the write of message k's body and the read of its reply, message k+2 is built (k+1's envelope is
    already behind k's body); every message is built once and arrives once."""
    issue_id, _ = _publish(session, settings, readers=6)
    ids = sorted(session.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id)))
    order = [session.get_one(Delivery, i).email for i in ids]
    received = Recorder()
    with _Relay(Handler(received)) as pool:
        result = send_batch(session, settings, issue_id, ids, pool)
    assert +result.outcomes == Counter({"sent": len(ids)})
    assert sorted(received.recipients().elements()) == sorted(order)
    assert [a for step, a in steps if step == "build"] == order  # each once, in order
    for k, address in enumerate(order[:-2]):
        write, read = steps.index(("write", address)), steps.index(("read", address))
        assert steps.index(("build", order[k + 2])) in range(write, read), (k, steps)


def test_a_pause_while_a_message_is_built_ahead_sends_nothing_more(session, settings: Settings, db_url: str, steps) -> None:  # type: ignore[no-untyped-def]
    """The editor pauses while the 5th message is at the relay: the batch stops at the check before its 11th
    message, as it did before messages were built ahead. The 11th was built (while the relay took the 9th body)
    but its envelope never left: it is handed back with the rest, and the relay gets the first 10 only."""
    issue_id, _ = _publish(session, settings, readers=26)
    readers = sorted(i for i, e in session.execute(select(Delivery.id, Delivery.email).where(Delivery.email.like("reader%"))))
    assert STATUS_CHECK_EVERY == 10
    others = session_factory(db_url)

    def pause_at_the_fifth(address: str, attempt: int) -> None:
        if address == "reader004@example.com":
            with others() as s:
                control.pause_issue(s, s.get_one(Issue, issue_id))
        return None

    received = Recorder()
    with _Relay(Handler(received, data_fault=pause_at_the_fifth)) as pool:
        result = send_batch(session, settings, issue_id, readers, pool)
    assert +result.outcomes == Counter({"sent": 10, "released": 16})
    assert sorted(received.recipients().elements()) == [f"reader{i:03d}@example.com" for i in range(10)]
    assert ("build", "reader010@example.com") in steps  # built ahead ...
    assert ("write", "reader010@example.com") not in steps  # ... and dropped unsent
    assert received.attempts["reader010@example.com"] == 0  # its envelope never left
    states = Counter(d.status for d in _deliveries(session, issue_id) if d.email.startswith("reader"))
    assert states == Counter({DeliveryStatus.SENT: 10, DeliveryStatus.PENDING: 16})


def test_a_connection_lost_between_a_body_s_write_and_its_reply_defers_that_message(session, settings: Settings, steps) -> None:  # type: ignore[no-untyped-def]
    """The relay closes instead of answering cat's body (its reply never read): cat is recorded deferred, dan (whose
    envelope went out behind cat's body, and who was built meanwhile) goes out once on a new connection, and every
    other message is sent and recorded once."""
    issue_id, _ = _publish(session, settings, readers=3)
    ids = sorted(session.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id)))
    received = Recorder()
    with _Relay(_DataDroppingHandler(received, {"cat@example.com"})) as pool:
        result = send_batch(session, settings, issue_id, ids, pool)
    assert +result.outcomes == Counter({"sent": len(ids) - 1, "deferred": 1})
    rows = {d.email: d for d in _deliveries(session, issue_id)}
    assert rows["cat@example.com"].status == DeliveryStatus.DEFERRED and rows["cat@example.com"].last_smtp_code is None
    assert {e for e, r in rows.items() if r.status == DeliveryStatus.SENT} == set(rows) - {"cat@example.com"}
    assert sorted(received.recipients().elements()) == sorted(set(rows) - {"cat@example.com"})
    assert ("read", "cat@example.com") in steps and received.attempts["dan@example.com"] == 1


def test_at_most_one_accepted_message_is_unrecorded_when_a_body_is_written(session, settings: Settings, db_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Issue 7's bound with records begun while the relay takes the next body: when message k's body is written,
    of the messages the relay accepted at most 1 (k-1) is not yet recorded sent (so at most 2 once k is
    accepted), and at the end of the batch every accepted message is recorded."""
    issue_id, _ = _publish(session, settings, readers=12)
    ids = sorted(session.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id)))
    received = Recorder()
    others = session_factory(db_url)
    unrecorded: list[int] = []
    begin = SmtpMailer.send_begin

    def writing(self: SmtpMailer, sender: str, recipient: str, message: bytes, then: Any = None) -> None:
        accepted = set(received.recipients())
        with others() as s:
            sent = set(s.scalars(select(Delivery.email).where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENT)))
        unrecorded.append(len(accepted - sent))
        begin(self, sender, recipient, message, then)

    monkeypatch.setattr(SmtpMailer, "send_begin", writing)
    with _Relay(Handler(received)) as pool:
        result = send_batch(session, settings, issue_id, ids, pool)
    assert +result.outcomes == Counter({"sent": len(ids)})
    # 0 at the first write and after a check (which records everything first), else 1 (k-1's record is begun later).
    assert len(unrecorded) == len(ids) and max(unrecorded) == 1, unrecorded
    assert {d.status for d in _deliveries(session, issue_id)} == {DeliveryStatus.SENT}

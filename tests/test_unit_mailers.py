"""newsletter.delivery.mailers' fast paths against the standard library they replace, and the next message's
envelope pipelined behind the current body against a real relay (aiosmtpd)."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from hypothesis import given
from hypothesis import strategies as st

from newsletter.delivery.errors import DeliveryError, PermanentDeliveryError
from newsletter.delivery.mailers import Envelope, SmtpMailer, _stuffed, quoteaddr
from newsletter.mime import DotFree
from tests.smtp_server import Fault, Handler, Recorder, free_port

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"


@pytest.mark.parametrize(
    "address",
    ["reader000123@example.com", "bounce+4711.k3j@news.example.org", "a.b-c_d@x-y.example", "o'brien@example.ie", "ann@bücher.de",
     "Ann <ann@example.com>", "<ann@example.com>", "a..b@example.com", ".a@example.com", "a@", "@example.com", "", "a b@example.com",
     '"a b"@example.com', "a@[127.0.0.1]", "a@example.com (comment)"],
)  # fmt: skip
def test_quoteaddr_is_smtplib_s(address: str) -> None:
    assert quoteaddr(address) == smtplib.quoteaddr(address)


@given(local=st.text(st.sampled_from(ATEXT + ".\"() <>@,;:[]\\ é"), min_size=0, max_size=20),
       domain=st.text(st.sampled_from("abz09-.[]é "), min_size=0, max_size=20))  # fmt: skip
def test_quoteaddr_is_smtplib_s_for_any_address(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert quoteaddr(address) == smtplib.quoteaddr(address)


@pytest.mark.parametrize("message", [b"a\r\nb\r\n", b"a\r\nb", b"QUJD\r\n=\r\n", b""])
def test_a_dot_free_message_is_sent_as_stuffing_would_send_it(message: bytes) -> None:
    assert _stuffed(DotFree(message)) == _stuffed(message)
    assert _stuffed(b".a\r\n.\r\nb") == b"..a\r\n..\r\nb\r\n.\r\n"  # and a plain one is stuffed (RFC 5321 §4.5.2)


# --- Pipelining the next message's envelope behind the current body (RFC 2920 §3.1) -------------------------


class _DroppingHandler(Handler):
    """The test relay (PIPELINING announced), which also closes the connection instead of answering the
    first RCPT TO of each address in ``drop_at_rcpt``: a connection lost between a body's reply and the
    next envelope's."""

    def __init__(self, recorder: Recorder, drop_at_rcpt: set[str], **kwargs: Any) -> None:
        super().__init__(recorder, **kwargs)
        self.drop_at_rcpt = drop_at_rcpt

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address in self.drop_at_rcpt:
            self.drop_at_rcpt.discard(address)
            server.transport.close()
            return "421 gone"  # never read: the connection is closed
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


class _Relay:
    """An aiosmtpd relay on a free port with `_DroppingHandler`; counts the client's writes per connection."""

    def __init__(self, rcpt: Fault | None = None, data: Fault | None = None, drop_at_rcpt: set[str] | None = None) -> None:
        self.recorder = Recorder()
        self.port = free_port()
        handler = _DroppingHandler(self.recorder, drop_at_rcpt or set(), rcpt_fault=rcpt, data_fault=data)
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port, decode_data=False)
        self.mailer = SmtpMailer(f"smtp://127.0.0.1:{self.port}")
        self.writes = 0

    def __enter__(self) -> _Relay:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.mailer.close()
        self.controller.stop()

    def send(self, to: str, then: str | None = None) -> str:
        """Send to ``to`` (the next message, to ``then``, pipelined behind it); "ok" or the error's code and kind."""
        mailer = self.mailer
        if mailer._conn is None:  # count the writes of each new connection (after its EHLO)
            mailer._conn = mailer._connect()
            mailer._conn.ehlo_or_helo_if_needed()
            raw_send = mailer._conn.send

            def counted(data: bytes | str) -> None:
                self.writes += 1
                raw_send(data)

            mailer._conn.send = counted  # type: ignore[method-assign]
        try:
            mailer.send(BOUNCE, to, _body(to), Envelope(BOUNCE, then, len(_body(then))) if then else None)
        except DeliveryError as exc:
            return f"{exc.smtp_code}:{'permanent' if isinstance(exc, PermanentDeliveryError) else 'temporary'}"
        return "ok"

    def received(self) -> list[str]:
        return [str(m["To"]) for m in self.recorder.messages]


BOUNCE = "bounce@example.org"


def _body(to: str) -> bytes:
    return f"To: {to}\r\nSubject: t\r\n\r\n.leading dot for {to}\r\nend.\r\n".encode()


def test_a_pipelined_next_envelope_costs_one_write_per_message_and_bodies_arrive_intact() -> None:
    with _Relay() as relay:
        assert [relay.send("a@x.org", then="b@x.org"), relay.send("b@x.org", then="c@x.org"), relay.send("c@x.org")] == ["ok"] * 3
        assert relay.writes == 4  # a's envelope, then one write per body (b's and c's envelopes behind a's and b's)
        assert relay.received() == ["a@x.org", "b@x.org", "c@x.org"]
        assert [r.replace(b"\r\n", b"\n") for r in relay.recorder.raw] == [_body(t).replace(b"\r\n", b"\n") for t in relay.received()]


@pytest.mark.parametrize(("reply", "outcome"), [("550 5.7.1 not here", "550:permanent"), ("451 4.7.1 greylisted", "451:temporary")])
def test_a_refused_next_recipient_is_that_message_s_outcome_and_the_connection_goes_on(reply: str, outcome: str) -> None:
    """The next RCPT is refused (its DATA then gets 503): the current message is sent, the next call raises the
    refusal for the refused one alone (its transaction reset), and the one after goes out on the same connection."""
    with _Relay(rcpt=lambda addr, attempt: reply if addr == "gone@x.org" else None) as relay:
        results = [relay.send("a@x.org", then="gone@x.org"), relay.send("gone@x.org", then="b@x.org")]
        conn = relay.mailer._conn
        results.append(relay.send("b@x.org", then="c@x.org"))
        results.append(relay.send("c@x.org"))
        assert relay.mailer._conn is conn
    assert results == ["ok", outcome, "ok", "ok"]
    assert relay.received() == ["a@x.org", "b@x.org", "c@x.org"]


def test_a_421_to_the_next_envelope_defers_that_message_as_without_pipelining() -> None:
    """The relay answers the next RCPT with 421 and closes: the current message is sent, the next call raises the
    421 (deferred, as the same reply to an envelope of its own would be), and the one after reconnects."""
    with _Relay(rcpt=lambda addr, attempt: "421 4.7.0 too many connections" if addr == "busy@x.org" else None) as relay:
        results = [relay.send("a@x.org", then="busy@x.org"), relay.send("busy@x.org"), relay.send("b@x.org")]
    assert results == ["ok", "421:temporary", "ok"]
    assert relay.received() == ["a@x.org", "b@x.org"]
    assert relay.recorder.attempts["busy@x.org"] == 1


def test_a_refused_body_is_its_own_outcome_and_the_next_envelope_stays_open() -> None:
    """452 to the current body: that message is deferred, and the next one, whose MAIL went out behind the
    refused body (a new transaction: no RSET), is sent on the same connection."""
    with _Relay(data=lambda addr, attempt: "452 4.3.1 full" if addr == "busy@x.org" else None) as relay:
        results = [relay.send("busy@x.org", then="b@x.org")]
        conn = relay.mailer._conn
        results += [relay.send("b@x.org", then="busy@x.org"), relay.send("busy@x.org"), relay.send("c@x.org")]
        assert relay.mailer._conn is conn
    assert results == ["452:temporary", "ok", "452:temporary", "ok"]
    assert relay.received() == ["b@x.org", "c@x.org"]


def test_a_421_to_the_body_closes_and_the_next_message_goes_on_a_new_connection() -> None:
    with _Relay(data=lambda addr, attempt: "421 4.3.2 shutting down" if addr == "closing@x.org" and attempt == 1 else None) as relay:
        results = [relay.send("closing@x.org", then="b@x.org")]
        assert relay.mailer._conn is None
        results.append(relay.send("b@x.org"))
    assert results == ["421:temporary", "ok"]
    assert relay.received() == ["b@x.org"]


@pytest.mark.parametrize("a_reply", [None, "452 4.3.1 full"])
def test_a_connection_lost_between_a_body_and_the_next_envelope(a_reply: str | None) -> None:
    """The relay answers a's body, then the connection drops before it answers b's envelope: a's outcome is
    its own reply's, and b goes out once on a new connection."""
    with _Relay(data=lambda addr, attempt: a_reply if addr == "a@x.org" else None, drop_at_rcpt={"b@x.org"}) as relay:
        results = [relay.send("a@x.org", then="b@x.org")]
        assert relay.mailer._conn is None
        results += [relay.send("b@x.org", then="c@x.org"), relay.send("c@x.org")]
    assert results == ["ok" if a_reply is None else "452:temporary", "ok", "ok"]
    assert relay.received() == (["a@x.org"] if a_reply is None else []) + ["b@x.org", "c@x.org"]
    assert relay.recorder.attempts["b@x.org"] == 1  # on the new connection (the dropped RCPT is not counted)


@pytest.mark.parametrize("then", ["another message", "check", "close"])
def test_an_envelope_left_open_is_abandoned_by_closing_never_sent_empty(then: str) -> None:
    """After a 354 the relay waits for that body: any other use of the connection drops it (RFC 5321 §3.8) rather
    than ending the data with "." (which would deliver an empty message) or sending a command into it."""
    with _Relay() as relay:
        assert relay.send("a@x.org", then="b@x.org") == "ok"
        if then == "another message":
            assert relay.send("c@x.org") == "ok"
        elif then == "check":
            relay.mailer.check()
            assert relay.mailer._conn is None
        else:
            relay.mailer.close()
        assert relay.send("d@x.org") == "ok"
    assert relay.received() == (["a@x.org", "c@x.org", "d@x.org"] if then == "another message" else ["a@x.org", "d@x.org"])
    assert relay.recorder.attempts["b@x.org"] == 1 and len(relay.recorder.raw) == len(relay.received())


def test_without_pipelining_the_next_envelope_is_not_sent_ahead() -> None:
    recorder = Recorder()
    port = free_port()
    controller = Controller(Handler(recorder, pipelining=False), hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    try:
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}")
        mailer.send(BOUNCE, "a@x.org", _body("a@x.org"), Envelope(BOUNCE, "b@x.org", 10))
        assert recorder.attempts["b@x.org"] == 0
        mailer.send(BOUNCE, "c@x.org", _body("c@x.org"))
        mailer.close()
    finally:
        controller.stop()
    assert [str(m["To"]) for m in recorder.messages] == ["a@x.org", "c@x.org"]


# --- A send split in a write half and a read half (`SmtpMailer.send_begin` / `send_end`) ---------------------


class _DataDroppingHandler(Handler):
    """The test relay, which also closes the connection instead of answering the body of each address in
    ``drop_at_data`` (once each): a connection lost between the write of a body and the read of its reply."""

    def __init__(self, recorder: Recorder, drop_at_data: set[str], **kwargs: Any) -> None:
        super().__init__(recorder, **kwargs)
        self.drop_at_data = drop_at_data

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if envelope.rcpt_tos[0] in self.drop_at_data:
            self.drop_at_data.discard(envelope.rcpt_tos[0])
            server.transport.close()
            return "250 never read"  # the connection is closed: the message is not delivered
        return await super().handle_DATA(server, session, envelope)


def test_a_split_send_is_a_send_and_work_between_its_halves_is_free() -> None:
    """`send_begin` writes the body (with the next envelope behind it) and returns before the reply; `send_end` reads
    it: the same writes, outcomes and messages as `send`; a refusal raised by `send_begin` leaves nothing for
    `send_end`; and while a reply is unread any other use of the connection drops it (the outcome is unknown)."""
    with _Relay(data=lambda addr, attempt: "452 4.3.1 full" if addr == "full@x.org" else None,
                rcpt=lambda addr, attempt: "550 5.1.1 no" if addr == "gone@x.org" else None) as relay:  # fmt: skip
        assert relay.send("a@x.org", then="b@x.org") == "ok"
        writes = relay.writes
        mailer = relay.mailer
        mailer.send_begin(BOUNCE, "b@x.org", _body("b@x.org"), Envelope(BOUNCE, "full@x.org", 10))
        assert relay.writes == writes + 1 and mailer._conn is not None and mailer._conn.awaiting
        mailer.send_end()
        assert not mailer._conn.awaiting
        mailer.send_end()  # nothing unread: nothing to do
        mailer.send_begin(BOUNCE, "full@x.org", _body("full@x.org"), Envelope(BOUNCE, "gone@x.org", 10))
        with pytest.raises(DeliveryError) as full:
            mailer.send_end()
        with pytest.raises(PermanentDeliveryError) as gone:  # the next envelope's refusal, raised before any write
            mailer.send_begin(BOUNCE, "gone@x.org", _body("gone@x.org"))
        assert not mailer._conn.awaiting
        mailer.send_end()
        mailer.send_begin(BOUNCE, "c@x.org", _body("c@x.org"), Envelope(BOUNCE, "d@x.org", 10))
        mailer.check()  # a reply unread: dropped, not a NOOP into the next body
        assert mailer._conn is None
        assert relay.send("e@x.org") == "ok"
    assert (full.value.smtp_code, gone.value.smtp_code) == (452, 550)
    assert relay.received() == ["a@x.org", "b@x.org", "c@x.org", "e@x.org"]  # c's body was whole before the drop
    assert len(relay.recorder.raw) == 4  # d's envelope abandoned unsent (no empty message)


def test_a_connection_lost_between_a_body_s_write_and_its_reply() -> None:
    """The relay closes instead of answering b's body: b is deferred (its reply never came), c (whose envelope went
    out behind b's body) goes out once on a new connection, and the messages before and after are sent."""
    recorder, port = Recorder(), free_port()
    controller = Controller(_DataDroppingHandler(recorder, {"b@x.org"}), hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    mailer = SmtpMailer(f"smtp://127.0.0.1:{port}")
    results = []
    try:
        for to, then in (("a@x.org", "b@x.org"), ("b@x.org", "c@x.org"), ("c@x.org", "d@x.org"), ("d@x.org", None)):
            try:
                mailer.send_begin(BOUNCE, to, _body(to), Envelope(BOUNCE, then, 10) if then else None)
                mailer.send_end()
                results.append("ok")
            except DeliveryError as exc:
                results.append(f"{exc.smtp_code}:{'permanent' if isinstance(exc, PermanentDeliveryError) else 'temporary'}")
    finally:
        mailer.close()
        controller.stop()
    assert results == ["ok", "None:temporary", "ok", "ok"]
    assert [str(m["To"]) for m in recorder.messages] == ["a@x.org", "c@x.org", "d@x.org"]
    assert recorder.attempts["c@x.org"] == 1  # on the new connection (the envelope behind b's body died unread)

"""Mailers: where messages go. `SmtpMailer` speaks SMTP to a relay; `OutboxMailer` writes a Maildir."""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol
from urllib.parse import unquote, urlsplit

from newsletter.delivery.errors import classify_exception
from newsletter.mime import DotFree


class Mailer(Protocol):
    """One open channel to a relay, used for one batch. ``send`` raises a `DeliveryError`.

    A mailer may also split its send in a write half and a read half (``send_begin`` / ``send_end``, as
    `SmtpMailer`; a pooled one says so with ``splits``), so the batch can work while the relay takes a body."""

    name: str

    def send(self, sender: str, recipient: str, message: bytes) -> None: ...

    def close(self) -> None: ...


class OutboxMailer:
    """Writes each message as an ``.eml`` file into a Maildir folder (``new/``) a person can open.

    Each file is written in ``tmp/`` and renamed into ``new/`` (so it appears whole), as Maildir requires
    (https://cr.yp.to/proto/maildir.html). The files of a batch are flushed to disk together when the
    mailer is closed (one fsync each plus one of ``new/``, after the batch's writes) rather than one
    fsync per message, which cost most of the embedded default's time (the first fsync writes the
    others' data too). A file is durable against the process dying as soon as ``send`` returns, like
    the ledger's commit on SQLite (WAL, ``synchronous=NORMAL``); against a power cut, at ``close``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"outbox:{path}"
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._written: list[Path] = []

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        """See `Mailer.send`. The envelope sender is recorded as ``Return-Path`` (RFC 5321 §4.4), as a
        final delivery would."""
        global _sequence
        _sequence += 1
        now = time.time()
        # A unique Maildir name: seconds, microseconds, process id and a per-process counter, host.
        name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{_sequence}.{self._host}"
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(b"Return-Path: <" + sender.encode("ascii") + b">\r\n")
                handle.write(message)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        final = self.path / "new" / f"{name}.eml"
        tmp.rename(final)
        self._written.append(final)

    def close(self) -> None:
        """Flush this batch's files (and their names in ``new/``) to disk."""
        written, self._written = self._written, []
        if not written:
            return
        for path in written:
            with contextlib.suppress(FileNotFoundError):  # already picked up and moved by a reader
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_sequence = 0  # Maildir name counter of this process (see OutboxMailer.send)


# An address smtplib.quoteaddr would give back unchanged in angle brackets: letters, digits and ._+- in
# dot-separated atoms, an LDH domain (RFC 5321 §4.1.2). Everything else goes through quoteaddr.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def quoteaddr(address: str) -> str:
    """``smtplib.quoteaddr(address)``: ``<address>`` for a path in MAIL FROM or RCPT TO. A plain address
    is written at once; smtplib's parses it with email.utils.parseaddr (80 µs per address, two per
    message, a tenth of a worker's CPU per message)."""
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _stuffed(msg: bytes, tail: bytes = b"") -> bytes:
    """The DATA payload with its end marker: dot-stuffing (RFC 5321 §4.5.2) by ``bytes.replace``
    instead of smtplib's regular expression over the whole message (12% of a worker's time at 115 kB),
    built with one copy so it goes out in one write; ``tail`` (the next message's pipelined commands)
    follows the end marker in the same buffer."""
    if isinstance(msg, DotFree):  # no line starts with "." (the message template vouches for it)
        q: bytes = msg
    else:
        q = msg.replace(b"\n.", b"\n..")
        if q[:1] == b".":
            q = b"." + q
    return b"".join((q, b".\r\n" if q[-2:] == b"\r\n" else b"\r\n.\r\n", tail))


class Envelope(NamedTuple):
    """The next message of a `SmtpMailer.send` whose MAIL FROM, RCPT TO and DATA may be pipelined behind
    the current message's body (``size`` in bytes, for the SIZE parameter of RFC 1870)."""

    sender: str
    recipient: str
    size: int


@dataclass
class _Opened:
    """A pipelined envelope whose replies were read: either the relay waits for its body (``error`` None,
    after 354) or it was refused (``error`` is what `send_one` raises for that message; the transaction
    was already reset)."""

    envelope: Envelope
    error: smtplib.SMTPException | None


class _Fast:
    """smtplib.SMTP with a faster DATA and one-recipient sends in one round trip less per command."""

    _opened: _Opened | None = None  # the next message's envelope, pipelined behind the last body
    _unread: tuple[Envelope | None] | None = None  # a body written by `write_one`, its replies unread (and then's)
    _unread_for = ""  # the recipient of the message in hand (for `SmtpMailer`'s errors)

    def data(self, msg: bytes | str) -> tuple[int, bytes]:
        """`smtplib.SMTP.data`, with `_stuffed` for bytes."""
        if not isinstance(msg, bytes):
            return super().data(msg)  # type: ignore[misc, no-any-return]
        conn: smtplib.SMTP = self  # type: ignore[assignment]
        conn.putcmd("data")
        code, repl = conn.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, repl)
        conn.send(_stuffed(msg))
        return conn.getreply()

    def opened_for(self, sender: str, recipient: str) -> bool | None:
        """None when no envelope is pipelined; else whether it is the one of this (sender, recipient)."""
        opened = self._opened
        if opened is None:
            return None
        return opened.envelope.sender == sender and opened.envelope.recipient == recipient

    def _envelope(self, e: Envelope) -> bytes:
        conn: smtplib.SMTP = self  # type: ignore[assignment]
        size = f" SIZE={e.size}" if conn.has_extn("size") else ""
        return f"MAIL FROM:{quoteaddr(e.sender)}{size}\r\nRCPT TO:{quoteaddr(e.recipient)}\r\nDATA\r\n".encode("ascii")

    def _read_envelope(self, e: Envelope) -> smtplib.SMTPException | None:
        """Read the three replies to a pipelined envelope, in order (RFC 2920 §3.1). None when the relay
        waits for the body (354); else the error `smtplib.SMTP.sendmail` would raise, after ending the
        transaction (RSET, or closing on 421) so the connection is ready for the next message."""
        conn: smtplib.SMTP = self  # type: ignore[assignment]
        mail, rcpt, data = conn.getreply(), conn.getreply(), conn.getreply()
        if mail[0] != 250:
            self._failed(mail[0], data[0])
            return smtplib.SMTPSenderRefused(mail[0], mail[1], e.sender)
        if rcpt[0] not in (250, 251):
            self._failed(rcpt[0], data[0])
            return smtplib.SMTPRecipientsRefused({e.recipient: rcpt})
        if data[0] != 354:
            self._failed(data[0], data[0])
            return smtplib.SMTPDataError(*data)
        return None

    def send_one(self, sender: str, recipient: str, msg: bytes, then: Envelope | None = None) -> None:
        """``sendmail(sender, [recipient], msg)``; when the relay offers PIPELINING (RFC 2920) MAIL, RCPT
        and DATA go out in one write and their replies are read together: 2 round trips per message
        instead of 4. Raises what `smtplib.SMTP.sendmail` raises for the same replies (after RSET, or
        closing on 421). The same as `write_one` then `read_one`.

        With ``then``, the next message's MAIL, RCPT and DATA follow this body's end in the same write
        (RFC 2920 §3.1: DATA may end a group, and the body's "." is followed by the next group), so a
        message after the first costs one round trip. The replies are read in order: this body's first
        (this message's outcome comes from its own reply alone), then the next envelope's, kept for the
        next call, which must send that message (`opened_for`): after a 354 the relay waits for its
        body, and only closing the connection ends that transaction unsent (RFC 5321 §3.8). A refused
        next envelope is raised by that next call, its transaction already reset. If the connection
        breaks after this body's reply, this message's outcome stands and the next one has no envelope
        open (the caller reconnects); on a 421 for this body the connection is closed.
        """
        self.write_one(sender, recipient, msg, then)
        self.read_one()

    def write_one(self, sender: str, recipient: str, msg: bytes, then: Envelope | None = None) -> None:
        """The first half of `send_one`: everything up to and including the write of this body (and
        ``then``'s envelope behind it), leaving the replies to that write unread for `read_one`, so the
        caller can work while the relay takes the body. Raises what `send_one` raises before the body
        leaves (a refused envelope, a broken connection). Until `read_one` the connection must not be
        used otherwise (`awaiting`); without PIPELINING the whole message is sent here."""
        conn: smtplib.SMTP = self  # type: ignore[assignment]
        opened, self._opened = self._opened, None
        if opened is not None:
            # Only this class opens envelopes, only with PIPELINING; `SmtpMailer` drops a connection whose
            # open envelope is not this message's.
            assert opened.envelope.sender == sender and opened.envelope.recipient == recipient, "another message's envelope is open"
            if opened.error is not None:
                raise opened.error
        else:
            conn.ehlo_or_helo_if_needed()
            if not conn.has_extn("pipelining"):
                conn.sendmail(sender, [recipient], msg)
                return
            here = Envelope(sender, recipient, len(msg))
            conn.send(self._envelope(here))
            error = self._read_envelope(here)
            if error is not None:
                raise error
        # Noted before the write: a write that fails half way leaves the connection unusable all the same.
        self._unread = (then,)
        conn.send(_stuffed(msg, self._envelope(then) if then is not None else b""))

    @property
    def awaiting(self) -> bool:
        """True between `write_one` and `read_one`: the relay's replies to a body are unread."""
        return self._unread is not None

    def read_one(self) -> None:
        """The second half of `send_one`: read the body's reply (this message's outcome, raised as
        `send_one` raises it) and the pipelined next envelope's; nothing when `write_one` sent the whole
        message (no PIPELINING) or raised."""
        conn: smtplib.SMTP = self  # type: ignore[assignment]
        unread, self._unread = self._unread, None
        if unread is None:
            return
        (then,) = unread
        code, resp = conn.getreply()
        if then is not None and code != 421:
            try:
                self._opened = _Opened(then, self._read_envelope(then))
            except (smtplib.SMTPException, OSError):
                # The connection broke between the two: this message's reply stands; the next one is sent
                # afresh on a new connection.
                self._opened = None
                with contextlib.suppress(OSError):
                    conn.close()
        if code != 250:
            # After the reply to the body the relay has ended this transaction (RFC 5321 §4.1.1.4), so a
            # pipelined next MAIL needs no RSET; without one, RSET as smtplib does.
            self._failed(code, 0, reset=then is None)
            raise smtplib.SMTPDataError(code, resp)

    def _failed(self, code: int, data_code: int, reset: bool = True) -> None:
        conn: smtplib.SMTP = self  # type: ignore[assignment]
        if code == 421:
            self._opened = None
            conn.close()
            return
        if data_code == 354:  # the relay is waiting for a message we will not send: end it empty, then reset
            conn.send(b".\r\n")
            conn.getreply()
        if reset:
            conn._rset()  # type: ignore[attr-defined]


class _SMTP(_Fast, smtplib.SMTP):
    pass


class _SMTP_SSL(_Fast, smtplib.SMTP_SSL):
    pass


class SmtpMailer:
    """An SMTP connection opened lazily and re-opened after a drop.

    URL forms: ``smtp://host:25``, ``smtp+starttls://user:pass@host:587``, ``smtps://user:pass@host:465``.
    """

    def __init__(self, url: str, timeout: float = 30.0, local_hostname: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps", "smtp+starttls"):
            raise ValueError(f"unsupported SMTP URL scheme {parts.scheme!r} (smtp, smtp+starttls, smtps)")
        self.scheme = parts.scheme
        self.host = parts.hostname or "localhost"
        self.port = parts.port or {"smtp": 25, "smtps": 465, "smtp+starttls": 587}[parts.scheme]
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.name = f"{self.host}:{self.port}"
        self._conn: _SMTP | _SMTP_SSL | None = None
        self.pipelines = True  # `send` takes ``then`` (the next message's envelope)

    def _connect(self) -> _SMTP | _SMTP_SSL:
        if self.scheme == "smtps":
            conn: _SMTP | _SMTP_SSL = _SMTP_SSL(
                self.host, self.port, timeout=self.timeout, local_hostname=self.local_hostname, context=ssl.create_default_context()
            )
        else:
            conn = _SMTP(self.host, self.port, timeout=self.timeout, local_hostname=self.local_hostname)
            if self.scheme == "smtp+starttls":
                conn.starttls(context=ssl.create_default_context())
        if self.username:
            conn.login(self.username, self.password or "")
        return conn

    def send(self, sender: str, recipient: str, message: bytes, then: Envelope | None = None) -> None:
        """See `Mailer.send`. On a connection-level failure the connection is dropped, so the next
        call reconnects; a refused recipient keeps the connection (RSET) for the rest of the batch.

        ``then`` is the message the caller will send next: when the relay offers PIPELINING its MAIL,
        RCPT and DATA go out behind this body (`_Fast.send_one`), and the next call must be that
        message; any other use of the connection first (another message, `check`, `close`) drops it,
        since the relay waits for that body and only a closed connection abandons it (RFC 5321 §3.8).
        Errors are this message's only; the next message's refusal is raised by the next call.
        The same as `send_begin` then `send_end`.
        """
        self.send_begin(sender, recipient, message, then)
        self.send_end()

    def send_begin(self, sender: str, recipient: str, message: bytes, then: Envelope | None = None) -> None:
        """The first half of `send`: up to the write of this body (and ``then``'s envelope), without
        waiting for the relay's reply, so the caller can work while the relay takes the message.
        `send_end` must follow (it reads the reply and raises this message's refusal); a `DeliveryError`
        raised here is this message's outcome, and then no `send_end` is due. Any other use of the
        connection before `send_end` drops it (the message's outcome is then unknown)."""
        self._guarded(recipient, lambda conn: conn.write_one(sender, recipient, message, then), sender)

    def send_end(self) -> None:
        """The second half of `send`: this message's outcome (returns when accepted, else raises its
        `DeliveryError`). Nothing to do after a `send_begin` that raised."""
        conn = self._conn
        if conn is None or not conn.awaiting:
            return
        recipient = conn._unread_for
        self._guarded(recipient, lambda c: c.read_one())

    def _guarded(self, recipient: str, step: Callable[[_SMTP | _SMTP_SSL], None], sender: str | None = None) -> None:
        """Run one step of a send on the connection (opened first when ``sender`` is given, i.e. a new
        message), turning smtplib's errors into `DeliveryError` and dropping a connection that failed."""
        try:
            if sender is not None:
                if self._conn is not None and (self._conn.awaiting or self._conn.opened_for(sender, recipient) is False):
                    self._drop()
                if self._conn is None:
                    self._conn = self._connect()
            assert self._conn is not None
            self._conn._unread_for = recipient
            step(self._conn)
        except (smtplib.SMTPException, OSError) as exc:
            error = classify_exception(exc, recipient, self.name)
            # smtplib already sent RSET after a refused MAIL, RCPT or DATA; only a closing (421) or
            # broken connection needs a new one.
            if error.smtp_code in (421, None):
                self._drop()
            raise error from exc
        finally:
            # Closed on the way (lost after this body's reply): the next call reconnects, unless the relay
            # refused the next envelope before closing (421): that call raises it, as without pipelining.
            if self._conn is not None and self._conn.sock is None and self._conn._opened is None:
                self._conn = None

    def check(self) -> None:
        """NOOP on an open connection that sat idle; a dead one is dropped, so the next send reconnects
        (a pooled connection the relay closed meanwhile must not defer a message)."""
        if self._conn is not None and (self._conn._opened is not None or self._conn.awaiting):
            self._drop()  # an envelope left open or a reply unread (see `send`): NOOP would go into a body
        if self._conn is not None:
            try:
                code, _ = self._conn.noop()
                if code != 250:
                    self._drop()
            except (smtplib.SMTPException, OSError):
                self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        """QUIT politely; a connection that already broke, or with an envelope left open or a reply unread
        (see `send`, `send_begin`), is just closed."""
        if self._conn is not None and (self._conn._opened is not None or self._conn.awaiting):
            self._drop()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()

    def __enter__(self) -> SmtpMailer:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def open_mailer(smtp_urls: tuple[str, ...], outbox: Path, timeout: float, index: int = 0) -> Mailer:
    """The mailer for a batch: relay ``index`` (round-robin by the caller) or the outbox when no relay is set."""
    if not smtp_urls:
        return OutboxMailer(outbox)
    return SmtpMailer(smtp_urls[index % len(smtp_urls)], timeout=timeout)

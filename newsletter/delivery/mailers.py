"""Mailers: where messages go. `SmtpMailer` speaks SMTP to a relay; `OutboxMailer` writes a Maildir."""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import socket
import ssl
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import unquote, urlsplit

from newsletter.delivery.errors import classify_exception
from newsletter.mime import DotFree


class Mailer(Protocol):
    """One open channel to a relay, used for one batch. ``send`` raises a `DeliveryError`."""

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


def _stuffed(msg: bytes) -> bytes:
    """The DATA payload with its end marker: dot-stuffing (RFC 5321 §4.5.2) by ``bytes.replace``
    instead of smtplib's regular expression over the whole message (12% of a worker's time at 115 kB),
    built with one copy so it goes out in one write."""
    if isinstance(msg, DotFree):  # no line starts with "." (the message template vouches for it)
        q: bytes = msg
    else:
        q = msg.replace(b"\n.", b"\n..")
        if q[:1] == b".":
            q = b"." + q
    return q + (b".\r\n" if q[-2:] == b"\r\n" else b"\r\n.\r\n")


class _Fast:
    """smtplib.SMTP with a faster DATA and one-recipient sends in one round trip less per command."""

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

    def send_one(self, sender: str, recipient: str, msg: bytes) -> None:
        """``sendmail(sender, [recipient], msg)``; when the relay offers PIPELINING (RFC 2920) MAIL, RCPT
        and DATA go out in one write and their replies are read together: 2 round trips per message
        instead of 4. Raises what `smtplib.SMTP.sendmail` raises for the same replies (after RSET, or
        closing on 421)."""
        conn: smtplib.SMTP = self  # type: ignore[assignment]
        conn.ehlo_or_helo_if_needed()
        if not conn.has_extn("pipelining"):
            conn.sendmail(sender, [recipient], msg)
            return
        size = f" SIZE={len(msg)}" if conn.has_extn("size") else ""
        conn.send(f"MAIL FROM:{quoteaddr(sender)}{size}\r\nRCPT TO:{quoteaddr(recipient)}\r\nDATA\r\n".encode("ascii"))
        mail, rcpt, data = conn.getreply(), conn.getreply(), conn.getreply()
        if mail[0] != 250:
            self._failed(mail[0], data[0])
            raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
        if rcpt[0] not in (250, 251):
            self._failed(rcpt[0], data[0])
            raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
        if data[0] != 354:
            self._failed(data[0], data[0])
            raise smtplib.SMTPDataError(*data)
        conn.send(_stuffed(msg))
        code, resp = conn.getreply()
        if code != 250:
            self._failed(code, 0)
            raise smtplib.SMTPDataError(code, resp)

    def _failed(self, code: int, data_code: int) -> None:
        conn: smtplib.SMTP = self  # type: ignore[assignment]
        if code == 421:
            conn.close()
            return
        if data_code == 354:  # the relay is waiting for a message we will not send: end it empty, then reset
            conn.send(b".\r\n")
            conn.getreply()
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

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        """See `Mailer.send`. On a connection-level failure the connection is dropped, so the next
        call reconnects; a refused recipient keeps the connection (RSET) for the rest of the batch."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            self._conn.send_one(sender, recipient, message)
        except (smtplib.SMTPException, OSError) as exc:
            error = classify_exception(exc, recipient, self.name)
            # smtplib already sent RSET after a refused MAIL, RCPT or DATA; only a closing (421) or
            # broken connection needs a new one.
            if error.smtp_code in (421, None):
                self._drop()
            raise error from exc

    def check(self) -> None:
        """NOOP on an open connection that sat idle; a dead one is dropped, so the next send reconnects
        (a pooled connection the relay closed meanwhile must not defer a message)."""
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
        """QUIT politely; a connection that already broke is just closed."""
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

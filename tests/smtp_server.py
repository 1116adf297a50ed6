"""A real SMTP server (aiosmtpd) under the test's control: records messages, injects failures."""

from __future__ import annotations

import asyncio
import email
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# fault(recipient, attempt_number) -> None to accept, or an SMTP reply line such as "451 4.3.0 busy".
Fault = Callable[[str, int], str | None]


@dataclass
class Recorder:
    """What the server saw: accepted messages, and attempts per recipient."""

    messages: list[EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def by_message_id(self) -> Counter[str]:
        with self.lock:
            return Counter(str(m["Message-ID"]) for m in self.messages)

    def recipients(self) -> Counter[str]:
        with self.lock:
            return Counter(str(m["To"].addresses[0].addr_spec) for m in self.messages)


class Handler:
    """aiosmtpd handler: RCPT faults come from ``rcpt_fault``, DATA faults from ``data_fault``; the reply
    to DATA comes ``data_delay`` seconds after the message arrived (a slow relay), each connection on
    its own (the delay does not hold up the others)."""

    def __init__(
        self,
        recorder: Recorder,
        rcpt_fault: Fault | None = None,
        data_fault: Fault | None = None,
        data_delay: float = 0.0,
        pipelining: bool = True,
    ) -> None:
        self.recorder, self.rcpt_fault, self.data_fault, self.data_delay = recorder, rcpt_fault, data_fault, data_delay
        self.pipelining = pipelining

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        """Announce PIPELINING (RFC 2920) as real relays do (aiosmtpd reads pipelined commands in order but
        does not say so), unless told not to."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        with self.recorder.lock:
            self.recorder.attempts[address] += 1
            attempt = self.recorder.attempts[address]
        reply = self.rcpt_fault(address, attempt) if self.rcpt_fault else None
        if reply:
            with self.recorder.lock:
                self.recorder.rejected[reply[:3]] += 1
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        address = envelope.rcpt_tos[0]
        reply = self.data_fault(address, self.recorder.attempts[address]) if self.data_fault else None
        if reply:
            with self.recorder.lock:
                self.recorder.rejected[reply[:3]] += 1
            return reply
        data: bytes = envelope.original_content or envelope.content
        msg = email.message_from_bytes(data, policy=policy.default)
        with self.recorder.lock:
            self.recorder.raw.append(data)
            self.recorder.messages.append(msg)  # type: ignore[arg-type]
        return "250 2.0.0 queued"


class SMTPServer:
    """Context manager running the server on 127.0.0.1 on a free port."""

    def __init__(
        self, rcpt_fault: Fault | None = None, data_fault: Fault | None = None, data_delay: float = 0.0, pipelining: bool = True
    ) -> None:
        self.recorder = Recorder()
        self.port = free_port()
        self.controller = Controller(
            Handler(self.recorder, rcpt_fault, data_fault, data_delay, pipelining), hostname="127.0.0.1", port=self.port, decode_data=False
        )

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def __enter__(self) -> SMTPServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

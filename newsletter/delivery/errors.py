"""Delivery failures, split into temporary (retry later) and permanent (record, never retry)."""

from __future__ import annotations

import re
import smtplib
import socket

# RFC 3463 §2 / RFC 2034 §4: the enhanced code opens the reply text (not, say, an IP address later on).
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


class DeliveryError(Exception):
    """A failed attempt to hand one message to a relay."""

    def __init__(self, message: str, smtp_code: int | None = None, enhanced_code: str | None = None, relay: str | None = None) -> None:
        super().__init__(message)
        self.message, self.smtp_code, self.enhanced_code, self.relay = message, smtp_code, enhanced_code, relay

    def __repr__(self) -> str:
        fields = f"smtp_code={self.smtp_code!r}, enhanced_code={self.enhanced_code!r}, relay={self.relay!r}"
        return f"{type(self).__name__}({fields}, message={self.message!r})"

    def __str__(self) -> str:
        return f"{self.smtp_code or ''} {self.message}".strip()


class TemporaryDeliveryError(DeliveryError):
    """SMTP 4xx or a connection failure: the same message may succeed later (RFC 5321 §4.2.1)."""


class PermanentDeliveryError(DeliveryError):
    """SMTP 5xx or an invalid recipient: retrying cannot help (RFC 5321 §4.2.1)."""


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def classify_reply(code: int, text: bytes | str, relay: str | None = None) -> DeliveryError:
    """Map an SMTP reply to an error class.

    The basic code decides (RFC 5321 §4.2.1: 4yz transient, 5yz permanent); the RFC 3463 enhanced
    code (``class.subject.detail``) is kept for reporting and decides only when the basic code is
    neither 4yz nor 5yz.
    """
    message = " ".join(_text(text).split())
    match = _ENHANCED.match(message)
    enhanced = ".".join(match.groups()) if match else None
    if 400 <= code < 500:
        return TemporaryDeliveryError(message, code, enhanced, relay)
    if 500 <= code < 600:
        return PermanentDeliveryError(message, code, enhanced, relay)
    if enhanced and enhanced.startswith("5"):
        return PermanentDeliveryError(message, code, enhanced, relay)
    return TemporaryDeliveryError(message, code, enhanced, relay)


def classify_exception(exc: BaseException, recipient: str, relay: str | None = None) -> DeliveryError:
    """Map what smtplib or the socket raised while sending to ``recipient`` to a `DeliveryError`."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = exc.recipients.get(recipient, next(iter(exc.recipients.values()), (451, b"refused")))
        return classify_reply(code, text, relay)
    if isinstance(exc, smtplib.SMTPResponseException):  # SenderRefused, DataError, ...
        return classify_reply(exc.smtp_code, exc.smtp_error, relay)
    if isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError | socket.timeout | TimeoutError | OSError):
        return TemporaryDeliveryError(f"{type(exc).__name__}: {exc}", None, None, relay)
    if isinstance(exc, smtplib.SMTPException):
        return TemporaryDeliveryError(f"{type(exc).__name__}: {exc}", None, None, relay)
    raise exc

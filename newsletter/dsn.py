"""Reading delivery status notifications: RFC 3464 reports (multipart/report; report-type=delivery-status),
and spam complaints from feedback loops: RFC 5965 reports (report-type=feedback-report, ARF).

Pure parsing, no database: `parse_dsn` turns the raw bytes of a bounce into a `Dsn`.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import quopri
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses

# Where the envelope recipient of a DSN shows up once it is stored, most specific first.
RECIPIENT_HEADERS = ("Envelope-To", "X-Original-To", "Delivered-To", "To")
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")  # RFC 3464 §2.3.3
HARD, SOFT, IGNORED, COMPLAINT = "hard", "soft", "ignored", "complaint"
# RFC 5965 §7.3 feedback types that are a recipient's complaint about the message (not-spam, virus,
# auth-failure and other are not: they say nothing about the reader's wish to get mail).
COMPLAINT_TYPES = ("abuse", "fraud")

_STATUS_RE = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})\b")  # RFC 3463 §2: class.subject.detail
_SMTP_CODE_RE = re.compile(r"\s*([245]\d\d)\b")


class NotADsn(ValueError):
    """The message is not a delivery status notification we can read; the text says why."""


@dataclass(frozen=True)
class RecipientStatus:
    """The per-recipient fields of a DSN (RFC 3464 §2.3) that decide what happened."""

    final_recipient: str  # §2.3.2, the address part only
    original_recipient: str | None  # §2.3.1
    action: str  # §2.3.3, lower case
    status: str  # §2.3.4, RFC 3463 ``class.subject.detail``
    diagnostic: str | None  # §2.3.6, whitespace collapsed, type prefix (``smtp;``) removed

    @property
    def kind(self) -> str:
        """``hard`` (failed, class 5), ``soft`` (delayed, or class 4), ``complaint`` (an RFC 5965 abuse report,
        whose ``action`` `parse_dsn` sets to ``complaint``) or ``ignored`` (a success report)."""
        if self.action == COMPLAINT:
            return COMPLAINT
        if self.action == "delayed" or self.status.startswith("4."):
            return SOFT
        if self.action == "failed" and self.status.startswith("5."):
            return HARD
        return IGNORED

    @property
    def smtp_code(self) -> int | None:
        """The SMTP reply code the remote MTA gave (RFC 5321 §4.2), when the diagnostic carries one."""
        match = _SMTP_CODE_RE.match(self.diagnostic or "")
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Dsn:
    """What `parse_dsn` reads from one message."""

    dsn_id: str  # the DSN's Message-ID, or ``sha256:<hex>`` of the message when it has none (or a huge one)
    recipient_addresses: tuple[str, ...]  # from `RECIPIENT_HEADERS`, in that order
    original_message_id: str | None  # from the returned text/rfc822-headers or message/rfc822 part
    recipients: tuple[RecipientStatus, ...]


def _address(value: str | None) -> str | None:
    """``rfc822; ann@example.com`` (RFC 3464 §2.3.1/§2.3.2 address-type; address) -> ``ann@example.com``."""
    if not value:
        return None
    return value.rpartition(";")[2].strip().strip("<>") or None


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status part: per-message fields first, then one per recipient.

    The stdlib parser splits a plain part into one `Message` per block. It does not for an encoded part
    (base64 or quoted-printable), nor for message/global-delivery-status (RFC 6533 §6.2), which it reads
    as one message whose body holds the remaining blocks; those are decoded and split here.
    """
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    blocks: list[Message] = []
    payload = part.get_payload()
    for sub in payload if isinstance(payload, list) else []:
        if len(sub):
            blocks.append(sub)
        rest = sub.get_payload()
        if isinstance(rest, str) and rest.strip():
            if not len(sub) and cte in ("base64", "quoted-printable"):
                raw = base64.b64decode(rest) if cte == "base64" else quopri.decodestring(rest.encode())
                rest = raw.decode("utf-8", "replace")
            for chunk in re.split(r"\r?\n[ \t]*\r?\n", rest):
                if chunk.strip():
                    blocks.append(HeaderParser(policy=email.policy.default).parsestr(chunk.strip() + "\n"))
    return blocks


def _recipient(block: Message) -> RecipientStatus | None:
    action = str(block.get("Action", "")).strip().lower()
    status = _STATUS_RE.match(str(block.get("Status", "")))
    final = _address(block.get("Final-Recipient"))
    if action not in ACTIONS or status is None or final is None:
        return None
    diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
    return RecipientStatus(
        final_recipient=final,
        original_recipient=_address(block.get("Original-Recipient")),
        action=action,
        status=".".join(status.groups()),
        diagnostic=diagnostic.partition(";")[2].strip() if ";" in diagnostic else (diagnostic or None),
    )


def _original_message_id(msg: Message) -> str | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("text/rfc822-headers", "message/global-headers") and isinstance(part.get_payload(), str):
            headers: Message = HeaderParser(policy=email.policy.default).parsestr(part.get_content())
        elif ctype in ("message/rfc822", "message/global-headers", "message/global") and isinstance(part.get_payload(), list):
            headers = part.get_payload()[0]
        else:
            continue
        value = str(headers.get("Message-ID", "")).strip()
        if value:
            return value
    return None


def _complaint(part: Message) -> RecipientStatus:
    """The one "recipient" of an RFC 5965 feedback report: ``Original-Rcpt-To`` (often redacted: then empty,
    and the quoted message's Message-ID finds the delivery), action ``complaint`` for an abuse or fraud
    report, ``feedback`` (ignored) for any other type.

    Raises:
        NotADsn: the report has no ``Feedback-Type`` (RFC 5965 §3.1 requires it).
    """
    payload = part.get_payload()
    fields: Message = (
        payload[0] if isinstance(payload, list) and payload else HeaderParser(policy=email.policy.default).parsestr(str(payload))
    )
    kind = str(fields.get("Feedback-Type", "")).strip().lower()
    if not kind:
        raise NotADsn("a message/feedback-report part without Feedback-Type")
    recipient = _address(str(fields.get("Original-Rcpt-To", ""))) or ""
    action = COMPLAINT if kind in COMPLAINT_TYPES else "feedback"
    return RecipientStatus(final_recipient=recipient, original_recipient=None, action=action, status="", diagnostic=f"feedback: {kind}")


def parse_dsn(raw: bytes) -> Dsn:
    """Read a delivery status notification (RFC 3464; RFC 6522 multipart/report) from raw message bytes.

    Needs a message/delivery-status (or message/global-delivery-status) part with at least one
    per-recipient block carrying ``Final-Recipient``, a known ``Action`` and an RFC 3463 ``Status``; or a
    feedback-loop complaint (RFC 5965 message/feedback-report, see `_complaint`).

    Raises:
        NotADsn: no such part, or no usable per-recipient block.
    """
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = next((p for p in msg.walk() if p.get_content_type() in ("message/delivery-status", "message/global-delivery-status")), None)
    if part is not None:
        blocks = _field_blocks(part)
        recipients = tuple(r for r in (_recipient(b) for b in blocks[1:]) if r is not None)
        if not recipients:
            raise NotADsn("no per-recipient block with Final-Recipient, Action and Status")
    elif (report := next((p for p in msg.walk() if p.get_content_type() == "message/feedback-report"), None)) is not None:
        recipients = (_complaint(report),)
    else:
        raise NotADsn(f"no message/delivery-status or message/feedback-report part (Content-Type: {msg.get_content_type()})")
    addresses = tuple(a for name in RECIPIENT_HEADERS for _, a in getaddresses([str(v) for v in msg.get_all(name, [])]) if a)
    own_id = str(msg.get("Message-ID", "")).strip()
    dsn_id = own_id if 0 < len(own_id) <= 255 else f"sha256:{hashlib.sha256(own_id.encode() if own_id else raw).hexdigest()}"
    return Dsn(dsn_id=dsn_id, recipient_addresses=addresses, original_message_id=_original_message_id(msg), recipients=recipients)

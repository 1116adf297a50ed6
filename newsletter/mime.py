"""MIME message building with the standard library's email package."""

from __future__ import annotations

from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses

from newsletter.models import utcnow


class HeaderInjection(ValueError):
    """A header value carried a line break: refused rather than folded into a new header."""


@dataclass(frozen=True)
class Envelope:
    """The per-message values that go into headers."""

    from_header: str
    to_address: str
    to_name: str
    subject: str
    message_id: str
    list_id: str
    unsubscribe_url: str
    lang: str


def _clean(name: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderInjection(f"{name} contains a line break: {value!r}")
    return value


def ascii_address(address: str) -> str:
    """The address with an internationalised domain in its ASCII (IDNA/UTS 46 "xn--") form, as SMTP
    and the addr-spec of a header need it without SMTPUTF8 (RFC 5890; RFC 2047 §5 forbids
    encoded-words inside an address)."""
    import idna

    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return address
    return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"


def parse_from(from_header: str) -> Address:
    """``"Name <addr@host>"`` -> `Address`.

    Raises:
        HeaderInjection: line breaks in the value.
        ValueError: not exactly one address.
    """
    pairs = getaddresses([_clean("From", from_header)])
    if len(pairs) != 1 or "@" not in pairs[0][1]:
        raise ValueError(f"From must be one address, got {from_header!r}")
    name, addr = pairs[0]
    local, domain = addr.rsplit("@", 1)
    return Address(display_name=name, username=local, domain=domain)


def build_message(env: Envelope, text: str, html: str) -> EmailMessage:
    """A multipart/alternative message (text first, then HTML: RFC 2046 §5.1.4, last is preferred).

    Headers: display names and subject are RFC 2047 encoded when not ASCII (the policy does it);
    ``List-Unsubscribe`` carries the signed https URL and ``List-Unsubscribe-Post`` asks for one-click
    unsubscription (RFC 8058 §3.1); ``List-Id`` follows RFC 2919. Bodies are quoted-printable UTF-8,
    so no line exceeds 76 octets (RFC 5322's 998-octet limit is never near).

    Raises:
        HeaderInjection: a header value carries a line break.
    """
    msg = EmailMessage(policy=SMTP)  # SMTP policy: CRLF line ends when serialised
    msg["From"] = parse_from(env.from_header)
    local, _, domain = ascii_address(_clean("To", env.to_address)).rpartition("@")
    msg["To"] = Address(display_name=_clean("To name", env.to_name), username=local, domain=domain)
    msg["Subject"] = _clean("Subject", env.subject)
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = _clean("Message-ID", env.message_id)
    msg["List-Id"] = f"<{_clean('List-Id', env.list_id)}>"
    msg["List-Unsubscribe"] = f"<{_clean('List-Unsubscribe', env.unsubscribe_url)}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    msg["Content-Language"] = env.lang  # after set_content, which clears Content-* headers
    return msg


def to_bytes(msg: EmailMessage) -> bytes:
    """Serialise with CRLF line ends, as sent over SMTP and stored in the outbox."""
    return msg.as_bytes(policy=SMTP)

"""MIME message building with the standard library's email package."""

from __future__ import annotations

from dataclasses import dataclass
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses

from newsletter.models import utcnow

# Serialising: header objects fold themselves at 78; a raw value (only List-Unsubscribe, see below) is kept whole.
WIRE_POLICY = SMTP.clone(refold_source="none")
# Building: quoted-printable lines of at most 76 characters (RFC 2045 §6.7 rule 5; the SMTP policy's 78 is
# RFC 5322's header limit, which the email package also applies to bodies).
BODY_POLICY = SMTP.clone(max_line_length=76)
MAX_LINE = 998  # octets, RFC 5322 §2.1.1
# Editions whose text is mostly CJK: quoted-printable writes each 3-byte UTF-8 character as 9 characters
# (=E4=B8=AD), base64 as 4, so base64 is the shorter encoding for them (about 0.6x the bytes).
_BASE64_LANGS = frozenset({"zh", "ja", "ko"})


class DotFree(bytes):
    """A serialised message known to have no line that starts with ``.``, so SMTP's DATA needs no
    dot-stuffing (RFC 5321 §4.5.2) and a sender can skip searching 100 kB for one. Made only by
    `newsletter.message_template` for messages it can vouch for (base64 bodies); any change to the
    bytes (a DKIM signature in front, a concatenation) gives plain ``bytes`` again."""


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


def unsubscribe_value(url: str) -> str:
    """``<url>`` for ``List-Unsubscribe`` (RFC 2369 §2), checked to fit one header line.

    Raises:
        HeaderInjection: a line break in the URL.
        ValueError: the URL is not printable ASCII without spaces (RFC 3986), or longer than a line may be.
    """
    value = f"<{_clean('List-Unsubscribe', url)}>"
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise ValueError(f"List-Unsubscribe URL must be printable ASCII without spaces: {url!r}")
    if len(value) + len("List-Unsubscribe: ") > MAX_LINE:
        raise ValueError(f"List-Unsubscribe URL is longer than a header line may be ({MAX_LINE} octets)")
    return value


def list_unsubscribe_line(url: str) -> bytes:
    """The ``List-Unsubscribe`` field with CRLF, as `build_message` + `to_bytes` write it: on one line
    when it fits 78 characters, else folded after the colon, else (a URL longer than a folded line)
    unfolded on one line, since a URL may not be broken or RFC 2047-encoded (RFC 2369 §2, RFC 2047 §5).

    Raises:
        HeaderInjection, ValueError: see `unsubscribe_value`.
    """
    value = unsubscribe_value(url)
    if len(value) + len("List-Unsubscribe: ") <= SMTP.max_line_length or len(value) + 1 > SMTP.max_line_length:
        return f"List-Unsubscribe: {value}\r\n".encode("ascii")
    return f"List-Unsubscribe:\r\n {value}\r\n".encode("ascii")


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


def encoded_subject(subject: str) -> str:
    """``subject`` as RFC 2047 encoded-words folded to 78-character lines (CRLF), every character inside one.

    Python's header folder (3.11-3.12) leaves the space between a non-ASCII word and the next word outside
    the encoded-words when it folds there, and a decoder drops white space between two encoded-words (RFC
    2047 §6.2): "Zürich · Issue 4" reached readers as "Zürich· Issue 4". Text that merely looks like an
    encoded-word (``=?utf-8?q?hi?=`` typed by an editor) is encoded too, so readers see it as typed (§5).
    Each encoded-word holds whole characters (the email package's `Header` splits on character boundaries).
    """
    return Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")


def body_encoding(lang: str) -> str:
    """The Content-Transfer-Encoding of a message's text and HTML parts for language tag ``lang``:
    ``base64`` for Chinese, Japanese and Korean, ``quoted-printable`` otherwise.

    Decided by the language, not by the personalised text, so that every recipient of an edition gets
    the same encoding (and `newsletter.message_template` can encode the edition once). On the bundled
    zh-Hans sample a message is 51 kB in base64 against 79 kB in quoted-printable; for English,
    quoted-printable is 0.75x base64 and keeps the source readable.
    """
    return "base64" if lang.split("-", 1)[0].lower() in _BASE64_LANGS else "quoted-printable"


def build_message(env: Envelope, text: str, html: str) -> EmailMessage:
    """A multipart/alternative message (text first, then HTML: RFC 2046 §5.1.4, last is preferred).

    Headers: display names and subject are RFC 2047 encoded when not ASCII (the policy does it for names,
    `encoded_subject` for a subject, which the policy could fold wrongly);
    ``List-Unsubscribe`` carries the signed https URL (left out when ``unsubscribe_url`` is empty) and
    ``List-Unsubscribe-Post`` asks for one-click
    unsubscription (RFC 8058 §3.1); ``List-Id`` follows RFC 2919. Bodies are UTF-8 in quoted-printable,
    or base64 for CJK languages (`body_encoding`), so no body line exceeds 76 octets (RFC 5322's
    998-octet limit is never near).

    This is the reference for the per-recipient hot path, `newsletter.message_template`.

    Raises:
        HeaderInjection: a header value carries a line break.
        ValueError: see `parse_from` and `unsubscribe_value`.
    """
    msg = EmailMessage(policy=BODY_POLICY)  # CRLF line ends when serialised
    msg["From"] = parse_from(env.from_header)
    local, _, domain = ascii_address(_clean("To", env.to_address)).rpartition("@")
    msg["To"] = Address(display_name=_clean("To name", env.to_name), username=local, domain=domain)
    subject = _clean("Subject", env.subject)
    if subject.isascii() and "=?" not in subject:
        msg["Subject"] = subject
    else:
        msg.set_raw("Subject", encoded_subject(subject))
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = _clean("Message-ID", env.message_id)
    msg["List-Id"] = f"<{_clean('List-Id', env.list_id)}>"
    if env.unsubscribe_url:  # empty: a message that is not list mail (a sign-up's confirmation request)
        unsubscribe = unsubscribe_value(env.unsubscribe_url)
        if len(unsubscribe) + 1 <= SMTP.max_line_length:
            msg["List-Unsubscribe"] = unsubscribe
        else:
            # Too long for a folded line: the email package would turn it into RFC 2047 encoded-words,
            # which RFC 2369 clients do not decode (one-click unsubscribe would break). Keep it whole.
            msg.set_raw("List-Unsubscribe", unsubscribe)
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    cte = body_encoding(env.lang)
    msg.set_content(text, subtype="plain", charset="utf-8", cte=cte)
    msg.add_alternative(html, subtype="html", charset="utf-8", cte=cte)
    msg["Content-Language"] = env.lang  # after set_content, which clears Content-* headers
    return msg


def to_bytes(msg: EmailMessage) -> bytes:
    """Serialise with CRLF line ends, as sent over SMTP and stored in the outbox."""
    return msg.as_bytes(policy=WIRE_POLICY)

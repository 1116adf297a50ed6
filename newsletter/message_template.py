"""An edition's message encoded once with the email package; per recipient only personal bytes are filled in.

`MessageTemplate.build` runs `mime.build_message` once per edition, with the personal markers
(``@@NL_GREETING@@`` …) still in the text and HTML, and keeps its serialised bytes: headers, MIME
structure, boundary and quoted-printable bodies. `MessageTemplate.render` then writes one recipient's
message by copying those bytes and filling in only what is personal:

- the ``To``, ``Date``, ``Message-ID`` and ``List-Unsubscribe`` header fields;
- the body lines that hold a marker. Quoted-printable allows a soft line break anywhere (RFC 2045
  §6.7 rule 5), so each such line is cut at its markers: the text around them is encoded at build time
  and each value is encoded per recipient (HTML-escaped in the HTML part), every piece ending in a
  soft break, so no line exceeds 76 characters and no other line is touched.

The result decodes to the same headers and parts as `mime.build_message` with `rendering.personalise`
(the reference, compared in tests/test_message_template.py) and is the final message: a signer such
as DKIM can take it as it is.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.policy import SMTP
from email.utils import format_datetime
from functools import lru_cache

from newsletter.mime import DotFree, Envelope, HeaderInjection, ascii_address, build_message, list_unsubscribe_line, to_bytes
from newsletter.rendering import PLACEHOLDER

MAX_HEADER_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")  # RFC 5322 §3.2.3
_ATOMS = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")  # a phrase of atoms separated by single spaces
_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+>")  # printable ASCII, no < > inside
_EW_BYTES = 45  # RFC 2047 §2: an encoded-word is at most 75 characters; =?utf-8?b?<60 base64 chars>?= is 72
_SOFT = b"=\r\n"
_PERSONAL_HEADERS = {b"to": "to", b"date": "date", b"message-id": "message-id", b"list-unsubscribe": "list-unsubscribe"}

_MARKER = re.compile(PLACEHOLDER.pattern.encode("ascii"))
_B64_LINE = 76  # base64 characters per line (57 octets), as the email package writes them (RFC 2045 §6.8)

_date_cache: tuple[int, bytes] = (0, b"")


def _clean(name: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderInjection(f"{name} contains a line break: {value!r}")
    return value


def qp_encode(data: bytes) -> bytes:
    """Quoted-printable octets (RFC 2045 §6.7) of text holding no line break, with CRLF soft breaks so
    that no line exceeds 76 characters. Whitespace at the end is encoded (rule 3)."""
    if not data:
        return b""
    return binascii.b2a_qp(data, quotetabs=False, istext=False, header=False).replace(b"=\n", _SOFT)


def _qp_piece(data: bytes) -> bytes:
    """`qp_encode` followed by a soft break, its last line shortened to leave room for the ``=``."""
    encoded = qp_encode(data)
    if not encoded:
        return b""
    start = encoded.rfind(b"\n") + 1
    if len(encoded) - start >= 76:  # move the last character (or =XX escape) to a line of its own
        cut = len(encoded) - (3 if encoded[-3:-2] == b"=" else 1)
        encoded = encoded[:cut] + _SOFT + encoded[cut:]
    return encoded + _SOFT


def _email_package_field(name: str, value: object) -> bytes:
    """One header field folded by the email package exactly as `mime.build_message` + `mime.to_bytes` do."""
    return SMTP.header_factory(name, value).fold(policy=SMTP).encode("ascii", "surrogateescape")


def to_field(address: str, name: str) -> bytes:
    """The ``To:`` field (with CRLF) for one recipient: the address with its domain in IDNA form and the
    display name as atoms, a quoted-string, or one RFC 2047 encoded-word (RFC 5322 §3.4, RFC 2047 §5).

    Names the fast path does not cover (runs of spaces, control characters, more than 45 UTF-8 bytes,
    "=?" in ASCII, a local part that needs quoting, a line over 78 characters) are folded by the email
    package, as the reference does.

    Raises:
        HeaderInjection: a line break in the address or name.
    """
    address = ascii_address(_clean("To", address))
    name = _clean("To name", name)
    local, _, domain = address.rpartition("@")
    phrase: str | None = None
    if _DOT_ATOM.fullmatch(local) and _DOT_ATOM.fullmatch(domain) and name == " ".join(name.split()) and name.isprintable():
        if not name:
            phrase = ""
        elif name.isascii():
            if "=?" not in name:  # a parser would decode it as an encoded-word
                phrase = name if _ATOMS.fullmatch(name) else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            data = name.encode("utf-8")
            if len(data) <= _EW_BYTES:
                phrase = "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="
    if phrase is not None:
        line = f"To: {phrase} <{address}>" if phrase else f"To: {address}"
        if len(line) <= MAX_HEADER_LINE:
            return line.encode("ascii") + b"\r\n"
    return _email_package_field("To", Address(display_name=name, username=local, domain=domain))


def message_id_field(message_id: str) -> bytes:
    """The ``Message-ID:`` field (with CRLF).

    Raises:
        HeaderInjection: a line break in the value.
    """
    _clean("Message-ID", message_id)
    if _MSG_ID.fullmatch(message_id) and len(message_id) + 12 <= MAX_HEADER_LINE:
        return b"Message-ID: " + message_id.encode("ascii") + b"\r\n"
    return _email_package_field("Message-ID", message_id)


def date_field(now: float | None = None) -> bytes:
    """The ``Date:`` field (with CRLF) for ``now`` (epoch seconds; default: the current time), formatted
    once per second (RFC 5322 §3.3)."""
    global _date_cache
    second = int(time.time() if now is None else now)
    if _date_cache[0] != second:
        stamp = format_datetime(datetime.fromtimestamp(second, UTC))
        _date_cache = (second, b"Date: " + stamp.encode("ascii") + b"\r\n")
    return _date_cache[1]


class MessageTemplate:
    """One edition's message, serialised once; `render` writes a recipient's bytes.

    Pieces are static bytes, a personal header name, or a marker line: a tuple of encoded static
    bytes (each ending in a soft break) and marker names, and whether values are HTML-escaped.
    """

    def __init__(self, pieces: list[_Piece]) -> None:
        self._pieces = pieces
        # True when no rendered line can start with ".": every line starts in a static piece that has no
        # such line, a header field (a name, or folding whitespace) or base64 (no "." in its alphabet).
        # A quoted-printable line with a personal value could (a value is encoded where it falls).
        self.dot_free = all(
            (b"\n." not in p and not p.startswith(b".")) if isinstance(p, bytes) else not isinstance(p, tuple) for p in pieces
        )

    @classmethod
    def build(cls, from_header: str, subject: str, list_id: str, lang: str, text: str, html_doc: str) -> MessageTemplate:
        """Build and encode the message once with `mime.build_message`, markers in place.

        Raises:
            HeaderInjection, ValueError: as `mime.build_message` (From, Subject, List-Id).
        """
        probe = Envelope(from_header, "recipient@example.invalid", "", subject, "<template@example.invalid>", list_id,
                         "https://example.invalid/", lang)  # fmt: skip
        msg = build_message(probe, text, html_doc)
        raw = to_bytes(msg)
        boundary = msg.get_boundary()
        if boundary is None:
            raise ValueError("the message has no multipart boundary")
        head, _, body = raw.partition(b"\r\n\r\n")
        pieces: list[_Piece] = []

        def static(data: bytes) -> None:
            if pieces and isinstance(pieces[-1], bytes):
                pieces[-1] += data
            else:
                pieces.append(data)

        for field in re.split(rb"\r\n(?![ \t])", head):
            slot = _PERSONAL_HEADERS.get(field.split(b":", 1)[0].strip().lower())
            if slot:
                pieces.append(slot)
            else:
                static(field + b"\r\n")
        static(b"\r\n")

        delimiter = b"--" + boundary.encode("ascii")
        in_body = escape = False
        cte = b""
        logical: list[bytes] = []
        part: list[bytes] = []  # a base64 part's lines, read whole at its end

        def end_base64_part() -> None:
            blank = 0
            while blank < len(part) and part[-1 - blank] == b"":  # the CRLF before the delimiter belongs to it
                blank += 1
            encoded = part[: len(part) - blank]
            decoded = binascii.a2b_base64(b"".join(encoded))
            if b"@@NL_" in decoded:
                pieces.append(_Base64Body(decoded, escape))
            else:
                static(b"".join(line + b"\r\n" for line in encoded))
            static(b"\r\n" * blank)
            part.clear()

        lines = body.split(b"\r\n")
        for line in lines[:-1]:  # every line is followed by CRLF; the last element is what follows the last one
            if line.startswith(delimiter):
                if in_body and cte == b"base64":
                    end_base64_part()
                in_body = escape = False
                cte = b""
                static(line + b"\r\n")
            elif not in_body:
                lower = line.lower()
                if lower.startswith(b"content-type:"):
                    escape = b"text/html" in lower
                elif lower.startswith(b"content-transfer-encoding:"):
                    cte = lower.split(b":", 1)[1].strip()
                in_body = line == b""
                static(line + b"\r\n")
            elif cte == b"base64":
                part.append(line)
            elif cte != b"quoted-printable":  # 7bit or 8bit: not ours to rewrite (its markers stay unfound)
                static(line + b"\r\n")
            else:
                logical.append(line)
                if line.endswith(b"="):  # a soft line break: the logical line goes on
                    continue
                encoded = b"\r\n".join(logical)
                logical = []
                decoded = binascii.a2b_qp(encoded)
                if b"@@NL_" in decoded:
                    pieces.append((_marker_line(decoded.decode("utf-8")), escape))
                else:
                    static(encoded + b"\r\n")
        if part:
            end_base64_part()
        static(lines[-1])
        found = sum(
            len(p.names) if isinstance(p, _Base64Body) else sum(isinstance(c, str) for c in p[0])
            for p in pieces
            if isinstance(p, tuple | _Base64Body)
        )
        expected = len(PLACEHOLDER.findall(text)) + len(PLACEHOLDER.findall(html_doc))
        if found != expected:  # e.g. a body neither quoted-printable nor base64: never send markers unfilled
            raise ValueError(f"message template: {expected - found} of {expected} personal markers not found in the encoded message")
        return cls(pieces)

    def render(self, *, to_address: str, to_name: str, message_id: str, unsubscribe_url: str, values: Mapping[str, str]) -> bytes:
        """One recipient's message: CRLF line ends, ready for SMTP (or a signer) as it is.

        Raises:
            HeaderInjection: a line break in the address, name, Message-ID or URL.
            ValueError: an address or URL that cannot be written in a header.
            KeyError: a marker has no value.
        """
        fields = {
            "to": to_field(to_address, to_name),
            "date": date_field(),
            "message-id": message_id_field(message_id),
            "list-unsubscribe": list_unsubscribe_line(unsubscribe_url),
        }
        escaped: dict[str, str] = {}
        out: list[bytes] = []
        for piece in self._pieces:
            if isinstance(piece, bytes):
                out.append(piece)
            elif isinstance(piece, str):
                out.append(fields[piece])
            elif isinstance(piece, _Base64Body):
                out.append(piece.render(values, escaped))
            else:
                chunks, escape = piece
                line: list[bytes] = []
                for chunk in chunks:
                    if isinstance(chunk, bytes):
                        line.append(chunk)
                        continue
                    line.append(_qp_piece(_escaped(chunk, values, escape, escaped).encode("utf-8")))
                joined = b"".join(line)
                out.append(joined[:-3] + b"\r\n" if joined.endswith(_SOFT) else joined + b"\r\n")
        return DotFree(b"".join(out)) if self.dot_free else b"".join(out)


def _escaped(name: str, values: Mapping[str, str], escape: bool, cache: dict[str, str]) -> str:
    if not escape:
        return values[name]
    value = cache.get(name)
    if value is None:
        value = cache[name] = html.escape(values[name], quote=True)
    return value


def b64_lines(data: bytes) -> bytes:
    """``data`` in base64, in lines of at most 76 characters, each ending in CRLF (RFC 2045 §6.8).

    Lines may be shorter than 76 characters; a decoder joins them, so as long as every piece but the
    last encodes a multiple of 3 octets (no ``=`` padding inside), pieces encoded apart concatenate
    into one valid body.
    """
    if not data:
        return b""
    encoded = binascii.b2a_base64(data, newline=False)
    if len(encoded) <= _B64_LINE:
        return encoded + b"\r\n"
    return b"".join(encoded[i : i + _B64_LINE] + b"\r\n" for i in range(0, len(encoded), _B64_LINE))


class _Base64Run:
    """A static run of a base64 part's decoded octets, encoded at build time for each alignment it can
    start at: after ``k`` octets (0, 1 or 2) completed the group of 3 the previous value left open.
    ``variants[k]`` is (the k octets that complete that group, the encoded lines of the rest cut to a
    multiple of 3, the 0-2 octets left over), or None when the run is shorter than k."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.variants: list[tuple[bytes, bytes, bytes] | None] = []
        for k in range(3):
            if len(data) < k:
                self.variants.append(None)
                continue
            whole = k + (len(data) - k) // 3 * 3
            self.variants.append((data[:k], b64_lines(data[k:whole]), data[whole:]))

    def emit(self, carry: bytes, out: list[bytes]) -> bytes:
        """Append this run's lines after the 0-2 octets ``carry`` still to encode; returns the new carry."""
        variant = self.variants[(3 - len(carry)) % 3]
        if variant is None:
            return carry + self.data  # fewer than 3 octets in all
        head, encoded, tail = variant
        if carry:
            out.append(b64_lines(carry + head))  # exactly 3 octets
        out.append(encoded)
        return tail


class _Base64Body:
    """A base64 part with markers (`mime.body_encoding`: CJK editions): its decoded octets cut at the
    markers. Per recipient only the values and the octets around them are encoded (a few short lines
    each); every static run's lines come from build time (`_Base64Run`)."""

    def __init__(self, decoded: bytes, escape: bool) -> None:
        cut = _MARKER.split(decoded)  # static, name, static, name, ..., static
        self.runs = [_Base64Run(run) for run in cut[0::2]]
        self.names = [name.decode("ascii") for name in cut[1::2]]
        self.escape = escape

    def render(self, values: Mapping[str, str], escaped: dict[str, str]) -> bytes:
        """The part's body lines for one recipient (each ending in CRLF).

        Raises:
            KeyError: a marker has no value.
        """
        out: list[bytes] = []
        carry = self.runs[0].emit(b"", out)
        for name, run in zip(self.names, self.runs[1:], strict=True):
            data = carry + _escaped(name, values, self.escape, escaped).encode("utf-8")
            whole = len(data) // 3 * 3
            out.append(b64_lines(data[:whole]))
            carry = run.emit(data[whole:], out)
        out.append(b64_lines(carry))  # the last group, padded with "="
        return b"".join(out)


_Piece = bytes | str | tuple[tuple[bytes | str, ...], bool] | _Base64Body


def _marker_line(decoded: str) -> tuple[bytes | str, ...]:
    """A body line with markers as encoded static pieces (each ending in a soft break) and marker names."""
    chunks: list[bytes | str] = []
    last = 0
    for match in PLACEHOLDER.finditer(decoded):
        if match.start() > last:
            chunks.append(_qp_piece(decoded[last : match.start()].encode("utf-8")))
        chunks.append(match.group(1))
        last = match.end()
    if last < len(decoded):
        chunks.append(_qp_piece(decoded[last:].encode("utf-8")))
    return tuple(chunks)


@lru_cache(maxsize=32)
def edition_template(from_header: str, subject: str, list_id: str, lang: str, text: str, html_doc: str) -> MessageTemplate:
    """`MessageTemplate.build`, kept per process for the editions in use (a batch of 100 needs it once)."""
    return MessageTemplate.build(from_header, subject, list_id, lang, text, html_doc)

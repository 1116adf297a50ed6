"""DKIM signing of outgoing messages (RFC 6376): one signature per final, personalised message.

Canonicalisation is done here on bytes (relaxed/relaxed, RFC 6376 §3.4.2 and §3.4.4) and the RSA
signature by OpenSSL through `cryptography`: about 1 ms per 115 kB message where dkimpy (pure-Python
RSA and canonicalisation) took about 50 ms. dkimpy verifies our signatures in tests/test_dkim.py.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

# Signed header fields (RFC 6376 §5.4). RFC 8058 §4 requires List-Unsubscribe and List-Unsubscribe-Post to
# be covered, so a receiver can trust the one-click URL. The fields named twice are "over-signed" (§5.4.2):
# the signature also covers the absence of a second instance, so nobody on the way can add another From,
# Subject or unsubscribe target without breaking it.
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from", b"from", b"to", b"subject", b"subject", b"date", b"message-id",
    b"list-unsubscribe", b"list-unsubscribe", b"list-unsubscribe-post", b"list-unsubscribe-post",
    b"list-id", b"mime-version", b"content-type", b"content-language",
)  # fmt: skip


@dataclass(frozen=True)
class DkimKey:
    """A signing identity: ``selector`` and ``domain`` (the ``s=`` and ``d=`` tags) and the RSA private key (PEM).

    ``repr`` never shows the key.
    """

    selector: str
    domain: str
    private_key: bytes

    def __repr__(self) -> str:
        return f"DkimKey(selector={self.selector!r}, domain={self.domain!r}, private_key=***)"


def load_key(selector: str, path: Path, from_address: str) -> DkimKey:
    """Read and check the private key once; the domain is the From address's (DMARC alignment).

    Raises:
        ValueError: the file cannot be read, or it is not a PEM RSA private key (one line saying which).
    """
    domain = from_address.rsplit("@", 1)[-1].strip("> ").lower()
    if not selector.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"selector {selector!r} is not a DNS label")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the key: {exc.strerror}") from exc
    try:
        _private_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM RSA private key (make one with: openssl genrsa -out dkim.pem 2048)") from exc
    return DkimKey(selector=selector, domain=domain, private_key=data)


@lru_cache(maxsize=4)
def _private_key(pem: bytes) -> Any:
    """The parsed RSA key, once per process and key.

    Raises:
        ValueError: not a PEM private key, or not RSA.
    """
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA key")
    return key


_WSP_RUN = re.compile(rb"[ \t]+")
_FIELD_START = re.compile(rb"\r\n(?![ \t])")


def relaxed_body(body: bytes) -> bytes:
    """The "relaxed" body canonicalisation (RFC 6376 §3.4.4) of a CRLF body: runs of white space become
    one SP, white space at line ends and empty lines at the end go, and a non-empty body ends in CRLF."""
    # bytes.replace instead of a regular expression: 30x faster over a 115 kB message.
    body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    body = body.replace(b" \r\n", b"\r\n").rstrip(b" \r\n")
    return body + b"\r\n" if body else b""


def relaxed_header(field: bytes) -> bytes:
    """The "relaxed" canonicalisation (RFC 6376 §3.4.2) of one header field ``Name: value`` (folded or
    not, without its final CRLF): lower-case name, unfolded, white space runs as one SP, none around the
    colon or at the end."""
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value


def _fold(text: str, width: int = 76) -> str:
    """Fold a header line at spaces (CRLF inserted before a space), lines at most ``width`` where possible."""
    out, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    out.append(line)
    return "\r\n ".join(out)


def signed(message: bytes, key: DkimKey | None) -> bytes:
    """``message`` signed with ``key`` (`sign`), or as it is when DKIM is not configured (``key`` None).

    For the messages sent outside an issue's batches (subscription notices, test sends): with DKIM set, only
    issue deliveries were signed, so a confirmation request, the first message a reader gets, went out
    unsigned and a test send did not show what readers receive.
    """
    return message if key is None else sign(message, key)


def sign(message: bytes, key: DkimKey) -> bytes:
    """``message`` (CRLF line ends, as sent) with a ``DKIM-Signature`` header field prepended.

    rsa-sha256, relaxed/relaxed canonicalisation (RFC 6376 §3.4.2, §3.4.4: survives a relay re-folding
    headers or trimming trailing white space); the header list is `SIGNED_HEADERS` (those present;
    the names listed twice over-sign, §5.4.2). The signed fields are taken from the bottom up (§5.4.2).

    Raises:
        ValueError: a malformed message (no header/body separator) or an unusable key.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("DKIM signing failed: the message has no empty line after its header")
    fields: dict[bytes, list[bytes]] = {}
    for field in _FIELD_START.split(head):
        fields.setdefault(field.partition(b":")[0].strip().lower(), []).append(field)
    names = [n for n in SIGNED_HEADERS if n in fields]
    used: dict[bytes, int] = {}
    signed = []
    for n in names:
        instances = fields[n]
        k = used.get(n, 0)
        used[n] = k + 1
        if k < len(instances):  # an over-signed name with no instance left contributes nothing
            signed.append(relaxed_header(instances[len(instances) - 1 - k]) + b"\r\n")
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
    tags = (
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={key.domain.encode('idna').decode()}; "
        f"s={key.selector}; h={' : '.join(n.decode() for n in names)}; bh={bh}; b="
    )
    unsigned = _fold(tags)
    data = b"".join(signed) + relaxed_header(unsigned.encode("ascii"))
    try:
        signature = _private_key(key.private_key).sign(data, padding.PKCS1v15(), hashes.SHA256())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"DKIM signing failed: {exc}") from exc
    b = base64.b64encode(signature).decode()
    folded_b = "\r\n ".join(b[i : i + 72] for i in range(0, len(b), 72))
    return (unsigned + folded_b + "\r\n").encode("ascii") + message

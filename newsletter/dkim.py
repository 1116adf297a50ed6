"""DKIM signing of outgoing messages (RFC 6376) with dkimpy: one signature per final, personalised message."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    import dkim.crypto

    domain = from_address.rsplit("@", 1)[-1].strip("> ").lower()
    if not selector.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"selector {selector!r} is not a DNS label")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the key: {exc.strerror}") from exc
    try:
        dkim.crypto.parse_pem_private_key(data)
    except (dkim.crypto.UnparsableKeyError, ValueError, IndexError) as exc:
        raise ValueError("not a PEM RSA private key (make one with: openssl genrsa -out dkim.pem 2048)") from exc
    return DkimKey(selector=selector, domain=domain, private_key=data)


def sign(message: bytes, key: DkimKey) -> bytes:
    """``message`` (CRLF line ends, as sent) with a ``DKIM-Signature`` header field prepended.

    rsa-sha256, relaxed/relaxed canonicalisation (RFC 6376 §3.4.2, §3.4.4: survives a relay re-folding
    headers or trimming trailing white space); the header list is `SIGNED_HEADERS`.

    Raises:
        ValueError: dkimpy could not sign (a malformed message).
    """
    import dkim

    try:
        signature = dkim.sign(
            message,
            key.selector.encode("ascii"),
            key.domain.encode("idna"),
            key.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(SIGNED_HEADERS),
            linesep=b"\r\n",
        )
    except dkim.DKIMException as exc:
        raise ValueError(f"DKIM signing failed: {exc}") from exc
    return signature + message

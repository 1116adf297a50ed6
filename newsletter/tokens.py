"""Signed, URL-safe tokens for unsubscribe, preference and confirmation links (HMAC-SHA256, RFC 2104).

A token names a subscriber by id, never by address: a forwarded message's link acts on its subscriber
whatever address it was delivered to, and the address never appears in a URL (or a server log).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence


class BadToken(ValueError):
    """The token is malformed or its signature does not match."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(secret: str, purpose: str, subscriber_id: int, issue_id: int = 0) -> str:
    """A token binding ``purpose`` (e.g. ``"unsubscribe"``) to a subscriber and issue.

    Shape: ``<subscriber>.<issue>.<22-char signature>``; the signature is the first 128 bits of
    HMAC-SHA256 over ``purpose:subscriber:issue``, which no one can forge without ``secret``.
    """
    payload = f"{subscriber_id}.{issue_id}"
    mac = hmac.new(secret.encode(), f"{purpose}:{payload}".encode(), hashlib.sha256).digest()[:16]
    return f"{payload}.{_b64(mac)}"


def verify(secret: str | Sequence[str], purpose: str, token: str) -> tuple[int, int]:
    """Check a token made by `sign` and return ``(subscriber_id, issue_id)``.

    ``secret`` may be several keys (``Settings.secret_keys``, newest first): a token signed with any of
    them is good, so rotating the key does not break the links already in subscribers' mailboxes.

    Raises:
        BadToken: malformed, or signed for another purpose or with none of the secrets.
    """
    secrets = (secret,) if isinstance(secret, str) else tuple(secret)
    try:
        sub, issue, mac = token.split(".")
        subscriber_id, issue_id = int(sub), int(issue)
    except ValueError as exc:
        raise BadToken("malformed token") from exc
    if f"{subscriber_id}.{issue_id}" != f"{sub}.{issue}":
        raise BadToken("malformed token")  # "+7" or "007": not the text that was signed
    for key in secrets:
        expected = hmac.new(key.encode(), f"{purpose}:{sub}.{issue}".encode(), hashlib.sha256).digest()[:16]
        # Compare the text, not decoded bytes: base64 decoders ignore spare bits and padding, which would
        # let several spellings of one signature pass.
        if hmac.compare_digest(mac.encode("ascii", "replace"), _b64(expected).encode()):
            return subscriber_id, issue_id
    raise BadToken("bad signature")


class ExpiredToken(BadToken):
    """The token's signature holds but its time ran out (``expired_at``: Unix seconds)."""

    def __init__(self, expired_at: int) -> None:
        super().__init__("expired")
        self.expired_at = expired_at


def sign_until(secret: str, purpose: str, subscriber_id: int, expires_at: float) -> str:
    """A token like `sign` that is good until ``expires_at`` (Unix seconds), which it carries in the
    second field, so the expiry is signed with the rest (a confirmation link of a sign-up)."""
    return sign(secret, purpose, subscriber_id, int(expires_at))


def verify_until(secret: str | Sequence[str], purpose: str, token: str, now: float) -> int:
    """Check a token made by `sign_until` at ``now`` (Unix seconds) and return the subscriber id.

    Raises:
        ExpiredToken: the signature holds, but ``now`` is past its expiry.
        BadToken: see `verify`.
    """
    subscriber_id, expires_at = verify(secret, purpose, token)
    if now > expires_at:
        raise ExpiredToken(expires_at)
    return subscriber_id


def message_id(secret: str, issue_id: int, subscriber_id: int, domain: str) -> str:
    """The deterministic Message-ID (RFC 5322 §3.6.4) of one delivery.

    The same (issue, subscriber) always yields the same id, so a re-sent message is recognisable as
    the same message; the keyed hash keeps subscriber ids from being guessable in it. The id is stored
    on the delivery row when it is planned and read from there at send time, so a key rotation while
    an issue is under way does not change the id of a message already planned.
    """
    mac = hmac.new(secret.encode(), f"msgid:{issue_id}:{subscriber_id}".encode(), hashlib.sha256).hexdigest()[:16]
    return f"<issue{issue_id}.{subscriber_id}.{mac}@{domain}>"

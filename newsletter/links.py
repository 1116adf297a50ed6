"""The signed links of messages and reader pages: unsubscribe (RFC 8058), preferences, confirmation.

Each names the subscriber by id (never the address) and is signed with the first secret key; the
reader pages verify with every key, so a key rotation keeps the links in mailboxes working.
"""

from __future__ import annotations

import time

from newsletter.config import Settings
from newsletter.tokens import sign, sign_until


def unsubscribe_url(settings: Settings, subscriber_id: int, issue_id: int = 0) -> str:
    """The signed one-click unsubscribe URL (RFC 8058) for a subscriber and the issue it came with
    (``0``: not an issue). The issue decides what leaving means: an issue sent to a topic segment
    offers leaving that topic only (see `newsletter.signup.leave`)."""
    return f"{settings.base_url}/unsubscribe/{sign(settings.secret_key, 'unsubscribe', subscriber_id, issue_id)}"


def preferences_url(settings: Settings, subscriber_id: int) -> str:
    """The signed preferences URL for a subscriber."""
    return f"{settings.base_url}/preferences/{sign(settings.secret_key, 'preferences', subscriber_id)}"


def confirm_url(settings: Settings, subscriber_id: int, now: float | None = None) -> str:
    """The signed confirmation URL of a sign-up, good for ``settings.confirm_hours`` from ``now`` (Unix seconds)."""
    expires = (time.time() if now is None else now) + settings.confirm_hours * 3600
    return f"{settings.base_url}/confirm/{sign_until(settings.secret_key, 'confirm', subscriber_id, expires)}"

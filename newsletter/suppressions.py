"""Suppressions: addresses that must never be mailed again, and the subscriber status that goes with them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.models import Subscriber, SubscriberStatus, Suppression, utcnow

# RFC 3463 §3.2 "Addressing status": the mailbox or its domain does not exist (5.1.1 bad destination
# mailbox, 5.1.2 bad destination system, 5.1.3 bad address syntax, 5.1.6 mailbox moved, 5.1.10 null MX).
# A relay refusing such an address permanently is as final as a hard bounce. Other permanent codes
# (5.7.x policy, 5.2.2 mailbox full, 5.3.4 too big) say nothing final about the address.
DEAD_ADDRESS_CODES = ("5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10")


def suppress(session: Session, address: str, reason: str, detail: str) -> bool:
    """Insert a suppression unless the address already has one (whatever its reason). True if inserted.

    Does not commit.
    """
    module: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = module.insert(Suppression).values(email=address, reason=reason, detail=detail[:2000], created_at=utcnow())
    return bool(session.execute(stmt.on_conflict_do_nothing(index_elements=["email"])).rowcount)


def mark_bounced(session: Session, subscriber_id: int, address: str) -> None:
    """Set the subscriber ``bounced``, only while it still has ``address`` and only over ``active`` or
    ``pending`` (never over a status that says more: unsubscribed, complained). Does not commit."""
    session.execute(
        update(Subscriber)
        .where(
            Subscriber.id == subscriber_id,
            Subscriber.email == address,
            Subscriber.status.in_([SubscriberStatus.ACTIVE, SubscriberStatus.PENDING]),
        )
        .values(status=SubscriberStatus.BOUNCED)
        .execution_options(synchronize_session=False)
    )


def mark_complained(session: Session, subscriber_id: int, address: str) -> None:
    """Set the subscriber ``complained`` (a feedback-loop spam report), only while it still has ``address``:
    over any other status, since a complaint says the most (no confirmation click brings it back, see
    `newsletter.signup`). Does not commit."""
    session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id, Subscriber.email == address, Subscriber.status != SubscriberStatus.COMPLAINED)
        .values(status=SubscriberStatus.COMPLAINED)
        .execution_options(synchronize_session=False)
    )


def is_dead_address(enhanced_code: str | None) -> bool:
    """Whether an RFC 3463 code says the address itself does not exist (see `DEAD_ADDRESS_CODES`)."""
    return enhanced_code in DEAD_ADDRESS_CODES

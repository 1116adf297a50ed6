"""Erasing a subscriber's personal data on request (GDPR Art. 17), keeping the delivery record anonymous.

The subscriber row stays as a tombstone (status ``erased``, a placeholder address under the reserved
``.invalid`` domain, RFC 2606) so every delivery keeps pointing at something and per-issue counts are
unchanged; the address is replaced in the deliveries and bounce events, and wherever an SMTP error
quoted it. A suppression stays only as a SHA-256 of the address, and only if the address was
suppressed: the hash lets `is_erased_suppressed` refuse a later import of the same address.
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from newsletter.models import BounceEvent, Delivery, DeliveryStatus, Notice, Subscriber, SubscriberStatus, Suppression, utcnow

HASH_PREFIX = "sha256:"


def address_hash(address: str) -> str:
    """What the suppression list keeps of an erased address: ``sha256:`` and the hex digest of it in lower case."""
    return HASH_PREFIX + hashlib.sha256(address.strip().lower().encode()).hexdigest()


def placeholder(subscriber_id: int) -> str:
    """The address an erased subscriber's rows carry instead of theirs (never deliverable: RFC 2606 ``.invalid``)."""
    return f"erased-{subscriber_id}@erased.invalid"


def is_erased_suppressed(session: Session, address: str) -> bool:
    """Whether ``address`` belonged to an erased subscriber who had been suppressed (unsubscribed, bounced...)."""
    return session.scalar(select(Suppression.id).where(Suppression.email == address_hash(address))) is not None


def erased_suppressed_hashes(session: Session) -> frozenset[str]:
    """Every `address_hash` the suppression list keeps (erased, suppressed addresses), for an import to
    test each row against in memory (``address_hash(a) in hashes`` is `is_erased_suppressed`) instead of
    querying once per row."""
    return frozenset(session.scalars(select(Suppression.email).where(Suppression.email.startswith(HASH_PREFIX, autoescape=True))))


def _scrub(text: str | None, address: str, replacement: str) -> str | None:
    return None if text is None else re.sub(re.escape(address), replacement, text, flags=re.IGNORECASE)


def erase_subscriber(session: Session, subscriber_id: int) -> bool:
    """Erase one subscriber's personal data; commits. Returns False for an unknown or already erased id.

    Deliveries not yet sent are skipped (reason ``erased``); a message already handed to a worker may
    still go out once.
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.status == SubscriberStatus.ERASED:
        return False
    address, stand_in, now = subscriber.email, placeholder(subscriber_id), utcnow()
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]))
        .values(status=DeliveryStatus.SKIPPED, skip_reason="erased", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    for delivery in session.scalars(select(Delivery).where(Delivery.subscriber_id == subscriber_id)):
        delivery.email = stand_in
        delivery.last_error = _scrub(delivery.last_error, address, "<erased>")
    # Notices hold the address, the name and signed links: none is kept, sent or not (a queued one is never sent).
    session.execute(delete(Notice).where((Notice.subscriber_id == subscriber_id) | (Notice.email == address)))
    for event in session.scalars(select(BounceEvent).where((BounceEvent.subscriber_id == subscriber_id) | (BounceEvent.email == address))):
        event.email = stand_in
        event.diagnostic = _scrub(event.diagnostic, address, "<erased>")
    suppression = session.scalar(select(Suppression).where(Suppression.email == address))
    if suppression is not None:
        hashed = address_hash(address)
        if session.scalar(select(Suppression.id).where(Suppression.email == hashed)) is None:
            suppression.email, suppression.detail = hashed, f"address erased {now:%Y-%m-%d}"
        else:
            session.delete(suppression)
    subscriber.email, subscriber.name, subscriber.topics, subscriber.attributes = stand_in, "", [], {}
    subscriber.status = SubscriberStatus.ERASED
    session.commit()
    return True

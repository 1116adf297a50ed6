"""Segments: which subscribers an issue goes to, and which edition each one reads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Select, and_, exists, func, select
from sqlalchemy.orm import Session

from newsletter.models import Subscriber, SubscriberStatus, Suppression

# When a subscriber's language has no edition, the first of these that exists is sent instead.
EDITION_FALLBACK = {"zh-Hant": ("zh-Hans", "en"), "zh-Hans": ("zh-Hant", "en"), "en": ()}


def edition_for(lang: str, available: Sequence[str]) -> str | None:
    """The edition language to send a subscriber whose language is ``lang``; None if none fits."""
    if lang in available:
        return lang
    return next((alt for alt in EDITION_FALLBACK.get(lang, ("en",)) if alt in available), None)


def audience(segment: dict[str, Any] | None = None, *, max_subscriber_id: int | None = None) -> Select[tuple[Subscriber]]:
    """A query for the subscribers in ``segment``, in id order.

    Only ``active`` subscribers whose address is not suppressed are ever selected. ``segment`` may
    hold ``{"languages": [...]}`` to restrict languages. ``max_subscriber_id`` freezes the audience:
    subscribers who joined after the publish are not added mid-send.
    """
    segment = segment or {}
    conditions = [
        Subscriber.status == SubscriberStatus.ACTIVE,
        ~exists().where(Suppression.email == Subscriber.email),
    ]
    if segment.get("languages"):
        conditions.append(Subscriber.lang.in_(segment["languages"]))
    if max_subscriber_id is not None:
        conditions.append(Subscriber.id <= max_subscriber_id)
    return select(Subscriber).where(and_(*conditions)).order_by(Subscriber.id)


def count_audience(session: Session, segment: dict[str, Any] | None = None, *, max_subscriber_id: int | None = None) -> int:
    """Number of subscribers `audience` selects."""
    query = audience(segment, max_subscriber_id=max_subscriber_id)
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def stream_audience(
    session: Session, segment: dict[str, Any] | None, *, max_subscriber_id: int | None, chunk: int = 1000
) -> Iterator[list[Subscriber]]:
    """Yield the audience in id order, ``chunk`` subscribers at a time (keyset pagination, so memory
    stays flat however large the list is and a re-run resumes cleanly)."""
    after = 0
    while True:
        query = audience(segment, max_subscriber_id=max_subscriber_id).where(Subscriber.id > after).limit(chunk)
        rows = list(session.scalars(query))
        if not rows:
            return
        yield rows
        after = rows[-1].id
        session.expunge_all()

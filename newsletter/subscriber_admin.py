"""Editor actions on single subscribers: search, add one, update, export as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.erasure import is_erased_suppressed
from newsletter.models import Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.segments import ATTRIBUTE_NAME
from newsletter.subscribers import InvalidAddress, clean_name, normalise_address, normalise_lang, spreadsheet_safe

EXPORT_COLUMNS = ("email", "name", "lang", "topics", "status", "signed_up")


class SubscriberError(ValueError):
    """A subscriber cannot be added or changed as asked; ``field`` names the input at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SubscriberExists(SubscriberError):
    """The address is already on the list."""


def search_subscribers(
    session: Session,
    text: str | None = None,
    *,
    status: str | None = None,
    lang: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Subscriber], int]:
    """Subscribers whose address or name contains ``text`` (case-insensitive), optionally of one status
    and language, in id order; erased ones never. Returns ``(page, total matches)``."""
    query = select(Subscriber).where(Subscriber.status != SubscriberStatus.ERASED)
    if text and text.strip():
        pattern = "%" + text.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(func.lower(Subscriber.email).like(pattern, escape="\\"), func.lower(Subscriber.name).like(pattern, escape="\\"))
        )
    if status:
        query = query.where(Subscriber.status == status)
    if lang:
        query = query.where(Subscriber.lang == lang)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return list(session.scalars(query.order_by(Subscriber.id).offset(offset).limit(limit))), total


def get_subscriber(session: Session, subscriber_id: int) -> Subscriber | None:
    """The subscriber with this id, unless unknown or erased."""
    subscriber = session.get(Subscriber, subscriber_id)
    return None if subscriber is None or subscriber.status == SubscriberStatus.ERASED else subscriber


def _topics(values: Sequence[str]) -> list[str]:
    topics = sorted({t.strip() for t in values if t and t.strip()})
    if any(len(t) > 64 for t in topics) or len(topics) > 100:
        raise SubscriberError("topics are at most 100, each at most 64 characters", "topics")
    return topics


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        if not ATTRIBUTE_NAME.fullmatch(key):
            raise SubscriberError(
                f"attribute name {key!r} must be 1-64 of A-Z a-z 0-9 _ - (not starting with a digit or -)", f"attributes.{key}"
            )
        if not isinstance(value, str | int | float | bool) or (isinstance(value, str) and len(value) > 1000):
            raise SubscriberError(f"attribute {key!r} must be a string (at most 1000 characters), number or boolean", f"attributes.{key}")
    return dict(values)


def add_subscriber(
    session: Session,
    email: str,
    *,
    name: str = "",
    lang: str = "en",
    topics: Sequence[str] = (),
    attributes: Mapping[str, Any] | None = None,
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
) -> Subscriber:
    """Add one subscriber (an editor vouching for their consent: ``active``, or ``pending``); commits.

    Raises:
        SubscriberError: invalid address or language, a status other than active or pending, or the
            address was erased on its owner's request after opting out.
        SubscriberExists: the address is already on the list.
    """
    try:
        address = normalise_address(email)
    except InvalidAddress as exc:
        raise SubscriberError(str(exc), "email") from exc
    try:
        lang = normalise_lang(lang)
    except ValueError as exc:
        raise SubscriberError(str(exc), "lang") from exc
    if status not in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
        raise SubscriberError("a new subscriber is active or pending", "status")
    if len(name) > 256 or "\n" in name or "\r" in name:
        raise SubscriberError("the name must be one line of at most 256 characters", "name")
    try:
        name = clean_name(name)
    except ValueError as exc:
        raise SubscriberError(str(exc), "name") from exc
    if session.scalar(select(Subscriber.id).where(Subscriber.email == address)) is not None:
        raise SubscriberExists(f"{address} is already a subscriber", "email")
    if is_erased_suppressed(session, address) or session.scalar(select(Suppression.id).where(Suppression.email == address)) is not None:
        raise SubscriberError(f"{address} opted out (or bounced) and must not be added by an editor", "email")
    subscriber = Subscriber(
        email=address,
        name=name,
        lang=lang,
        topics=_topics(topics),
        attributes=_attributes(attributes or {}),
        status=status,
        confirmed_at=utcnow() if status == SubscriberStatus.ACTIVE else None,
    )
    session.add(subscriber)
    try:
        session.commit()
    except IntegrityError as exc:  # added by someone else meanwhile
        session.rollback()
        raise SubscriberExists(f"{address} is already a subscriber", "email") from exc
    return subscriber


def update_subscriber(
    session: Session,
    subscriber: Subscriber,
    *,
    name: str | None = None,
    lang: str | None = None,
    topics: Sequence[str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Subscriber:
    """Change a subscriber's name, language, topics or attributes (``None`` leaves a field as it is;
    ``attributes`` replaces them all); commits. The status changes only by unsubscribing, bouncing or erasing.

    Raises:
        SubscriberError: naming the field at fault.
    """
    if name is not None:
        if len(name) > 256 or "\n" in name or "\r" in name:
            raise SubscriberError("the name must be one line of at most 256 characters", "name")
        try:
            subscriber.name = clean_name(name)
        except ValueError as exc:
            raise SubscriberError(str(exc), "name") from exc
    if lang is not None:
        try:
            subscriber.lang = normalise_lang(lang)
        except ValueError as exc:
            raise SubscriberError(str(exc), "lang") from exc
    if topics is not None:
        subscriber.topics = _topics(topics)
    if attributes is not None:
        subscriber.attributes = _attributes(attributes)
    session.commit()
    return subscriber


def export_csv(session: Session, chunk: int = 1000) -> Iterator[str]:
    """The list as CSV (erased subscribers left out), in the columns ``subscribers import`` reads plus
    ``status``, then one column per attribute name. Yields pieces of text; reads ``chunk`` rows at a time.
    A cell that starts like a spreadsheet formula is written with a leading ``'`` (`subscribers.spreadsheet_safe`;
    the import drops it again)."""
    keys: set[str] = set()
    for attrs in session.scalars(select(Subscriber.attributes).where(Subscriber.status != SubscriberStatus.ERASED)):
        keys.update(attrs or {})
    extra = sorted(k for k in keys if k not in EXPORT_COLUMNS)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180 line ends

    def take() -> str:
        out = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return out

    writer.writerow([*EXPORT_COLUMNS, *extra])
    yield take()
    after = 0
    while True:
        rows = list(
            session.scalars(
                select(Subscriber)
                .where(Subscriber.status != SubscriberStatus.ERASED, Subscriber.id > after)
                .order_by(Subscriber.id)
                .limit(chunk)
            )
        )
        if not rows:
            return
        for s in rows:
            attrs = s.attributes or {}
            cells = [s.email, s.name, s.lang, ";".join(s.topics), str(s.status), s.created_at.date().isoformat()]
            writer.writerow([spreadsheet_safe(c) for c in cells + [_cell(attrs.get(k)) for k in extra]])
        after = rows[-1].id
        yield take()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    # A cell starting with = + - @ is a formula to spreadsheet programs (CSV injection, OWASP).
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text

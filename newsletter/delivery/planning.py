"""Planning inside the database: one INSERT … SELECT per id range of subscribers.

The audience (`newsletter.segments.audience_conditions`), the edition of each subscriber
(`newsletter.segments.edition_sql`) and the Message-ID (`newsletter.tokens.message_id`) are all
computed by the database, so no subscriber row travels to Python and back. Each chunk is one range
``lo < subscriber_id <= hi`` of at most ``chunk`` subscribers (the bounds come from the primary key
index), so a chunk's work and memory do not grow with the list.

The Message-ID is HMAC-SHA256 (RFC 2104) of ``msgid:<issue>:<subscriber>``: on PostgreSQL it is built
from the built-in ``sha256()`` (PostgreSQL 11+) with the key's inner and outer pads computed here, on
SQLite by `newsletter.tokens.message_id` itself, registered as an SQL function on the connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, LargeBinary, String, case, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.models import Delivery, DeliveryStatus, Subscriber
from newsletter.segments import edition_sql
from newsletter.tokens import message_id

SQLITE_MESSAGE_ID = "nl_message_id"
HMAC_BLOCK = 64  # bytes: the block size of SHA-256 (RFC 2104 §2, FIPS 180-4)


def hmac_pads(secret: str) -> tuple[bytes, bytes]:
    """The inner and outer padded keys of HMAC-SHA256 (RFC 2104 §2: K XOR ipad, K XOR opad) for ``secret``
    encoded as UTF-8, as `hmac.new` derives them (a key longer than a block is hashed first)."""
    key = secret.encode()
    if len(key) > HMAC_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(HMAC_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def _concat_bytes(a: ColumnElement[Any], b: ColumnElement[Any]) -> ColumnElement[bytes]:
    return a.op("||", return_type=LargeBinary)(b)


def message_id_sql(dialect: str, secret: str, issue_id: int, domain: str) -> ColumnElement[str]:
    """`newsletter.tokens.message_id` of (``issue_id``, ``Subscriber.id``) as an SQL expression.

    On SQLite it calls the function `register_sqlite_functions` installs on the connection.
    """
    if dialect == "sqlite":
        return func.nl_message_id(literal(issue_id, Integer), Subscriber.id, type_=String)
    inner_pad, outer_pad = hmac_pads(secret)
    data = func.convert_to(func.concat("msgid:", literal(issue_id, Integer), ":", Subscriber.id), "UTF8", type_=LargeBinary)
    inner = func.sha256(_concat_bytes(literal(inner_pad, LargeBinary), data), type_=LargeBinary)
    mac = func.sha256(_concat_bytes(literal(outer_pad, LargeBinary), inner), type_=LargeBinary)
    hexed = func.substr(func.encode(mac, "hex", type_=String), 1, 16)
    issue = literal(issue_id, Integer)
    return func.concat("<issue", issue, ".", Subscriber.id, ".", hexed, "@", literal(domain, String), ">", type_=String)


def register_sqlite_functions(session: Session, secret: str, domain: str) -> None:
    """Install ``nl_message_id(issue, subscriber)`` on the session's SQLite connection (for this key
    and domain; registering again replaces it)."""
    raw = session.connection().connection.driver_connection
    raw.create_function(  # type: ignore[union-attr]
        SQLITE_MESSAGE_ID, 2, lambda issue, sub: message_id(secret, int(issue), int(sub), domain), deterministic=True
    )


def id_ranges(session: Session, upper: int | None, chunk: int) -> Iterator[tuple[int, int | None]]:
    """Consecutive ranges ``(lo, hi]`` of subscriber ids, each holding at most ``chunk`` subscribers
    (of any status), up to ``upper`` (None: no bound); the last range has ``hi`` None (open above).

    Each bound is one index-only lookup (``OFFSET chunk - 1`` on the primary key), so sparse ids cost nothing.
    """
    lo = 0
    while True:
        query = select(Subscriber.id).where(Subscriber.id > lo)
        if upper is not None:
            query = query.where(Subscriber.id <= upper)
        hi = session.scalar(query.order_by(Subscriber.id).offset(chunk - 1).limit(1))
        yield lo, hi
        if hi is None:
            return
        lo = hi


def plan_range(
    session: Session,
    issue_id: int,
    conditions: Sequence[ColumnElement[bool]],
    editions: Sequence[str],
    lo: int,
    hi: int | None,
    now: datetime,
    secret: str,
    domain: str,
    hand_over: bool = True,
) -> tuple[int, list[int]]:
    """Insert the delivery rows of the audience (``conditions``) with ``lo < subscriber_id <= hi`` and, with
    ``hand_over``, mark the pending ones enqueued at ``now``; does not commit.

    One ``INSERT … SELECT … ON CONFLICT (issue_id, subscriber_id) DO NOTHING RETURNING``, so rows planned
    before are left alone; then (with ``hand_over``) one UPDATE takes the range's pending rows that an earlier
    run planned but never handed over (``enqueued_at`` NULL) and whose subscriber is still in the audience.
    Without ``hand_over`` (the editions are not rendered yet) the new rows keep ``enqueued_at`` NULL, for
    whoever hands them over later (`newsletter.publishing.render_editions`). A subscriber whose language has
    no edition gets a ``skipped`` row (``no-edition``), as `newsletter.segments.edition_for` decides. Returns
    ``(rows inserted, pending delivery ids to enqueue in id order)``; without ``hand_over``, the pending ids
    this call inserted (not marked), for the caller to mark if the editions turn out rendered.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        register_sqlite_functions(session, secret, domain)
    edition = edition_sql(editions)
    in_range = [Subscriber.id > lo] + ([Subscriber.id <= hi] if hi is not None else [])
    when = literal(now, Delivery.created_at.type)
    no_edition = edition.is_(None)
    never = literal(None, Delivery.enqueued_at.type)
    source = (
        select(
            literal(issue_id, Integer),
            Subscriber.id,
            Subscriber.email,
            func.coalesce(edition, Subscriber.lang),
            case((no_edition, literal(DeliveryStatus.SKIPPED.value)), else_=literal(DeliveryStatus.PENDING.value)),
            case((no_edition, literal("no-edition")), else_=literal(None, String)),
            message_id_sql(dialect, secret, issue_id, domain),
            literal(0, Integer),
            when,
            when,
            case((no_edition, never), else_=when) if hand_over else never,
        )
        .where(*conditions, *in_range)
        .order_by(Subscriber.id)  # delivery ids follow subscriber ids
    )
    columns = ["issue_id", "subscriber_id", "email", "lang", "status", "skip_reason", "message_id", "attempts", "created_at",
               "updated_at", "enqueued_at"]  # fmt: skip
    module: Any = postgresql if dialect == "postgresql" else sqlite
    insert = (
        module.insert(Delivery)
        .from_select(columns, source)
        .on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])
        .returning(Delivery.id, Delivery.status)
    )
    inserted = session.execute(insert).all()
    if not hand_over:
        return len(inserted), [i for i, status in inserted if status == DeliveryStatus.PENDING]
    ids = [i for i, status in inserted if status == DeliveryStatus.PENDING]
    leftover = session.scalars(
        update(Delivery)
        .where(
            Delivery.issue_id == issue_id,
            Delivery.subscriber_id > lo,
            *([Delivery.subscriber_id <= hi] if hi is not None else []),
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.enqueued_at.is_(None),
            Delivery.subscriber_id.in_(select(Subscriber.id).where(*conditions, *in_range)),
        )
        .values(enqueued_at=now)
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
    ids.extend(leftover)
    ids.sort()
    return len(inserted), ids

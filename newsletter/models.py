"""SQLAlchemy 2 models: the database is the source of truth for everything that must not be lost."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from sqlalchemy.sql.elements import ColumnElement

    from newsletter.summaries import SourceRules

LANGUAGES = ("en", "zh-Hans", "zh-Hant")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC that always comes back timezone-aware (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base: timestamps are `UTCDateTime`, dicts and lists are JSON."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class SubscriberStatus(enum.StrEnum):
    """Only ``active`` subscribers are mailed; the others are kept for the record."""

    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    ERASED = "erased"  # personal data deleted on request (GDPR Art. 17); the row keeps delivery counts intact


class IssueStatus(enum.StrEnum):
    """draft -> (scheduled ->) publishing -> sending -> sent; or failed, paused, cancelled."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"  # publishes itself at Issue.scheduled_at (the sweeper fires it once)
    PUBLISHING = "publishing"  # related + render + plan in progress
    SENDING = "sending"  # deliveries planned; batches in flight
    SENT = "sent"  # every delivery final
    FAILED = "failed"  # the publish pipeline failed; see Issue.error
    PAUSED = "paused"  # an editor stopped sending; `resume` continues where it stopped
    CANCELLED = "cancelled"  # an editor stopped the issue for good; unsent deliveries are skipped


class DeliveryStatus(enum.StrEnum):
    """The delivery state machine; see `newsletter.delivery.ledger` for the transitions."""

    PENDING = "pending"
    SENDING = "sending"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    BOUNCED = "bounced"  # sent, then a DSN reported it failed (see newsletter.bounces)


FINAL_DELIVERY_STATES = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED, DeliveryStatus.BOUNCED)


class NoticeStatus(enum.StrEnum):
    """The notice queue: ``queued -> sending -> sent``; ``sending -> queued`` again (with a later
    ``next_attempt_at``) on a transient failure; ``-> failed`` on a permanent one, after the last attempt,
    or once the notice expired; ``-> skipped`` when no longer wanted (see `newsletter.notice_queue`)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


def _enum(cls: type[enum.Enum]) -> Enum:
    # Store the value as a plain string (no native PG enum) so adding a state is a one-line migration.
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Article(Base):
    """A published piece. ``external_id`` is the id in the source corpus; imports are idempotent on it."""

    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(512), unique=True)
    title: Mapped[str] = mapped_column(Text)
    # The columns behind `summary` and `body_html`: "" while `text_pending` says they are still to be made.
    stored_summary: Mapped[str] = mapped_column("summary", Text, default="")
    stored_body_html: Mapped[str] = mapped_column("body_html", Text, default="")
    # Plain text the related-articles index reads (newsletter.content.markdown_plain_text at import).
    body_text: Mapped[str] = mapped_column(Text, default="")
    # The body as imported when it came as Markdown (None when it came as HTML): `body_html` is made from it.
    body_markdown: Mapped[str | None] = mapped_column(Text)
    # True while the summary (if the record had none) or the HTML of a Markdown body is not made yet.
    text_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    category: Mapped[str | None] = mapped_column(String(128))
    lang: Mapped[str] = mapped_column(String(16), index=True)
    published_at: Mapped[datetime | None] = mapped_column(index=True)
    url: Mapped[str | None] = mapped_column(Text)
    translation_key: Mapped[str | None] = mapped_column(String(512), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # SHA-256 of the corpus line (and conversion rules) it was imported from: an unchanged line is skipped.
    source_hash: Mapped[str | None] = mapped_column(String(64), index=True)

    @hybrid_property
    def summary(self) -> str:
        """The summary; made on first use if the import left it pending (`newsletter.article_text`), with the
        summary rules of this process's environment (`newsletter.config.deployment_summary_rules`)."""
        if self.text_pending and self.stored_summary == "":
            self.derive_text()
        return self.stored_summary

    @summary.inplace.setter
    def _summary_setter(self, value: str) -> None:
        self.stored_summary = value

    @summary.inplace.expression
    @classmethod
    def _summary_expression(cls) -> ColumnElement[str]:
        return cls.stored_summary

    @hybrid_property
    def body_html(self) -> str:
        """The sanitised body; made from `body_markdown` on first use if the import left it pending."""
        if self.text_pending and self.stored_body_html == "" and self.body_markdown is not None:
            self.derive_text()
        return self.stored_body_html

    @body_html.inplace.setter
    def _body_html_setter(self, value: str) -> None:
        self.stored_body_html = value

    @body_html.inplace.expression
    @classmethod
    def _body_html_expression(cls) -> ColumnElement[str]:
        return cls.stored_body_html

    def derive_text(self, rules: Sequence[SourceRules] | None = None) -> bool:
        """Make what is pending (see `newsletter.article_text.derive`) with ``rules`` (default: this
        process's `newsletter.config.deployment_summary_rules`); stored with the session's next flush."""
        from newsletter.article_text import derive
        from newsletter.config import deployment_summary_rules

        return derive(self, deployment_summary_rules() if rules is None else rules)


class Issue(Base):
    """One weekly newsletter. Per-language texts live in its editions."""

    __tablename__ = "issues"
    __table_args__ = (Index("ix_issues_status_scheduled_at", "status", "scheduled_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(unique=True)
    status: Mapped[IssueStatus] = mapped_column(_enum(IssueStatus), default=IssueStatus.DRAFT)
    segment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The audience is frozen at publish: only subscribers with id <= this are planned.
    audience_max_subscriber_id: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    scheduled_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    planned_at: Mapped[datetime | None]
    # Set when the publish pipeline is enqueued and after each step: a `publishing` issue whose heartbeat
    # is older than a lease lost its pipeline (worker and broker message gone) and is restarted.
    pipeline_heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The IANA zone the issue was scheduled in (e.g. "Asia/Taipei"): its editions' dates are shown there.
    # None: NEWSLETTER_TIMEZONE.
    timezone: Mapped[str | None] = mapped_column(String(64))

    editions: Mapped[list[Edition]] = relationship(back_populates="issue", cascade="all, delete-orphan", order_by="Edition.lang")
    items: Mapped[list[IssueArticle]] = relationship(back_populates="issue", cascade="all, delete-orphan", order_by="IssueArticle.position")


class Edition(Base):
    """An issue in one language (BCP 47 tag). ``html`` and ``text`` keep personalisation placeholders."""

    __tablename__ = "editions"
    __table_args__ = (UniqueConstraint("issue_id", "lang"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    lang: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)
    editors_note: Mapped[str] = mapped_column(Text, default="")
    # Set when this edition's text was derived by conversion (e.g. zh-Hant from zh-Hans by OpenCC).
    converted_from: Mapped[str | None] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    web_html: Mapped[str | None] = mapped_column(Text)
    rendered_at: Mapped[datetime | None]

    issue: Mapped[Issue] = relationship(back_populates="editions")


class IssueArticle(Base):
    """An article's place in an issue (ordered by ``position``)."""

    __tablename__ = "issue_articles"
    __table_args__ = (UniqueConstraint("issue_id", "article_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id"))
    position: Mapped[int]

    issue: Mapped[Issue] = relationship(back_populates="items")
    article: Mapped[Article] = relationship()


class RelatedArticle(Base):
    """One pick of the "You might also like" block under one article of an issue (``source_article_id``).

    ``lang`` is the language the issue's articles are written in: a zh-Hant edition converted from zh-Hans
    shows the zh-Hans rows, converted. A pick appears once per issue and language (diversified).
    """

    __tablename__ = "related_articles"
    __table_args__ = (UniqueConstraint("issue_id", "lang", "article_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    lang: Mapped[str] = mapped_column(String(16))
    # NULL only for rows written before per-article blocks (one block per edition); they are not shown.
    source_article_id: Mapped[int | None] = mapped_column(ForeignKey("articles.id"))
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id"))
    rank: Mapped[int]
    score: Mapped[float] = mapped_column(Float)

    article: Mapped[Article] = relationship(foreign_keys=[article_id])


class RelatedIndexEntry(Base):
    """An article in the related-articles index: its term counts (see `newsletter.related.text`).

    Written on import for new or changed articles only; ``text_hash`` says which text the terms were made
    from, so an unchanged article is never tokenised again. ``group`` is ``en`` or ``zh`` (both scripts).
    """

    __tablename__ = "related_index"
    __table_args__ = (Index("ix_related_index_group_published", "group", "published_at"),)

    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True)
    group: Mapped[str] = mapped_column(String(16))
    published_at: Mapped[datetime | None]
    category: Mapped[str | None] = mapped_column(String(128))
    title_terms: Mapped[bytes] = mapped_column(LargeBinary)
    body_terms: Mapped[bytes] = mapped_column(LargeBinary)
    text_hash: Mapped[str] = mapped_column(String(64))
    indexed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Subscriber(Base):
    """A person on the list. ``email`` is normalised (domain lower-cased, IDNA) and unique."""

    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    lang: Mapped[str] = mapped_column(String(16), default="en")
    topics: Mapped[list[str]] = mapped_column(JSON, default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[SubscriberStatus] = mapped_column(_enum(SubscriberStatus), default=SubscriberStatus.ACTIVE, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    # Deliveries that soft-bounced (RFC 3463 class 4 or Action: delayed), counted once each; see newsletter.bounces.
    soft_bounces: Mapped[int] = mapped_column(default=0, server_default="0")
    # How the subscriber came: "form", "api" (public sign-up), "import"; with confirmed_at, the record of consent.
    source: Mapped[str | None] = mapped_column(String(32))
    # The subscriber paused deliveries (preference centre): still subscribed, not mailed until resumed.
    paused: Mapped[bool] = mapped_column(default=False, server_default="0")


class Delivery(Base):
    """One message of one issue to one subscriber: the unit of sending, retrying and reporting.

    The unique (issue_id, subscriber_id) key makes planning idempotent; state changes are atomic
    conditional UPDATEs (see `newsletter.delivery.ledger`).
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id", name="uq_delivery_issue_subscriber"),
        Index("ix_deliveries_issue_status", "issue_id", "status"),
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"))
    lang: Mapped[str] = mapped_column(String(16))  # the edition this subscriber gets
    email: Mapped[str] = mapped_column(String(320))  # frozen at planning
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    message_id: Mapped[str] = mapped_column(String(255), index=True)  # indexed: bounces are matched by it
    next_attempt_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    # Set by each claim: the fencing token that lets only the current holder renew the lease or record
    # the outcome (the lease time alone cannot be one, since renewing it must not fence out the holder).
    claim_token: Mapped[str | None] = mapped_column(String(32))
    enqueued_at: Mapped[datetime | None]
    first_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_smtp_code: Mapped[int | None]
    relay: Mapped[str | None] = mapped_column(String(255))
    skip_reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    subscriber: Mapped[Subscriber] = relationship()


class Suppression(Base):
    """An address that must never be mailed again (hard bounce, complaint, unsubscribe)."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BounceEvent(Base):
    """One processed delivery status notification (RFC 3464), keyed by the DSN's own Message-ID so
    that reading the same mailbox again changes nothing (see `newsletter.bounces`)."""

    __tablename__ = "bounce_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    dsn_id: Mapped[str] = mapped_column(String(255), unique=True)  # the DSN's Message-ID, or a hash of it
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"), index=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    email: Mapped[str] = mapped_column(String(320))  # the address the delivery went to
    kind: Mapped[str] = mapped_column(String(16))  # hard, soft, complaint or ignored
    action: Mapped[str] = mapped_column(String(16))  # RFC 3464 §2.3.3
    status_code: Mapped[str] = mapped_column(String(16))  # RFC 3463, e.g. 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    """An editor who signs in to the admin pages. ``password_hash`` is an argon2id PHC string."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime | None]


class ApiToken(Base):
    """A bearer token for the editor API. Only the SHA-256 of the token is stored; ``prefix`` (its first
    characters) lets a person recognise it in `tokens list`."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class TestSend(Base):
    """One test message of an edition to an editor's address: never a delivery, kept to rate-limit test sends."""

    __tablename__ = "test_sends"
    __test__ = False  # not a pytest test class

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"), index=True)
    lang: Mapped[str] = mapped_column(String(16))
    email: Mapped[str] = mapped_column(String(320))
    sent_by: Mapped[str] = mapped_column(String(160))  # "user:ann@example.org", "token:ci", "cli"
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Notice(Base):
    """One one-off message of a subscription (confirm, welcome, already, goodbye), queued in the same
    transaction as the change it accompanies (the transactional outbox): a relay outage or a process
    dying after the commit loses nothing. ``context`` is the template's (links, hours), frozen at
    queueing; ``expires_at`` is when sending it stops making sense (a confirmation link's expiry).
    State changes are conditional UPDATEs (see `newsletter.notice_queue`)."""

    __tablename__ = "notices"
    __table_args__ = (Index("ix_notices_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(256), default="")
    lang: Mapped[str] = mapped_column(String(16))
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[NoticeStatus] = mapped_column(_enum(NoticeStatus), default=NoticeStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    claim_token: Mapped[str | None] = mapped_column(String(32))  # fences a late outcome of an expired claim
    # When a send task for it was last handed to the broker: beat hands a due notice on once, not at every sweep.
    enqueued_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_smtp_code: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

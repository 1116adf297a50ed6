"""Request and response bodies of the editor API (Pydantic models; they make the OpenAPI spec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from newsletter.content import unstorable
from newsletter.models import Article, Issue, Subscriber
from newsletter.reports import IssueReport

Lang = Literal["en", "zh-Hans", "zh-Hant"]


class Strict(BaseModel):
    """Unknown fields are an error, so a typo (``tittles``) is not silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if unstorable(data):
            raise ValueError("text must not contain NUL or unpaired surrogate characters")
        return data


class ArticleOut(BaseModel):
    """An article of the archive; ``id`` is its id in the source corpus (as imported)."""

    id: str
    title: str
    summary: str
    category: str | None
    lang: str
    published_at: datetime | None
    url: str | None
    translation_key: str | None

    @classmethod
    def of(cls, a: Article) -> ArticleOut:
        return cls(id=a.external_id, title=a.title, summary=a.summary, category=a.category, lang=a.lang,
                   published_at=a.published_at, url=a.url, translation_key=a.translation_key)  # fmt: skip


class ArticleDetail(ArticleOut):
    """An article with its sanitised body."""

    body_html: str

    @classmethod
    def of(cls, a: Article) -> ArticleDetail:
        return cls(**ArticleOut.of(a).model_dump(), body_html=a.body_html)


class ArticlePage(BaseModel):
    """One page of articles, newest first; ``total`` counts every match."""

    items: list[ArticleOut]
    total: int
    limit: int
    offset: int


class ImportLineError(BaseModel):
    """A line the import rejected."""

    line: int
    id: str | None
    reason: str


class ImportResult(BaseModel):
    """What an import did."""

    created: int
    updated: int
    unchanged: int
    errors: list[ImportLineError]


class EditionOut(BaseModel):
    """One language of an issue. ``converted_from`` is set when its text is derived (zh-Hant from zh-Hans)."""

    lang: str
    title: str
    editors_note: str
    converted_from: str | None
    subject: str | None = Field(description="the subject as rendered for sending (null until published)")


class IssueSummary(BaseModel):
    """An issue in a list."""

    number: int
    status: str
    languages: list[str]
    articles: int
    created_at: datetime
    scheduled_at: datetime | None
    published_at: datetime | None

    @classmethod
    def of(cls, i: Issue) -> IssueSummary:
        return cls(number=i.number, status=str(i.status), languages=[e.lang for e in i.editions], articles=len(i.items),
                   created_at=i.created_at, scheduled_at=i.scheduled_at, published_at=i.published_at)  # fmt: skip


class IssueOut(BaseModel):
    """An issue with its editions and its articles in order."""

    number: int
    status: str
    error: str | None
    segment: dict[str, Any] | None
    created_at: datetime
    scheduled_at: datetime | None
    published_at: datetime | None
    finished_at: datetime | None
    editions: list[EditionOut]
    articles: list[ArticleOut]
    warnings: list[str] = Field(default_factory=list, description="a draft's articles that look like one story filed twice")

    @classmethod
    def of(cls, i: Issue) -> IssueOut:
        from newsletter.issues import draft_warnings, issue_article_list

        articles = issue_article_list(i)
        return cls(
            number=i.number, status=str(i.status), error=i.error, segment=i.segment, created_at=i.created_at,
            scheduled_at=i.scheduled_at, published_at=i.published_at, finished_at=i.finished_at,
            editions=[EditionOut(lang=e.lang, title=e.title, editors_note=e.editors_note, converted_from=e.converted_from,
                                 subject=e.subject) for e in i.editions],
            articles=[ArticleOut.of(a) for a in articles], warnings=draft_warnings(i, articles),
        )  # fmt: skip


class IssueCreate(Strict):
    """A new draft: articles by id in order (may be empty: add them later), titles and notes by language."""

    number: int | None = Field(None, ge=1, le=10**9, description="default: the next free number")
    articles: list[str] = Field(default_factory=list, max_length=100)
    titles: dict[Lang, str] = Field(default_factory=dict)
    notes: dict[Lang, str] = Field(default_factory=dict, description="Markdown")
    segment: dict[str, Any] | None = Field(None, description="audience rule (see POST /api/segments/preview); null: everyone")


class IssueUpdate(Strict):
    """Changes to a draft; fields left out stay as they are (``segment: null`` clears the rule)."""

    titles: dict[Lang, str] | None = None
    notes: dict[Lang, str] | None = None
    segment: dict[str, Any] | None = None


class ArticleIds(Strict):
    """Article ids (as imported), and where to insert them (0-based; default: at the end)."""

    articles: list[str] = Field(min_length=1, max_length=100)
    position: int | None = Field(None, ge=0, le=1000)


class ArticleOrder(Strict):
    """The issue's complete article list in the new order (reorder, or replace the content at once)."""

    articles: list[str] = Field(max_length=100)


class TestSendIn(Strict):
    """Mail edition ``lang`` to these addresses as a test."""

    lang: Lang = "en"
    addresses: list[str] = Field(min_length=1, max_length=10)


class TestSendOut(BaseModel):
    """The subject as sent (with its ``[TEST]`` prefix), the addresses accepted and per-address errors."""

    subject: str
    sent: list[str]
    failed: dict[str, str]


class AudienceOut(BaseModel):
    """Who a publish would mail now."""

    recipients: int
    by_edition: dict[str, int]
    no_edition: int = Field(description="subscribers in the audience skipped for want of an edition in a language they read")


class PublishIn(Strict):
    """``confirm`` must be true, with ``recipients`` (from GET …/audience or a refused publish): the count
    must still hold, else nothing is published and the new count is returned (409). Confirming without
    ``recipients`` is refused (422)."""

    confirm: bool = False
    recipients: int | None = Field(None, ge=0, description="the count confirmed; required with confirm")


class PublishOut(BaseModel):
    """A publish under way: follow it with GET /api/issues/{number}/status."""

    number: int
    status: str
    recipients: int
    by_edition: dict[str, int]


class ScheduleIn(Strict):
    """When to publish: an ISO 8601 time with an offset (``2026-12-07T09:00:00+08:00``)."""

    at: AwareDatetime


class ControlOut(BaseModel):
    """The issue's status after a control action, and what it did."""

    number: int
    status: str
    detail: str


class StateCount(BaseModel):
    """Deliveries in one state for one edition language."""

    state: str
    lang: str
    count: int


class RelayCount(BaseModel):
    """Deliveries in one state through one relay."""

    relay: str
    state: str
    count: int


class LastError(BaseModel):
    """A recent delivery error."""

    email: str
    error: str


class StatusOut(BaseModel):
    """Delivery statistics of an issue: per state and language, per relay, the retry queue, the last errors."""

    number: int
    status: str
    error: str | None
    total: int
    final: int = Field(description="deliveries in a final state (sent, failed, bounced, skipped)")
    by_state: dict[str, int]
    counts: list[StateCount]
    by_relay: list[RelayCount]
    retry_queue: int
    next_retry_at: datetime | None
    skip_reasons: dict[str, int]
    last_errors: list[LastError]
    scheduled_at: datetime | None

    @classmethod
    def of(cls, r: IssueReport) -> StatusOut:
        final_states = ("sent", "failed", "bounced", "skipped")
        return cls(
            number=r.number, status=r.status, error=r.error, total=r.total,
            final=sum(n for (s, _), n in r.counts.items() if s in final_states), by_state=r.by_state(),
            counts=[StateCount(state=s, lang=lang, count=n) for (s, lang), n in sorted(r.counts.items())],
            by_relay=[RelayCount(relay=rl, state=s, count=n) for (rl, s), n in sorted(r.by_relay.items())],
            retry_queue=r.retry_queue, next_retry_at=r.next_retry_at, skip_reasons=r.skip_reasons,
            last_errors=[LastError(email=e, error=m) for e, m in r.last_errors], scheduled_at=r.scheduled_at,
        )  # fmt: skip


class SegmentIn(Strict):
    """A segment rule (see the `segment preview` command's help for its keys); null: everyone."""

    rule: dict[str, Any] | None = None


class SubscriberOut(BaseModel):
    """A subscriber. ``suppressed`` gives the reason when the address must never be mailed."""

    id: int
    email: str
    name: str
    lang: str
    topics: list[str]
    attributes: dict[str, Any]
    status: str
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    suppressed: str | None = None

    @classmethod
    def of(cls, s: Subscriber, suppressed: str | None = None) -> SubscriberOut:
        return cls(id=s.id, email=s.email, name=s.name, lang=s.lang, topics=list(s.topics), attributes=dict(s.attributes or {}),
                   status=str(s.status), created_at=s.created_at, confirmed_at=s.confirmed_at,
                   unsubscribed_at=s.unsubscribed_at, suppressed=suppressed)  # fmt: skip


class SegmentPreview(BaseModel):
    """How many subscribers a rule selects, and the first few."""

    count: int
    sample: list[SubscriberOut]


class SubscriberPage(BaseModel):
    """One page of subscribers in id order; ``total`` counts every match."""

    items: list[SubscriberOut]
    total: int
    limit: int
    offset: int


class DeliveryOut(BaseModel):
    """One delivery to a subscriber."""

    issue: int
    status: str
    lang: str
    attempts: int
    error: str | None
    sent_at: datetime | None


class SubscriberDetail(SubscriberOut):
    """A subscriber with their latest deliveries."""

    deliveries: list[DeliveryOut]


class SubscriberIn(Strict):
    """A subscriber to add (the editor vouches for their consent)."""

    email: str = Field(max_length=320)
    name: str = Field("", max_length=256)
    lang: str = "en"
    topics: list[str] = Field(default_factory=list, max_length=100)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)
    status: Literal["active", "pending"] = "active"


class SubscriberPatch(Strict):
    """Changes to a subscriber; fields left out stay as they are (``attributes`` replaces them all)."""

    name: str | None = Field(None, max_length=256)
    lang: str | None = None
    topics: list[str] | None = Field(None, max_length=100)
    attributes: dict[str, str | int | float | bool] | None = None

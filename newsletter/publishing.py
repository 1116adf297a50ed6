"""The publish flow as plain functions: validate, attach related, render, plan, sweep, finish.

Each step takes a session and settings and is safe to run again; `tasks/` wraps them in Celery.
``enqueue`` callables hand ``(issue_id, delivery_ids)`` to the send queue; the caller decides how.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content import category_label, to_traditional
from newsletter.delivery import ledger
from newsletter.issues import IssueError
from newsletter.models import (
    Article,
    Delivery,
    DeliveryStatus,
    Edition,
    Issue,
    IssueArticle,
    IssueStatus,
    RelatedArticle,
    Subscriber,
    utcnow,
)
from newsletter.related import Doc, recommend
from newsletter.rendering import ArticleView, EditionContent, check_edition, render_edition
from newsletter.segments import SegmentError, count_audience, edition_for, stream_audience
from newsletter.tokens import message_id

log = logging.getLogger(__name__)

Enqueue = Callable[[int, list[int]], None]
RELATED_PER_EDITION = 5
ARCHIVE_LIMIT = 20000  # the newest articles of a language the recommender considers

MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")


def format_date(when: datetime, lang: str) -> str:
    """``30 November 2026`` in English, ``2026年11月30日`` in Chinese."""
    if lang.startswith("zh"):
        return f"{when.year}年{when.month}月{when.day}日"
    return f"{when.day} {MONTHS_EN[when.month - 1]} {when.year}"


def web_url(settings: Settings, issue: Issue, lang: str) -> str:
    """The public "view in browser" URL of an edition."""
    return f"{settings.base_url}/issues/{issue.number}/{lang}"


def source_lang(edition: Edition) -> str:
    """The language an edition's articles are written in (its own, or the one it was converted from)."""
    return edition.converted_from or edition.lang


def edition_articles(session: Session, issue: Issue, edition: Edition) -> list[Article]:
    """The issue's articles for this edition, in issue order."""
    return list(
        session.scalars(
            select(Article)
            .join(IssueArticle, IssueArticle.article_id == Article.id)
            .where(IssueArticle.issue_id == issue.id, Article.lang == source_lang(edition))
            .order_by(IssueArticle.position)
        )
    )


def _view(article: Article, convert: bool, fallback_url: str) -> ArticleView:
    conv = to_traditional if convert else (lambda s: s)
    return ArticleView(
        title=conv(article.title),
        summary=conv(article.summary),
        url=article.url or fallback_url,
        category=conv(category_label(article.category)) if article.category else None,
    )


def edition_content(session: Session, settings: Settings, issue: Issue, edition: Edition) -> EditionContent:
    """Everything the templates need for one edition, from the database."""
    convert = edition.converted_from == "zh-Hans" and edition.lang == "zh-Hant"
    url = web_url(settings, issue, edition.lang)
    articles = edition_articles(session, issue, edition)
    related = session.scalars(
        select(RelatedArticle).where(RelatedArticle.issue_id == issue.id, RelatedArticle.lang == edition.lang).order_by(RelatedArticle.rank)
    )
    return EditionContent(
        number=issue.number,
        lang=edition.lang,
        title=edition.title,
        date=format_date(issue.published_at or issue.created_at, edition.lang),
        web_url=url,
        articles=tuple(_view(a, convert, f"{url}#article-{i}") for i, a in enumerate(articles, 1)),
        related=tuple(_view(r.article, convert, url) for r in related),
        editors_note=edition.editors_note,
        converted_from=edition.converted_from,
    )


def check_publishable(session: Session, settings: Settings, issue: Issue) -> None:
    """Raise unless ``issue`` could be published now: not already sent or under way, every edition has
    articles and renders (templates, translations), the segment is valid and the audience not empty.

    Raises:
        IssueError: a check failed.
        RenderError: an edition does not render.
    """
    if issue.status in (IssueStatus.PUBLISHING, IssueStatus.SENDING):
        raise IssueError(f"issue {issue.number} is already being published ({issue.status})")
    if issue.status == IssueStatus.SENT:
        raise IssueError(f"issue {issue.number} was already sent")
    if issue.status == IssueStatus.PAUSED:
        raise IssueError(f"issue {issue.number} is paused: resume it instead")
    if issue.status == IssueStatus.CANCELLED:
        raise IssueError(f"issue {issue.number} was cancelled")
    if not issue.editions:
        raise IssueError(f"issue {issue.number} has no editions")
    for edition in issue.editions:
        content = edition_content(session, settings, issue, edition)
        if not content.articles:
            raise IssueError(f"issue {issue.number} edition {edition.lang} has no articles")
        check_edition(content)
    try:
        size = count_audience(session, issue.segment, max_subscriber_id=issue.audience_max_subscriber_id)
    except SegmentError as exc:
        raise IssueError(f"issue {issue.number}: bad segment: {exc}") from exc
    if size == 0:
        raise IssueError(f"issue {issue.number}: the audience is empty (no active, unsuppressed subscribers)")


def _freeze_audience(session: Session, issue: Issue) -> None:
    if issue.audience_max_subscriber_id is None:
        issue.audience_max_subscriber_id = session.scalar(select(func.max(Subscriber.id))) or 0


def request_publish(session: Session, settings: Settings, issue: Issue) -> None:
    """Validate an issue (`check_publishable`) and move it to ``publishing``, freezing its audience; commits.

    A failed (or scheduled) issue may be published now: the ledger makes a re-run send only what was not sent.

    Raises:
        IssueError, RenderError: see `check_publishable`; nothing was changed.
    """
    check_publishable(session, settings, issue)
    _freeze_audience(session, issue)
    issue.status = IssueStatus.PUBLISHING
    issue.error = None
    issue.scheduled_at = None
    issue.published_at = issue.published_at or utcnow()
    session.commit()


def schedule_issue(session: Session, settings: Settings, issue: Issue, at: datetime, now: datetime | None = None) -> None:
    """Schedule a draft (or re-schedule a scheduled) issue to publish itself at ``at``; commits.

    The issue is checked now as for an immediate publish, and the audience is frozen when it fires.

    Raises:
        IssueError: ``at`` is naive or not in the future, or the issue is not a draft or scheduled.
        RenderError: an edition does not render.
    """
    if at.tzinfo is None:
        raise IssueError("the schedule time needs a timezone (e.g. 2026-12-07T09:00+08:00)")
    if at <= (now or utcnow()):
        raise IssueError(f"the schedule time {at.isoformat()} is not in the future")
    if issue.status not in (IssueStatus.DRAFT, IssueStatus.SCHEDULED):
        raise IssueError(f"issue {issue.number} is {issue.status}; only a draft can be scheduled")
    check_publishable(session, settings, issue)
    issue.status = IssueStatus.SCHEDULED
    issue.scheduled_at = at
    session.commit()


def unschedule_issue(session: Session, issue: Issue) -> None:
    """Take a scheduled issue back to draft, until it fires; commits.

    Raises:
        IssueError: the issue is not scheduled (it may have fired already).
    """
    result = session.execute(
        update(Issue)
        .where(Issue.id == issue.id, Issue.status == IssueStatus.SCHEDULED)
        .values(status=IssueStatus.DRAFT, scheduled_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if not result.rowcount:  # type: ignore[attr-defined]
        session.refresh(issue)
        raise IssueError(f"issue {issue.number} is {issue.status}, not scheduled")
    session.refresh(issue)


def fire_due_schedules(session: Session, now: datetime | None = None) -> list[int]:
    """Move every scheduled issue whose time has come to ``publishing``; commits. Returns their ids.

    Each issue is taken with one conditional UPDATE (``WHERE status = 'scheduled'``), so when two
    sweepers run at once (two beat processes started by mistake) exactly one of them fires it.
    """
    now = now or utcnow()
    due = list(session.scalars(select(Issue.id).where(Issue.status == IssueStatus.SCHEDULED, Issue.scheduled_at <= now)))
    fired = []
    for issue_id in due:
        won = session.execute(
            update(Issue)
            .where(Issue.id == issue_id, Issue.status == IssueStatus.SCHEDULED)
            .values(status=IssueStatus.PUBLISHING, published_at=now, error=None)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
        if won:
            issue = session.get_one(Issue, issue_id)
            session.refresh(issue)
            _freeze_audience(session, issue)
            session.commit()
            fired.append(issue_id)
            log.info("scheduled issue %s fired", issue.number)
    return fired


def attach_related(session: Session, settings: Settings, issue_id: int, k: int = RELATED_PER_EDITION) -> dict[str, int]:
    """Compute each edition's "You might also like" block from the archive in its language; commits.

    The archive is the articles published no later than the issue's newest article (a reader is not
    pointed at the future). Re-running replaces the block. Returns ``{lang: entries}``.
    """
    issue = session.get_one(Issue, issue_id)
    result: dict[str, int] = {}
    for edition in issue.editions:
        queries = edition_articles(session, issue, edition)
        newest = max((a.published_at for a in queries if a.published_at), default=None)
        archive_q = select(Article.id, Article.title, Article.body_text).where(Article.lang == source_lang(edition))
        if newest is not None:
            archive_q = archive_q.where(Article.published_at <= newest)
        archive_q = archive_q.order_by(Article.published_at.desc()).limit(ARCHIVE_LIMIT)
        archive = [Doc(i, t, b) for i, t, b in session.execute(archive_q)]
        ranked = recommend(source_lang(edition), [Doc(a.id, a.title, a.body_text) for a in queries], archive, k=k)
        session.execute(delete(RelatedArticle).where(RelatedArticle.issue_id == issue_id, RelatedArticle.lang == edition.lang))
        session.add_all(
            RelatedArticle(issue_id=issue_id, lang=edition.lang, article_id=aid, rank=rank, score=score)
            for rank, (aid, score) in enumerate(ranked, 1)
        )
        result[edition.lang] = len(ranked)
    session.commit()
    return result


def render_editions(session: Session, settings: Settings, issue_id: int) -> dict[str, int]:
    """Render every edition (premailer once per edition and variant) and store it; commits.

    Returns ``{lang: html_bytes}``. Raises `RenderError` naming the failing edition.
    """
    issue = session.get_one(Issue, issue_id)
    sizes: dict[str, int] = {}
    for edition in issue.editions:
        rendered = render_edition(edition_content(session, settings, issue, edition))
        edition.subject, edition.html, edition.text, edition.web_html = rendered.subject, rendered.html, rendered.text, rendered.web_html
        edition.rendered_at = utcnow()
        sizes[edition.lang] = len(rendered.html.encode())
    session.commit()
    return sizes


def plan_deliveries(session: Session, settings: Settings, issue_id: int, enqueue: Enqueue) -> int:
    """Freeze the audience into delivery rows and hand them to ``enqueue`` in batches; commits.

    Streams subscribers in id order, ``settings.plan_chunk_size`` at a time, inserting rows with
    INSERT … ON CONFLICT DO NOTHING on (issue, subscriber), so a re-run adds nothing twice. Rows are
    marked enqueued and committed before ``enqueue`` is called; if the process dies in between, the
    sweeper re-enqueues them. Returns the number of deliveries planned in this call.
    """
    issue = session.get_one(Issue, issue_id)
    langs = [e.lang for e in issue.editions]
    planned = 0
    for chunk in stream_audience(
        session, issue.segment, max_subscriber_id=issue.audience_max_subscriber_id, chunk=settings.plan_chunk_size
    ):
        now = utcnow()
        rows = []
        for sub in chunk:
            lang = edition_for(sub.lang, langs)
            rows.append({
                "issue_id": issue_id, "subscriber_id": sub.id, "email": sub.email,
                "lang": lang or sub.lang,
                "status": DeliveryStatus.PENDING if lang else DeliveryStatus.SKIPPED,
                "skip_reason": None if lang else "no-edition",
                "message_id": message_id(settings.secret_key, issue_id, sub.id, settings.mail_domain),
                "attempts": 0, "created_at": now, "updated_at": now,
            })  # fmt: skip
        planned += ledger.insert_ignore(session, rows)
        ids = list(
            session.scalars(
                select(Delivery.id)
                .where(
                    Delivery.issue_id == issue_id,
                    Delivery.subscriber_id.in_([s.id for s in chunk]),
                    Delivery.status == DeliveryStatus.PENDING,
                    Delivery.enqueued_at.is_(None),
                )
                .order_by(Delivery.id)
            )
        )
        ledger.mark_enqueued(session, ids, now)
        session.commit()
        for start in range(0, len(ids), settings.batch_size):
            enqueue(issue_id, ids[start : start + settings.batch_size])
    issue = session.get_one(Issue, issue_id)
    if issue.status == IssueStatus.PUBLISHING:
        issue.status = IssueStatus.SENDING
        issue.planned_at = utcnow()
    session.commit()
    finish_if_done(session, issue_id)
    return planned


def finish_if_done(session: Session, issue_id: int) -> bool:
    """Mark a ``sending`` issue ``sent`` once every delivery is final; commits. Returns True if it did."""
    issue = session.get(Issue, issue_id)
    if issue is None or issue.status != IssueStatus.SENDING or ledger.count_open(session, issue_id):
        return False
    issue.status = IssueStatus.SENT
    issue.finished_at = utcnow()
    session.commit()
    log.info("issue %s sent", issue.number)
    return True


def fail_issue(session: Session, issue_id: int, reason: str) -> None:
    """Mark the issue failed with ``reason`` (a publish step raised); commits. Deliveries stay as they are."""
    session.rollback()
    issue = session.get(Issue, issue_id)
    if issue is not None and issue.status in (IssueStatus.DRAFT, IssueStatus.PUBLISHING, IssueStatus.SENDING):
        issue.status = IssueStatus.FAILED
        issue.error = reason[:4000]
        session.commit()


@dataclass
class SweepResult:
    """What one sweep did: batches enqueued per issue, and issues finished."""

    enqueued: dict[int, int] = field(default_factory=dict)
    finished: list[int] = field(default_factory=list)
    fired: list[int] = field(default_factory=list)


def sweep(
    session: Session,
    settings: Settings,
    enqueue: Enqueue,
    now: datetime | None = None,
    requeue_after: float | None = None,
    start: Callable[[int], None] | None = None,
) -> SweepResult:
    """Fire due schedules (handing each fired issue id to ``start``), re-enqueue what is due (retries,
    expired claims, lost broker messages) and finish done issues.

    Only issues in ``sending`` are swept, so rows still being planned are left to the planner.
    Safe to run from several processes at once: a delivery enqueued twice is claimed once.
    """
    now = now or utcnow()
    requeue_after = settings.lease_seconds if requeue_after is None else requeue_after
    result = SweepResult()
    if start is not None:
        for issue_id in fire_due_schedules(session, now):
            try:
                start(issue_id)
            except Exception:  # the pipeline marked the issue failed with the reason; keep sweeping
                log.exception("scheduled issue id %s failed to start", issue_id)
            result.fired.append(issue_id)
    sending = set(session.scalars(select(Issue.id).where(Issue.status == IssueStatus.SENDING)))
    due: dict[int, list[int]] = defaultdict(list)
    for issue_id, delivery_id in ledger.due_for_enqueue(session, now, requeue_after):
        if issue_id in sending:
            due[issue_id].append(delivery_id)
    for issue_id, ids in due.items():
        ledger.mark_enqueued(session, ids, now)
        session.commit()
        batches = [ids[i : i + settings.batch_size] for i in range(0, len(ids), settings.batch_size)]
        for batch in batches:
            enqueue(issue_id, batch)
        result.enqueued[issue_id] = len(batches)
    for issue_id in sending:
        if finish_if_done(session, issue_id):
            result.finished.append(issue_id)
    return result


def next_due_in(session: Session, now: datetime | None = None) -> timedelta | None:
    """Time until the earliest deferred delivery is due (None when nothing is deferred)."""
    now = now or utcnow()
    earliest = session.scalar(select(func.min(Delivery.next_attempt_at)).where(Delivery.status == DeliveryStatus.DEFERRED))
    return None if earliest is None else max(earliest - now, timedelta(0))


@dataclass
class IssueReport:
    """What `issue status` prints: counts per (state, language) and per (relay, state), the retry
    queue (deferred deliveries: how many, the next due time, attempts so far) and the latest errors."""

    number: int
    status: str
    error: str | None
    counts: dict[tuple[str, str], int]
    last_errors: list[tuple[str, str]]
    by_relay: dict[tuple[str, str], int] = field(default_factory=dict)
    retry_queue: int = 0
    next_retry_at: datetime | None = None
    retry_attempts: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_state(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (state, _lang), n in self.counts.items():
            out[state] += n
        return dict(out)


def report(session: Session, issue: Issue, errors: int = 5) -> IssueReport:
    """Counts, per-relay outcomes, the retry queue and the latest errors of an issue."""
    last = session.execute(
        select(Delivery.email, Delivery.last_error)
        .where(Delivery.issue_id == issue.id, Delivery.last_error.is_not(None))
        .order_by(Delivery.updated_at.desc())
        .limit(errors)
    ).all()
    relays = session.execute(
        select(Delivery.relay, Delivery.status, func.count())
        .where(Delivery.issue_id == issue.id, Delivery.relay.is_not(None))
        .group_by(Delivery.relay, Delivery.status)
    ).all()
    deferred = Delivery.status == DeliveryStatus.DEFERRED
    queue, next_at = session.execute(
        select(func.count(), func.min(Delivery.next_attempt_at)).where(Delivery.issue_id == issue.id, deferred)
    ).one()
    attempts = session.execute(
        select(Delivery.attempts, func.count()).where(Delivery.issue_id == issue.id, deferred).group_by(Delivery.attempts)
    ).all()
    return IssueReport(
        issue.number,
        str(issue.status),
        issue.error,
        ledger.counts(session, issue.id),
        [(e, m or "") for e, m in last],
        by_relay={(r, str(st)): n for r, st, n in relays},
        retry_queue=queue or 0,
        next_retry_at=next_at,
        retry_attempts={a: n for a, n in attempts},
    )


def planned_ids(session: Session, issue_id: int, states: Sequence[DeliveryStatus]) -> list[int]:
    """Delivery ids of an issue in ``states``, in id order."""
    return list(
        session.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id, Delivery.status.in_(list(states))).order_by(Delivery.id))
    )


def pause_issue(session: Session, issue: Issue) -> None:
    """Stop sending: batches under way hand back their unsent claims within a few messages; commits.

    Raises:
        IssueError: the issue is not publishing or sending.
    """
    if issue.status not in (IssueStatus.PUBLISHING, IssueStatus.SENDING):
        raise IssueError(f"issue {issue.number} is {issue.status}; only a publishing or sending issue can be paused")
    issue.status = IssueStatus.PAUSED
    session.commit()


def resume_issue(session: Session, settings: Settings, issue: Issue, enqueue: Enqueue) -> int:
    """Continue a paused issue exactly where it stopped; commits. Returns the batches enqueued.

    Every non-final delivery is enqueued again; sent ones are final, so nothing is sent twice, and
    the ledger's claims make a message for a delivery already in flight a no-op. If planning had not
    finished, the issue goes back to ``publishing`` and the caller must re-run the plan step.

    Raises:
        IssueError: the issue is not paused.
    """
    if issue.status != IssueStatus.PAUSED:
        raise IssueError(f"issue {issue.number} is {issue.status}, not paused")
    issue.status = IssueStatus.SENDING if issue.planned_at else IssueStatus.PUBLISHING
    session.commit()
    ids = planned_ids(session, issue.id, [DeliveryStatus.PENDING, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING])
    ledger.mark_enqueued(session, ids)
    session.commit()
    batches = [ids[i : i + settings.batch_size] for i in range(0, len(ids), settings.batch_size)]
    for batch in batches:
        enqueue(issue.id, batch)
    finish_if_done(session, issue.id)
    return len(batches)


def cancel_issue(session: Session, issue: Issue) -> int:
    """Stop an issue for good: every delivery not yet sent becomes ``skipped`` (reason ``cancelled``);
    batches under way stop within a few messages. Commits. Returns the deliveries skipped now.

    Raises:
        IssueError: the issue already finished.
    """
    if issue.status in (IssueStatus.SENT, IssueStatus.CANCELLED):
        raise IssueError(f"issue {issue.number} is {issue.status}; it cannot be cancelled")
    issue.status = IssueStatus.CANCELLED
    issue.finished_at = utcnow()
    session.commit()
    result = session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue.id, Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]))
        .values(status=DeliveryStatus.SKIPPED, skip_reason="cancelled", updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]

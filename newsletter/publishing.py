"""The publish flow as plain functions: validate, attach related, render, plan, sweep, finish.

Each step takes a session and settings and is safe to run again; `tasks/` wraps them in Celery.
``enqueue`` callables hand ``(issue_id, delivery_ids)`` to the send queue; the caller decides how.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from newsletter.config import Settings
from newsletter.content import category_label, to_traditional
from newsletter.delivery import ledger
from newsletter.issues import IssueError
from newsletter.models import (
    FINAL_DELIVERY_STATES,
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


def freeze_audience(session: Session, issue: Issue) -> None:
    """Fix the audience at its current size: only subscribers with id <= today's highest are planned."""
    if issue.audience_max_subscriber_id is None:
        issue.audience_max_subscriber_id = session.scalar(select(func.max(Subscriber.id))) or 0


PUBLISHABLE_STATES = (IssueStatus.DRAFT, IssueStatus.SCHEDULED, IssueStatus.FAILED)


def request_publish(session: Session, settings: Settings, issue: Issue) -> None:
    """Validate an issue (`check_publishable`) and move it to ``publishing``, freezing its audience; commits.

    A failed (or scheduled) issue may be published now: the ledger makes a re-run send only what was not sent.
    The move is one conditional UPDATE (``WHERE status IN ('draft', 'scheduled', 'failed')``), so of two
    publishes of the same issue at the same instant exactly one wins; the other gets `IssueError`.

    Raises:
        IssueError, RenderError: see `check_publishable`, or another publish won the race; nothing was changed.
    """
    check_publishable(session, settings, issue)
    now = utcnow()
    highest = session.scalar(select(func.max(Subscriber.id))) or 0
    won = session.execute(
        update(Issue)
        .where(Issue.id == issue.id, Issue.status.in_(PUBLISHABLE_STATES))
        .values(
            status=IssueStatus.PUBLISHING,
            error=None,
            scheduled_at=None,
            published_at=func.coalesce(Issue.published_at, now),
            pipeline_heartbeat_at=now,
            audience_max_subscriber_id=func.coalesce(Issue.audience_max_subscriber_id, highest),  # see freeze_audience
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    session.refresh(issue)
    if not won:
        raise IssueError(f"issue {issue.number} is already being published ({issue.status})")


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
    heartbeat(session, issue_id)
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
    heartbeat(session, issue_id)
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
        session.execute(update(Issue).where(Issue.id == issue_id).values(pipeline_heartbeat_at=now))  # progress
        session.commit()
        for start in range(0, len(ids), settings.batch_size):
            try:
                enqueue(issue_id, ids[start : start + settings.batch_size])
            except Exception:
                # The broker is away: these rows were never handed over. Say so in the ledger, so that
                # planning run again (the sweeper restarts it) enqueues them, then let the caller decide.
                session.rollback()
                session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(ids[start:]))
                    .values(enqueued_at=None)
                    .execution_options(synchronize_session=False)
                )
                session.commit()
                raise
    issue = session.get_one(Issue, issue_id)
    if issue.status == IssueStatus.PUBLISHING:
        issue.status = IssueStatus.SENDING
        issue.planned_at = utcnow()
    session.commit()
    finish_if_done(session, issue_id)
    return planned


def heartbeat(session: Session, issue_id: int) -> None:
    """Record that the publish pipeline of an issue made progress (or was just enqueued); commits."""
    session.execute(
        update(Issue).where(Issue.id == issue_id).values(pipeline_heartbeat_at=utcnow()).execution_options(synchronize_session=False)
    )
    session.commit()


def finish_if_done(session: Session, issue_id: int) -> bool:
    """End a ``sending`` issue once every delivery is final; commits. Returns True if this call ended it.

    It ends ``sent`` when at least one message went out or nothing failed, and ``failed`` (with the
    count and the last error in ``Issue.error``) when deliveries failed and none was sent: an issue
    nobody received is not reported as sent. One conditional UPDATE, so two finishers end it once.
    """
    issue = session.get(Issue, issue_id)
    if issue is None or issue.status != IssueStatus.SENDING:
        return False
    rows = session.execute(select(Delivery.status, func.count()).where(Delivery.issue_id == issue_id).group_by(Delivery.status))
    by_state = {state: n for state, n in rows}
    if any(n for state, n in by_state.items() if state not in FINAL_DELIVERY_STATES):
        return False
    failed = by_state.get(DeliveryStatus.FAILED, 0)
    delivered = by_state.get(DeliveryStatus.SENT, 0) + by_state.get(DeliveryStatus.BOUNCED, 0)
    values: dict[str, object] = {"status": IssueStatus.SENT, "finished_at": utcnow()}
    if failed and not delivered:
        last = session.scalar(
            select(Delivery.last_error)
            .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.FAILED)
            .order_by(Delivery.updated_at.desc())
            .limit(1)
        )
        values.update(status=IssueStatus.FAILED, error=f"every delivery failed ({failed}); last error: {last}"[:4000])
    won = session.execute(
        update(Issue)
        .where(Issue.id == issue_id, Issue.status == IssueStatus.SENDING)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if won:
        session.refresh(issue)
        log.info("issue %s %s", issue.number, issue.status)
    return bool(won)


def fail_issue(session: Session, issue_id: int, reason: str) -> None:
    """Mark the issue failed with ``reason`` (a publish step raised); commits. Deliveries stay as they are."""
    session.rollback()
    issue = session.get(Issue, issue_id)
    if issue is not None and issue.status in (IssueStatus.DRAFT, IssueStatus.PUBLISHING, IssueStatus.SENDING):
        issue.status = IssueStatus.FAILED
        issue.error = reason[:4000]
        session.commit()


def planned_ids(session: Session, issue_id: int, states: Sequence[DeliveryStatus]) -> list[int]:
    """Delivery ids of an issue in ``states``, in id order."""
    return list(
        session.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id, Delivery.status.in_(list(states))).order_by(Delivery.id))
    )

"""The publish flow as plain functions: validate, attach related, render, plan, sweep, finish.

Each step takes a session and settings and is safe to run again; `tasks/` wraps them in Celery.
``enqueue`` callables hand ``(issue_id, delivery_ids)`` to the send queue; the caller decides how.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from datetime import timezone as dt_timezone
from zoneinfo import ZoneInfo

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from newsletter.article_text import derive_all
from newsletter.config import Settings
from newsletter.content import category_label, first_image, to_traditional
from newsletter.delivery import breaker
from newsletter.delivery.planning import id_ranges, plan_range
from newsletter.issues import IssueError, IssueStateError
from newsletter.models import (
    FINAL_DELIVERY_STATES,
    LANGUAGES,
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
from newsletter.rendering import ArticleView, EditionContent, check_edition, render_edition
from newsletter.segments import SegmentError, audience, audience_conditions, count_audience, edition_for, why_empty
from newsletter.summaries import summarise

log = logging.getLogger(__name__)

Enqueue = Callable[[int, list[int]], None]
RELATED_PER_ARTICLE = 3

# Babel locales of the edition languages (CLDR data: month names, order, the 年月日 pattern).
LOCALES = {"en": "en", "zh-Hans": "zh_Hans_CN", "zh-Hant": "zh_Hant_TW"}


def format_date(when: datetime, lang: str, timezone: str = "UTC") -> str:
    """The date of ``when`` in ``timezone`` (IANA name), in the edition language's long format (Babel/CLDR):
    ``November 30, 2026`` in English, ``2026年11月30日`` in Chinese."""
    from babel.dates import format_date as babel_format_date

    local = when.astimezone(zone(timezone))
    return babel_format_date(local.date(), format="long", locale=LOCALES.get(lang, lang.replace("-", "_")))


def zone(name: str) -> tzinfo:
    """An IANA zone by name, or a fixed offset written ``+08:00``."""
    if name[:1] in "+-" and len(name) == 6:
        sign = -1 if name[0] == "-" else 1
        return dt_timezone(sign * timedelta(hours=int(name[1:3]), minutes=int(name[4:6])))
    return ZoneInfo(name)


def issue_timezone(settings: Settings, issue: Issue) -> str:
    """The zone an issue's dates are shown in: the one it was scheduled in, else ``NEWSLETTER_TIMEZONE``."""
    return issue.timezone or settings.timezone


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


def _view(article: Article, convert: Callable[[str], str] | None, fallback_url: str, related: tuple[ArticleView, ...] = ()) -> ArticleView:
    conv = convert or (lambda s: s)
    image = first_image(article.body_html) if article.body_html else None
    if image is not None and convert is not None and image.alt:
        image = replace(image, alt=conv(image.alt))
    return ArticleView(
        title=conv(article.title),
        summary=conv(article.summary),
        url=article.url or fallback_url,
        category=conv(category_label(article.category)) if article.category else None,
        image=image,
        related=related,
    )


def _related_view(article: Article, convert: Callable[[str], str] | None, fallback_url: str) -> ArticleView:
    # One line under the title: the summary's first sentence or so.
    conv = convert or (lambda s: s)
    limit = 60 if article.lang.startswith("zh") else 140
    return ArticleView(
        title=conv(article.title), summary=conv(summarise(article.summary, article.lang, limit)), url=article.url or fallback_url
    )


def converter(settings: Settings) -> Callable[[str], str]:
    """Simplified to Traditional Chinese as this deployment configures it (NEWSLETTER_ZH_HANT_*)."""
    return lambda text: to_traditional(text, settings.zh_hant_conversion, settings.zh_hant_phrases)


def edition_content(session: Session, settings: Settings, issue: Issue, edition: Edition) -> EditionContent:
    """Everything the templates need for one edition, from the database."""
    convert = converter(settings) if edition.converted_from == "zh-Hans" and edition.lang == "zh-Hant" else None
    url = web_url(settings, issue, edition.lang)
    articles = edition_articles(session, issue, edition)
    related: dict[int, list[ArticleView]] = {}
    # A converted edition shows the rows of the edition it was converted from.
    rows = list(
        session.scalars(
            select(RelatedArticle)
            .where(
                RelatedArticle.issue_id == issue.id,
                RelatedArticle.lang == source_lang(edition),
                RelatedArticle.source_article_id.is_not(None),
            )
            .order_by(RelatedArticle.source_article_id, RelatedArticle.rank)
        )
    )
    # What the import left pending (summaries, HTML of Markdown bodies) is made here, for the few dozen
    # articles shown, with this deployment's rules; stored when the caller commits.
    derive_all([*articles, *(row.article for row in rows)], settings.summary_rules)
    for row in rows:
        related.setdefault(row.source_article_id or 0, []).append(_related_view(row.article, convert, url))
    return EditionContent(
        number=issue.number,
        lang=edition.lang,
        title=edition.title,
        date=format_date(issue.published_at or issue.created_at, edition.lang, issue_timezone(settings, issue)),
        web_url=url,
        articles=tuple(_view(a, convert, f"{url}#article-{i}", tuple(related.get(a.id, ()))) for i, a in enumerate(articles, 1)),
        editors_note=edition.editors_note,
        converted_from=edition.converted_from,
        site_url=settings.base_url + "/",
        languages=tuple(e.lang for e in sorted(issue.editions, key=lambda e: LANGUAGES.index(e.lang) if e.lang in LANGUAGES else 9)),
        branding=settings.branding,
    )


def check_publishable(session: Session, settings: Settings, issue: Issue) -> None:
    """Raise unless ``issue`` could be published now: not already sent or under way, every edition has
    articles and renders (templates, translations), the segment is valid and the audience not empty.

    Raises:
        IssueError: a check failed.
        RenderError: an edition does not render.
    """
    if issue.status in (IssueStatus.PUBLISHING, IssueStatus.SENDING):
        raise IssueStateError(f"issue {issue.number} is already being published ({issue.status})")
    if issue.status == IssueStatus.SENT:
        raise IssueStateError(f"issue {issue.number} was already sent")
    if issue.status == IssueStatus.PAUSED:
        raise IssueStateError(f"issue {issue.number} is paused: resume it instead")
    if issue.status == IssueStatus.CANCELLED:
        raise IssueStateError(f"issue {issue.number} was cancelled")
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
        raise IssueError(f"issue {issue.number}: bad segment: {exc}", "segment") from exc
    if size == 0:
        raise IssueError(f"issue {issue.number}: the audience is empty: {why_empty(session, issue.segment)}")


def freeze_audience(session: Session, issue: Issue) -> None:
    """Fix the audience at its current size: only subscribers with id <= today's highest are planned."""
    if issue.audience_max_subscriber_id is None:
        issue.audience_max_subscriber_id = session.scalar(select(func.max(Subscriber.id))) or 0


def start_afresh(session: Session, issue_id: int) -> None:
    """For a publish that starts now (`request_publish`, a schedule firing): forget the rendering and the
    plan of an earlier run, so that nothing is handed to the send queue before this run's own rendering is
    stored and ``sending`` waits for this run's planning (see `dispatch_state`). Does not commit."""
    unsynchronised = {"synchronize_session": False}
    session.execute(update(Issue).where(Issue.id == issue_id).values(planned_at=None).execution_options(**unsynchronised))
    session.execute(update(Edition).where(Edition.issue_id == issue_id).values(rendered_at=None).execution_options(**unsynchronised))


PUBLISHABLE_STATES = (IssueStatus.DRAFT, IssueStatus.SCHEDULED, IssueStatus.FAILED)


def request_publish(session: Session, settings: Settings, issue: Issue) -> None:
    """Validate an issue (`check_publishable`) and move it to ``publishing``, freezing its audience; commits.

    A failed (or scheduled) issue may be published now: the ledger makes a re-run send only what was not sent,
    and the deliveries a relay refused as unknown without vouching for it (held, see
    `newsletter.delivery.breaker`) are sent again.
    The move is one conditional UPDATE (``WHERE status IN ('draft', 'scheduled', 'failed')``), so of two
    publishes of the same issue at the same instant exactly one wins; the other gets `IssueStateError`
    (a conflict: HTTP 409).

    Raises:
        IssueError, RenderError: see `check_publishable`, or another publish won the race; nothing was changed.
    """
    check_publishable(session, settings, issue)
    now = utcnow()
    highest = session.scalar(select(func.max(Subscriber.id))) or 0
    again = issue.status == IssueStatus.FAILED and issue.planned_at is not None
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
    if won and again:
        # Published again after a relay refused everyone: what it refused as unknown was held, not
        # suppressed, and goes out now (pending, never enqueued: planning hands them to the send queue).
        breaker.reopen_held(session, issue.id, enqueued_at=None)
    if won:
        start_afresh(session, issue.id)
    session.commit()
    session.refresh(issue)
    if not won:  # another publish of this issue got there first: a conflict with its state, not bad input
        raise IssueStateError(f"issue {issue.number} is already being published ({issue.status})")


def attach_related(session: Session, settings: Settings, issue_id: int, k: int = RELATED_PER_ARTICLE) -> dict[str, int]:
    """Compute the "You might also like" block of each article of the issue from the related index; commits.

    Per language the issue's articles are written in (a converted zh-Hant edition shares the zh-Hans
    rows): candidates are the indexed articles of that language group published no later than the issue's
    newest article (or now), other than the issue's own articles and their translations; each article
    gets up to ``k`` picks, spread across the issue (`newsletter.related.rank.for_issue`). Re-running
    replaces the blocks; safe to run more than once. Returns ``{edition lang: picks}``.
    """
    from newsletter.related.rank import candidates_mask, for_issue, source_of
    from newsletter.related.store import ensure_indexed, load_index
    from newsletter.related.text import group_of

    issue = session.get_one(Issue, issue_id)
    in_issue = list(
        session.scalars(select(Article).join(IssueArticle, IssueArticle.article_id == Article.id).where(IssueArticle.issue_id == issue_id))
    )
    keys = {a.translation_key for a in in_issue if a.translation_key}
    exclude = {a.id for a in in_issue}
    if keys:
        exclude.update(session.scalars(select(Article.id).where(Article.translation_key.in_(keys))))
    langs = {a.lang for a in in_issue}
    ensure_indexed(session, in_issue, langs | ({"zh-Hans", "zh-Hant"} if any(lang.startswith("zh") for lang in langs) else set()))
    rows: list[RelatedArticle] = []
    picks_by_lang: dict[str, int] = {}
    langs = sorted({source_lang(e) for e in issue.editions})
    for lang in langs:
        queries = [a for a in in_issue if a.lang == lang]
        queries.sort(key=lambda a: next(i.position for i in issue.items if i.article_id == a.id))
        index = load_index(session, group_of(lang))
        newest = max((a.published_at for a in queries if a.published_at), default=None)
        mask = candidates_mask(index, newest or utcnow(), exclude)
        blocks = for_issue(index, [source_of(index, a.id) for a in queries], mask, per_article=k)
        rows.extend(
            RelatedArticle(issue_id=issue_id, lang=lang, source_article_id=source.id, article_id=aid, rank=rank, score=score)
            for source, block in zip(queries, blocks, strict=True)
            for rank, (aid, score) in enumerate(block, 1)
        )
        picks_by_lang[lang] = sum(map(len, blocks))
    # A restarted pipeline may run this step twice at once: the issue's row lock makes the second
    # replace the first's rows after it committed, instead of colliding with them on the unique key.
    # FOR NO KEY UPDATE (not FOR UPDATE): two of these still exclude each other, but planning's delivery inserts
    # (whose foreign-key checks take FOR KEY SHARE on the issue row) do not hold this step up.
    session.execute(select(Issue.id).where(Issue.id == issue_id).with_for_update(key_share=True))
    session.execute(delete(RelatedArticle).where(RelatedArticle.issue_id == issue_id, RelatedArticle.lang.in_(langs)))
    session.add_all(rows)
    session.commit()
    heartbeat(session, issue_id)
    return {e.lang: picks_by_lang.get(source_lang(e), 0) for e in issue.editions}


# States in which a publish under way may hand planned rows to the send queue. A paused issue keeps its rows
# for `newsletter.control.resume_issue`; a failed or cancelled one never sends them (see `render_editions`).
HANDING_OVER = (IssueStatus.PUBLISHING, IssueStatus.SENDING)


@dataclass(frozen=True)
class DispatchState:
    """An issue's publish as read under its row lock: ``status``; ``rendered``: every edition was rendered by
    this publish (`request_publish` clears ``Edition.rendered_at``); ``planned``: this publish's planning went
    through every subscriber range (``Issue.planned_at``, cleared by `request_publish` too)."""

    status: IssueStatus
    rendered: bool
    planned: bool


def dispatch_state(session: Session, issue_id: int) -> DispatchState:
    """Lock the issue's row until the caller commits, and read its `DispatchState`.

    Rendering and planning run at the same time (the canvas of `tasks.publish.publish_pipeline`), and only
    the one that finishes second may move the issue to ``sending``; each range planned after the rendering
    is handed over by planning, each one planned before it by the rendering. Both decide under this lock,
    so every planned row is handed over exactly once whichever finishes first. On PostgreSQL it is
    ``SELECT … FOR NO KEY UPDATE`` on the issue row (the row lock of an UPDATE, which a heartbeat takes too).
    SQLite has no row locks but one writer at a time for the whole database: a write first (the issue's
    heartbeat) takes that lock until the commit (others wait ``busy_timeout``), and what is read after it
    includes every commit before it.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(Issue).where(Issue.id == issue_id).values(pipeline_heartbeat_at=utcnow()).execution_options(synchronize_session=False)
        )
    # FOR NO KEY UPDATE: it excludes the other decisions (and heartbeats) but not the foreign-key checks of the
    # delivery rows planning inserts meanwhile (FOR KEY SHARE), so rendering never waits for a range's insert.
    locked = select(Issue.status, Issue.planned_at).where(Issue.id == issue_id).with_for_update(key_share=True)
    status, planned_at = session.execute(locked).one()
    return DispatchState(IssueStatus(status), is_rendered(session, issue_id), planned_at is not None)


def _delete_never_handed_over(session: Session, issue_id: int) -> None:
    """Delete the issue's rows that planning wrote and nothing touched since: ``pending`` never handed to the
    send queue, and ``skipped`` for want of an edition, neither ever attempted. Does not commit."""
    untouched = and_(Delivery.attempts == 0, Delivery.first_attempt_at.is_(None))
    planned_only = or_(
        and_(Delivery.status == DeliveryStatus.PENDING, Delivery.enqueued_at.is_(None)),
        and_(Delivery.status == DeliveryStatus.SKIPPED, Delivery.skip_reason == "no-edition"),
    )
    session.execute(
        delete(Delivery).where(Delivery.issue_id == issue_id, planned_only, untouched).execution_options(synchronize_session=False)
    )


def is_rendered(session: Session, issue_id: int) -> bool:
    """True when every edition of the issue was rendered by its latest publish (see `dispatch_state`); no lock."""
    return not session.scalar(select(exists().where(Edition.issue_id == issue_id, Edition.rendered_at.is_(None))))


def _hand_over(session: Session, settings: Settings, issue_id: int, ids: list[int], enqueue: Enqueue) -> None:
    """Give ``ids`` (marked enqueued and committed) to ``enqueue`` in batches of ``settings.batch_size``.

    Raises:
        Exception: whatever ``enqueue`` raises (the broker is away), after the rows not handed over were
            marked so again (``enqueued_at`` NULL), so that a later run of the step (the sweeper restarts a
            stalled pipeline, or enqueues them once the issue is ``sending``) hands them over.
    """
    for start in range(0, len(ids), settings.batch_size):
        try:
            enqueue(issue_id, ids[start : start + settings.batch_size])
        except Exception:
            session.rollback()
            session.execute(
                update(Delivery).where(Delivery.id.in_(ids[start:])).values(enqueued_at=None).execution_options(synchronize_session=False)
            )
            session.commit()
            raise


def render_editions(session: Session, settings: Settings, issue_id: int, enqueue: Enqueue | None = None) -> dict[str, int]:
    """Render every edition (premailer once per edition and variant) and store it; then hand over to
    ``enqueue`` whatever planning, which runs meanwhile, has planned so far; commits.

    The editions are stored and the rows planned so far (pending, ``enqueued_at`` NULL) marked enqueued in
    one transaction under the issue's row lock (`dispatch_state`); from then on planning hands over each range
    itself. If planning had already finished, this moves the issue from ``publishing`` to ``sending`` (the
    move happens when both have finished, in whichever finishes second). A paused issue's rows are left to
    `newsletter.control.resume_issue`. Without ``enqueue`` nothing is handed over: once the issue is
    ``sending``, the sweeper enqueues rows never handed over.

    Raises `RenderError` naming the failing edition (the task layer then marks the issue ``failed`` with it,
    `fail_issue`). Rows planned meanwhile were never handed over (``enqueued_at`` NULL): `fail_issue` deletes
    them under the issue's lock and planning stops at its next range once it sees ``failed``, so nothing of a
    failed rendering is ever sent (the sweeper only sends for ``sending`` issues, and `newsletter.control`
    refuses to requeue an issue whose editions were not rendered). Publishing the issue again plans and
    sends them (`request_publish`).
    """
    issue = session.get_one(Issue, issue_id)
    done = [(edition, render_edition(edition_content(session, settings, issue, edition))) for edition in issue.editions]
    state = dispatch_state(session, issue_id)
    sizes: dict[str, int] = {}
    for edition, rendered in done:
        edition.subject, edition.html, edition.text, edition.web_html = rendered.subject, rendered.html, rendered.text, rendered.web_html
        edition.rendered_at = utcnow()
        sizes[edition.lang] = len(rendered.html.encode())
    ids: list[int] = []
    moved = False
    if enqueue is not None and state.status in HANDING_OVER:
        ids = sorted(
            session.scalars(
                update(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.PENDING, Delivery.enqueued_at.is_(None))
                .values(enqueued_at=utcnow())
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            )
        )
    if state.status == IssueStatus.PUBLISHING:
        moved = state.planned
        if moved:
            to_sending = update(Issue).where(Issue.id == issue_id).values(status=IssueStatus.SENDING)
            session.execute(to_sending.execution_options(synchronize_session=False))
    session.commit()
    heartbeat(session, issue_id)
    if ids:
        log.info("issue %s: rendered; handing over %s deliveries planned meanwhile", issue.number, len(ids), extra={"issue_id": issue_id})
        _hand_over(session, settings, issue_id, ids, enqueue)  # type: ignore[arg-type]
    if moved:
        session.expire_all()
        finish_if_done(session, issue_id)
    return sizes


def plan_deliveries(session: Session, settings: Settings, issue_id: int, enqueue: Enqueue) -> int:
    """Freeze the audience into delivery rows and hand them to ``enqueue`` in batches once the editions are
    rendered; commits.

    The database selects and inserts the rows itself (`newsletter.delivery.planning.plan_range`: one
    INSERT … SELECT … ON CONFLICT DO NOTHING on (issue, subscriber) per range of
    ``settings.plan_chunk_size`` subscriber ids), so a re-run adds nothing twice and memory stays flat.
    When the editions are rendered, a range's rows are inserted marked enqueued and committed (with the
    issue's heartbeat: the progress) and then given to ``enqueue`` (if the process dies in between, the
    sweeper re-enqueues them). Before that, a range is inserted not handed over, and whether it is ours to
    hand over is decided under the issue's row lock (`dispatch_state`), taken after the insert and held to
    the commit (so rendering and heartbeats never wait for a range's insert): if rendering finished
    meanwhile, planning marks and hands them over; else `render_editions` does when it finishes. Planning stops early
    when the issue failed (a rendering error), was cancelled or has ended; a paused issue is planned on
    without handing anything over (`newsletter.control.resume_issue` does). When every range is planned it records
    ``Issue.planned_at`` and, if the editions are rendered, moves the issue from ``publishing`` to
    ``sending`` (else `render_editions` does when it finishes). Returns the number of deliveries planned in
    this call.

    Raises:
        SegmentError: the issue's segment is invalid (before anything is written).
        Exception: whatever ``enqueue`` raises, after its rows were marked not handed over.
    """
    issue = session.get_one(Issue, issue_id)
    number = issue.number
    langs = [e.lang for e in issue.editions]
    conditions = audience_conditions(issue.segment, max_subscriber_id=issue.audience_max_subscriber_id)
    planned = 0
    started = time.monotonic()
    going_on = (*HANDING_OVER, IssueStatus.PAUSED)
    for lo, hi in id_ranges(session, issue.audience_max_subscriber_id, settings.plan_chunk_size):
        # Read without a lock: once rendered, always rendered in this publish, and then this range is ours alone.
        status, rendered = session.execute(
            select(Issue.status, ~exists().where(Edition.issue_id == issue_id, Edition.rendered_at.is_(None))).where(Issue.id == issue_id)
        ).one()
        if status not in going_on:  # failed (a rendering error), cancelled, ended
            session.commit()
            log.info("issue %s is %s: planning stopped after %s deliveries", number, status, planned, extra={"issue_id": issue_id})
            return planned
        hand_over = bool(rendered) and status in HANDING_OVER
        now = utcnow()
        inserted, ids = plan_range(session, issue_id, conditions, langs, lo, hi, now, settings.secret_key, settings.mail_domain, hand_over)
        planned += inserted
        if not hand_over:
            # Rendering may have finished while this range was inserted: it handed over only what was committed
            # before its decision. Decide under the lock, held only from here to the commit.
            state = dispatch_state(session, issue_id)
            if state.status not in going_on:  # failed meanwhile: `fail_issue` could not see these rows
                _delete_never_handed_over(session, issue_id)
                session.commit()
                log.info("issue %s is %s: planning stopped", number, state.status, extra={"issue_id": issue_id})
                return planned
            if state.rendered and state.status in HANDING_OVER:
                ledger_mark = update(Delivery).where(Delivery.id.in_(ids)).values(enqueued_at=now)
                session.execute(ledger_mark.execution_options(synchronize_session=False))
            else:
                ids = []
        session.execute(update(Issue).where(Issue.id == issue_id).values(pipeline_heartbeat_at=now))  # progress
        session.commit()
        log.debug("issue %s: planned %s deliveries up to subscriber %s", number, planned, hi, extra={"issue_id": issue_id})
        _hand_over(session, settings, issue_id, ids, enqueue)
    log.info("issue %s: planned %s deliveries in %.1f s", number, planned, time.monotonic() - started, extra={"issue_id": issue_id})
    # The issue may have been paused or cancelled meanwhile (the embedded worker sends the batches inside
    # `enqueue`): record the plan and move it on only from `publishing` (or a re-run's `sending`).
    state = dispatch_state(session, issue_id)
    if state.status in HANDING_OVER:
        values: dict[str, object] = {} if state.planned else {"planned_at": utcnow()}
        if state.rendered:
            values["status"] = IssueStatus.SENDING
        if values:
            session.execute(update(Issue).where(Issue.id == issue_id).values(**values).execution_options(synchronize_session=False))
    session.commit()
    session.expire_all()
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

    Held deliveries (refused as unknown by a relay that had not vouched for its refusals, see
    `newsletter.delivery.breaker`) are decided here, in the same transaction: suppressed when their
    relay vouches over the whole issue, else left unsuppressed and named in ``Issue.error`` (which
    relay refused how many of how many as unknown, and that ``issue requeue`` sends them again).
    """
    issue = session.get(Issue, issue_id)
    if issue is None or issue.status != IssueStatus.SENDING:
        return False
    # Every send batch asks: answer "still open" from the (issue_id, status) index, in O(log n), rather than
    # counting the whole issue each time (at 100,000 deliveries that count was most of PostgreSQL's work).
    open_states = [state for state in DeliveryStatus if state not in FINAL_DELIVERY_STATES]
    if session.scalar(select(exists().where(Delivery.issue_id == issue_id, Delivery.status.in_(open_states)))):
        session.commit()  # end the read transaction
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
    if won and failed and (kept := breaker.settle_held(session, issue_id)):
        # Nothing of these was suppressed: say so, and how to send them once the relay is fixed.
        error = breaker.held_message(kept, issue.number, "requeue")
        if values["status"] == IssueStatus.FAILED:
            error = f"every delivery failed ({failed}): {error}"
        session.execute(update(Issue).where(Issue.id == issue_id).values(error=error[:4000]).execution_options(synchronize_session=False))
    session.commit()
    if won:
        session.refresh(issue)
        log.info("issue %s %s", issue.number, issue.status)
    return bool(won)


def fail_issue(session: Session, issue_id: int, reason: str) -> None:
    """Mark the issue failed with ``reason`` (a publish step raised); commits.

    A ``publishing`` issue's deliveries that planning (which runs beside related and render) wrote but that
    were never handed to the send queue nor attempted (``pending`` with ``enqueued_at`` NULL, and ``skipped``
    for want of an edition) are deleted in the same transaction, under the issue's row lock
    (`dispatch_state`); planning deletes its own range too if it sees ``failed`` (`plan_deliveries`). The
    issue is then as a failure before planning left it, so an editor can change it again
    (`newsletter.issues.require_editable` allows a failed issue without deliveries), and publishing it
    again plans them anew (same rows, same Message-IDs). Every other delivery stays as it is.
    """
    session.rollback()
    if session.get(Issue, issue_id) is None:
        return
    state = dispatch_state(session, issue_id)
    if state.status not in (IssueStatus.DRAFT, IssueStatus.PUBLISHING, IssueStatus.SENDING):
        session.commit()
        return
    if state.status == IssueStatus.PUBLISHING:
        _delete_never_handed_over(session, issue_id)
    session.execute(
        update(Issue)
        .where(Issue.id == issue_id)
        .values(status=IssueStatus.FAILED, error=reason[:4000])
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.expire_all()


def planned_ids(session: Session, issue_id: int, states: Sequence[DeliveryStatus]) -> list[int]:
    """Delivery ids of an issue in ``states``, in id order."""
    return list(
        session.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id, Delivery.status.in_(list(states))).order_by(Delivery.id))
    )


@dataclass(frozen=True)
class AudienceCount:
    """Who a publish would mail now: ``recipients`` in total, per edition language, and how many
    subscribers of the audience would be skipped for want of an edition in a language they read."""

    recipients: int
    by_edition: dict[str, int]
    no_edition: int


class ConfirmationRequired(IssueError):
    """A publish must be confirmed with the recipient count it will mail (the count is in ``audience``)."""

    def __init__(self, message: str, audience: AudienceCount) -> None:
        super().__init__(message, "confirm")
        self.audience = audience


def count_recipients(session: Session, issue: Issue) -> AudienceCount:
    """`AudienceCount` of ``issue``'s segment against its editions, as planning would assign them.

    Raises:
        IssueError: the segment is malformed.
    """
    try:
        query = audience(issue.segment, max_subscriber_id=issue.audience_max_subscriber_id).subquery()
    except SegmentError as exc:
        raise IssueError(f"issue {issue.number}: bad segment: {exc}", "segment") from exc
    langs = [e.lang for e in issue.editions]
    by_edition: dict[str, int] = {}
    skipped = 0
    for lang, n in session.execute(select(query.c.lang, func.count()).group_by(query.c.lang)):
        edition = edition_for(lang, langs)
        if edition is None:
            skipped += n
        else:
            by_edition[edition] = by_edition.get(edition, 0) + n
    return AudienceCount(sum(by_edition.values()), dict(sorted(by_edition.items())), skipped)


def publish_preview(session: Session, settings: Settings, issue: Issue) -> AudienceCount:
    """Everything a publish checks (`check_publishable`), and who it would mail.

    Raises:
        IssueError, RenderError: see `check_publishable`.
    """
    check_publishable(session, settings, issue)
    return count_recipients(session, issue)


def confirm_publish(session: Session, settings: Settings, issue: Issue, confirm: bool, recipients: int | None = None) -> AudienceCount:
    """The rule every door follows before mailing the list: the editor has seen the recipient count and
    confirmed it. With ``recipients`` given, it must still be the count now (the list may have changed
    since the editor looked). Changes nothing.

    Raises:
        ConfirmationRequired: not confirmed, or the count changed; carries the current count.
        IssueError, RenderError: see `check_publishable`.
    """
    counted = publish_preview(session, settings, issue)
    if not confirm:
        raise ConfirmationRequired(f"issue {issue.number} would go to {counted.recipients} subscribers: confirm to publish", counted)
    if recipients is not None and recipients != counted.recipients:
        raise ConfirmationRequired(
            f"issue {issue.number} would now go to {counted.recipients} subscribers, not {recipients}: confirm again", counted
        )
    return counted

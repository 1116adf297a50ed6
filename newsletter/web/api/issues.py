"""API: issues — drafts and their articles, previews, test sends, publish (confirmed), control and status."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import HTMLResponse, PlainTextResponse
from sqlalchemy import select

from newsletter import control, issues, publishing, reports, runner, scheduling
from newsletter.issues import IssueError, articles_by_external_id, get_issue
from newsletter.models import Issue
from newsletter.previews import preview_edition
from newsletter.testsend import send_test
from newsletter.web.api.schemas import (
    ArticleIds,
    ArticleOrder,
    AudienceOut,
    ControlOut,
    IssueCreate,
    IssueOut,
    IssueSummary,
    IssueUpdate,
    Lang,
    PublishIn,
    PublishOut,
    ScheduleIn,
    StatusOut,
    TestSendIn,
    TestSendOut,
)
from newsletter.web.auth import ApiActor
from newsletter.web.deps import DB, State

router = APIRouter(prefix="/issues", tags=["issues"])
Number = Annotated[int, Path(ge=1, le=2**31 - 1, description="the issue number")]


@router.get("", response_model=list[IssueSummary])
def list_issues(session: DB, status: Annotated[str | None, Query(max_length=16)] = None) -> list[IssueSummary]:
    """Every issue (optionally of one status), newest number first."""
    query = select(Issue).order_by(Issue.number.desc())
    if status:
        query = query.where(Issue.status == status)
    return [IssueSummary.of(i) for i in session.scalars(query)]


@router.post("", response_model=IssueOut, status_code=201)
def create_issue(body: IssueCreate, web: State, session: DB, response: Response) -> IssueOut:
    """Create a draft from articles in order (or empty, to fill later), with titles and notes per language."""
    chosen = articles_by_external_id(session, body.articles) if body.articles else []
    issue = issues.create_issue(
        session,
        chosen,
        number=body.number,
        titles=dict(body.titles),
        notes=dict(body.notes),
        conversion=web.settings.zh_hant_conversion,
        phrases=web.settings.zh_hant_phrases,
    )
    if body.segment is not None:
        issues.set_segment(session, issue, body.segment)
    session.commit()
    response.headers["Location"] = f"/api/issues/{issue.number}"
    return IssueOut.of(issue)


@router.get("/{number}", response_model=IssueOut)
def get(number: Number, session: DB) -> IssueOut:
    """One issue with its editions and articles in order."""
    return IssueOut.of(get_issue(session, number))


@router.patch("/{number}", response_model=IssueOut)
def update(number: Number, body: IssueUpdate, web: State, session: DB) -> IssueOut:
    """Change a draft's titles and notes per language, or its audience rule."""
    issue = get_issue(session, number)
    # Both parts are stored together or not at all: a refused segment left the new titles stored behind a 422.
    try:
        if body.titles is not None or body.notes is not None:
            issues.update_texts(
                session,
                issue,
                dict(body.titles or {}),
                dict(body.notes or {}),
                conversion=web.settings.zh_hant_conversion,
                phrases=web.settings.zh_hant_phrases,
                commit=False,
            )
        if "segment" in body.model_fields_set:
            issues.set_segment(session, issue, body.segment, commit=False)
        issues.require_editable(session, issue)
        session.commit()
    except Exception:
        session.rollback()
        raise
    return IssueOut.of(issue)


@router.delete("/{number}", status_code=204)
def delete(number: Number, session: DB) -> Response:
    """Delete a draft."""
    issues.delete_issue(session, get_issue(session, number))
    return Response(status_code=204)


@router.post("/{number}/articles", response_model=IssueOut)
def add_articles(number: Number, body: ArticleIds, web: State, session: DB) -> IssueOut:
    """Add articles to a draft, at ``position`` or at the end."""
    issue = get_issue(session, number)
    issues.add_articles(
        session, issue, articles_by_external_id(session, body.articles), body.position, **issues.zh_hant_options(web.settings)
    )
    return IssueOut.of(issue)


@router.put("/{number}/articles", response_model=IssueOut)
def set_articles(number: Number, body: ArticleOrder, web: State, session: DB) -> IssueOut:
    """Replace a draft's article list with this one, in this order (reorder)."""
    issue = get_issue(session, number)
    issues.set_articles(
        session, issue, articles_by_external_id(session, body.articles) if body.articles else [], **issues.zh_hant_options(web.settings)
    )
    return IssueOut.of(issue)


@router.delete("/{number}/articles/{article_id:path}", response_model=IssueOut)
def remove_article(number: Number, article_id: str, web: State, session: DB) -> IssueOut:
    """Take an article out of a draft."""
    issue = get_issue(session, number)
    issues.remove_article(session, issue, articles_by_external_id(session, [article_id])[0], **issues.zh_hant_options(web.settings))
    return IssueOut.of(issue)


@router.get(
    "/{number}/preview/{lang}",
    response_class=Response,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}, "text/plain": {"schema": {"type": "string"}}},
                     "description": "the edition as a subscriber sees it (HTML part, CSS inlined; or the text part)"}},
)  # fmt: skip
def preview(number: Number, lang: Lang, web: State, session: DB, format: Literal["html", "text"] = "html") -> Response:
    """One edition rendered as a subscriber would see it; the subject is in the ``X-Subject`` header (UTF-8, percent-encoded)."""
    from urllib.parse import quote

    p = preview_edition(session, web.settings, get_issue(session, number), lang)
    headers = {"X-Subject": quote(p.subject)}
    if format == "text":
        return PlainTextResponse(p.text, headers=headers)
    return HTMLResponse(p.html, headers=headers)


@router.post("/{number}/test-send", response_model=TestSendOut)
def test_send(number: Number, body: TestSendIn, web: State, session: DB, actor: ApiActor) -> TestSendOut:
    """Mail an edition to up to 10 addresses as a test (``[TEST]`` subject, ``X-Newsletter-Test: yes``);
    never counted as a delivery. At most 30 test messages an hour for the whole service (429 beyond)."""
    result = send_test(session, web.settings, get_issue(session, number), body.lang, body.addresses, actor.label)
    return TestSendOut(subject=result.subject, sent=result.sent, failed=result.failed)


@router.get("/{number}/audience", response_model=AudienceOut)
def audience(number: Number, web: State, session: DB) -> AudienceOut:
    """Who a publish would mail now (after every check a publish makes)."""
    counted = publishing.publish_preview(session, web.settings, get_issue(session, number))
    return AudienceOut(recipients=counted.recipients, by_edition=counted.by_edition, no_edition=counted.no_edition)


@router.post("/{number}/publish", response_model=PublishOut, status_code=202)
def publish(number: Number, body: PublishIn, web: State, session: DB) -> PublishOut:
    """Publish: without ``"confirm": true`` nothing happens and the answer (409) carries the recipient
    count to confirm; confirming needs ``recipients`` (422 without: the count from GET …/audience), which
    must still hold (409 with the new count otherwise). Follow with GET …/status."""
    if body.confirm and body.recipients is None:
        # A script confirms what it was shown: a confirm without the count would skip the check of who is mailed.
        raise IssueError(
            f"confirm with the count: GET /api/issues/{number}/audience first and send its recipients with confirm", "recipients"
        )
    issue = get_issue(session, number)
    runner.require_broker(web.settings, number)  # 503 before anything is confirmed or changed
    counted = publishing.confirm_publish(session, web.settings, issue, body.confirm, body.recipients)
    session.close()
    issue_id, _ = runner.start_publish(web.settings, number)
    runner.watch(web.settings, issue_id)
    return PublishOut(number=number, status="publishing", recipients=counted.recipients, by_edition=counted.by_edition)


def _control(session: DB, number: int, detail: str) -> ControlOut:
    session.expire_all()
    return ControlOut(number=number, status=str(get_issue(session, number).status), detail=detail)


@router.post("/{number}/pause", response_model=ControlOut)
def pause(number: Number, session: DB) -> ControlOut:
    """Pause sending; batches under way stop within a few messages."""
    control.pause_issue(session, get_issue(session, number))
    return _control(session, number, "paused")


@router.post("/{number}/resume", response_model=ControlOut)
def resume(number: Number, web: State, session: DB) -> ControlOut:
    """Resume a paused issue exactly where it stopped."""
    _, batches, replan = runner.resume_publish(web.settings, number, background=True)
    return _control(session, number, f"{batches} batches queued" + (", planning restarted" if replan else ""))


@router.post("/{number}/cancel", response_model=ControlOut)
def cancel(number: Number, session: DB) -> ControlOut:
    """Cancel for good: deliveries not yet sent are skipped."""
    skipped = control.cancel_issue(session, get_issue(session, number))
    return _control(session, number, f"{skipped} deliveries skipped")


@router.post("/{number}/requeue", response_model=ControlOut)
def requeue(number: Number, web: State, session: DB) -> ControlOut:
    """Send failed deliveries again (not those whose address is now suppressed)."""
    _, count = runner.requeue_publish(web.settings, number, background=True)
    return _control(session, number, f"{count} failed deliveries queued again")


@router.put("/{number}/schedule", response_model=ControlOut)
def schedule(number: Number, body: ScheduleIn, web: State, session: DB) -> ControlOut:
    """Schedule a draft to publish itself at ``at`` (checked now as for a publish)."""
    if not 2000 <= body.at.year <= 2999:
        raise IssueError("the schedule time must be between the years 2000 and 2999", "at")
    issue = get_issue(session, number)
    scheduling.schedule_issue(session, web.settings, issue, body.at)
    return _control(session, number, f"scheduled for {scheduling.describe_time(body.at, issue.timezone)}")


@router.delete("/{number}/schedule", response_model=ControlOut)
def unschedule(number: Number, session: DB) -> ControlOut:
    """Take a scheduled issue back to draft (until it fires)."""
    scheduling.unschedule_issue(session, get_issue(session, number))
    return _control(session, number, "draft again")


@router.get("/{number}/status", response_model=StatusOut)
def status(number: Number, session: DB) -> StatusOut:
    """Deliveries per state and language, per relay, the retry queue, skip reasons and the last errors."""
    return StatusOut.of(reports.report(session, get_issue(session, number)))

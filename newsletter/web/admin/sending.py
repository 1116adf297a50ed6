"""Admin pages: previews side by side, test send, publish with confirmation, live progress and control."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from newsletter import control, publishing, reports, runner
from newsletter.issues import IssueError, get_issue
from newsletter.models import IssueStatus
from newsletter.previews import preview_edition
from newsletter.rendering import RenderError
from newsletter.testsend import MAX_RECIPIENTS, send_test, split_addresses
from newsletter.web.admin.common import back, flash, is_htmx, render
from newsletter.web.auth import Editor
from newsletter.web.deps import DB, State
from newsletter.web.security import FRAMEABLE_CSP

router = APIRouter()
Number = Annotated[int, Path(ge=1, le=2**31 - 1)]
LIVE = (IssueStatus.SCHEDULED, IssueStatus.PUBLISHING, IssueStatus.SENDING)


@router.get("/issues/{number}/preview")
def previews(request: Request, number: Number, session: DB) -> Response:
    """Every edition side by side at 600 px (desktop) and 375 px (phone), with the test-send form."""
    issue = get_issue(session, number)
    return render(request, "preview.html", issue=issue, max_recipients=MAX_RECIPIENTS)


@router.get("/issues/{number}/preview/{lang}")
def preview_frame(
    number: Number, lang: Annotated[str, Path(max_length=16)], web: State, session: DB, format: Literal["html", "text"] = "html"
) -> Response:
    """One edition as the subscriber sees it, for the preview frames (no scripts, framed only by this site)."""
    headers = {"Content-Security-Policy": FRAMEABLE_CSP, "X-Frame-Options": "SAMEORIGIN", "Cache-Control": "no-store"}
    try:
        p = preview_edition(session, web.settings, get_issue(session, number), lang)
    except (IssueError, RenderError) as exc:
        return PlainTextResponse(f"This edition cannot be shown: {exc}", status_code=422, headers=headers)
    if format == "text":
        return PlainTextResponse(f"Subject: {p.subject}\n\n{p.text}", headers=headers)
    return HTMLResponse(p.html, headers=headers)


@router.post("/issues/{number}/test-send")
def test_send(
    request: Request,
    number: Number,
    web: State,
    session: DB,
    user: Editor,
    lang: Annotated[str, Form(max_length=16)],
    addresses: Annotated[str, Form(max_length=5000)],
) -> Response:
    """Send the chosen edition as a test to the addresses given (one per line or comma-separated)."""
    wanted = split_addresses([addresses])
    try:
        result = send_test(session, web.settings, get_issue(session, number), lang, wanted, f"user:{user.email}")
        if result.sent:
            flash(request, f"Test of the {lang} edition sent to {', '.join(result.sent)}.")
        for address, error in result.failed.items():
            flash(request, f"Test to {address} failed: {error}", "error")
    except (IssueError, RenderError) as exc:
        flash(request, f"Test not sent: {exc}", "error")
    return back(f"/admin/issues/{number}/preview")


@router.get("/issues/{number}/publish")
def publish_form(request: Request, number: Number, web: State, session: DB) -> Response:
    """What a publish would do: the recipient count to confirm, or why it cannot publish."""
    issue = get_issue(session, number)
    try:
        counted, problem = publishing.publish_preview(session, web.settings, issue), None
    except (IssueError, RenderError) as exc:
        counted, problem = None, str(exc)
    return render(request, "publish.html", issue=issue, counted=counted, problem=problem, notice=None)


@router.post("/issues/{number}/publish")
def publish(
    request: Request,
    number: Number,
    web: State,
    session: DB,
    recipients: Annotated[int, Form(ge=0)],
    confirm: Annotated[str, Form()] = "",
) -> Response:
    """Publish once the editor confirmed the count shown (if the list changed meanwhile, show the new count)."""
    issue = get_issue(session, number)
    try:
        publishing.confirm_publish(session, web.settings, issue, confirm == "yes", recipients)
    except publishing.ConfirmationRequired as exc:
        return render(request, "publish.html", 409, issue=issue, counted=exc.audience, problem=None, notice=str(exc))
    except (IssueError, RenderError) as exc:
        return render(request, "publish.html", 409, issue=issue, counted=None, problem=str(exc), notice=None)
    session.close()
    try:
        issue_id, _ = runner.start_publish(web.settings, number)
    except (IssueError, RenderError, runner.BrokerUnavailable) as exc:
        flash(request, f"Not published: {exc}", "error")
        return back(f"/admin/issues/{number}/publish")
    runner.watch(web.settings, issue_id)
    flash(request, f"Issue {number} is being published to {recipients} subscribers.")
    return back(f"/admin/issues/{number}/progress")


@router.get("/issues/{number}/progress")
def progress(request: Request, number: Number, session: DB) -> Response:
    """Live progress (the fragment polls itself every second while the issue is under way) and statistics."""
    issue = get_issue(session, number)
    report = reports.report(session, issue, errors=10)
    final = sum(n for (s, _), n in report.counts.items() if s in ("sent", "failed", "bounced", "skipped"))
    langs = sorted({lang for _, lang in report.counts})
    states = ("pending", "sending", "deferred", "sent", "failed", "bounced", "skipped")
    rows = [(st, [report.counts.get((st, lang), 0) for lang in langs]) for st in states]
    context = {
        "issue": issue,
        "report": report,
        "final": final,
        "langs": langs,
        "live": issue.status in LIVE,
        "rows": [(st, counts) for st, counts in rows if sum(counts)],
        "has_failed": any(st == "failed" and sum(c) for st, c in rows),
    }
    return render(request, "_progress.html" if is_htmx(request) else "progress.html", **context)


@router.post("/issues/{number}/{action}")
def act(request: Request, number: Number, action: Literal["pause", "resume", "cancel", "requeue"], web: State, session: DB) -> Response:
    """Pause, resume, cancel or requeue the failed deliveries."""
    try:
        if action == "pause":
            control.pause_issue(session, get_issue(session, number))
            flash(request, f"Issue {number} paused.")
        elif action == "cancel":
            skipped = control.cancel_issue(session, get_issue(session, number))
            flash(request, f"Issue {number} cancelled; {skipped} deliveries skipped.")
        elif action == "resume":
            _, batches, _ = runner.resume_publish(web.settings, number, background=True)
            flash(request, f"Issue {number} resumed ({batches} batches queued).")
        else:
            _, count = runner.requeue_publish(web.settings, number, background=True)
            flash(request, f"{count} failed deliveries queued again.")
    except IssueError as exc:
        flash(request, str(exc), "error")
    return back(f"/admin/issues/{number}/progress")

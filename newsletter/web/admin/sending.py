"""Admin pages: previews side by side, test send, publish with confirmation or on a schedule, live progress and control."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfoNotFoundError, available_timezones

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from newsletter import control, publishing, reports, runner, scheduling
from newsletter.issues import IssueError, get_issue
from newsletter.models import Issue, IssueStatus, utcnow
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


# Offered in the schedule form's time zone field: the IANA Area/Location names and UTC (not the system's
# "localtime" or legacy aliases such as "EST5EDT"; they are still accepted when typed).
ZONES = (*sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/"))), "UTC")


def _schedule_context(web: State, issue: Issue, values: dict[str, str] | None = None) -> dict[str, object]:
    """What the schedule form shows: the zone (the issue's own once scheduled, else ``NEWSLETTER_TIMEZONE``),
    the scheduled time in that zone, and the field values (those just posted, else the scheduled time)."""
    scheduled = issue.status == IssueStatus.SCHEDULED and issue.scheduled_at is not None
    tz = (issue.timezone if scheduled and issue.timezone else None) or web.settings.timezone
    local = issue.scheduled_at.astimezone(publishing.zone(tz)) if scheduled and issue.scheduled_at else None
    if values is None:
        values = {"date": f"{local:%Y-%m-%d}", "time": f"{local:%H:%M}", "tz": tz} if local else {"date": "", "time": "", "tz": tz}
    return {"scheduled_local": local, "schedule_zone": tz, "schedule": values, "zones": ZONES}


def _publish_page(request: Request, web: State, session: DB, issue: Issue, status_code: int = 200, **context: object) -> Response:
    """The publish page; without ``counted``/``problem`` given, what a publish would do now."""
    if "counted" not in context:
        try:
            context["counted"], context["problem"] = publishing.publish_preview(session, web.settings, issue), None
        except (IssueError, RenderError) as exc:
            context["counted"], context["problem"] = None, str(exc)
    context.setdefault("notice", None)
    context.setdefault("schedule_error", None)
    values = context.pop("schedule_values", None)
    return render(request, "publish.html", status_code, issue=issue, **_schedule_context(web, issue, values), **context)  # type: ignore[arg-type]


@router.get("/issues/{number}/publish")
def publish_form(request: Request, number: Number, web: State, session: DB) -> Response:
    """What a publish would do: the recipient count to confirm, or why it cannot publish; and the schedule form."""
    return _publish_page(request, web, session, get_issue(session, number))


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
        return _publish_page(request, web, session, issue, 409, counted=exc.audience, problem=None, notice=str(exc))
    except (IssueError, RenderError) as exc:
        return _publish_page(request, web, session, issue, 409, counted=None, problem=str(exc))
    session.close()
    try:
        issue_id, _ = runner.start_publish(web.settings, number)
    except (IssueError, RenderError, runner.BrokerUnavailable) as exc:
        flash(request, f"Not published: {exc}", "error")
        return back(f"/admin/issues/{number}/publish")
    runner.watch(web.settings, issue_id)
    flash(request, f"Issue {number} is being published to {recipients} subscribers.")
    return back(f"/admin/issues/{number}/progress")


def schedule_time(date: str, time: str, tz: str) -> datetime:
    """The aware time of the schedule form's fields: ``date`` ``2026-12-07``, ``time`` ``09:00`` (as
    ``<input type=date/time>`` send them), ``tz`` an IANA zone (``Asia/Taipei``) or an offset (``+08:00``).

    Raises:
        IssueError: a field is empty or malformed, the zone is unknown, or the year is outside 2000–2999
            (the API's bound).
    """
    try:
        naive = datetime.fromisoformat(f"{date.strip()}T{time.strip()}")
    except ValueError as exc:
        raise IssueError("give the date as 2026-12-07 and the time as 09:00", "at") from exc
    if naive.tzinfo is not None:
        raise IssueError("give the time without an offset, and the zone in the time zone field", "at")
    try:
        zone = publishing.zone(tz.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a directory name such as 'Asia'
        raise IssueError(f"unknown time zone {tz.strip()!r}: use a name such as Asia/Taipei, or an offset such as +08:00", "tz") from exc
    if not 2000 <= naive.year <= 2999:
        raise IssueError("the schedule time must be between the years 2000 and 2999", "at")
    return naive.replace(tzinfo=zone)


@router.post("/issues/{number}/schedule")
def schedule(
    request: Request,
    number: Number,
    web: State,
    session: DB,
    date: Annotated[str, Form(max_length=20)] = "",
    time: Annotated[str, Form(max_length=20)] = "",
    tz: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Schedule (or re-schedule) the issue to publish itself at a local time in a zone, through
    `scheduling.schedule_issue` as the API and CLI do: a time not in the future, an issue that is not a
    draft or scheduled, or one that could not be published now is refused, with the form shown again."""
    issue = get_issue(session, number)
    values = {"date": date, "time": time, "tz": tz}
    try:
        at = schedule_time(date, time, tz)
        scheduling.schedule_issue(session, web.settings, issue, at)
    except (IssueError, RenderError) as exc:
        session.rollback()  # schedule_issue may have set the zone before a check refused
        message = str(exc)
        if isinstance(exc, IssueError) and exc.field == "at" and "not in the future" in message:
            now = utcnow().astimezone(publishing.zone(tz.strip()))
            message = f"{date} {time} ({tz.strip()}) is in the past: it is now {now:%Y-%m-%d %H:%M} there. Choose a later time."
        return _publish_page(request, web, session, issue, 422, schedule_error=f"Not scheduled: {message}", schedule_values=values)
    flash(request, f"Issue {number} is scheduled for {scheduling.describe_time(at, issue.timezone)}.")
    return back(f"/admin/issues/{number}/publish")


@router.post("/issues/{number}/unschedule")
def unschedule(request: Request, number: Number, session: DB) -> Response:
    """Take a scheduled issue back to draft (`scheduling.unschedule_issue`; refused once it has fired)."""
    try:
        scheduling.unschedule_issue(session, get_issue(session, number))
        flash(request, f"Issue {number} is no longer scheduled: it is a draft again.")
    except IssueError as exc:
        flash(request, f"Not unscheduled: {exc}", "error")
    return back(f"/admin/issues/{number}/publish")


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

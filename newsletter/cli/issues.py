"""The ``newsletter issue`` commands: create, preview, publish, follow, schedule and control issues."""

from __future__ import annotations

import contextlib
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from sqlalchemy import select

from newsletter import control, reports, scheduling
from newsletter.articles import parse_datetime
from newsletter.cli.common import Context, pass_ctx, plural
from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.delivery import breaker
from newsletter.issues import IssueError, Selection, articles_by_external_id, create_issue, draft_warnings, get_issue, select_articles
from newsletter.models import LANGUAGES, Issue
from newsletter.rendering import RenderError

if TYPE_CHECKING:
    from newsletter.runner import PublishOutcome


@click.group()
def issue() -> None:
    """Create, preview, publish and follow issues."""


def _lang_map(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        lang, sep, text = value.partition("=")
        if not sep:
            raise click.BadParameter(f"expected LANG=TEXT, got {value!r}", param_hint=what)
        out[lang.strip()] = text
    return out


def _supported_lang(value: str | None) -> str | None:
    """``value`` as one of `LANGUAGES` (any letter case), None for None.

    Raises:
        click.BadParameter: not a language articles can have (instead of "no articles selected").
    """
    if value is None:
        return None
    found = next((lang for lang in LANGUAGES if lang.lower() == value.strip().lower()), None)
    if found is None:
        raise click.BadParameter(f"{value!r} is not a supported language; supported: {', '.join(LANGUAGES)}")
    return found


def _date(value: str | None) -> datetime | None:
    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO date: {value!r}") from exc


@issue.command("create")
@click.option("--number", type=int, help="Issue number (default: next free).")
@click.option("--title", "titles", multiple=True, metavar="LANG=TEXT", help="Edition title, e.g. en='Week 10'. Repeatable.")
@click.option("--note", "notes", multiple=True, metavar="LANG=TEXT", help="Editor's note (Markdown) per language. Repeatable.")
@click.option("--articles", "article_ids", help="Comma-separated article ids, in order.")
@click.option("--latest", type=int, help="Take the N newest articles matching the filters below.")
@click.option("--lang", callback=lambda _ctx, _param, value: _supported_lang(value), help="Filter for --latest: en, zh-Hans or zh-Hant.")
@click.option("--category", help="Filter for --latest: category (case-insensitive).")
@click.option("--since", help="Filter for --latest: published on or after (ISO 8601).")
@click.option("--until", help="Filter for --latest: published before (ISO 8601).")
@click.option("--segment", "segment_rule", metavar="RULE", help="Audience rule as JSON or @FILE (see 'segment preview --help').")
@pass_ctx
def issue_create(
    ctx: Context,
    number: int | None,
    titles: tuple[str, ...],
    notes: tuple[str, ...],
    article_ids: str | None,
    latest: int | None,
    lang: str | None,
    category: str | None,
    since: str | None,
    until: str | None,
    segment_rule: str | None,
) -> None:
    """Create a draft issue from articles given by id and/or "the N latest" in a date range or category."""
    from newsletter.cli.segments import load_rule
    from newsletter.segments import SegmentError, parse_segment

    rule = None
    if segment_rule:
        rule = load_rule(segment_rule)
        try:
            parse_segment(rule)  # checked now, not at publish time
        except SegmentError as exc:
            raise click.BadParameter(str(exc), param_hint="--segment") from exc
    with ctx.session() as session:
        chosen = []
        try:
            if article_ids:
                chosen += articles_by_external_id(session, [i.strip() for i in article_ids.split(",") if i.strip()])
            if latest:
                found = select_articles(session, Selection(latest, lang, category, _date(since), _date(until)))
                chosen += sorted((a for a in found if a not in chosen), key=lambda a: (a.published_at, a.external_id))
            if not chosen:
                raise IssueError("no articles selected: give --articles or --latest (with filters that match)")
            new = create_issue(
                session,
                chosen,
                number=number,
                titles=_lang_map(titles, "--title"),
                notes=_lang_map(notes, "--note"),
                conversion=ctx.settings.zh_hant_conversion,
                phrases=ctx.settings.zh_hant_phrases,
            )
            new.segment = rule
            session.commit()
        except IssueError as exc:
            raise click.ClickException(str(exc)) from exc
        langs = ", ".join(f"{e.lang}{' (converted)' if e.converted_from else ''}" for e in new.editions)
        click.echo(f"issue {new.number} created with {plural(len(chosen), 'article')}; editions: {langs}")
        for warning in draft_warnings(new, chosen):
            click.echo(f"warning: {warning}", err=True)


def scheduled_time(when: datetime, zone_name: str | None) -> str:
    """See `newsletter.scheduling.describe_time` (one format for every schedule message)."""
    return scheduling.describe_time(when, zone_name)


@issue.command("list")
@pass_ctx
def issue_list(ctx: Context) -> None:
    """List issues with their status, editions, article count and title (the first edition's, shortened)."""
    with ctx.session() as session:
        for item in session.scalars(select(Issue).order_by(Issue.number)):
            when = f"  at {scheduled_time(item.scheduled_at, item.timezone)}" if item.scheduled_at else ""
            langs = ", ".join(e.lang for e in item.editions)
            title = _short(item.editions[0].title, LIST_TITLE) if item.editions else "(no edition)"
            click.echo(f"{item.number:>5}  {item.status:<10}  {title}  [{langs}; {plural(len(item.items), 'article')}]{when}")


LIST_TITLE = 40  # characters of a title in 'issue list'


def _short(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, "…" marking a cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@issue.command("preview")
@click.argument("number", type=int)
@click.option("--lang", default="en", show_default=True, help="Edition language.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Output file (default: issue-N-LANG.html).")
@click.option("--text", "as_text", is_flag=True, help="Write the plain-text part instead of HTML.")
@pass_ctx
def issue_preview(ctx: Context, number: int, lang: str, out: Path | None, as_text: bool) -> None:
    """Render one edition as a subscriber would see it (CSS inlined) and write it to a file."""
    from newsletter.previews import preview_edition

    with ctx.session() as session:
        try:
            preview = preview_edition(session, ctx.settings, get_issue(session, number), lang)
        except (IssueError, RenderError) as exc:
            raise click.ClickException(str(exc)) from exc
    body = preview.text if as_text else preview.html
    out = out or Path(f"issue-{number}-{lang}.{'txt' if as_text else 'html'}")
    out.write_text(body, encoding="utf-8")
    click.echo(f"subject: {preview.subject}\nwrote {out} ({len(body.encode())} bytes)")


def interactive() -> bool:
    """Whether a person is at the terminal to confirm (standard input is a TTY)."""
    return sys.stdin.isatty()


@issue.command("publish")
@click.argument("number", type=int)
@click.option("--no-wait", is_flag=True, help="Return once the publish is queued (needs REDIS_URL and a worker).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation at a terminal.")
@click.option("--allow-no-recipients", is_flag=True, help="Publish even when the issue goes to nobody (e.g. only for its web edition).")
@pass_ctx
def issue_publish(ctx: Context, number: int, no_wait: bool, yes: bool, allow_no_recipients: bool) -> None:
    """Publish issue NUMBER: related articles, rendering, planning and sending, as Celery tasks.

    Shows the recipient count first and, at a terminal, asks to confirm it (--yes does not ask; a
    script's command line is its confirmation). An issue that would go to nobody is refused unless
    --allow-no-recipients says that is meant. Then a progress bar until every delivery is final, and
    the counts. Exits non-zero when the issue did not end sent, or when deliveries failed permanently
    (see 'issue requeue').
    """
    from newsletter import publishing
    from newsletter.runner import BrokerUnavailable, require_broker, start_publish

    try:
        with ctx.session() as session:
            get_issue(session, number)  # first: a mistyped number is named as such, whatever the broker's state
        require_broker(ctx.settings, number)  # before the count and the question: one line if it is down
        with ctx.session() as session:
            the_issue = get_issue(session, number)
            counted = publishing.publish_preview(session, ctx.settings, the_issue)
            parts = ", ".join(f"{lang} {n}" for lang, n in counted.by_edition.items() if n)
            click.echo(f"issue {number} goes to {plural(counted.recipients, 'subscriber')}" + (f" ({parts})" if parts else ""), err=True)
            if counted.no_edition:
                click.echo(f"  {counted.no_edition} more read a language without an edition and are skipped", err=True)
            if not counted.recipients and not allow_no_recipients:
                # Publishing to nobody is almost always a wrong segment or an empty list; it is still
                # possible on purpose (the issue's web edition), so a flag says so instead of a question.
                raise click.ClickException(
                    f"not published: issue {number} would go to nobody (check its segment, the subscribers and their "
                    "languages); --allow-no-recipients publishes it anyway"
                )
            confirmed = yes or not interactive() or not counted.recipients or click.confirm("Publish now?", err=True)
            publishing.confirm_publish(session, ctx.settings, the_issue, confirmed, counted.recipients)
    except publishing.ConfirmationRequired as exc:
        raise click.ClickException(f"not published: {exc}") from exc
    except (IssueError, RenderError, BrokerUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        issue_id, thread = start_publish(ctx.settings, number)
    except (IssueError, RenderError, BrokerUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    if no_wait:
        if ctx.settings.embedded:
            click.echo("note: without REDIS_URL the tasks run in this process, so --no-wait waits anyway", err=True)
        else:
            click.echo(f"issue {number} queued; follow it with: newsletter issue status {number}")
            if not _workers_listening():
                click.echo(f"warning: {NO_WORKER}", err=True)
            return
    try:
        outcome = follow_with_bar(ctx.settings, issue_id)
    except KeyboardInterrupt:
        _interrupted(ctx, number, thread)
    print_status(ctx, number)
    click.echo(f"issue {number} {outcome.status}: {outcome.summary()}")
    require_clean_end(ctx.settings, number, outcome)


def require_clean_end(settings: Settings, number: int, outcome: PublishOutcome) -> None:
    """Exit non-zero unless the followed issue (``outcome``) ended ``sent`` with no
    delivery failed for good: what `issue publish`, `issue resume` and `issue requeue` all wait for, so a
    script can tell by the exit status alone (the README's rule for publish; resume and requeue wait alike).
    The message says which failed deliveries `issue requeue` would send (not those to suppressed addresses:
    the database at ``settings`` is asked).

    Raises:
        click.ClickException: the issue ended paused, failed or cancelled, or deliveries failed permanently.
    """
    if outcome.status != "sent":  # print_status said how to go on after a failure
        raise click.ClickException(f"issue {number} ended {outcome.status}: {outcome.error}")
    if outcome.failed:
        with session_factory(settings.database_url)() as session:
            kept = control.suppressed_failures(session, get_issue(session, number))
        if kept == outcome.failed:  # "requeue sends them again" was wrong: it leaves suppressed addresses alone
            again = f"all to addresses now suppressed, which 'newsletter issue requeue {number}' does not send to"
        elif kept:
            again = f"'newsletter issue requeue {number}' sends them again, except the {kept} to addresses now suppressed"
        else:
            again = f"'newsletter issue requeue {number}' sends them again"
        raise click.ClickException(
            f"issue {number}: {plural(outcome.failed, 'delivery')} failed permanently (see 'newsletter issue status {number}'; {again})"
        )


# A failed issue can be published again; the ledger keeps what was already sent from being repeated.
AGAIN = "fix the cause, then run 'newsletter issue publish {number}' again: messages already sent are not sent twice"
NO_WORKER = (
    "no worker answers on the broker: the work waits in the queue until one runs; start one with "
    "'celery -A tasks worker -Q render,plan,send,notices' and one 'celery -A tasks beat' (or 'newsletter worker --beat')"
)


def _workers_listening() -> bool:
    from tasks.app import workers_listening

    return workers_listening()


def _interrupted(ctx: Context, number: int, thread: threading.Thread | None = None) -> NoReturn:
    """Ctrl-C while following. With workers the publish goes on without us; in-process, this process is
    the worker (and the sweeper that retries deferred deliveries), so the issue is paused (batches hand
    back their claims) and can be resumed later. ``thread``: the in-process publish to wait for."""
    if not ctx.settings.embedded:
        click.echo(f"\nstopped following; the workers go on (newsletter issue status {number})", err=True)
        raise SystemExit(130)
    with ctx.session() as session, contextlib.suppress(IssueError):  # it may have finished meanwhile
        control.pause_issue(session, get_issue(session, number))
    if thread is not None:
        thread.join(timeout=60)
    click.echo(f"\ninterrupted: issue {number} paused; continue with: newsletter issue resume {number}", err=True)
    raise SystemExit(130)


def follow_with_bar(settings: Settings, issue_id: int):  # type: ignore[no-untyped-def]
    """Follow a publish with a progress bar on stderr; returns the `PublishOutcome`.

    With a broker, when nothing moves for `runner.STALL_WARNING_SECONDS` and no worker answers a
    ping, says so on stderr with how to start one (and keeps following: the work waits in the queue).
    Deferred deliveries (retries may take up to NEWSLETTER_RETRY_WINDOW) are said with what Ctrl-C does
    in this mode (see `_interrupted`).
    """
    from newsletter.runner import follow

    def on_stall(seconds: float) -> None:
        if not settings.embedded and not _workers_listening():
            click.echo(f"\nwarning: nothing moved for {seconds:.0f} s and {NO_WORKER}", err=True)

    with contextlib.ExitStack() as stack:
        told: list[tuple[int, str]] = []  # the last (count, reason) said about deferred deliveries
        bars: list[Any] = []

        def progress(done: int, total: int) -> None:
            # The bar appears once planning has counted the deliveries: from the start it read "0/1".
            if not total:
                return
            if not bars:
                bars.append(stack.enter_context(click.progressbar(length=total, label="delivering", show_pos=True, file=sys.stderr)))
            bar = bars[0]
            bar.length = total
            bar.update(done - bar.pos)

        def on_deferred(count: int, error: str) -> None:
            # Said once, then again only when the reason changes or the count doubles (not on every retry).
            reason = _deferral_reason(error)
            if told and told[-1][1] == reason and count < 2 * told[-1][0]:
                return
            told.append((count, reason))
            number = _issue_number(settings, issue_id)
            click.echo(f"\n{count} deferred, will retry: {reason}; see 'newsletter issue status {number}'", err=True)
            if len(told) == 1:
                click.echo(f"  {_ctrl_c_hint(settings, number)}", err=True)

        return follow(settings, issue_id, progress, on_stall=on_stall, on_deferred=on_deferred)


def _ctrl_c_hint(settings: Settings, number: int) -> str:
    """What Ctrl-C does to a followed issue, truthfully for the mode (see `_interrupted`)."""
    if settings.embedded:
        return (f"this process is the issue's worker (no REDIS_URL): Ctrl-C pauses issue {number}; "
                f"'newsletter issue resume {number}' continues it")  # fmt: skip
    return (f"Ctrl-C stops only this watching: the workers go on with issue {number}; "
            "--no-wait returns without watching")  # fmt: skip


def _deferral_reason(error: str) -> str:
    """A short reason for a deferral from a delivery's ``last_error``: a refused or unreachable relay is
    named as such (the operator's first question), else the error's first line."""
    first = error.strip().splitlines()[0] if error.strip() else "no error recorded yet"
    if "ConnectionRefusedError" in first or "Connection refused" in first:
        return f"relay refuses connections ({first})"
    return first


def _issue_number(settings: Settings, issue_id: int) -> int:
    with session_factory(settings.database_url)() as session:
        return session.get_one(Issue, issue_id).number


def print_status(ctx: Context, number: int) -> None:
    """Print `reports.report` for issue ``number``, and after a failure what to do next."""
    with ctx.session() as session:
        the_issue = get_issue(session, number)
        rep = reports.report(session, the_issue)
        suppressed = control.suppressed_failures(session, the_issue) if rep.status == "failed" else 0
        held = breaker.held_count(session, the_issue.id)
        zone_name = the_issue.timezone
    click.echo(f"issue {rep.number}: {rep.status}" + (f" ({rep.error})" if rep.error else ""))
    if rep.scheduled_at:
        click.echo(f"  scheduled for {scheduled_time(rep.scheduled_at, zone_name)}")
    langs = sorted({lang for _, lang in rep.counts})
    states = ["pending", "sending", "deferred", "sent", "failed", "bounced", "skipped"]
    click.echo(f"  {'edition →':<10}" + "".join(f"{lang:>9}" for lang in langs) + f"{'total':>9}")
    for state in states:
        row = [rep.counts.get((state, lang), 0) for lang in langs]
        if sum(row):
            click.echo(f"  {state:<10}" + "".join(f"{n:>9}" for n in row) + f"{sum(row):>9}")
    click.echo(
        f"  {'total':<10}"
        + "".join(f"{sum(n for (s, lang_), n in rep.counts.items() if lang_ == lang):>9}" for lang in langs)
        + f"{rep.total:>9}"
    )
    if rep.skip_reasons:
        click.echo("  skipped: " + ", ".join(f"{reason} {n}" for reason, n in sorted(rep.skip_reasons.items())))
    if rep.by_relay:
        click.echo("  by relay:")
        for relay in sorted({r for r, _ in rep.by_relay}):
            parts = ", ".join(f"{state} {n}" for (r, state), n in sorted(rep.by_relay.items()) if r == relay)
            click.echo(f"    {relay}: {parts}")
    if rep.retry_queue:
        when = rep.next_retry_at.isoformat(timespec="seconds") if rep.next_retry_at else "?"
        tries = ", ".join(f"{n} after {a} attempt{'s' if a != 1 else ''}" for a, n in sorted(rep.retry_attempts.items()))
        click.echo(f"  retry queue: {rep.retry_queue} deferred ({tries}); next retry at {when}")
    if rep.claimed and rep.leases_until:
        # The "sending" row of the table: a batch claims all its deliveries at once, then sends them in turn.
        click.echo(f"  sending: {rep.claimed} claimed by batches under way (being sent or waiting their turn in their batch); "
                   f"if a worker died, the sweeper retakes them after {rep.leases_until:%H:%M:%S} UTC")  # fmt: skip
    for email, error in rep.last_errors:
        click.echo(f"  last error: {email}: {error}")
    if held and rep.status in ("publishing", "sending"):
        click.echo(f"  held: {plural(held, 'delivery')} refused as unknown by a relay that had not yet accepted this issue's "
                   "mail: not suppressed for now, decided when the issue ends")  # fmt: skip
    failed = sum(n for (state, _), n in rep.counts.items() if state == "failed")
    if rep.status == "failed" and failed and suppressed == failed:
        # Publishing again would send nothing: every failure suppressed its address (a hard bounce).
        click.echo(f"  every failed delivery ({failed}) went to an address that is now suppressed (hard bounce, complaint "
                   "or unsubscribe), so publishing again sends them nothing; 'newsletter subscribers show ADDRESS' "
                   "gives each reason")  # fmt: skip
    elif rep.status == "failed" and not held:  # with held deliveries the error says what to do (issue requeue)
        click.echo(f"  {AGAIN.format(number=number)}")


@issue.command("status")
@click.argument("number", type=int)
@pass_ctx
def issue_status(ctx: Context, number: int) -> None:
    """Delivery counts of issue NUMBER per state and language, and the last errors."""
    try:
        print_status(ctx, number)
    except IssueError as exc:
        raise click.ClickException(str(exc)) from exc


@issue.command("schedule")
@click.argument("number", type=int)
@click.option("--at", "at", required=True, help="When to publish: ISO 8601 with an offset (2026-12-07T09:00+08:00), or local to --tz.")
@click.option("--tz", help="IANA time zone for an --at without offset, e.g. Asia/Shanghai.")
@pass_ctx
def issue_schedule(ctx: Context, number: int, at: str, tz: str | None) -> None:
    """Schedule issue NUMBER to publish itself at a time (the beat sweeper fires it exactly once)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        when = datetime.fromisoformat(at)
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {at!r}", param_hint="--at") from exc
    if when.tzinfo is not None and tz:
        raise click.BadParameter("give either an offset in --at or --tz, not both", param_hint="--tz")
    if when.tzinfo is None:
        if not tz:
            raise click.BadParameter("give an offset (e.g. +08:00) or --tz", param_hint="--at")
        try:
            when = when.replace(tzinfo=ZoneInfo(tz))
        except ZoneInfoNotFoundError as exc:
            raise click.BadParameter(f"unknown time zone {tz!r}", param_hint="--tz") from exc
    with ctx.session() as session:
        try:
            the_issue = get_issue(session, number)
            scheduling.schedule_issue(session, ctx.settings, the_issue, when)
        except (IssueError, RenderError) as exc:
            raise click.ClickException(str(exc)) from exc
        zone_name = the_issue.timezone
    # As 'issue list' and 'issue status' show it: in the zone it was scheduled in, and in UTC.
    click.echo(f"issue {number} scheduled for {scheduled_time(when, zone_name)}")
    if ctx.settings.embedded:
        click.echo("note: without REDIS_URL nothing runs in the background; run 'newsletter sweep' when it is due", err=True)


@issue.command("unschedule")
@click.argument("number", type=int)
@pass_ctx
def issue_unschedule(ctx: Context, number: int) -> None:
    """Take a scheduled issue back to draft (possible until it fires)."""
    with ctx.session() as session:
        try:
            scheduling.unschedule_issue(session, get_issue(session, number))
        except IssueError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"issue {number} is a draft again")


@issue.command("pause")
@click.argument("number", type=int)
@pass_ctx
def issue_pause(ctx: Context, number: int) -> None:
    """Pause sending issue NUMBER; batches under way stop within a few messages."""
    with ctx.session() as session:
        try:
            control.pause_issue(session, get_issue(session, number))
        except IssueError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"issue {number} paused; continue with: newsletter issue resume {number}")


@issue.command("resume")
@click.argument("number", type=int)
@click.option("--no-wait", is_flag=True, help="Return once the batches are queued (needs REDIS_URL and a worker).")
@pass_ctx
def issue_resume(ctx: Context, number: int, no_wait: bool) -> None:
    """Resume a paused issue exactly where it stopped: no message is sent twice, none is skipped."""
    from newsletter.runner import resume_publish

    try:
        issue_id, batches, replan = resume_publish(ctx.settings, number)
    except IssueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"issue {number} resumed: {plural(batches, 'batch')} queued" + (", planning restarted" if replan else ""))
    if no_wait and not ctx.settings.embedded:
        return
    try:
        outcome = follow_with_bar(ctx.settings, issue_id)
    except KeyboardInterrupt:
        _interrupted(ctx, number)
    print_status(ctx, number)
    require_clean_end(ctx.settings, number, outcome)  # it exited 0 even when the issue was paused again or deliveries failed


@issue.command("requeue")
@click.argument("number", type=int)
@click.option("--no-wait", is_flag=True, help="Return once the batches are queued (needs REDIS_URL and a worker).")
@pass_ctx
def issue_requeue(ctx: Context, number: int, no_wait: bool) -> None:
    """Send issue NUMBER's failed deliveries again (e.g. after fixing a relay); suppressed addresses stay failed."""
    from newsletter.runner import requeue_publish

    try:
        issue_id, count = requeue_publish(ctx.settings, number)
    except IssueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"issue {number}: {plural(count, 'failed delivery')} queued again")
    with ctx.session() as session:
        the_issue = get_issue(session, number)
        kept = control.suppressed_failures(session, the_issue)
        by_relay = breaker.relay_suppressed_count(session, the_issue.id) if kept else 0
    if kept:  # said whether or not others went: a silent skip reads as "all of them"
        one = kept == 1
        click.echo(f"  {plural(kept, 'failed delivery')} {'is' if one else 'are'} for suppressed addresses (hard bounce, "
                   f"complaint or unsubscribe) and {'stays' if one else 'stay'} failed")  # fmt: skip
        if by_relay:
            click.echo(f"  {by_relay} of them on a relay's \"no such user\" in this issue; if the relay was wrong: "
                       f"newsletter issue unsuppress {number} --any-relay, then requeue again")  # fmt: skip
    elif not count:
        click.echo(f"  issue {number} has no failed deliveries")
    if count and not (no_wait and not ctx.settings.embedded):
        try:
            outcome = follow_with_bar(ctx.settings, issue_id)
        except KeyboardInterrupt:
            _interrupted(ctx, number)
        print_status(ctx, number)
        require_clean_end(ctx.settings, number, outcome)  # a relay still refusing them: the same exit status as publish


@issue.command("unsuppress")
@click.argument("number", type=int)
@click.option(
    "--any-relay",
    is_flag=True,
    help="Also when a relay accepted more than it refused (it turned bad mid-issue, or a requeue changed its tally).",
)
@pass_ctx
def issue_unsuppress(ctx: Context, number: int, any_relay: bool) -> None:
    """Release the addresses issue NUMBER suppressed on the word of a relay that refused everyone.

    Only suppressions made from this issue's own "no such user" refusals (hard-bounce) go, by default only
    those of a relay that refused as many recipients as unknown as it accepted (--any-relay: whatever it
    accepted); then 'issue requeue NUMBER' sends them. A truly dead address is refused again.
    """
    with ctx.session() as session:
        the_issue = get_issue(session, number)
        released = breaker.release_unvouched(session, the_issue.id, any_relay=any_relay)
        session.commit()
    if released:
        click.echo(f"issue {number}: {plural(len(released), 'address')} released (active again); send them the issue with: "
                   f"newsletter issue requeue {number}")  # fmt: skip
    elif any_relay:
        click.echo(f'issue {number}: nothing to release (no address was suppressed on a relay\'s "no such user" in this issue)')
    else:
        click.echo(
            f"issue {number}: nothing to release (no address was suppressed on the word of a relay that refused everyone; "
            f"'--any-relay' releases this issue's relay refusals whatever the relay accepted)"
        )


@issue.command("cancel")
@click.argument("number", type=int)
@pass_ctx
def issue_cancel(ctx: Context, number: int) -> None:
    """Cancel issue NUMBER for good: deliveries not yet sent are skipped (reason: cancelled)."""
    with ctx.session() as session:
        try:
            the_issue = get_issue(session, number)
            skipped = control.cancel_issue(session, the_issue)
            in_flight = control.in_flight(session, the_issue)
        except IssueError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"issue {number} cancelled; {plural(skipped, 'delivery')} skipped")
    if in_flight:
        click.echo(f"  {plural(in_flight, 'delivery')} claimed by batches under way {'is' if in_flight == 1 else 'are'} cancelled as "
                   "their batches notice (within a few messages), so 'issue status' may show more skipped")  # fmt: skip

"""The ``newsletter notices`` commands: the queue of subscription messages (see `newsletter.notice_queue`)."""

from __future__ import annotations

import click

from newsletter.cli.common import Context, pass_ctx, plural
from newsletter.models import Notice, NoticeStatus


def describe(notice: Notice) -> str:
    """One line: ``confirm notice to ann@example.org: queued, next attempt 2026-12-01 12:00 UTC (2 attempts) — 451 busy``."""
    line = f"{notice.kind} notice to {notice.email}: {notice.status}"
    if notice.status == NoticeStatus.SENT and notice.sent_at is not None:
        line += f" {notice.sent_at:%Y-%m-%d %H:%M} UTC"
    elif notice.status == NoticeStatus.QUEUED and notice.next_attempt_at is not None:
        line += f", next attempt {notice.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC"
    else:
        line += f" (queued {notice.created_at:%Y-%m-%d %H:%M} UTC)"
    if notice.attempts:
        line += f" after {plural(notice.attempts, 'attempt')}"
    if notice.last_error and notice.status != NoticeStatus.SENT:
        line += f" — {notice.last_error}"
    return line


@click.group()
def notices() -> None:
    """Subscription messages (confirm, welcome, already, goodbye) queued, failed and sent."""


@notices.command("list")
@click.option("--all", "everything", is_flag=True, help="Sent and skipped notices too (default: queued, sending and failed).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@pass_ctx
def notices_list(ctx: Context, everything: bool, limit: int) -> None:
    """List notices not sent yet or failed, newest first, with counts by status."""
    from newsletter.notice_queue import counts, listing

    with ctx.session() as session:
        by_status: dict[str, int] = {}
        for (status, _kind), n in counts(session).items():
            by_status[status] = by_status.get(status, 0) + n
        click.echo(", ".join(f"{status} {by_status[status]}" for status in NoticeStatus if by_status.get(status)) or "no notices")
        for notice in listing(session, tuple(NoticeStatus) if everything else None, limit=limit):
            click.echo(f"{notice.id}: " + describe(notice))


@notices.command("send-due")
@click.option(
    "--now", "retry_all", is_flag=True, help="Retry every queued notice now, not when its backoff ends (e.g. the relay is fixed)."
)
@pass_ctx
def notices_send_due(ctx: Context, retry_all: bool) -> None:
    """Send the notices that are due now (retries, and first attempts whose hand-off was lost): in this
    process without a broker, else by enqueueing them for the workers. ``newsletter sweep`` does this too."""
    from newsletter.notice_queue import retry_now, send_due
    from tasks.app import use_settings
    from tasks.notices import enqueue_due_notices

    use_settings(ctx.settings)
    if retry_all:
        with ctx.session() as session:
            click.echo(f"{plural(retry_now(session), 'queued notice')} due now")
    if not ctx.settings.embedded:
        click.echo(f"{plural(enqueue_due_notices(), 'notice')} enqueued")
        return
    with ctx.session() as session:
        outcomes = send_due(session, ctx.settings)
    click.echo(", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items())) or "no notice due")

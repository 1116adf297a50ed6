"""The ``newsletter subscribers`` commands: import and inspect subscribers."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from newsletter.cli.common import Context, confirm_or_refuse, pass_ctx, plural


@click.group()
def subscribers() -> None:
    """Subscriber commands."""


@subscribers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--encoding", default="utf-8", show_default=True, help="The file's text encoding (e.g. latin-1, gb18030).")
@click.option(
    "--confirm",
    "ask_confirm",
    is_flag=True,
    help="Do not assume consent: new subscribers are pending and are mailed a confirmation link (double opt-in).",
)
@pass_ctx
def subscribers_import(ctx: Context, file: Path, encoding: str, ask_confirm: bool) -> None:
    """Import subscribers from a CSV FILE with columns email, name, lang, topics (';'-separated), an
    optional signed_up date, and any other columns as attributes. Invalid rows (address, language,
    extra cells, control characters) are reported on stderr and skipped, the others imported;
    duplicates are merged (domain compared case-insensitively); line breaks in names become spaces.
    New subscribers are active (consent assumed, source "import") unless --confirm asks them first.

    Exit status: 0 when every row was imported, 1 when any was rejected (or the file could not be
    read in ENCODING, in which case nothing was imported).
    """
    from newsletter.models import SubscriberStatus
    from newsletter.subscribers import import_subscribers

    status = SubscriberStatus.PENDING if ask_confirm else SubscriberStatus.ACTIVE
    with ctx.session() as session:
        try:
            report = import_subscribers(session, file, encoding=encoding, status=status)
        except ValueError as exc:  # FileEncodingError, or a header without 'email'
            raise click.ClickException(str(exc)) from exc
        if ask_confirm:
            from newsletter.notice_queue import status_counts
            from newsletter.signup import send_confirmations

            ids = send_confirmations(session, ctx.settings, report.pending)
            if not ctx.settings.embedded:  # the workers send them: nothing is known yet
                click.echo(f"{plural(len(ids), 'confirmation request')} queued for the workers (see `newsletter notices list`)")
            else:
                by_status = status_counts(session, ids)
                sent, failed = by_status.get("sent", 0), by_status.get("failed", 0)
                waiting = by_status.get("queued", 0) + by_status.get("sending", 0)
                click.echo(
                    f"{plural(sent, 'confirmation request')} sent ({waiting} queued for a retry, {failed} failed"
                    ", see `newsletter notices list`)"
                )
    for error in report.errors:
        click.echo(f"{file}: {error}", err=True)
    click.echo(
        f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.merged} merged, {report.rejected} rejected"
    )
    if report.errors:
        sys.exit(1)


# Delivery.skip_reason values (delivery.planning, control, sweeper, erasure) in words.
SKIP_REASONS = {
    "no-edition": "the issue has no edition in this subscriber's language",
    "cancelled": "the issue was cancelled",
    "erased": "the subscriber's data was erased",
}


@subscribers.command("show")
@click.argument("email")
@pass_ctx
def subscribers_show(ctx: Context, email: str) -> None:
    """Show one subscriber: status, language, topics, attributes, suppression, recent deliveries and
    recent subscription messages (queued, sent or failed)."""
    from sqlalchemy import select

    from newsletter.models import Delivery, DeliveryStatus, Issue, Suppression
    from newsletter.subscribers import InvalidAddress, find_subscriber

    with ctx.session() as session:
        try:
            subscriber = find_subscriber(session, email)
        except InvalidAddress as exc:
            raise click.ClickException(str(exc)) from exc
        if subscriber is None:
            raise click.ClickException(f"no subscriber {email}")
        click.echo(f"{subscriber.email} ({subscriber.name or 'no name'}): {subscriber.status}, {subscriber.lang}")
        click.echo(f"  signed up {subscriber.created_at:%Y-%m-%d}; topics: {', '.join(subscriber.topics) or '-'}")
        if subscriber.attributes:
            click.echo("  attributes: " + ", ".join(f"{k}={v}" for k, v in sorted(subscriber.attributes.items())))
        suppression = session.scalar(select(Suppression).where(Suppression.email == subscriber.email))
        if suppression:
            click.echo(f"  suppressed since {suppression.created_at:%Y-%m-%d}: {suppression.reason} ({suppression.detail or ''})")
        rows = session.execute(
            select(Issue.number, Delivery.status, Delivery.attempts, Delivery.last_error, Delivery.skip_reason)
            .join(Issue, Issue.id == Delivery.issue_id)
            .where(Delivery.subscriber_id == subscriber.id)
            .order_by(Issue.number.desc())
            .limit(10)
        )
        for number, status, attempts, error, skip_reason in rows:
            if status == DeliveryStatus.SKIPPED:  # never tried: the reason is the news, not "0 attempts"
                said = SKIP_REASONS.get(skip_reason or "", "")
                click.echo(f"  issue {number}: skipped: {skip_reason or 'no reason recorded'}" + (f" ({said})" if said else ""))
                continue
            click.echo(f"  issue {number}: {status} after {plural(attempts, 'attempt')}" + (f" — {error}" if error else ""))
        from newsletter.cli.notices import describe
        from newsletter.notice_queue import of_subscriber

        for notice in of_subscriber(session, subscriber.id, limit=5):
            click.echo("  " + describe(notice))


@subscribers.command("erase")
@click.argument("email")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def subscribers_erase(ctx: Context, email: str, yes: bool) -> None:
    """Erase EMAIL's personal data (a GDPR erasure request). Their deliveries stay, anonymised, so issue
    counts do not change; if the address had opted out or bounced, only its hash stays suppressed."""
    from newsletter.erasure import erase_subscriber
    from newsletter.subscribers import InvalidAddress, find_subscriber

    with ctx.session() as session:
        try:
            subscriber = find_subscriber(session, email)
        except InvalidAddress as exc:
            raise click.ClickException(str(exc)) from exc
        if subscriber is None:
            raise click.ClickException(f"no subscriber {email}")
        if not yes:
            confirm_or_refuse(f"Erase {subscriber.email} for good?")
        erase_subscriber(session, subscriber.id)
    click.echo(f"{email} erased")

"""The ``newsletter bounces`` commands: read delivery status notifications (RFC 3464) from a mailbox.

Self-contained (settings and session made here) so that `newsletter.cli` can import it at its end
without an import cycle.
"""

from __future__ import annotations

from pathlib import Path

import click

from newsletter.bounces import BounceReport, process_bounces
from newsletter.cli.common import plural
from newsletter.cli.common import settings as cli_settings
from newsletter.db import session_factory


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bounces() -> None:
    """Bounce handling: VERP return paths come back as delivery status notifications."""


def _summary(report: BounceReport) -> str:
    return (
        f"{plural(report.messages, 'message')}: {report.hard} hard, {report.soft} soft, {plural(report.complaints, 'complaint')}, "
        f"{report.ignored} ignored, "
        f"{report.duplicates} already processed, {len(report.unmatched)} unmatched, {len(report.rejected)} rejected, "
        f"{len(report.unparseable)} without a delivery report; {plural(report.suppressed, 'address')} suppressed, "
        f"{plural(report.deliveries_bounced, 'delivery')} marked bounced"
    )


@bounces.command("process")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--soft-limit",
    type=click.IntRange(1, 100),
    help="Soft bounces (one per delivery) before an address is suppressed [default: NEWSLETTER_SOFT_BOUNCE_LIMIT, else 3].",
)
def bounces_process(path: Path, soft_limit: int | None) -> None:
    """Read the Maildir folder or mbox file PATH and act on its delivery status notifications.

    A hard bounce (failed, 5.x.x) suppresses the address and marks the delivery bounced; soft bounces
    (delayed, or 4.x.x) are counted per subscriber and suppress at the limit. A feedback-loop complaint
    (RFC 5965 abuse or fraud report) suppresses the address and marks the subscriber complained. Safe to run again on the
    same mailbox: processed notifications are remembered by Message-ID. The mailbox is not changed.
    Messages that cannot be used are listed on stderr with their key.
    """
    settings = cli_settings()
    try:
        with session_factory(settings.database_url)() as session:
            report = process_bounces(session, settings, path, soft_limit=soft_limit)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for title, skipped in (("not a delivery report", report.unparseable), ("rejected", report.rejected), ("unmatched", report.unmatched)):
        for item in skipped:
            click.echo(f"{title}: {path}: {item.key}: {item.reason}", err=True)
    click.echo(_summary(report))

"""The ``newsletter articles`` commands: the article archive."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from newsletter.cli.common import Context, pass_ctx


@click.group()
def articles() -> None:
    """Article archive commands."""


@articles.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def articles_import(ctx: Context, file: Path) -> None:
    """Import articles from a JSON Lines FILE (fields: id, title, body or body_html, category, lang,
    published_at). Idempotent on id; bad lines are reported and skipped."""
    from newsletter.articles import import_articles

    with ctx.session() as session:
        report = import_articles(session, file, rules=ctx.settings.summary_rules)
    for error in report.errors:
        click.echo(f"{file}: {error}", err=True)
    click.echo(f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, {len(report.errors)} rejected")
    if report.errors and not (report.created or report.updated or report.unchanged):
        sys.exit(1)

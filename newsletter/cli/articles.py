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
@click.option("--encoding", default="utf-8", show_default=True, help="The file's text encoding (e.g. latin-1, gb18030).")
@pass_ctx
def articles_import(ctx: Context, file: Path, encoding: str) -> None:
    """Import articles from a JSON Lines FILE (fields: id, title, body or body_html, category, lang,
    published_at). Idempotent on id; bad lines are reported on stderr and skipped, the others imported.

    Exit status: 0 when every record was imported, 1 when any was rejected (or the file could not be
    read in ENCODING, in which case nothing was imported).
    """
    from newsletter.articles import import_articles
    from newsletter.textfiles import FileEncodingError

    with ctx.session() as session:
        try:
            report = import_articles(session, file, encoding=encoding)
        except FileEncodingError as exc:
            raise click.ClickException(str(exc)) from exc
    for error in report.errors:
        click.echo(f"{file}: {error}", err=True)
    click.echo(f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, {len(report.errors)} rejected")
    if report.errors:
        sys.exit(1)

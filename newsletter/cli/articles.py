"""The ``newsletter articles`` commands: the article archive."""

from __future__ import annotations

import os
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
            # The CLI is single-threaded: it may fork processes to convert the records (Markdown, summaries).
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            report = import_articles(session, file, encoding=encoding, rules=ctx.settings.summary_rules, workers=workers)
        except FileEncodingError as exc:
            raise click.ClickException(str(exc)) from exc
    for error in report.errors:
        click.echo(f"{file}: {error}", err=True)
    click.echo(f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, {len(report.errors)} rejected")
    if report.errors:
        sys.exit(1)


def _filters(f):  # type: ignore[no-untyped-def]
    for option in reversed(
        [
            click.option("--lang", help="en, zh-Hans or zh-Hant."),
            click.option("--category", help="Category (case-insensitive)."),
            click.option("--since", help="Published on or after (ISO 8601)."),
            click.option("--until", help="Published before (ISO 8601)."),
            click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000)),
            click.option("--offset", default=0, type=click.IntRange(0)),
        ]
    ):
        f = option(f)
    return f


def _list(
    ctx: Context, text: str | None, lang: str | None, category: str | None, since: str | None, until: str | None, limit: int, offset: int
) -> None:
    from newsletter.cli.issues import _date
    from newsletter.issues import Selection, search_articles

    with ctx.session() as session:
        page, total = search_articles(session, text, Selection(limit, lang, category, _date(since), _date(until)), offset=offset)
        for a in page:
            when = f"{a.published_at:%Y-%m-%d}" if a.published_at else "----------"
            click.echo(f"{a.external_id}  {when}  {a.lang:<7}  {(a.category or '-')[:20]:<20}  {a.title}")
    shown = f"{offset + 1}-{offset + len(page)}" if page else "none"
    click.echo(f"{shown} of {total} article{'' if total == 1 else 's'}", err=True)


@articles.command("list")
@_filters
@pass_ctx
def articles_list(ctx: Context, **filters: object) -> None:
    """List articles, newest first: id, date, language, category, title (ids go to 'issue create --articles')."""
    _list(ctx, None, **filters)  # type: ignore[arg-type]


@articles.command("search")
@click.argument("text")
@_filters
@pass_ctx
def articles_search(ctx: Context, text: str, **filters: object) -> None:
    """Articles whose title or summary contains TEXT (case-insensitive), newest first."""
    _list(ctx, text, **filters)  # type: ignore[arg-type]

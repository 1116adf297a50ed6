"""The ``newsletter related`` commands: the related-articles index."""

from __future__ import annotations

import time

import click

from newsletter.cli.common import Context, pass_ctx


@click.group()
def related() -> None:
    """Related-articles ("You might also like") index commands."""


@related.command("reindex")
@click.option("--missing", is_flag=True, help="Only index articles without an up-to-date entry (no rebuild).")
@pass_ctx
def related_reindex(ctx: Context, missing: bool) -> None:
    """Rebuild the related-articles index from every article (imports keep it up to date on their own;
    rebuild after upgrading, or after changing articles directly in the database)."""
    from newsletter.related.store import index_missing, reindex

    started = time.perf_counter()
    with ctx.session() as session:
        report = index_missing(session) if missing else reindex(session)
    click.echo(f"{report.indexed} articles indexed, {report.unchanged} unchanged, in {time.perf_counter() - started:.1f} s")

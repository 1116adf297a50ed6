"""The ``newsletter db`` commands: the database schema."""

from __future__ import annotations

import click

from newsletter.cli.common import Context, pass_ctx
from newsletter.db import current_revision, upgrade


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the schema to the newest version (Alembic)."""
    before = current_revision(ctx.settings.database_url)
    upgrade(ctx.settings.database_url)
    after = current_revision(ctx.settings.database_url)
    where = ctx.settings.describe()["DATABASE_URL"]
    if before == after:
        click.echo(f"{where}: already at the newest schema ({after})")
    else:
        click.echo(f"{where}: migrated from {before or 'an empty database'} to {after}")

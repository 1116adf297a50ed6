"""Alembic environment: runs migrations against the URL in the Alembic config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from newsletter.db import get_engine
from newsletter.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = get_engine(url) if url else None
    assert engine is not None
    with engine.connect() as connection:
        # render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


_ = pool  # kept for Alembic's template compatibility
if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

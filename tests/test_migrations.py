"""Alembic migrations: the models match head, and every migration goes down and up again on both backends."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from newsletter.db import alembic_config, current_revision, get_engine
from newsletter.models import Base


def test_models_match_the_newest_migration(db_url: str) -> None:
    with get_engine(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_down_to_nothing_and_up_again(db_url: str) -> None:
    cfg = alembic_config(db_url)
    head = current_revision(db_url)
    command.downgrade(cfg, "base")
    assert current_revision(db_url) is None
    command.upgrade(cfg, "head")
    assert current_revision(db_url) == head == "0013_notice_queue"


def test_schema_check_reads_what_alembic_reads(db_url: str) -> None:
    """`head_revision` and `current_revision` read the migration files and the ``alembic_version`` table
    without importing Alembic (it cost a short CLI command ~0.3 s of CPU); they must say what Alembic says,
    at head and part-way down."""
    from alembic.script import ScriptDirectory

    from newsletter.db import head_revision

    cfg = alembic_config(db_url)
    assert head_revision() == ScriptDirectory.from_config(cfg).get_current_head()
    for step, target in ((command.downgrade, "0011_planning"), (command.upgrade, "head")):
        step(cfg, target)
        with get_engine(db_url).connect() as conn:
            assert current_revision(db_url) == MigrationContext.configure(conn).get_current_revision()
    assert current_revision(db_url) == head_revision()

"""Alembic migrations: the models match head, and every migration goes down and up again on both backends."""

from __future__ import annotations

import pytest
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
    assert current_revision(db_url) == head == "0015_notice_handoff"


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


def test_article_text_columns_are_compressed_with_lz4_on_postgresql(db_url: str) -> None:
    """0014: the long text columns of ``articles`` use LZ4 on a PostgreSQL built with it (pglz took half of
    the server's CPU time of an import), and go back to the default on downgrade."""
    if not db_url.startswith("postgresql"):  # SQLite has no column compression: the step is a no-op there
        assert current_revision(db_url) == "0015_notice_handoff"
        return
    query = (
        "SELECT attname, attcompression FROM pg_attribute WHERE attrelid = 'articles'::regclass"
        " AND attname IN ('body_markdown', 'body_text', 'body_html', 'summary', 'title')"
    )
    with get_engine(db_url).connect() as conn:
        if "lz4" not in (conn.exec_driver_sql("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'").scalar() or []):
            pytest.skip("this PostgreSQL has no LZ4 (it keeps pglz)")
        assert dict(conn.exec_driver_sql(query).all()) == {
            "body_markdown": "l",
            "body_text": "l",
            "body_html": "l",
            "summary": "l",
            "title": "",
        }
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "0013_notice_queue")
    with get_engine(db_url).connect() as conn:
        assert set(dict(conn.exec_driver_sql(query).all()).values()) == {""}
    command.upgrade(cfg, "head")

"""PostgreSQL: the long text columns of articles compressed with LZ4 instead of pglz

An article import sends ~14 kB of text per White House article (the Markdown source and the index text);
PostgreSQL compresses every value over ~2 kB as it stores it (TOAST), and with pglz that took about half of the
server's CPU time of the import: 0.52 ms per article, 0.22 ms with LZ4 (measured on this 2-core machine, load
4-5, `bench/imports.py`). LZ4 also decompresses faster; it compresses a little less. Only values written from
now on are affected. A server built without LZ4 (PostgreSQL < 14, or without --with-lz4) keeps pglz; SQLite has
no such setting.

Revision ID: 0014_article_text_lz4
Revises: 0013_notice_queue
Create Date: 2026-12-01 13:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0014_article_text_lz4"
down_revision = "0013_notice_queue"
branch_labels = None
depends_on = None

COLUMNS = ("body_markdown", "body_text", "body_html", "summary")


def _lz4_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    # pg_settings lists lz4 among this setting's values only on a server built with it (PostgreSQL 14+).
    values = bind.exec_driver_sql("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'").scalar()
    return bool(values) and "lz4" in values


def upgrade() -> None:
    if _lz4_available():
        for column in COLUMNS:
            op.execute(f"ALTER TABLE articles ALTER COLUMN {column} SET COMPRESSION lz4")


def downgrade() -> None:
    if _lz4_available():
        for column in COLUMNS:
            op.execute(f"ALTER TABLE articles ALTER COLUMN {column} SET COMPRESSION DEFAULT")

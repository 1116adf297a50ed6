"""bounces: bounce_events, subscribers.soft_bounces, an index on deliveries.message_id

Revision ID: 0002_bounces
Revises: 0001
Create Date: 2026-12-01 10:00:00

The new delivery state ``bounced`` needs no DDL: ``deliveries.status`` is a VARCHAR(16) written by a
non-native SQLAlchemy Enum, and SQLAlchemy 2 creates no CHECK constraint for it (``create_constraint``
defaults to False), so neither SQLite nor PostgreSQL restricts its values. The downgrade maps
``bounced`` back to ``sent`` so that the older code, which cannot load the value, still works.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0002_bounces"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dsn_id", sa.String(length=255), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.String(length=16), nullable=False),
        sa.Column("diagnostic", sa.Text(), nullable=True),
        sa.Column("created_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dsn_id"),
    )
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bounce_events_delivery_id"), ["delivery_id"], unique=False)

    # recreate="never": SQLite adds a column with a constant default in place (ALTER TABLE ADD COLUMN);
    # rebuilding `subscribers` would trip the foreign keys that deliveries hold on it.
    with op.batch_alter_table("subscribers", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("soft_bounces", sa.Integer(), server_default="0", nullable=False))

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deliveries_message_id"), ["message_id"], unique=False)


def downgrade() -> None:
    op.execute("UPDATE deliveries SET status = 'sent' WHERE status = 'bounced'")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_message_id"))

    # recreate="never": ALTER TABLE DROP COLUMN (SQLite >= 3.35) instead of a table rebuild, as above.
    with op.batch_alter_table("subscribers", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("soft_bounces")

    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bounce_events_delivery_id"))
    op.drop_table("bounce_events")

"""Issue 6's event relay: each event's published marker (``events.published_at``,
set once NATS JetStream acknowledged it) and a partial index of the events not
yet published, which the relay reads in ``seq`` order. Events already in the
outbox stay unpublished, so the relay's first run publishes them all.
Frozen: never edit once released.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: no table rewrite on either database.
    op.add_column("events", sa.Column("published_at", sa.String(length=32), nullable=True))
    op.create_index(
        "ix_events_unpublished",
        "events",
        ["seq"],
        unique=False,
        sqlite_where=sa.text("published_at IS NULL"),
        postgresql_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_events_unpublished", table_name="events")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("published_at")

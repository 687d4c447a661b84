"""Issue 7's admin page: when each node was last seen and its clock offset
(``nodes.last_seen_at``, ``nodes.clock_offset_seconds``: the node's signed
time minus the gateway's, kept from its authenticated requests), and the
admin page's browser sessions (``admin_sessions``: only a hash of the
session id, tied to the admin token that opened it, with an expiry).
Frozen: never edit once released.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: no table rewrite on either database.
    op.add_column("nodes", sa.Column("last_seen_at", sa.String(length=32), nullable=True))
    op.add_column("nodes", sa.Column("clock_offset_seconds", sa.Float(), nullable=True))
    op.create_table(
        "admin_sessions",
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("session_hash"),
    )
    op.create_index("ix_admin_sessions_expires", "admin_sessions", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_admin_sessions_expires", table_name="admin_sessions")
    op.drop_table("admin_sessions")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("clock_offset_seconds")
        batch_op.drop_column("last_seen_at")

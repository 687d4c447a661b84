"""Issue 8's key rotation: ``node_keys`` (every key a node may sign with, each
with its own keyId and status: active, retiring until ``retires_at``, retired,
revoked; shared.node_keys). Every node enrolled before it keeps its one key,
carried over as an active key whose keyId is the node id, so its requests are
answered exactly as before. Frozen: never edit once released.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_keys",
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("retires_at", sa.String(length=32), nullable=True),
        sa.Column("revoked_at", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.node_id"]),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_index("ix_node_keys_node", "node_keys", ["node_id", "created_at"], unique=False)
    # One statement on both databases: a revoked node's key stays active here
    # (the node's own status refuses it, as before; re-enabling a node is not
    # a thing this gateway does).
    op.execute(
        "INSERT INTO node_keys (key_id, node_id, public_key, status, created_at) "
        "SELECT node_id, node_id, public_key, 'active', enrolled_at FROM nodes"
    )


def downgrade() -> None:
    op.drop_index("ix_node_keys_node", table_name="node_keys")
    op.drop_table("node_keys")

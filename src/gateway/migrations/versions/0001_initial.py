"""Initial schema: nodes, tokens, outreach items and their log, reports, outbox,
change feed, idempotency keys. Frozen: never edit once released.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("facility_id", sa.String(length=128), nullable=True),
        sa.Column("aggregate", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=128), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("committed_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.create_index("ix_changes_tenant_seq", ["tenant_id", "seq"], unique=False)

    op.create_table(
        "events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("time", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_table(
        "facility_reports",
        sa.Column("report_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("facility_id", sa.String(length=128), nullable=False),
        sa.Column("period_type", sa.String(length=8), nullable=False),
        sa.Column("period_key", sa.String(length=10), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("generated_at", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("report_id"),
        sa.UniqueConstraint("facility_id", "period_key", "device_id", name="uq_report_dedup"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("claimed_at", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.String(length=32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("reply", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("principal", "key"),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index("ix_idempotency_expires", ["expires_at"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("facility_ids", sa.JSON(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("enrolled_at", sa.String(length=32), nullable=False),
        sa.Column("revoked_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("node_id"),
    )
    op.create_table(
        "outreach_items",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("facility_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("assignee_id", sa.String(length=128), nullable=True),
        sa.Column("patient_ref", sa.String(length=128), nullable=True),
        sa.Column("cohort_id", sa.String(length=128), nullable=True),
        sa.Column("due_date", sa.String(length=10), nullable=True),
        sa.Column("last_transition_id", sa.String(length=128), nullable=True),
        sa.Column("last_from_state", sa.String(length=16), nullable=True),
        sa.Column("last_to_state", sa.String(length=16), nullable=True),
        sa.Column("last_occurred_at", sa.String(length=32), nullable=True),
        sa.Column("last_device_id", sa.String(length=128), nullable=True),
        sa.Column("last_role", sa.String(length=16), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outreach_items", schema=None) as batch_op:
        batch_op.create_index("ix_outreach_items_scope", ["tenant_id", "facility_id"], unique=False)

    op.create_table(
        "outreach_transitions",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("item_id", sa.String(length=128), nullable=False),
        sa.Column("transition_id", sa.String(length=128), nullable=False),
        sa.Column("from_state", sa.String(length=64), nullable=False),
        sa.Column("to_state", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("actor_id", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("device_seq", sa.BigInteger(), nullable=True),
        sa.Column("source", sa.String(length=160), nullable=False),
        sa.Column("batch_id", sa.String(length=255), nullable=True),
        sa.Column("disposition", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("clock_adjusted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("outreach_transitions", schema=None) as batch_op:
        batch_op.create_index("ix_outreach_transitions_id", ["transition_id"], unique=False)
        batch_op.create_index("ix_outreach_transitions_item", ["item_id", "seq"], unique=False)

    op.create_table(
        "report_submissions",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("report_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("facility_id", sa.String(length=128), nullable=False),
        sa.Column("period_key", sa.String(length=10), nullable=False),
        sa.Column("disposition", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
        sa.UniqueConstraint("token_id"),
    )


def downgrade() -> None:
    op.drop_table("tokens")
    op.drop_table("report_submissions")
    with op.batch_alter_table("outreach_transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_outreach_transitions_item")
        batch_op.drop_index("ix_outreach_transitions_id")

    op.drop_table("outreach_transitions")
    with op.batch_alter_table("outreach_items", schema=None) as batch_op:
        batch_op.drop_index("ix_outreach_items_scope")

    op.drop_table("outreach_items")
    op.drop_table("nodes")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_expires")

    op.drop_table("idempotency_keys")
    op.drop_table("facility_reports")
    op.drop_table("events")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.drop_index("ix_changes_tenant_seq")

    op.drop_table("changes")

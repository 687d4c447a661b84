"""The gateway's tables, as SQLAlchemy Core metadata.

Times are stored as the contract's RFC 3339 strings (fixed width, so they
sort), which reads the same on SQLite and PostgreSQL. The migrations in
``gateway/migrations/versions`` are frozen copies of earlier shapes; a test
checks that upgrading to head gives exactly these tables.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("node_id", sa.String(128), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("facility_ids", sa.JSON, nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=False),
    sa.Column("capabilities", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("enrolled_at", sa.String(32), nullable=False),
    sa.Column("revoked_at", sa.String(32)),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("token_id", sa.String(32), nullable=False, unique=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

outreach_items = sa.Table(
    "outreach_items",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("facility_id", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("assignee_id", sa.String(128)),
    sa.Column("patient_ref", sa.String(128)),
    sa.Column("cohort_id", sa.String(128)),
    sa.Column("due_date", sa.String(10)),
    # The applied transition that produced ``state`` (rule 5 of CONTRACT section
    # 5 needs it on every incoming transition, so it lives on the row).
    sa.Column("last_transition_id", sa.String(128)),
    sa.Column("last_from_state", sa.String(16)),
    sa.Column("last_to_state", sa.String(16)),
    sa.Column("last_occurred_at", sa.String(32)),
    sa.Column("last_device_id", sa.String(128)),
    sa.Column("last_role", sa.String(16)),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Index("ix_outreach_items_scope", "tenant_id", "facility_id"),
)

# Every incoming transition, whatever became of it: the item's history.
outreach_transitions = sa.Table(
    "outreach_transitions",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    # The writer's tenant: a write naming another tenant's item is kept here
    # (nothing is dropped) but never shows in that tenant's history.
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("item_id", sa.String(128), nullable=False),
    sa.Column("transition_id", sa.String(128), nullable=False),
    sa.Column("from_state", sa.String(64), nullable=False),
    sa.Column("to_state", sa.String(64), nullable=False),
    sa.Column("occurred_at", sa.String(32), nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("actor_id", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("device_seq", sa.BigInteger),
    sa.Column("source", sa.String(160), nullable=False),  # node:<id> or token:<id>
    sa.Column("batch_id", sa.String(255)),
    sa.Column("disposition", sa.String(16), nullable=False),
    sa.Column("code", sa.String(64)),
    sa.Column("clock_adjusted", sa.Boolean, nullable=False),
    sa.Index("ix_outreach_transitions_item", "item_id", "seq"),
    sa.Index("ix_outreach_transitions_id", "transition_id"),
)

facility_reports = sa.Table(
    "facility_reports",
    metadata,
    sa.Column("report_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("facility_id", sa.String(128), nullable=False),
    sa.Column("period_type", sa.String(8), nullable=False),
    sa.Column("period_key", sa.String(10), nullable=False),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),  # the exact signed bytes
    sa.Column("signature", sa.LargeBinary, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("generated_at", sa.String(32), nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
    sa.UniqueConstraint("facility_id", "period_key", "device_id", name="uq_report_dedup"),
)

# Every accepted-signature submission and its disposition, refused copies included.
report_submissions = sa.Table(
    "report_submissions",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("report_id", sa.String(64), nullable=False),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("facility_id", sa.String(128), nullable=False),
    sa.Column("period_key", sa.String(10), nullable=False),
    sa.Column("disposition", sa.String(16), nullable=False),  # merged|duplicate|conflict
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
)

# Transactional outbox (CONTRACT section 9).
events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("type", sa.String(128), nullable=False),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)

# Change feed towards edge nodes (CONTRACT section 8), in commit order.
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("facility_id", sa.String(128)),  # NULL: tenant-wide
    sa.Column("aggregate", sa.String(64), nullable=False),
    sa.Column("entity_id", sa.String(128), nullable=False),
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("data", sa.JSON),
    sa.Column("committed_at", sa.String(32), nullable=False),
    sa.Index("ix_changes_tenant_seq", "tenant_id", "seq"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("principal", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # in_flight | done
    sa.Column("claimed_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("reply", sa.LargeBinary),  # msgpack of the answer, re-encoded per Accept
    sa.Index("ix_idempotency_expires", "expires_at"),
)

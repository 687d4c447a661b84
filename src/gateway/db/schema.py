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
    # From the node's authenticated requests (migration 0005), refreshed at most
    # every NODE_SEEN_INTERVAL (gateway.auth): the admin page's last seen and
    # clock offset (the node's signed time minus the gateway's, in seconds).
    sa.Column("last_seen_at", sa.String(32)),
    sa.Column("clock_offset_seconds", sa.Float),
)

# The keys a node signs its requests with (migration 0007, shared.node_keys):
# its enrollment key (key_id = node_id) and those its rotations added. The
# status is as stored: a retiring key whose retires_at has passed is retired
# without being rewritten. nodes.public_key stays the enrollment key (the
# node's identity on its office LAN, the fingerprint its tablets pin).
node_keys = sa.Table(
    "node_keys",
    metadata,
    sa.Column("key_id", sa.String(128), primary_key=True),
    sa.Column("node_id", sa.String(128), sa.ForeignKey("nodes.node_id"), nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("retires_at", sa.String(32)),
    sa.Column("revoked_at", sa.String(32)),
    sa.Index("ix_node_keys_node", "node_id", "created_at"),
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
    # Set by the event relay once JetStream acknowledged the event (migration 0003);
    # NULL: not yet published. The partial index holds only the unpublished ones.
    sa.Column("published_at", sa.String(32)),
    sa.Index(
        "ix_events_unpublished",
        "seq",
        sqlite_where=sa.text("published_at IS NULL"),
        postgresql_where=sa.text("published_at IS NULL"),
    ),
)

# Change feed towards edge nodes (CONTRACT section 8), in commit order.
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("facility_id", sa.String(128)),  # NULL: tenant-wide
    sa.Column("aggregate", sa.String(64), nullable=False),
    # Up to 300 (migration 0002): a membership's id is "<cohortId>/<entryId>".
    sa.Column("entity_id", sa.String(300), nullable=False),
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

# ---------------------------------------------------------------------------
# Server-authoritative aggregates (issue 5; migration 0002). Every table is
# keyed by tenant first: ids are unique within a tenant, never across.

# Disease registry entries (upstream clinical data, ``service`` tokens only).
# ``data`` is the entry's wire form (shared.registry.registry_entry_to_wire);
# a delete keeps the row as a tombstone (``deleted_at``), so a later upsert
# continues its version numbers and the feed can announce the delete.
registry_entries = sa.Table(
    "registry_entries",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("facility_id", sa.String(128), nullable=False),
    sa.Column("patient_ref", sa.String(128), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("deleted_at", sa.String(32)),  # NULL: live
    sa.Index("ix_registry_entries_facility", "tenant_id", "facility_id", "id"),
)

# Population cohorts: the name and the last version number handed out (the
# server alone numbers versions: bump ``latest_version`` under the row lock).
cohorts = sa.Table(
    "cohorts",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("cohort_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("latest_version", sa.Integer, nullable=False),
    sa.Column("created_by", sa.String(160), nullable=False),  # token:<id> | node:<id>
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
)

# Every version of every cohort; immutable once written (insert only).
cohort_versions = sa.Table(
    "cohort_versions",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("cohort_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("canonical", sa.Text, nullable=False),  # shared.cohorts.canonical_json
    sa.Column("created_by", sa.String(160), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),  # admin | node | device
    # The cohort.draft item id that produced it: a draft sent twice is a duplicate.
    sa.Column("draft_id", sa.String(128)),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Index("ix_cohort_versions_draft", "tenant_id", "draft_id"),
)

# Members of a cohort version (entries of the registry it selects).
cohort_memberships = sa.Table(
    "cohort_memberships",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("cohort_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("entry_id", sa.String(128), primary_key=True),
    sa.Column("facility_id", sa.String(128), nullable=False),
    sa.Column("since", sa.String(32), nullable=False),
    sa.Index("ix_cohort_memberships_entry", "tenant_id", "entry_id"),
)

# The computed part of an entry's risk score (shared.risk.compute_risk).
risk_scores = sa.Table(
    "risk_scores",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("entry_id", sa.String(128), primary_key=True),
    sa.Column("facility_id", sa.String(128), nullable=False),
    sa.Column("score", sa.Integer, nullable=False),
    sa.Column("band", sa.String(16), nullable=False),
    sa.Column("factors", sa.JSON, nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("computed_at", sa.String(32), nullable=False),
)

# The override in force per entry: the last-write-wins winner (``value``
# NULL: a clear, which stays the winner until a later override).
risk_overrides = sa.Table(
    "risk_overrides",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("entry_id", sa.String(128), primary_key=True),
    sa.Column("override_id", sa.String(128), nullable=False),
    sa.Column("value", sa.Integer),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor_id", sa.String(128), nullable=False),
    sa.Column("node_id", sa.String(128)),
    sa.Column("occurred_at", sa.String(32), nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
)

# Every override attempt, winning or not, refused ones included.
risk_override_audit = sa.Table(
    "risk_override_audit",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("entry_id", sa.String(128), nullable=False),
    sa.Column("override_id", sa.String(128), nullable=False),
    sa.Column("actor_id", sa.String(128), nullable=False),
    sa.Column("node_id", sa.String(128)),
    sa.Column("principal", sa.String(160), nullable=False),  # token:<id> | node:<id>
    sa.Column("batch_id", sa.String(255)),
    sa.Column("occurred_at", sa.String(32), nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
    sa.Column("requested_value", sa.Integer),  # NULL: a clear
    sa.Column("reason", sa.Text, nullable=False),  # the override's own reason
    # Effective score before and after (NULL when refused before resolution).
    sa.Column("old_score", sa.Integer),
    sa.Column("old_source", sa.String(16)),
    sa.Column("new_score", sa.Integer),
    sa.Column("new_source", sa.String(16)),
    sa.Column("disposition", sa.String(16), nullable=False),
    sa.Column("code", sa.String(64)),  # why it was refused
    sa.Column("clock_adjusted", sa.Boolean, nullable=False),
    sa.Index("ix_risk_override_audit_entry", "tenant_id", "entry_id", "seq"),
    sa.Index("ix_risk_override_audit_id", "tenant_id", "override_id"),
)

# Quality metrics per tenant and period, from merged facility reports; immutable.
quality_snapshots = sa.Table(
    "quality_snapshots",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("period_type", sa.String(8), primary_key=True),
    sa.Column("period_key", sa.String(10), primary_key=True),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("created_by", sa.String(160), nullable=False),  # server | token:<id>
    sa.Column("created_at", sa.String(32), nullable=False),
)

# DHIS2 dataValueSets exports: queued -> running -> succeeded | failed.
hmis_export_jobs = sa.Table(
    "hmis_export_jobs",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("period_type", sa.String(8), nullable=False),
    sa.Column("period_key", sa.String(10), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_by", sa.String(160), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("started_at", sa.String(32)),
    sa.Column("finished_at", sa.String(32)),
    sa.Column("runner_id", sa.String(64)),  # the process running it (migration 0004)
    sa.Column("lease_until", sa.String(32)),  # renewed while it runs; past: cut off
    sa.Column("mapping", sa.JSON),  # the configured mapping the job used
    sa.Column("result", sa.LargeBinary),
    sa.Column("result_media_type", sa.String(100)),
    sa.Column("result_sha256", sa.String(64)),
    sa.Column("reasons", sa.JSON),  # why it failed: [{code, message, ...}]
    sa.Index("ix_hmis_export_jobs_tenant", "tenant_id", "created_at"),
    sa.Index("ix_hmis_export_jobs_state", "state"),
)

# De-identified extracts: queued -> running -> released | blocked | failed.
deident_export_jobs = sa.Table(
    "deident_export_jobs",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("cohort_id", sa.String(128)),  # NULL: the whole registry
    sa.Column("cohort_version", sa.Integer),
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),  # the request, as validated
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_by", sa.String(160), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("started_at", sa.String(32)),
    sa.Column("finished_at", sa.String(32)),
    sa.Column("runner_id", sa.String(64)),  # the process running it (migration 0004)
    sa.Column("lease_until", sa.String(32)),  # renewed while it runs; past: cut off
    sa.Column("result", sa.LargeBinary),  # only a released job's is served
    sa.Column("result_media_type", sa.String(100)),
    sa.Column("result_sha256", sa.String(64)),
    sa.Column("summary", sa.JSON),  # rows, suppressed cells, smallest class, ...
    sa.Column("reasons", sa.JSON),  # why it is blocked or failed
    sa.Index("ix_deident_export_jobs_tenant", "tenant_id", "created_at"),
    sa.Index("ix_deident_export_jobs_state", "state"),
)

# Every download attempt of an export's result, refused ones included.
export_downloads = sa.Table(
    "export_downloads",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("job_kind", sa.String(32), nullable=False),  # hmis_export_job | deident_export_job
    sa.Column("job_id", sa.String(128), nullable=False),
    sa.Column("principal", sa.String(160), nullable=False),
    sa.Column("downloaded_at", sa.String(32), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),  # the HTTP status answered
    sa.Column("code", sa.String(64)),  # the refusal's code
    sa.Column("result_sha256", sa.String(64)),
    sa.Column("bytes", sa.BigInteger),
    sa.Index("ix_export_downloads_job", "job_kind", "job_id", "seq"),
)

# Every refused client write to a server-authoritative aggregate (a batch
# item, or a direct request by a role that may not write it).
refused_writes = sa.Table(
    "refused_writes",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),  # the writer's tenant
    sa.Column("principal", sa.String(160), nullable=False),  # token:<id> | node:<id> | device:<id>
    sa.Column("method", sa.String(8)),  # direct request: method and path
    sa.Column("path", sa.String(1000)),
    sa.Column("batch_id", sa.String(255)),  # batch item: its batch and index
    sa.Column("item_index", sa.Integer),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("record_id", sa.String(128)),
    sa.Column("code", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
    sa.Index("ix_refused_writes_tenant", "tenant_id", "seq"),
)

# Browser sessions of the admin page (migration 0005): opened by logging in
# with an admin token; only the SHA-256 of the session id is stored, and the
# session ends with its expiry, a logout, or its token's removal.
admin_sessions = sa.Table(
    "admin_sessions",
    metadata,
    sa.Column("session_hash", sa.String(64), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
    sa.Index("ix_admin_sessions_expires", "expires_at"),
)

# The audit log (migration 0006; docs/audit.md, shared.audit): one row per
# operation on patient data, hash-chained in ``seq`` order (1, 2, 3, … without
# gaps; assigned by the appender under the head's row lock, not by the
# database). Only references to records are kept, never patient identifiers.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("actor", sa.String(160), nullable=False),  # token:<id> | node:<id> | device:<id>
    sa.Column("node_id", sa.String(128)),  # the edge node that made the request
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("facility_id", sa.String(128)),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("record", sa.String(300)),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# The chain's head, one row (id 1) updated in the transaction of every append:
# its row lock orders appends across gateway processes, and its count and last
# hash show the deletion of the last rows. Absent until the first append (no
# migration seeds rows).
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("last_hash", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
)

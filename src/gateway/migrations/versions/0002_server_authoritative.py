"""Issue 5's server-authoritative aggregates: registry entries, cohorts and
their versions and memberships, risk scores, overrides and their audit trail,
quality snapshots, HMIS and de-identified export jobs, export downloads, and
the record of refused writes; the change feed's entity ids widened to 300.
Frozen: never edit once released.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A cohort membership's change-feed id is "<cohortId>/<entryId>" (up to 257).
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.alter_column(
            "entity_id",
            existing_type=sa.String(length=128),
            type_=sa.String(length=300),
            existing_nullable=False,
        )
    op.create_table(
        "cohort_memberships",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("cohort_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("entry_id", sa.String(length=128), nullable=False),
        sa.Column("facility_id", sa.String(length=128), nullable=False),
        sa.Column("since", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "cohort_id", "version", "entry_id"),
    )
    with op.batch_alter_table("cohort_memberships", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cohort_memberships_entry", ["tenant_id", "entry_id"], unique=False
        )

    op.create_table(
        "cohort_versions",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("cohort_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("canonical", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=160), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("draft_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "cohort_id", "version"),
    )
    with op.batch_alter_table("cohort_versions", schema=None) as batch_op:
        batch_op.create_index("ix_cohort_versions_draft", ["tenant_id", "draft_id"], unique=False)

    op.create_table(
        "cohorts",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("cohort_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=160), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "cohort_id"),
    )
    op.create_table(
        "deident_export_jobs",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("cohort_id", sa.String(length=128), nullable=True),
        sa.Column("cohort_version", sa.Integer(), nullable=True),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=160), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.String(length=32), nullable=True),
        sa.Column("finished_at", sa.String(length=32), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("result_media_type", sa.String(length=100), nullable=True),
        sa.Column("result_sha256", sa.String(length=64), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("deident_export_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_deident_export_jobs_state", ["state"], unique=False)
        batch_op.create_index(
            "ix_deident_export_jobs_tenant", ["tenant_id", "created_at"], unique=False
        )

    op.create_table(
        "export_downloads",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("job_kind", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("principal", sa.String(length=160), nullable=False),
        sa.Column("downloaded_at", sa.String(length=32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("result_sha256", sa.String(length=64), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("export_downloads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_export_downloads_job", ["job_kind", "job_id", "seq"], unique=False
        )

    op.create_table(
        "hmis_export_jobs",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("period_type", sa.String(length=8), nullable=False),
        sa.Column("period_key", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=160), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.String(length=32), nullable=True),
        sa.Column("finished_at", sa.String(length=32), nullable=True),
        sa.Column("mapping", sa.JSON(), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("result_media_type", sa.String(length=100), nullable=True),
        sa.Column("result_sha256", sa.String(length=64), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("hmis_export_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_hmis_export_jobs_state", ["state"], unique=False)
        batch_op.create_index(
            "ix_hmis_export_jobs_tenant", ["tenant_id", "created_at"], unique=False
        )

    op.create_table(
        "quality_snapshots",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("period_type", sa.String(length=8), nullable=False),
        sa.Column("period_key", sa.String(length=10), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=160), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "period_type", "period_key"),
    )
    op.create_table(
        "refused_writes",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("principal", sa.String(length=160), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=True),
        sa.Column("path", sa.String(length=1000), nullable=True),
        sa.Column("batch_id", sa.String(length=255), nullable=True),
        sa.Column("item_index", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=128), nullable=True),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("received_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("refused_writes", schema=None) as batch_op:
        batch_op.create_index("ix_refused_writes_tenant", ["tenant_id", "seq"], unique=False)

    op.create_table(
        "registry_entries",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("facility_id", sa.String(length=128), nullable=False),
        sa.Column("patient_ref", sa.String(length=128), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.Column("deleted_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id"),
    )
    with op.batch_alter_table("registry_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_registry_entries_facility", ["tenant_id", "facility_id", "id"], unique=False
        )

    op.create_table(
        "risk_override_audit",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("entry_id", sa.String(length=128), nullable=False),
        sa.Column("override_id", sa.String(length=128), nullable=False),
        sa.Column("actor_id", sa.String(length=128), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=True),
        sa.Column("principal", sa.String(length=160), nullable=False),
        sa.Column("batch_id", sa.String(length=255), nullable=True),
        sa.Column("occurred_at", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.String(length=32), nullable=False),
        sa.Column("requested_value", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("old_score", sa.Integer(), nullable=True),
        sa.Column("old_source", sa.String(length=16), nullable=True),
        sa.Column("new_score", sa.Integer(), nullable=True),
        sa.Column("new_source", sa.String(length=16), nullable=True),
        sa.Column("disposition", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("clock_adjusted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("risk_override_audit", schema=None) as batch_op:
        batch_op.create_index(
            "ix_risk_override_audit_entry", ["tenant_id", "entry_id", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_risk_override_audit_id", ["tenant_id", "override_id"], unique=False
        )

    op.create_table(
        "risk_overrides",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("entry_id", sa.String(length=128), nullable=False),
        sa.Column("override_id", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor_id", sa.String(length=128), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=True),
        sa.Column("occurred_at", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "entry_id"),
    )
    op.create_table(
        "risk_scores",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("entry_id", sa.String(length=128), nullable=False),
        sa.Column("facility_id", sa.String(length=128), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("band", sa.String(length=16), nullable=False),
        sa.Column("factors", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("computed_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "entry_id"),
    )


def downgrade() -> None:
    op.drop_table("risk_scores")
    op.drop_table("risk_overrides")
    with op.batch_alter_table("risk_override_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_risk_override_audit_id")
        batch_op.drop_index("ix_risk_override_audit_entry")

    op.drop_table("risk_override_audit")
    with op.batch_alter_table("registry_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_registry_entries_facility")

    op.drop_table("registry_entries")
    with op.batch_alter_table("refused_writes", schema=None) as batch_op:
        batch_op.drop_index("ix_refused_writes_tenant")

    op.drop_table("refused_writes")
    op.drop_table("quality_snapshots")
    with op.batch_alter_table("hmis_export_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_hmis_export_jobs_tenant")
        batch_op.drop_index("ix_hmis_export_jobs_state")

    op.drop_table("hmis_export_jobs")
    with op.batch_alter_table("export_downloads", schema=None) as batch_op:
        batch_op.drop_index("ix_export_downloads_job")

    op.drop_table("export_downloads")
    with op.batch_alter_table("deident_export_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_deident_export_jobs_tenant")
        batch_op.drop_index("ix_deident_export_jobs_state")

    op.drop_table("deident_export_jobs")
    op.drop_table("cohorts")
    with op.batch_alter_table("cohort_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_cohort_versions_draft")

    op.drop_table("cohort_versions")
    with op.batch_alter_table("cohort_memberships", schema=None) as batch_op:
        batch_op.drop_index("ix_cohort_memberships_entry")

    op.drop_table("cohort_memberships")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.alter_column(
            "entity_id",
            existing_type=sa.String(length=300),
            type_=sa.String(length=128),
            existing_nullable=False,
        )

"""Export jobs run by several gateway processes (issue 6): each running job
carries the runner that claimed it and a lease that runner keeps renewing.
A job whose lease ran out was cut off by a crash of its runner, whichever
process finds it; a live runner's job is never touched by another. Jobs left
``running`` before this step have no lease and count as cut off.
Frozen: never edit once released.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("hmis_export_jobs", "deident_export_jobs")


def upgrade() -> None:
    for table in TABLES:
        # Nullable, no default: no table rewrite on either database.
        op.add_column(table, sa.Column("runner_id", sa.String(length=64), nullable=True))
        op.add_column(table, sa.Column("lease_until", sa.String(length=32), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("lease_until")
            batch_op.drop_column("runner_id")

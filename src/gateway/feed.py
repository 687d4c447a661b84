"""Change-feed rows (CONTRACT section 8) for the server-authoritative aggregates.

Written in the same transaction as the change they announce. A row names the
facility it belongs to, so only nodes enrolled for that facility receive it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.schema import changes


class Aggregate(StrEnum):
    """The ``aggregate`` names of the feed (the policy table's kinds)."""

    REGISTRY_ENTRY = "disease_registry_entry"
    RISK_SCORE = "risk_score"
    COHORT_MEMBERSHIP = "cohort_membership"
    POPULATION_COHORT = "population_cohort"


class Op(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


async def record_change(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    facility_id: str | None,
    aggregate: Aggregate,
    entity_id: str,
    op: Op,
    data: dict[str, Any] | None,
    stamp: str,
) -> None:
    await conn.execute(
        changes.insert().values(
            tenant_id=tenant_id,
            facility_id=facility_id,
            aggregate=aggregate.value,
            entity_id=entity_id,
            op=op.value,
            data=data,
            committed_at=stamp,
        )
    )

"""Disease registry entries in the store (``disease_registry_entry``).

Not to be confused with ``gateway.registry`` (enrolled nodes and tokens).
Upstream clinical data, written by ``service`` tokens only: an upsert or a
delete writes the entry, its change-feed row, its recomputed risk score and
its cohort memberships in one transaction. A delete keeps a tombstone row
(``deleted_at``), so version numbers continue if the entry comes back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import memberships, risk_scores
from gateway.db.schema import registry_entries
from gateway.feed import Aggregate, Op, record_change
from shared.errors import NotFound
from shared.registry import RegistryEntry, parse_registry_entry, registry_entry_to_wire
from shared.values import format_timestamp

MAX_LIST = 1000
DEFAULT_LIST = 100


@dataclass(frozen=True)
class Upserted:
    created: bool  # no live entry before (never seen, or deleted)
    entry: dict[str, Any]  # the stored entry, as read


def entry_to_wire(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **row["data"],
        "version": row["version"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def _tombstone(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "facilityId": row["facility_id"],
        "version": row["version"],
        "deletedAt": row["deleted_at"],
    }


def entry_from_row(row: Mapping[str, Any]) -> RegistryEntry:
    return parse_registry_entry(row["data"])


async def _load(
    conn: AsyncConnection, tenant_id: str, entry_id: str, lock: bool = False
) -> dict[str, Any] | None:
    query = sa.select(registry_entries).where(
        registry_entries.c.tenant_id == tenant_id, registry_entries.c.id == entry_id
    )
    if lock:
        query = query.with_for_update()  # PostgreSQL: writes of one entry in turn
    row = (await conn.execute(query)).first()
    return None if row is None else dict(row._mapping)


async def upsert_entry(
    conn: AsyncConnection, tenant_id: str, entry: RegistryEntry, moment: datetime
) -> Upserted:
    """Store ``entry`` (create, update, or bring back a deleted one).

    An entry sent again unchanged writes nothing of its own; its risk score
    and memberships are still brought up to date for today.
    """
    stamp = format_timestamp(moment)
    data = registry_entry_to_wire(entry)
    before = await _load(conn, tenant_id, entry.id, lock=True)
    if before is None:
        row = {
            "tenant_id": tenant_id,
            "id": entry.id,
            "facility_id": entry.facility_id,
            "patient_ref": entry.patient_ref,
            "data": data,
            "version": 1,
            "created_at": stamp,
            "updated_at": stamp,
            "deleted_at": None,
        }
        try:
            async with conn.begin_nested():
                await conn.execute(registry_entries.insert().values(**row))
        except IntegrityError:
            # PostgreSQL: a concurrent first write of the same id won; update it.
            return await upsert_entry(conn, tenant_id, entry, moment)
        await _feed_upsert(conn, row, stamp)
        created = True
    else:
        live = before["deleted_at"] is None
        created = not live
        row = before
        if not live or before["data"] != data:
            row = {
                **before,
                "facility_id": entry.facility_id,
                "patient_ref": entry.patient_ref,
                "data": data,
                "version": before["version"] + 1,
                "created_at": stamp if not live else before["created_at"],
                "updated_at": stamp,
                "deleted_at": None,
            }
            await conn.execute(
                registry_entries.update()
                .where(registry_entries.c.tenant_id == tenant_id, registry_entries.c.id == entry.id)
                .values({k: v for k, v in row.items() if k not in ("tenant_id", "id")})
            )
            if live and before["facility_id"] != entry.facility_id:
                # Nodes of the old facility must forget it.
                await _feed_delete(conn, before, stamp)
            await _feed_upsert(conn, row, stamp)
    await risk_scores.recompute(conn, tenant_id, entry, moment)
    await memberships.recompute_entry(conn, tenant_id, entry.id, entry, moment)
    return Upserted(created, entry_to_wire(row))


async def delete_entry(
    conn: AsyncConnection, tenant_id: str, entry_id: str, moment: datetime
) -> dict[str, Any]:
    """Delete an entry (a tombstone stays); deleting it again changes nothing."""
    before = await _load(conn, tenant_id, entry_id, lock=True)
    if before is None:
        raise NotFound(f"no registry entry {entry_id}")
    if before["deleted_at"] is not None:
        return _tombstone(before)
    stamp = format_timestamp(moment)
    row = {**before, "version": before["version"] + 1, "updated_at": stamp, "deleted_at": stamp}
    await conn.execute(
        registry_entries.update()
        .where(registry_entries.c.tenant_id == tenant_id, registry_entries.c.id == entry_id)
        .values(version=row["version"], updated_at=stamp, deleted_at=stamp)
    )
    await _feed_delete(conn, row, stamp)
    await risk_scores.drop(conn, tenant_id, entry_id, moment)
    await memberships.recompute_entry(conn, tenant_id, entry_id, None, moment)
    return _tombstone(row)


async def get_entry(conn: AsyncConnection, tenant_id: str, entry_id: str) -> dict[str, Any]:
    row = await _load(conn, tenant_id, entry_id)
    if row is None or row["deleted_at"] is not None:
        raise NotFound(f"no registry entry {entry_id}")
    return entry_to_wire(row)


async def list_entries(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    facility_id: str | None,
    after: str | None,
    limit: int,
) -> dict[str, Any]:
    """Live entries in id order, a page at a time (``after``: the last id seen)."""
    conditions = [
        registry_entries.c.tenant_id == tenant_id,
        registry_entries.c.deleted_at.is_(None),
    ]
    if facility_id is not None:
        conditions.append(registry_entries.c.facility_id == facility_id)
    if after is not None:
        conditions.append(registry_entries.c.id > after)
    rows = (
        await conn.execute(
            sa.select(registry_entries)
            .where(*conditions)
            .order_by(registry_entries.c.id)
            .limit(limit + 1)
        )
    ).all()
    more = len(rows) > limit
    page = [entry_to_wire(dict(r._mapping)) for r in rows[:limit]]
    return {"entries": page, "cursor": page[-1]["id"] if page else after, "more": more}


async def _feed_upsert(conn: AsyncConnection, row: Mapping[str, Any], stamp: str) -> None:
    await record_change(
        conn,
        tenant_id=row["tenant_id"],
        facility_id=row["facility_id"],
        aggregate=Aggregate.REGISTRY_ENTRY,
        entity_id=row["id"],
        op=Op.UPSERT,
        data=entry_to_wire(row),
        stamp=stamp,
    )


async def _feed_delete(conn: AsyncConnection, row: Mapping[str, Any], stamp: str) -> None:
    await record_change(
        conn,
        tenant_id=row["tenant_id"],
        facility_id=row["facility_id"],
        aggregate=Aggregate.REGISTRY_ENTRY,
        entity_id=row["id"],
        op=Op.DELETE,
        data=_tombstone({**row, "deleted_at": row["deleted_at"] or stamp}),
        stamp=stamp,
    )

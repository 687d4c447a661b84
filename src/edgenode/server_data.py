"""The edge's projection of the gateway's server-authoritative data.

Disease registry entries, population cohorts, cohort memberships, effective
risk scores and quality snapshots reach the edge through the change feed
(CONTRACT section 8). The edge never computes or edits them: each change is
kept as the gateway sent it (``data`` as JSON, whatever its inner shape), one
row per ``(aggregate, id)``, and tablets read the rows read-only
(``GET …/server-data``). An aggregate this release does not know is kept the
same way, so a newer gateway never breaks an older edge.

A row's facility is ``data.facilityId`` when the record carries one (a
string), else the record is tenant-wide. A delete keeps the row as a
tombstone under a new ``local_seq``, so a tablet reading from its cursor
learns of it and drops its copy. A delete without a facility keeps the one
the row had.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from edgenode.store.database import fetch_one
from shared.encoding import JSON, encode
from shared.values import format_timestamp

log = logging.getLogger("edgenode.server_data")

#: Aggregates with a projection of their own (``edgenode.outreach``).
OWN_PROJECTIONS = frozenset({"outreach_item"})
UPSERT, DELETE = "upsert", "delete"

_UPSERT_RECORD = (
    "INSERT INTO server_records (aggregate, entity_id, facility_id, data, deleted, "
    "gateway_seq, local_seq, updated_at) VALUES (?,?,?,?,?,?,?,?) "
    "ON CONFLICT (aggregate, entity_id) DO UPDATE SET "
    # A delete that names no facility leaves the row where it was, so the
    # tablets that had it are the ones told of its removal.
    "facility_id = CASE WHEN excluded.deleted = 1 "
    "THEN coalesce(excluded.facility_id, server_records.facility_id) "
    "ELSE excluded.facility_id END, "
    "data = excluded.data, deleted = excluded.deleted, gateway_seq = excluded.gateway_seq, "
    "local_seq = excluded.local_seq, updated_at = excluded.updated_at"
)


@dataclass(frozen=True)
class ServerChange:
    """One change-feed entry of a projected aggregate, ready to store."""

    aggregate: str
    entity_id: str
    deleted: bool
    facility_id: str | None
    data: str | None  # JSON text, as the gateway sent it
    gateway_seq: int | None


def read_change(change: Mapping[str, Any]) -> ServerChange | None:
    """The entry to store, or None when it cannot be kept (logged): it names
    no aggregate or id, an operation other than upsert/delete, or data that
    is not JSON. Pure."""
    aggregate, entity_id, op = change.get("aggregate"), change.get("id"), change.get("op")
    if not (isinstance(aggregate, str) and aggregate and isinstance(entity_id, str) and entity_id):
        # Never the entry itself: its data may be a registry entry (PHI).
        log.warning(
            "change-feed entry without aggregate or id skipped (seq %.40r)", change.get("seq")
        )
        return None
    if op not in (UPSERT, DELETE):
        log.warning("change-feed entry %s/%s with op %.40r skipped", aggregate, entity_id, op)
        return None
    data = change.get("data")
    try:
        text = None if data is None else encode(data, JSON).decode("utf-8")
    except (TypeError, ValueError) as err:
        log.warning("change-feed entry %s/%s skipped: data %s", aggregate, entity_id, err)
        return None
    facility = data.get("facilityId") if isinstance(data, Mapping) else None
    seq = change.get("seq")
    return ServerChange(
        aggregate=aggregate,
        entity_id=entity_id,
        deleted=op == DELETE,
        facility_id=facility if isinstance(facility, str) and facility else None,
        data=text,
        gateway_seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
    )


async def _next_local_seq(conn: aiosqlite.Connection) -> int:
    row = await fetch_one(conn, "SELECT coalesce(max(local_seq), 0) FROM server_records")
    return int(row[0]) + 1 if row else 1


async def apply_server_changes(
    conn: aiosqlite.Connection, changes: Sequence[Mapping[str, Any]], now: datetime
) -> int:
    """Store the page's changes of every aggregate but those with their own
    projection, in feed order (one statement for the page); returns how many
    were stored. Runs in the puller's transaction, with its cursor."""
    stamp = format_timestamp(now)
    entries = [
        c
        for c in (
            read_change(c)
            for c in changes
            if isinstance(c, Mapping) and c.get("aggregate") not in OWN_PROJECTIONS
        )
        if c is not None
    ]
    next_seq = await _next_local_seq(conn)
    await conn.executemany(
        _UPSERT_RECORD,
        [
            (
                c.aggregate,
                c.entity_id,
                c.facility_id,
                c.data,
                int(c.deleted),
                c.gateway_seq,
                next_seq + n,
                stamp,
            )
            for n, c in enumerate(entries)
        ],
    )
    return len(entries)


def record_to_wire(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "aggregate": row["aggregate"],
        "id": row["entity_id"],
        "op": DELETE if row["deleted"] else UPSERT,
        "data": None if row["data"] is None else json.loads(row["data"]),
        "seq": row["local_seq"],
    }


async def records_since(
    conn: aiosqlite.Connection, facility_ids: Iterable[str], since: int, limit: int
) -> tuple[list[dict[str, Any]], int, bool]:
    """Rows after ``since`` of these facilities and tenant-wide ones, in local
    order, tombstones included: ``(records, cursor, more)``."""
    facilities = sorted(facility_ids)
    marks = ",".join("?" * len(facilities))
    cursor = await conn.execute(
        "SELECT aggregate, entity_id, data, deleted, local_seq FROM server_records "
        f"WHERE local_seq > ? AND (facility_id IS NULL OR facility_id IN ({marks})) "
        "ORDER BY local_seq LIMIT ?",
        (since, *facilities, limit + 1),
    )
    rows = list(await cursor.fetchall())
    more = len(rows) > limit
    rows = rows[:limit]
    return [record_to_wire(r) for r in rows], (rows[-1]["local_seq"] if rows else since), more

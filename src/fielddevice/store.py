"""The field device's own SQLite store: its pairing, its queue of records and
of cohort drafts, the items and the server data it pulled from the edge.

One writer (``SQLiteStore``: ``BEGIN IMMEDIATE`` under a lock, WAL, a
separate reader). A record is never deleted: a push answer or a gather
acknowledgement only marks it synced, keeping the edge's result for the user.
Record bodies are kept as the exact wire maps the edge receives. Cohort
drafts (``cohort.draft``, sent with ``POST …/sync/items``) have a queue of
their own, kept the same way; the gather API never offers them. Server data
(``GET …/server-data``) is a read-only copy of the edge's projection: one row
per ``(aggregate, id)`` at its latest, a delete kept as a tombstone.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from edgenode.store.database import SQLiteStore, fetch_all, fetch_one
from fielddevice.migrations import MIGRATIONS
from shared.errors import AlreadyExists
from shared.values import format_timestamp
from shared.wire import COHORT_DRAFT_KIND

Kind = Literal["transition", "encounter"]
Via = Literal["push", "gather"]
KINDS: tuple[Kind, ...] = ("transition", "encounter")
#: The wire list each kind travels in (pushes, gather pages, acknowledgements).
FIELD_OF: Mapping[Kind, str] = {"transition": "transitions", "encounter": "encounters"}
CHUNK = 500


@dataclass(frozen=True)
class Pairing:
    node_id: str
    tenant_id: str
    facility_ids: tuple[str, ...]
    fingerprint: str
    node_public_key: bytes
    edge_url: str  # the API base the pairing was made through
    paired_at: str

    def describe(self) -> dict[str, Any]:
        """For status output: no key bytes, only the fingerprint."""
        return {
            "nodeId": self.node_id,
            "tenantId": self.tenant_id,
            "facilityIds": list(self.facility_ids),
            "fp": self.fingerprint,
            "edgeUrl": self.edge_url,
            "pairedAt": self.paired_at,
        }


@dataclass(frozen=True)
class Record:
    seq: int
    record_id: str
    kind: Kind
    body: dict[str, Any]
    created_at: str
    synced_at: str | None = None
    synced_via: Via | None = None
    result_status: str | None = None
    result_code: str | None = None
    result_state: str | None = None


@dataclass(frozen=True)
class Draft:
    """A cohort draft made here, and the edge's result once sent."""

    seq: int
    draft_id: str
    cohort_id: str
    definition: Any
    created_at: str
    synced_at: str | None = None
    result_status: str | None = None
    result_code: str | None = None
    result: dict[str, Any] | None = None

    def item(self) -> dict[str, Any]:
        """The ``POST …/sync/items`` item."""
        return {
            "kind": COHORT_DRAFT_KIND,
            "id": self.draft_id,
            "cohortId": self.cohort_id,
            "definition": self.definition,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.item(),
            "createdAt": self.created_at,
            "syncedAt": self.synced_at,
            "result": self.result,
        }


def _canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _without_seq(body: Mapping[str, Any]) -> str:
    return _canonical({k: v for k, v in body.items() if k != "seq"})


def _record(row: sqlite3.Row) -> Record:
    return Record(
        seq=row["seq"],
        record_id=row["record_id"],
        kind=row["kind"],
        body=json.loads(row["body"]),
        created_at=row["created_at"],
        synced_at=row["synced_at"],
        synced_via=row["synced_via"],
        result_status=row["result_status"],
        result_code=row["result_code"],
        result_state=row["result_state"],
    )


def _draft(row: sqlite3.Row) -> Draft:
    return Draft(
        seq=row["seq"],
        draft_id=row["draft_id"],
        cohort_id=row["cohort_id"],
        definition=json.loads(row["definition"]),
        created_at=row["created_at"],
        synced_at=row["synced_at"],
        result_status=row["result_status"],
        result_code=row["result_code"],
        result=None if row["result"] is None else json.loads(row["result"]),
    )


def _server_record(row: sqlite3.Row) -> dict[str, Any]:
    record: dict[str, Any] = {
        "aggregate": row["aggregate"],
        "id": row["entity_id"],
        "facilityId": row["facility_id"],
        "data": None if row["data"] is None else json.loads(row["data"]),
        "seq": row["seq"],
    }
    if row["deleted"]:
        record["deleted"] = True
    return record


_UPSERT_SERVER_RECORD = (
    "INSERT INTO server_records (aggregate, entity_id, facility_id, data, deleted, seq, "
    "pulled_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT (aggregate, entity_id) DO UPDATE SET "
    # A delete that names no facility keeps the one the record had (as the edge does).
    "facility_id = CASE WHEN excluded.deleted = 1 "
    "THEN coalesce(excluded.facility_id, server_records.facility_id) "
    "ELSE excluded.facility_id END, "
    "data = excluded.data, deleted = excluded.deleted, seq = excluded.seq, "
    "pulled_at = excluded.pulled_at"
)


def _facility_of(data: Any) -> str | None:
    """``data.facilityId`` when it is a non-empty string; else tenant-wide."""
    facility = data.get("facilityId") if isinstance(data, Mapping) else None
    return facility if isinstance(facility, str) and facility else None


class FieldStore(SQLiteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path, MIGRATIONS)

    # -- pairing -------------------------------------------------------------

    async def pairing(self) -> Pairing | None:
        async with self.read() as conn:
            row = await fetch_one(conn, "SELECT * FROM pairing WHERE id = 1")
        if row is None:
            return None
        return Pairing(
            node_id=row["node_id"],
            tenant_id=row["tenant_id"],
            facility_ids=tuple(json.loads(row["facility_ids"])),
            fingerprint=row["fingerprint"],
            node_public_key=bytes(row["node_public_key"]),
            edge_url=row["edge_url"],
            paired_at=row["paired_at"],
        )

    async def save_pairing(self, pairing: Pairing) -> None:
        async with self.write() as conn:
            await conn.execute(
                "INSERT OR REPLACE INTO pairing (id, node_id, tenant_id, facility_ids, "
                "fingerprint, node_public_key, edge_url, paired_at) VALUES (1,?,?,?,?,?,?,?)",
                (
                    pairing.node_id,
                    pairing.tenant_id,
                    json.dumps(list(pairing.facility_ids)),
                    pairing.fingerprint,
                    pairing.node_public_key,
                    pairing.edge_url,
                    pairing.paired_at,
                ),
            )

    # -- records ---------------------------------------------------------------

    async def add_record(
        self, kind: Kind, record_id: str, body: Mapping[str, Any], now: datetime
    ) -> Record:
        """Queue a record; the same record again is a no-op, another body under
        its id is refused (records are facts once made)."""
        async with self.write() as conn:
            existing = await fetch_one(
                conn, "SELECT * FROM records WHERE kind = ? AND record_id = ?", (kind, record_id)
            )
            if existing is not None:
                found = _record(existing)
                if _without_seq(found.body) != _without_seq(body):
                    raise AlreadyExists(f"a {kind} {record_id} with other content is recorded")
                return found
            row = await fetch_one(conn, "SELECT coalesce(max(seq), 0) + 1 FROM records")
            seq = int(row[0]) if row else 1
            stored = {**body, "seq": seq} if kind == "transition" else dict(body)
            await conn.execute(
                "INSERT INTO records (seq, record_id, kind, body, created_at) VALUES (?,?,?,?,?)",
                (seq, record_id, kind, _canonical(stored), format_timestamp(now)),
            )
        return Record(seq, record_id, kind, stored, format_timestamp(now))

    async def pending(self, limit: int) -> tuple[list[Record], bool]:
        """Unsynced records, oldest first, at most ``limit``; and whether more wait."""
        async with self.read() as conn:
            rows = await fetch_all(
                conn,
                "SELECT * FROM records WHERE synced_at IS NULL ORDER BY seq LIMIT ?",
                (limit + 1,),
            )
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    async def pending_counts(self) -> dict[str, int]:
        async with self.read() as conn:
            rows = await fetch_all(
                conn,
                "SELECT kind, count(*) FROM records WHERE synced_at IS NULL GROUP BY kind",
            )
        found = {row[0]: int(row[1]) for row in rows}
        return {FIELD_OF[kind]: found.get(kind, 0) for kind in KINDS}

    async def pending_total(self) -> int:
        return sum((await self.pending_counts()).values())

    async def mark_synced(
        self,
        results: Mapping[Kind, Sequence[Mapping[str, Any]]],
        via: Via,
        now: datetime,
    ) -> int:
        """Mark each answered record synced with its result; returns how many were
        newly marked (a record already synced keeps its first result)."""
        stamp = format_timestamp(now)
        cleared = 0
        async with self.write() as conn:
            for kind, answered in results.items():
                for result in answered:
                    cursor = await conn.execute(
                        "UPDATE records SET synced_at = ?, synced_via = ?, result_status = ?, "
                        "result_code = ?, result_state = ? "
                        "WHERE kind = ? AND record_id = ? AND synced_at IS NULL",
                        (
                            stamp,
                            via,
                            result["status"],
                            result.get("code"),
                            result.get("state"),
                            kind,
                            result["id"],
                        ),
                    )
                    cleared += cursor.rowcount
        return cleared

    async def records(self, kind: Kind | None = None) -> list[Record]:
        async with self.read() as conn:
            if kind is None:
                rows = await fetch_all(conn, "SELECT * FROM records ORDER BY seq")
            else:
                rows = await fetch_all(
                    conn, "SELECT * FROM records WHERE kind = ? ORDER BY seq", (kind,)
                )
        return [_record(r) for r in rows]

    async def sync_counts(self) -> dict[str, Any]:
        """Synced records by way (push, gather) and results by status."""
        async with self.read() as conn:
            via = await fetch_all(
                conn,
                "SELECT synced_via, count(*) FROM records WHERE synced_at IS NOT NULL "
                "GROUP BY synced_via",
            )
            statuses = await fetch_all(
                conn,
                "SELECT result_status, count(*) FROM records WHERE synced_at IS NOT NULL "
                "GROUP BY result_status ORDER BY result_status",
            )
            total = await fetch_one(conn, "SELECT count(*) FROM records")
        ways = {row[0]: int(row[1]) for row in via}
        return {
            "recorded": int(total[0]) if total else 0,
            "synced": {"push": ways.get("push", 0), "gather": ways.get("gather", 0)},
            "results": {row[0]: int(row[1]) for row in statuses},
        }

    # -- items pulled from the edge ----------------------------------------------

    async def save_items(
        self, items: Iterable[Mapping[str, Any]], cursor: str, now: datetime
    ) -> None:
        stamp = format_timestamp(now)
        async with self.write() as conn:
            await conn.executemany(
                "INSERT OR REPLACE INTO items (id, facility_id, state, body, pulled_at) "
                "VALUES (?,?,?,?,?)",
                [(i["id"], i["facilityId"], i["state"], _canonical(i), stamp) for i in items],
            )
            await _set_state(conn, "items_cursor", cursor)

    async def items(self) -> list[dict[str, Any]]:
        async with self.read() as conn:
            rows = await fetch_all(conn, "SELECT body FROM items ORDER BY id")
        return [json.loads(row[0]) for row in rows]

    async def item(self, item_id: str) -> dict[str, Any] | None:
        async with self.read() as conn:
            row = await fetch_one(conn, "SELECT body FROM items WHERE id = ?", (item_id,))
        return None if row is None else dict(json.loads(row[0]))

    # -- cohort drafts -------------------------------------------------------------

    async def add_draft(
        self, draft_id: str, cohort_id: str, definition: Any, now: datetime
    ) -> Draft:
        """Queue a draft; the same draft again is a no-op, another cohort or
        definition under its id is refused."""
        async with self.write() as conn:
            existing = await fetch_one(
                conn, "SELECT * FROM cohort_drafts WHERE draft_id = ?", (draft_id,)
            )
            if existing is not None:
                found = _draft(existing)
                if (found.cohort_id, _canonical(found.definition)) != (
                    cohort_id,
                    _canonical(definition),
                ):
                    raise AlreadyExists(f"a cohort draft {draft_id} with other content is recorded")
                return found
            cursor = await conn.execute(
                "INSERT INTO cohort_drafts (draft_id, cohort_id, definition, created_at) "
                "VALUES (?,?,?,?)",
                (draft_id, cohort_id, _canonical(definition), format_timestamp(now)),
            )
            seq = cursor.lastrowid
        assert seq is not None
        return Draft(seq, draft_id, cohort_id, definition, format_timestamp(now))

    async def pending_drafts(self, limit: int) -> list[Draft]:
        """Unsent drafts, oldest first, at most ``limit``."""
        async with self.read() as conn:
            rows = await fetch_all(
                conn,
                "SELECT * FROM cohort_drafts WHERE synced_at IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            )
        return [_draft(r) for r in rows]

    async def pending_draft_count(self) -> int:
        async with self.read() as conn:
            row = await fetch_one(
                conn, "SELECT count(*) FROM cohort_drafts WHERE synced_at IS NULL"
            )
        return int(row[0]) if row else 0

    async def mark_drafts_synced(self, results: Sequence[Mapping[str, Any]], now: datetime) -> int:
        """Mark each answered draft synced with its result (the edge's whole
        answer for it); returns how many were newly marked."""
        stamp = format_timestamp(now)
        cleared = 0
        async with self.write() as conn:
            for result in results:
                cursor = await conn.execute(
                    "UPDATE cohort_drafts SET synced_at = ?, result_status = ?, "
                    "result_code = ?, result = ? WHERE draft_id = ? AND synced_at IS NULL",
                    (
                        stamp,
                        result["status"],
                        result.get("code"),
                        _canonical(result),
                        result["id"],
                    ),
                )
                cleared += cursor.rowcount
        return cleared

    async def drafts(self) -> list[Draft]:
        async with self.read() as conn:
            rows = await fetch_all(conn, "SELECT * FROM cohort_drafts ORDER BY seq")
        return [_draft(r) for r in rows]

    async def draft_counts(self) -> dict[str, Any]:
        """Drafts made, unsent, and results by status."""
        async with self.read() as conn:
            total = await fetch_one(
                conn,
                "SELECT count(*), coalesce(sum(synced_at IS NULL), 0) FROM cohort_drafts",
            )
            statuses = await fetch_all(
                conn,
                "SELECT result_status, count(*) FROM cohort_drafts WHERE synced_at IS NOT NULL "
                "GROUP BY result_status ORDER BY result_status",
            )
        return {
            "recorded": int(total[0]) if total else 0,
            "pending": int(total[1]) if total else 0,
            "results": {row[0]: int(row[1]) for row in statuses},
        }

    # -- server data pulled from the edge ------------------------------------------

    async def save_server_records(
        self, records: Iterable[Mapping[str, Any]], cursor: str, now: datetime
    ) -> int:
        """Apply one page (``{aggregate, id, op, data, seq}`` each, in the
        edge's order) and its cursor in one transaction; returns how many."""
        stamp = format_timestamp(now)
        rows = [
            (
                r["aggregate"],
                r["id"],
                _facility_of(r["data"]),
                None if r["data"] is None else _canonical(r["data"]),
                int(r["op"] == "delete"),
                r["seq"],
                stamp,
            )
            for r in records
        ]
        async with self.write() as conn:
            await conn.executemany(_UPSERT_SERVER_RECORD, rows)
            await _set_state(conn, "server_data_cursor", cursor)
        return len(rows)

    async def server_records(
        self, aggregate: str | None = None, deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Records held, by aggregate and id; tombstones only with ``deleted``."""
        where = [] if deleted else ["deleted = 0"]
        params: list[Any] = []
        if aggregate is not None:
            where.append("aggregate = ?")
            params.append(aggregate)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        async with self.read() as conn:
            rows = await fetch_all(
                conn, f"SELECT * FROM server_records {clause}ORDER BY aggregate, entity_id", params
            )
        return [_server_record(r) for r in rows]

    async def server_record_counts(self) -> dict[str, int]:
        """Live records held, by aggregate."""
        async with self.read() as conn:
            rows = await fetch_all(
                conn,
                "SELECT aggregate, count(*) FROM server_records WHERE deleted = 0 "
                "GROUP BY aggregate ORDER BY aggregate",
            )
        return {row[0]: int(row[1]) for row in rows}

    # -- small state -----------------------------------------------------------

    async def state(self, key: str) -> str | None:
        async with self.read() as conn:
            row = await fetch_one(conn, "SELECT value FROM sync_state WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_state(self, key: str, value: str) -> None:
        async with self.write() as conn:
            await _set_state(conn, key, value)


async def _set_state(conn: aiosqlite.Connection, key: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO sync_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )

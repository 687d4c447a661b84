"""The edge's outreach projection: tablet transitions resolved with the shared
FSM, and the items tablets read.

The edge answers tablets from its own projection, but the gateway's answer is
final: every transition that is not a local duplicate is forwarded, and the
gateway's states overwrite the local ones (``edgenode.gateway_items``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from edgenode.store.database import fetch_all, fetch_one
from shared.fsm import Disposition, ItemState, Role, State, Transition, resolve
from shared.values import format_timestamp, parse_timestamp

CHUNK = 500
ITEM_FIELDS = (
    "id",
    "facility_id",
    "state",
    "assignee_id",
    "patient_ref",
    "cohort_id",
    "due_date",
    "gateway_version",
    "last_transition_id",
    "last_from_state",
    "last_to_state",
    "last_occurred_at",
    "last_device_id",
    "last_role",
    "local_seq",
    "updated_at",
)


@dataclass
class _Item:
    row: dict[str, Any]
    changed: bool = False

    @property
    def state(self) -> State:
        return State(self.row["state"])

    @property
    def last(self) -> Transition | None:
        r = self.row
        if r["last_transition_id"] is None:
            return None
        return Transition(
            r["last_transition_id"],
            r["id"],
            r["last_from_state"],
            r["last_to_state"],
            parse_timestamp(r["last_occurred_at"], "last_occurred_at"),
            r["last_device_id"],
            "",
            Role(r["last_role"] or "worker"),
        )


def item_to_wire(row: Mapping[str, Any] | sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "facilityId": row["facility_id"],
        "state": row["state"],
        "assigneeId": row["assignee_id"],
        "patientRef": row["patient_ref"],
        "cohortId": row["cohort_id"],
        "dueDate": row["due_date"],
        "version": row["gateway_version"],
        "updatedAt": row["updated_at"],
        "seq": row["local_seq"],
    }


async def next_local_seq(conn: aiosqlite.Connection) -> int:
    row = await fetch_one(conn, "SELECT coalesce(max(local_seq), 0) FROM items")
    return int(row[0]) + 1 if row else 1


def placeholders(n: int) -> str:
    return ",".join("?" * n)


async def _load_items(conn: aiosqlite.Connection, ids: Sequence[str]) -> dict[str, _Item]:
    found: dict[str, _Item] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        for row in await fetch_all(
            conn,
            f"SELECT {', '.join(ITEM_FIELDS)} FROM items WHERE id IN ({placeholders(len(chunk))})",
            chunk,
        ):
            found[row[0]] = _Item(dict(zip(ITEM_FIELDS, row, strict=True)))
    return found


async def _load_seen(
    conn: aiosqlite.Connection, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Disposition]:
    wanted = set(pairs)
    ids = sorted({tid for _, tid in wanted})
    seen: dict[tuple[str, str], Disposition] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        for item_id, tid, disposition in await fetch_all(
            conn,
            "SELECT item_id, transition_id, local_disposition FROM transitions "
            f"WHERE transition_id IN ({placeholders(len(chunk))}) AND forward = 1 ORDER BY seq",
            chunk,
        ):
            if (item_id, tid) in wanted:
                seen.setdefault((item_id, tid), Disposition(disposition))
    return seen


async def ingest_transitions(
    conn: aiosqlite.Connection, transitions: Sequence[Transition], now: datetime
) -> list[dict[str, Any]]:
    """Resolve tablet transitions against the projection, log and queue them."""
    stamp = format_timestamp(now)
    items = await _load_items(conn, sorted({t.item_id for t in transitions}))
    seen = await _load_seen(conn, ((t.item_id, t.id) for t in transitions))
    next_seq = await next_local_seq(conn)
    log_rows: list[tuple[Any, ...]] = []
    results: list[dict[str, Any]] = []
    for t in transitions:
        item = items.get(t.item_id)
        current = (
            None if item is None else ItemState(item.state, item.last, seen.get((t.item_id, t.id)))
        )
        r = resolve(current, t, now)
        result: dict[str, Any] = {
            "id": t.id,
            "itemId": t.item_id,
            "status": r.disposition.value,
            "state": None if r.state is None else r.state.value,
        }
        if r.code is not None:
            result["code"] = r.code.value
        results.append(result)
        duplicate = r.disposition is Disposition.DUPLICATE
        rt = r.transition
        occurred_at = format_timestamp(rt.occurred_at)
        log_rows.append(
            (
                rt.id,
                rt.item_id,
                rt.from_state,
                rt.to_state,
                occurred_at,
                rt.device_id,
                rt.actor_id,
                rt.role.value,
                rt.seq,
                stamp,
                r.disposition.value,
                None if r.code is None else r.code.value,
                int(r.clock_adjusted),
                0 if duplicate else 1,
            )
        )  # the gateway judges every non-duplicate
        if not duplicate:
            seen[(t.item_id, t.id)] = r.disposition
        if r.changed_state and item is not None and r.state is not None:
            item.changed = True
            item.row.update(
                state=r.state.value,
                last_transition_id=rt.id,
                last_from_state=rt.from_state,
                last_to_state=rt.to_state,
                last_occurred_at=occurred_at,
                last_device_id=rt.device_id,
                last_role=rt.role.value,
                local_seq=next_seq,
                updated_at=stamp,
            )
            next_seq += 1
    await conn.executemany(
        "INSERT INTO transitions (transition_id, item_id, from_state, to_state, occurred_at, "
        "device_id, actor_id, role, device_seq, received_at, local_disposition, local_code, "
        "clock_adjusted, forward) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        log_rows,
    )
    changed = [i.row for i in items.values() if i.changed]
    if changed:
        await conn.executemany(
            "UPDATE items SET state=?, last_transition_id=?, last_from_state=?, "
            "last_to_state=?, last_occurred_at=?, last_device_id=?, last_role=?, "
            "local_seq=?, updated_at=? WHERE id=?",
            [
                (
                    r["state"],
                    r["last_transition_id"],
                    r["last_from_state"],
                    r["last_to_state"],
                    r["last_occurred_at"],
                    r["last_device_id"],
                    r["last_role"],
                    r["local_seq"],
                    r["updated_at"],
                    r["id"],
                )
                for r in changed
            ],
        )
    return results


async def items_since(
    conn: aiosqlite.Connection, facility_ids: Iterable[str], since: int, limit: int
) -> tuple[list[dict[str, Any]], int, bool]:
    facilities = sorted(facility_ids)
    cursor = await conn.execute(
        f"SELECT {', '.join(ITEM_FIELDS)} FROM items WHERE local_seq > ? AND facility_id IN "
        f"({placeholders(len(facilities))}) ORDER BY local_seq LIMIT ?",
        (since, *facilities, limit + 1),
    )
    rows = list(await cursor.fetchall())
    more = len(rows) > limit
    rows = rows[:limit]
    return [item_to_wire(r) for r in rows], (rows[-1]["local_seq"] if rows else since), more

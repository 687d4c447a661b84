"""The edge's outreach projection: tablet transitions resolved with the shared
FSM, the items tablets read, and the gateway's answers and changes applied.

The edge answers tablets from its own projection, but the gateway's answer is
final: every transition that is not a local duplicate is forwarded, and the
state the gateway returns overwrites the local one (unless newer local moves
of that item are still on their way, whose answers will settle it).
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


async def _next_local_seq(conn: aiosqlite.Connection) -> int:
    row = await fetch_one(conn, "SELECT coalesce(max(local_seq), 0) FROM items")
    return int(row[0]) + 1 if row else 1


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


async def _load_items(conn: aiosqlite.Connection, ids: Sequence[str]) -> dict[str, _Item]:
    found: dict[str, _Item] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        for row in await fetch_all(
            conn,
            f"SELECT {', '.join(ITEM_FIELDS)} FROM items WHERE id IN ({_placeholders(len(chunk))})",
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
            f"WHERE transition_id IN ({_placeholders(len(chunk))}) AND forward = 1 ORDER BY seq",
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
    next_seq = await _next_local_seq(conn)
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
        f"({_placeholders(len(facilities))}) ORDER BY local_seq LIMIT ?",
        (since, *facilities, limit + 1),
    )
    rows = list(await cursor.fetchall())
    more = len(rows) > limit
    rows = rows[:limit]
    return [item_to_wire(r) for r in rows], (rows[-1]["local_seq"] if rows else since), more


async def _newest_unanswered_moves(
    conn: aiosqlite.Connection, ids: Sequence[str]
) -> dict[str, int]:
    """Item -> seq of its newest local move the gateway has not answered yet."""
    newest: dict[str, int] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        rows = await fetch_all(
            conn,
            "SELECT item_id, max(seq) FROM transitions WHERE item_id IN "
            f"({_placeholders(len(chunk))}) AND forward = 1 AND gateway_status IS NULL "
            "AND local_disposition = 'applied' GROUP BY item_id",
            chunk,
        )
        newest.update({row[0]: row[1] for row in rows})
    return newest


# The gateway's state arrives without the transition that produced it, so a
# local ``last`` no longer describes it: forgotten, rule 5 cannot pair a late
# sibling with a transition the gateway has moved past (rules 6 and 7 judge it).
_FORGET_LAST = (
    "last_transition_id = NULL, last_from_state = NULL, last_to_state = NULL, "
    "last_occurred_at = NULL, last_device_id = NULL, last_role = NULL"
)


async def adopt_gateway_states(
    conn: aiosqlite.Connection, final: Mapping[str, tuple[str, int]], stamp: str
) -> int:
    """Overwrite local states with the gateway's: ``final`` maps an item to the
    gateway's state and the seq of the item's last record it answered. An item
    with a newer local move still unanswered waits (that move's answer settles
    it). A few statements per batch, not a few per item; returns how many
    items changed."""
    ids = list(final)
    waiting = await _newest_unanswered_moves(conn, ids)
    states: dict[str, str] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        rows = await fetch_all(
            conn, f"SELECT id, state FROM items WHERE id IN ({_placeholders(len(chunk))})", chunk
        )
        states.update({row[0]: row[1] for row in rows})
    next_seq = await _next_local_seq(conn)
    updates = []
    for item_id, (state, after_seq) in final.items():
        if waiting.get(item_id, -1) > after_seq or states.get(item_id, state) == state:
            continue
        updates.append((state, next_seq, stamp, item_id))
        next_seq += 1
    await conn.executemany(
        f"UPDATE items SET state = ?, local_seq = ?, updated_at = ?, {_FORGET_LAST} WHERE id = ?",
        updates,
    )
    return len(updates)


async def apply_changes(
    conn: aiosqlite.Connection, changes: Sequence[Mapping[str, Any]], now: datetime
) -> int:
    """Apply change-feed entries to the projection, in order; returns how many
    were applied. Consecutive upserts go in a few statements, not a few each:
    the feed echoes every transition the edge forwarded, a page of a thousand
    held the write lock for half a second."""
    stamp = format_timestamp(now)
    # Other aggregates go to the server-authoritative projection (edgenode.server_data).
    entries = [c for c in changes if c.get("aggregate") == "outreach_item"]
    upserted = sorted({c["data"]["id"] for c in entries if c.get("op") != "delete"})
    # A local move still on its way keeps the local state until its answer comes.
    waiting = set(await _newest_unanswered_moves(conn, upserted))
    next_seq = await _next_local_seq(conn)
    run: list[Mapping[str, Any]] = []
    for change in entries:
        if change.get("op") == "delete":
            next_seq = await _upsert_items(conn, run, waiting, next_seq, stamp)
            run = []
            await conn.execute("DELETE FROM items WHERE id = ?", (change["id"],))
        else:
            run.append(change["data"])
    await _upsert_items(conn, run, waiting, next_seq, stamp)
    return len(entries)


async def _upsert_items(
    conn: aiosqlite.Connection,
    items: Sequence[Mapping[str, Any]],
    waiting: set[str],
    next_seq: int,
    stamp: str,
) -> int:
    """The gateway's items into the projection, each under a new local_seq
    (returns the next one). Forgetting ``last`` for all of them first, then
    upserting, leaves what doing it item by item would: an item changed twice
    is forgotten if either change moves its state."""
    await conn.executemany(
        f"UPDATE items SET {_FORGET_LAST} WHERE id = ? AND state != ?",
        [(d["id"], d["state"]) for d in items if d["id"] not in waiting],
    )
    rows = []
    for data in items:
        rows.append(
            (
                data["id"],
                data["facilityId"],
                data["state"],
                data.get("assigneeId"),
                data.get("patientRef"),
                data.get("cohortId"),
                data.get("dueDate"),
                data.get("version"),
                next_seq,
                stamp,
                int(data["id"] in waiting),
            )
        )
        next_seq += 1
    await conn.executemany(
        "INSERT INTO items (id, facility_id, state, assignee_id, patient_ref, cohort_id, "
        "due_date, gateway_version, local_seq, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (id) DO UPDATE SET facility_id = excluded.facility_id, "
        "state = CASE WHEN ? THEN items.state ELSE excluded.state END, "
        "assignee_id = excluded.assignee_id, patient_ref = excluded.patient_ref, "
        "cohort_id = excluded.cohort_id, due_date = excluded.due_date, "
        "gateway_version = excluded.gateway_version, local_seq = excluded.local_seq, "
        "updated_at = excluded.updated_at",
        rows,
    )
    return next_seq

"""The gateway's word on outreach items, folded into the edge's projection.

Two paths bring it, and ``edgenode run`` runs them at once: the forwarder
stores the answers to its batches (``adopt_gateway_states``, in the
transaction that records them) and the puller applies change-feed pages
(``apply_changes``, in the transaction that moves its cursor). Either can be
older than what the other already stored. A page can leave the gateway before
a batch changes an item and be applied after that batch's answer was stored;
an answer can be stored after a page holding later changes of the item (by the
server, another node, or the edge's own next batch). Taking whichever came
last put the projection a step back, and the edge then refused a tablet's
next move as ``fsm_gap`` although the gateway applied it (found by the
power-loss run: docs/reliability.md).

So each item keeps the newest gateway state the edge has heard of, with the
item's version at the gateway, which counts every change of the item and comes
with both answers and feed entries (``gateway_state``, ``gateway_version``);
older news is ignored. The projection's ``state``, which tablets read and the
edge resolves their moves against, is that gateway state, except while a move
the edge applied itself is on its way: the local state stays until that
move's answer settles it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from edgenode.outreach import CHUNK, next_local_seq, placeholders
from edgenode.store.database import fetch_all
from shared.values import format_timestamp


@dataclass(frozen=True)
class GatewayWord:
    """The gateway's state of an item and the item's version when it said so.

    ``state`` is None for a row kept before words were kept (store version 4);
    ``version`` is None when the gateway sent none (a gateway before 2026-12).
    """

    state: str | None
    version: int | None


def version_of(value: Any) -> int | None:
    """A version as the gateway sends it (an integer), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def is_stale(held: GatewayWord, incoming: GatewayWord) -> bool:
    """Whether ``incoming`` is older than what the edge holds: only when both
    carry a version (without one, the newest to arrive is taken, as before)."""
    return (
        held.version is not None
        and incoming.version is not None
        and (incoming.version < held.version)
    )


def newest_word(held: GatewayWord, incoming: GatewayWord) -> GatewayWord:
    """What the edge holds after ``incoming``: the newer of the two. Pure."""
    if held.state is not None and is_stale(held, incoming):
        return held
    if incoming.version is None or (held.version is not None and held.version > incoming.version):
        # An unnumbered answer, or an older one over a row that kept no state:
        # its state (nothing better is known), never a version going back.
        return GatewayWord(incoming.state, held.version)
    return incoming


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
            f"({placeholders(len(chunk))}) AND forward = 1 AND gateway_status IS NULL "
            "AND local_disposition = 'applied' GROUP BY item_id",
            chunk,
        )
        newest.update({row[0]: row[1] for row in rows})
    return newest


async def _held(
    conn: aiosqlite.Connection, ids: Sequence[str]
) -> dict[str, tuple[str, GatewayWord]]:
    """Item -> (its projected state, the gateway's newest word the edge holds)."""
    held: dict[str, tuple[str, GatewayWord]] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        for row in await fetch_all(
            conn,
            "SELECT id, state, gateway_state, gateway_version FROM items "
            f"WHERE id IN ({placeholders(len(chunk))})",
            chunk,
        ):
            held[row[0]] = (row[1], GatewayWord(row[2], row[3]))
    return held


# The gateway's state arrives without the transition that produced it, so a
# local ``last`` no longer describes it: forgotten, rule 5 cannot pair a late
# sibling with a transition the gateway has moved past (rules 6 and 7 judge it).
_FORGET_LAST = (
    "last_transition_id = NULL, last_from_state = NULL, last_to_state = NULL, "
    "last_occurred_at = NULL, last_device_id = NULL, last_role = NULL"
)


async def adopt_gateway_states(
    conn: aiosqlite.Connection, final: Mapping[str, tuple[GatewayWord, int]], stamp: str
) -> int:
    """Take in a batch's answers: ``final`` maps an item to the gateway's word
    in its answer and the seq of the item's last record it answered. The word
    is kept unless the edge already holds a newer one (from the feed); the
    projection takes the newest word, unless a newer local move is still
    unanswered (that move's answer settles it). A few statements per batch,
    not a few per item; returns how many items changed state."""
    ids = list(final)
    waiting = await _newest_unanswered_moves(conn, ids)
    held = await _held(conn, ids)
    next_seq = await next_local_seq(conn)
    words: list[tuple[str | None, int | None, str]] = []
    moves: list[tuple[str, int, str, str]] = []
    for item_id, (answer, after_seq) in final.items():
        if item_id not in held:  # deleted by the feed meanwhile
            continue
        state, word = held[item_id]
        newest = newest_word(word, answer)
        if newest != word:
            words.append((newest.state, newest.version, item_id))
        if waiting.get(item_id, -1) > after_seq or newest.state in (None, state):
            continue
        assert newest.state is not None
        moves.append((newest.state, next_seq, stamp, item_id))
        next_seq += 1
    await conn.executemany(
        "UPDATE items SET gateway_state = ?, gateway_version = ? WHERE id = ?", words
    )
    await conn.executemany(
        f"UPDATE items SET state = ?, local_seq = ?, updated_at = ?, {_FORGET_LAST} WHERE id = ?",
        moves,
    )
    return len(moves)


async def apply_changes(
    conn: aiosqlite.Connection, changes: Sequence[Mapping[str, Any]], now: datetime
) -> int:
    """Apply change-feed entries to the projection, in order; returns how many
    there were. An upsert older than the gateway's word the edge holds (an
    answer stored after the page left the gateway) is passed over. Consecutive
    upserts go in a few statements, not a few each: the feed echoes every
    transition the edge forwarded, a page of a thousand held the write lock for
    half a second."""
    stamp = format_timestamp(now)
    # Other aggregates go to the server-authoritative projection (edgenode.server_data).
    entries = [c for c in changes if c.get("aggregate") == "outreach_item"]
    upserted = sorted({c["data"]["id"] for c in entries if c.get("op") != "delete"})
    # A local move still on its way keeps the local state until its answer comes.
    waiting = set(await _newest_unanswered_moves(conn, upserted))
    held = {item_id: word for item_id, (_, word) in (await _held(conn, upserted)).items()}
    next_seq = await next_local_seq(conn)
    run: list[Mapping[str, Any]] = []
    for change in entries:
        if change.get("op") == "delete":
            next_seq = await _upsert_items(conn, run, waiting, next_seq, stamp)
            run = []
            held.pop(change["id"], None)  # sent again, it starts afresh
            await conn.execute("DELETE FROM items WHERE id = ?", (change["id"],))
            continue
        data = change["data"]
        word = GatewayWord(data["state"], version_of(data.get("version")))
        known = held.get(data["id"])
        if known is not None and is_stale(known, word):
            continue
        held[data["id"]] = word if known is None else newest_word(known, word)
        run.append(data)
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
                data["state"],
                data.get("assigneeId"),
                data.get("patientRef"),
                data.get("cohortId"),
                data.get("dueDate"),
                version_of(data.get("version")),
                next_seq,
                stamp,
                int(data["id"] in waiting),
            )
        )
        next_seq += 1
    await conn.executemany(
        "INSERT INTO items (id, facility_id, state, gateway_state, assignee_id, patient_ref, "
        "cohort_id, due_date, gateway_version, local_seq, updated_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (id) DO UPDATE SET facility_id = excluded.facility_id, "
        "state = CASE WHEN ? THEN items.state ELSE excluded.state END, "
        "gateway_state = excluded.gateway_state, "
        "assignee_id = excluded.assignee_id, patient_ref = excluded.patient_ref, "
        "cohort_id = excluded.cohort_id, due_date = excluded.due_date, "
        # An entry without a version (an older gateway) leaves the one known.
        "gateway_version = coalesce(excluded.gateway_version, items.gateway_version), "
        "local_seq = excluded.local_seq, "
        "updated_at = excluded.updated_at",
        rows,
    )
    return next_seq

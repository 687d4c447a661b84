"""The outbox: pending records packed into persisted batches, and their answers.

A batch is written (id, exact msgpack body, the records it holds) in one
transaction before its first send, so every resend after a failure or a
crash is byte-for-byte the same request under the same Idempotency-Key.
Batches are sent strictly in order, which keeps each item's transitions in
order at the gateway.

A batch holds transitions, then facility reports, then tablets' cohort
drafts (``edgenode.tablet_items``), oldest first within each; the answer to
each record is stored with it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite
import msgpack

from edgenode.gateway_items import GatewayWord, adopt_gateway_states, version_of
from edgenode.store.database import fetch_all, fetch_one
from edgenode.tablet_items import DRAFT_KIND
from shared.encoding import JSON, encode
from shared.values import format_timestamp
from shared.wire import REPORT_KIND, TRANSITION_KIND

PENDING = "pending"  # persisted, not yet answered
DONE = "done"  # answered 200; results applied
REFUSED = "refused"  # one record answered with a permanent 4xx: that record is a problem
SPLIT = "split"  # several records refused as a whole: they were queued again, in halves
WITHDRAWN = "withdrawn"  # never sent, behind a split batch: its records were queued again
BATCH_LIMIT = "batch_limit"  # sync_state: the smaller batch size while a refusal is isolated
BATCH_OVERHEAD = 512  # bytes of the batch envelope around the items


class ResultMismatch(Exception):
    """The gateway's results do not line up with the batch we sent."""


@dataclass(frozen=True)
class OpenBatch:
    batch_id: str
    body: bytes
    item_count: int
    attempts: int
    next_attempt_at: str | None


def _transition_item(row: aiosqlite.Row) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kind": TRANSITION_KIND,
        "id": row["transition_id"],
        "itemId": row["item_id"],
        "from": row["from_state"],
        "to": row["to_state"],
        "occurredAt": row["occurred_at"],
        "deviceId": row["device_id"],
        "actorId": row["actor_id"],
    }
    if row["role"] != "worker":
        item["role"] = row["role"]
    if row["device_seq"] is not None:
        item["seq"] = row["device_seq"]
    return item


def _draft_item(row: aiosqlite.Row) -> dict[str, Any]:
    """A tablet's cohort draft, as the gateway validates and versions it."""
    return {
        "kind": DRAFT_KIND,
        "id": row["draft_id"],
        "cohortId": row["cohort_id"],
        "definition": json.loads(row["definition"]),
        "deviceId": row["device_id"],
    }


def report_item_id(facility_id: str, period_key: str) -> str:
    return f"report.{facility_id}.{period_key}"


async def build_batch(
    conn: aiosqlite.Connection, node_id: str, now: datetime, max_items: int, max_bytes: int
) -> OpenBatch | None:
    """Pack the oldest unsent records into a new persisted batch (None: nothing to send)."""
    budget = max_bytes - BATCH_OVERHEAD
    items: list[dict[str, Any]] = []
    transition_seqs: list[int] = []
    report_seqs: list[int] = []
    draft_seqs: list[int] = []
    rows = await fetch_all(
        conn,
        "SELECT seq, transition_id, item_id, from_state, to_state, occurred_at, device_id, "
        "actor_id, role, device_seq FROM transitions WHERE forward = 1 AND batch_id IS NULL "
        "ORDER BY seq LIMIT ?",
        (max_items,),
    )
    for row in rows:
        item = _transition_item(row)
        size = len(msgpack.packb(item, use_bin_type=True))
        if size > budget:
            break
        budget -= size
        items.append(item)
        transition_seqs.append(row["seq"])
    room = len(items) == len(rows)
    if room:  # reports follow the transitions
        reports = await fetch_all(
            conn,
            "SELECT seq, facility_id, period_key, payload, signature FROM reports "
            "WHERE batch_id IS NULL ORDER BY seq LIMIT ?",
            (max_items - len(items),),
        )
        for row in reports:
            item = {
                "kind": REPORT_KIND,
                "id": report_item_id(row[1], row[2]),
                "deviceId": node_id,
                "payload": bytes(row[3]),
                "signature": bytes(row[4]),
            }
            size = len(msgpack.packb(item, use_bin_type=True))
            if size > budget:
                room = False
                break
            budget -= size
            items.append(item)
            report_seqs.append(row[0])
    if room and len(items) < max_items:  # then cohort drafts
        for row in await fetch_all(
            conn,
            "SELECT seq, draft_id, cohort_id, definition, device_id FROM cohort_drafts "
            "WHERE batch_id IS NULL ORDER BY seq LIMIT ?",
            (max_items - len(items),),
        ):
            item = _draft_item(row)
            size = len(msgpack.packb(item, use_bin_type=True))
            if size > budget:
                break
            budget -= size
            items.append(item)
            draft_seqs.append(row["seq"])
    if not items:
        return None
    batch_id = uuid.uuid4().hex
    stamp = format_timestamp(now)
    body = msgpack.packb(
        {"v": 1, "batchId": batch_id, "nodeId": node_id, "createdAt": stamp, "items": items},
        use_bin_type=True,
    )
    await conn.execute(
        "INSERT INTO outbox_batches (batch_id, created_at, stage, body, item_count, attempts, "
        "next_attempt_at) VALUES (?,?,?,?,?,0,?)",
        (batch_id, stamp, PENDING, body, len(items), stamp),
    )
    await conn.executemany(
        "UPDATE transitions SET batch_id = ? WHERE seq = ?",
        [(batch_id, seq) for seq in transition_seqs],
    )
    await conn.executemany(
        "UPDATE reports SET batch_id = ? WHERE seq = ?", [(batch_id, seq) for seq in report_seqs]
    )
    await conn.executemany(
        "UPDATE cohort_drafts SET batch_id = ? WHERE seq = ?",
        [(batch_id, seq) for seq in draft_seqs],
    )
    return OpenBatch(batch_id, body, len(items), 0, stamp)


async def oldest_open_batch(
    conn: aiosqlite.Connection, after: str | None = None
) -> OpenBatch | None:
    """The next batch to send; ``after``: the next one persisted after that batch."""
    row = await fetch_one(
        conn,
        "SELECT batch_id, body, item_count, attempts, next_attempt_at FROM outbox_batches "
        "WHERE stage = ? AND seq > coalesce((SELECT seq FROM outbox_batches "
        "WHERE batch_id = ?), 0) ORDER BY seq LIMIT 1",
        (PENDING, after),
    )
    if row is None:
        return None
    return OpenBatch(row[0], bytes(row[1]), row[2], row[3], row[4])


async def record_results(
    conn: aiosqlite.Connection, batch_id: str, results: Sequence[Mapping[str, Any]], now: datetime
) -> None:
    """Apply the gateway's per-item answers; its states overwrite the projection."""
    stamp = format_timestamp(now)
    transitions = await fetch_all(
        conn,
        "SELECT seq, transition_id, item_id FROM transitions WHERE batch_id = ? ORDER BY seq",
        (batch_id,),
    )
    reports = await fetch_all(
        conn,
        "SELECT seq, facility_id, period_key FROM reports WHERE batch_id = ? ORDER BY seq",
        (batch_id,),
    )
    drafts = await fetch_all(
        conn, "SELECT seq, draft_id FROM cohort_drafts WHERE batch_id = ? ORDER BY seq", (batch_id,)
    )
    expected = (
        [row[1] for row in transitions]
        + [report_item_id(r[1], r[2]) for r in reports]
        + [r[1] for r in drafts]
    )
    if [r.get("id") for r in results] != expected:
        raise ResultMismatch(f"batch {batch_id}: answer lists other items than were sent")
    # item -> (the gateway's state and the item's version, seq of its last record)
    final: dict[str, tuple[GatewayWord, int]] = {}
    answers = []
    for row, result in zip(transitions, results, strict=False):
        answers.append((result["status"], result.get("code"), result.get("state"), stamp, row[0]))
        if result.get("state") is not None:
            word = GatewayWord(result["state"], version_of(result.get("version")))
            final[row[2]] = (word, row[0])
    await conn.executemany(
        "UPDATE transitions SET gateway_status = ?, gateway_code = ?, gateway_state = ?, "
        "gateway_at = ? WHERE seq = ?",
        answers,
    )
    await adopt_gateway_states(conn, final, stamp)
    await conn.executemany(
        "UPDATE reports SET gateway_status = ?, gateway_code = ?, gateway_report_id = ?, "
        "gateway_at = ? WHERE seq = ?",
        [
            (result["status"], result.get("code"), result.get("reportId"), stamp, row[0])
            for row, result in zip(
                reports, results[len(transitions) : len(transitions) + len(reports)], strict=True
            )
        ],
    )
    await conn.executemany(
        "UPDATE cohort_drafts SET gateway_status = ?, gateway_code = ?, gateway_detail = ?, "
        "gateway_version = ?, gateway_result = ?, gateway_at = ? WHERE seq = ?",
        [
            (
                result["status"],
                result.get("code"),
                _text(result.get("detail")),
                _version(result.get("version")),
                _result_json(result),
                stamp,
                row[0],
            )
            for row, result in zip(drafts, results[len(transitions) + len(reports) :], strict=True)
        ],
    )
    await conn.execute(
        "UPDATE outbox_batches SET stage = ?, finished_at = ?, last_error = NULL "
        "WHERE batch_id = ?",
        (DONE, stamp, batch_id),
    )
    await set_state(conn, "last_forward_ok", stamp)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:1000]


def _result_json(result: Mapping[str, Any]) -> str | None:
    """A draft's whole answer (its version, its errors...) as JSON text."""
    try:
        return encode(dict(result), JSON).decode("utf-8")
    except (TypeError, ValueError):  # not JSON (NaN...): its status and code still are kept
        return None


def _version(value: Any) -> int | None:
    """The version the gateway numbered a draft (an integer), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def record_retry(
    conn: aiosqlite.Connection, batch_id: str, error: str, next_attempt_at: datetime
) -> None:
    await conn.execute(
        "UPDATE outbox_batches SET attempts = attempts + 1, next_attempt_at = ?, "
        "last_error = ? WHERE batch_id = ?",
        (format_timestamp(next_attempt_at), error[:1000], batch_id),
    )


async def split_refused(
    conn: aiosqlite.Connection,
    batch_id: str,
    item_count: int,
    code: str,
    detail: str,
    now: datetime,
) -> None:
    """A permanent refusal of a whole batch of several records (one bad record
    fails the gateway's check of the batch; or the batch is over its limits).

    The gateway stored nothing, so the records go back to the queue in their
    order, to be sent in batches of half the size: the bad record ends up
    alone in a refused batch (``record_refused``), and every other one is
    delivered. The batch row stays, with its reason, for the record.

    Batches persisted after it (the forwarder builds the next batch while
    one is on its way) were never sent, as a batch goes only once the one
    before it is accepted: they are withdrawn, so their records queue again
    behind these, in order.
    """
    stamp = format_timestamp(now)
    later = (
        "SELECT batch_id FROM outbox_batches WHERE stage = ? AND seq > "
        "(SELECT seq FROM outbox_batches WHERE batch_id = ?)"
    )
    for table in ("transitions", "reports", "cohort_drafts"):
        await conn.execute(
            f"UPDATE {table} SET batch_id = NULL WHERE batch_id = ? OR batch_id IN ({later})",
            (batch_id, PENDING, batch_id),
        )
    await conn.execute(
        f"UPDATE outbox_batches SET stage = ?, last_error = ?, finished_at = ? "
        f"WHERE batch_id IN ({later})",
        (
            WITHDRAWN,
            f"withdrawn unsent: batch {batch_id} before it was split",
            stamp,
            PENDING,
            batch_id,
        ),
    )
    await conn.execute(
        "UPDATE outbox_batches SET stage = ?, attempts = attempts + 1, last_error = ?, "
        "finished_at = ? WHERE batch_id = ?",
        (SPLIT, f"{code}: {detail}"[:1000], stamp, batch_id),
    )
    await set_state(conn, BATCH_LIMIT, str(max(1, item_count // 2)))


async def batch_limit(conn: aiosqlite.Connection, max_items: int) -> int:
    """Most records for the next batch: ``max_items``, or less while a split runs."""
    limit = await get_state(conn, BATCH_LIMIT)
    return max_items if limit is None else max(1, min(max_items, int(limit)))


async def record_refused(
    conn: aiosqlite.Connection, batch_id: str, code: str, detail: str, now: datetime
) -> None:
    """A permanent refusal of a batch of one record: that record becomes a
    visible problem (never deleted) and the outbox moves on, in full batches,
    to the records behind it."""
    stamp = format_timestamp(now)
    await conn.execute(
        "UPDATE outbox_batches SET stage = ?, attempts = attempts + 1, last_error = ?, "
        "finished_at = ? WHERE batch_id = ?",
        (REFUSED, f"{code}: {detail}"[:1000], stamp, batch_id),
    )
    await conn.execute(
        "UPDATE transitions SET gateway_status = 'rejected', gateway_code = ?, gateway_at = ? "
        "WHERE batch_id = ?",
        (code, stamp, batch_id),
    )
    await conn.execute(
        "UPDATE reports SET gateway_status = 'rejected', gateway_code = ?, gateway_at = ? "
        "WHERE batch_id = ?",
        (code, stamp, batch_id),
    )
    await conn.execute(
        "UPDATE cohort_drafts SET gateway_status = 'rejected', gateway_code = ?, "
        "gateway_detail = ?, gateway_at = ? WHERE batch_id = ?",
        (code, detail[:1000], stamp, batch_id),
    )
    await clear_state(conn, BATCH_LIMIT)


async def set_state(conn: aiosqlite.Connection, key: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO sync_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


async def clear_state(conn: aiosqlite.Connection, key: str) -> None:
    await conn.execute("DELETE FROM sync_state WHERE key = ?", (key,))


async def get_state(conn: aiosqlite.Connection, key: str) -> str | None:
    row = await fetch_one(conn, "SELECT value FROM sync_state WHERE key = ?", (key,))
    return None if row is None else str(row[0])

"""The edge store's write lock (urgent writers first, cancellation-safe) and
the indexes that keep per-item queries off full scans."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgenode.gateway_items import apply_changes
from edgenode.outreach import ingest_transitions
from edgenode.store.database import EdgeDatabase, WriteLock, fetch_all
from shared.wire import parse_transition


async def _take(lock: WriteLock, name: str, order: list[str], urgent: bool = False) -> None:
    await lock.acquire(urgent)
    order.append(name)
    await asyncio.sleep(0)  # hold it across a turn of the loop
    lock.release()


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_urgent_waiter_goes_before_ordinary_ones_queued_earlier() -> None:
    lock, order = WriteLock(), []
    await lock.acquire()
    tasks = [asyncio.create_task(_take(lock, f"tablet-{n}", order)) for n in range(3)]
    await _settle()
    tasks.append(asyncio.create_task(_take(lock, "forwarder", order, urgent=True)))
    await _settle()
    lock.release()
    await asyncio.gather(*tasks)
    # The forwarder first; the tablets keep their own order behind it.
    assert order == ["forwarder", "tablet-0", "tablet-1", "tablet-2"]


async def test_a_free_lock_is_taken_at_once_and_freed_after() -> None:
    lock, order = WriteLock(), []
    await _take(lock, "a", order)
    await _take(lock, "b", order, urgent=True)
    assert order == ["a", "b"]
    await asyncio.wait_for(lock.acquire(), 1)  # not held: no waiting


async def test_a_cancelled_waiter_is_skipped() -> None:
    lock, order = WriteLock(), []
    await lock.acquire()
    gone = asyncio.create_task(_take(lock, "gone", order))
    kept = asyncio.create_task(_take(lock, "kept", order))
    await _settle()
    gone.cancel()
    await _settle()
    lock.release()
    await asyncio.wait_for(kept, 1)
    assert order == ["kept"]
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_waiter_cancelled_as_it_is_handed_the_lock_passes_it_on() -> None:
    lock, order = WriteLock(), []
    await lock.acquire()
    first = asyncio.create_task(_take(lock, "first", order))
    second = asyncio.create_task(_take(lock, "second", order))
    await _settle()
    lock.release()  # handed to ``first``, which has not run yet...
    first.cancel()  # ...and is cancelled before it does
    await asyncio.wait_for(second, 1)
    assert order == ["second"]
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_writes_and_an_urgent_write_all_commit(tmp_path: Path) -> None:
    db = await EdgeDatabase(tmp_path / "edge.db").open()
    try:

        async def put(key: str, urgent: bool) -> None:
            async with db.write(urgent=urgent) as conn:
                await conn.execute("INSERT INTO sync_state (key, value) VALUES (?, 'x')", (key,))

        await asyncio.gather(*(put(f"k{n}", urgent=n % 4 == 0) for n in range(20)))
        async with db.read() as conn:
            rows = await fetch_all(conn, "SELECT count(*) FROM sync_state WHERE key LIKE 'k%'")
        assert rows[0][0] == 20
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("query", "index"),
    [
        # Answers and changes look for their items' unanswered local moves.
        (
            "SELECT item_id, max(seq) FROM transitions WHERE item_id IN (?, ?) AND forward = 1 "
            "AND gateway_status IS NULL AND local_disposition = 'applied' GROUP BY item_id",
            "transitions_by_item",
        ),
        # The next local_seq, asked on every push and every adopted state.
        ("SELECT coalesce(max(local_seq), 0) FROM items", "items_by_local_seq"),
    ],
)
async def test_per_item_queries_use_an_index(tmp_path: Path, query: str, index: str) -> None:
    db = await EdgeDatabase(tmp_path / "edge.db").open()
    try:
        async with db.read() as conn:
            plan = await fetch_all(
                conn, f"EXPLAIN QUERY PLAN {query}", ("a", 1)[: query.count("?")]
            )
    finally:
        await db.close()
    details = " ".join(str(row[3]) for row in plan)
    assert index in details, details


async def test_a_page_of_changes_applies_in_order(tmp_path: Path) -> None:
    """Upserts batched between deletes: an item deleted and sent again comes
    back; an item with a local move on its way keeps its state and ``last``;
    every upsert takes the next local_seq, in feed order."""
    db = await EdgeDatabase(tmp_path / "edge.db").open()
    now = datetime(2026, 11, 25, 11, tzinfo=UTC)

    def upsert(item: str, state: str) -> dict[str, Any]:
        data = {"id": item, "facilityId": "f-001", "state": state, "version": 1}
        return {"aggregate": "outreach_item", "op": "upsert", "data": data}

    try:
        async with db.write() as conn:
            await apply_changes(conn, [upsert("a", "assigned"), upsert("b", "assigned")], now)
            moves = [
                parse_transition(
                    {
                        "id": f"t-{item}",
                        "itemId": item,
                        "from": "assigned",
                        "to": "in_progress",
                        "occurredAt": "2026-11-25T10:00:00.000Z",
                        "deviceId": "tab-a",
                        "actorId": "w-1",
                    }
                )
                for item in ("a", "b")
            ]
            await ingest_transitions(conn, moves, now)
            # a's move was answered; b's is still on its way.
            await conn.execute(
                "UPDATE transitions SET gateway_status = 'applied' WHERE item_id = 'a'"
            )
            page = [
                upsert("a", "contacted"),
                upsert("b", "completed"),
                upsert("c", "assigned"),
                {"aggregate": "outreach_item", "op": "delete", "id": "a"},
                {"aggregate": "cohort", "op": "upsert", "data": {"id": "x"}},  # not ours yet
                upsert("a", "completed"),
                upsert("c", "in_progress"),
            ]
            assert await apply_changes(conn, page, now) == 6
        async with db.read() as conn:
            rows = await fetch_all(
                conn,
                "SELECT id, state, last_transition_id, local_seq FROM items ORDER BY local_seq",
            )
    finally:
        await db.close()
    got = [tuple(r) for r in rows]
    assert [(i, s, last) for i, s, last, _ in got] == [
        ("b", "in_progress", "t-b"),  # kept: its own move is unanswered
        ("a", "completed", None),  # deleted, then sent again
        ("c", "in_progress", None),
    ]
    seqs = [seq for *_, seq in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3

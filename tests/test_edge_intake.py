"""Group commit of tablet pushes (``edgenode.intake``): pushes queued while the
write lock is taken are written in one transaction, and each is answered and
stored exactly as if it had been written alone, one after another."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest

from edgenode.gateway_items import apply_changes
from edgenode.intake import OutreachIntake
from edgenode.outreach import ingest_transitions
from edgenode.store.database import EdgeDatabase, fetch_all
from harness import FakeClock
from shared.errors import IdempotencyInFlight
from shared.fsm import Transition
from shared.wire import parse_transition

ITEMS = ("oi-1", "oi-2", "oi-3")


def t(tid: str, item: str, frm: str, to: str, minute: int, device: str) -> Transition:
    return parse_transition(
        {
            "id": tid,
            "itemId": item,
            "from": frm,
            "to": to,
            "occurredAt": f"2026-11-25T10:{minute:02d}:00.000Z",
            "deviceId": device,
            "actorId": "w-1",
        }
    )


# (principal, Idempotency-Key, transitions) in arrival order; every rule that
# depends on what an earlier push of the same group did is exercised.
PUSHES: list[tuple[str, str | None, list[Transition]]] = [
    # Applied, then applied on top of it within one push.
    (
        "device:tab-a",
        "k-a1",
        [
            t("t1", "oi-1", "assigned", "in_progress", 0, "tab-a"),
            t("t2", "oi-1", "in_progress", "contacted", 5, "tab-a"),
        ],
    ),
    # A sibling of t1 after oi-1 moved past it in the push before: noop.
    ("device:tab-b", None, [t("t3", "oi-1", "assigned", "in_progress", 1, "tab-b")]),
    # t1 again (a duplicate of the first push's record), and a new item.
    (
        "device:tab-a",
        "k-a2",
        [
            t("t1", "oi-1", "assigned", "in_progress", 0, "tab-a"),
            t("t4", "oi-2", "assigned", "in_progress", 2, "tab-a"),
        ],
    ),
    # A gap (rejected), an unknown item (rejected), a sibling of t4 that wins LWW.
    (
        "device:tab-b",
        "k-b1",
        [
            t("t5", "oi-3", "in_progress", "contacted", 3, "tab-b"),
            t("t6", "oi-9", "assigned", "in_progress", 3, "tab-b"),
            t("t7", "oi-2", "assigned", "in_progress", 4, "tab-b"),
        ],
    ),
]


async def _store(path: Path) -> EdgeDatabase:
    db = await EdgeDatabase(path).open()
    changes = [
        {
            "aggregate": "outreach_item",
            "op": "upsert",
            "data": {"id": item, "facilityId": "f-001", "state": "assigned", "version": 1},
        }
        for item in ITEMS
    ]
    async with db.write() as conn:
        await apply_changes(conn, changes, datetime(2026, 11, 25, 11, tzinfo=UTC))
    return db


async def _tables(db: EdgeDatabase) -> dict[str, list[tuple[Any, ...]]]:
    async with db.read() as conn:
        return {
            "transitions": [
                tuple(r)
                for r in await fetch_all(
                    conn,
                    "SELECT seq, transition_id, item_id, local_disposition, local_code, forward "
                    "FROM transitions ORDER BY seq",
                )
            ],
            "items": [
                tuple(r)
                for r in await fetch_all(
                    conn,
                    "SELECT id, state, local_seq, last_transition_id FROM items ORDER BY id",
                )
            ],
            "keys": [
                tuple(r)
                for r in await fetch_all(
                    conn, "SELECT principal, key, status_code FROM idempotency_keys ORDER BY key"
                )
            ],
        }


async def test_a_group_answers_and_stores_as_pushes_one_at_a_time(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 11, 25, 11, tzinfo=UTC))
    # One at a time: a transaction per push, as before group commit.
    alone = await _store(tmp_path / "alone.db")
    expected = []
    for _principal, _key, transitions in PUSHES:
        async with alone.write() as conn:
            expected.append(await ingest_transitions(conn, transitions, clock()))
    # Together: all four queue behind a held write lock, then go in one transaction.
    grouped = await _store(tmp_path / "grouped.db")
    intake = OutreachIntake(grouped, clock, set(), max_items=5000)
    async with grouped.write():
        pending = [
            asyncio.create_task(intake.submit(p, k, f"fp-{n}", ts))
            for n, (p, k, ts) in enumerate(PUSHES)
        ]
        await asyncio.sleep(0.01)
        # All four taken as one group, which waits for the lock; none answered yet.
        assert not intake._queue and not any(task.done() for task in pending)
    answers = [await task for task in pending]
    try:
        assert [a.document["results"] for a in answers] == expected
        assert all(a.status == 200 and a.stored is None for a in answers)
        got, want = await _tables(grouped), await _tables(alone)
        assert got["transitions"] == want["transitions"]
        assert got["items"] == want["items"]
        assert got["keys"] == [
            ("device:tab-a", "k-a1", 200),
            ("device:tab-a", "k-a2", 200),
            ("device:tab-b", "k-b1", 200),
        ]
    finally:
        await alone.close()
        await grouped.close()


async def test_keys_in_flight_refused_stored_replayed_and_kept_through_a_cancel(
    tmp_path: Path,
) -> None:
    clock = FakeClock(datetime(2026, 11, 25, 11, tzinfo=UTC))
    db = await _store(tmp_path / "edge.db")
    in_flight: set[tuple[str, str]] = set()
    intake = OutreachIntake(db, clock, in_flight, max_items=5000)
    principal, key, transitions = PUSHES[0]
    assert key is not None
    try:
        async with db.write():
            first = asyncio.create_task(intake.submit(principal, key, "fp", transitions))
            await asyncio.sleep(0.01)
            with pytest.raises(IdempotencyInFlight):
                await intake.submit(principal, key, "fp", transitions)
            # The first request goes away (client gone): its push is still
            # written, and its key stays in flight until then.
            first.cancel()
            await asyncio.sleep(0.01)
            assert (principal, key) in in_flight
        for _ in range(100):
            if not in_flight:
                break
            await asyncio.sleep(0.01)
        assert not in_flight
        again = await intake.submit(principal, key, "fp", transitions)
        assert again.stored is not None and again.stored["fingerprint"] == "fp"
        results = msgpack.unpackb(again.stored["reply"], raw=False)["results"]
        assert [r["status"] for r in results] == ["applied", "applied"]
        async with db.read() as conn:
            rows = await fetch_all(conn, "SELECT count(*) FROM transitions")
        assert rows[0][0] == 2  # written once
    finally:
        await db.close()


async def test_a_group_is_bounded_by_max_items(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 11, 25, 11, tzinfo=UTC))
    db = await _store(tmp_path / "edge.db")
    intake = OutreachIntake(db, clock, set(), max_items=2)
    try:
        async with db.write():
            pending = [asyncio.create_task(intake.submit(p, k, "fp", ts)) for p, k, ts in PUSHES]
            await asyncio.sleep(0.01)
            # Taken: the first push (2 transitions); the rest wait for later groups.
            assert len(intake._queue) == len(PUSHES) - 1
        await asyncio.gather(*pending)
        async with db.read() as conn:
            rows = await fetch_all(conn, "SELECT count(*) FROM transitions")
        assert rows[0][0] == sum(len(ts) for _, _, ts in PUSHES)
    finally:
        await db.close()

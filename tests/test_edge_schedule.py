"""Catch-up of missed report periods, and the edge's idempotency-key purge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgenode.scheduler import due_periods
from edgenode.service import purge_idempotency_keys
from edgenode.settings import EdgeSettings
from edgenode.store.database import EdgeDatabase, fetch_one
from shared.periods import zone

UTC_ZONE = zone("UTC")
THURSDAY = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("since", "catch_up", "expected"),
    [
        # No start known: only the latest day and week (the old behaviour).
        (None, 7, ["2026-11-25", "2026-W47"]),
        # Started Monday: Monday..Wednesday are due, and last week as the latest
        # week (tablets may bring records gathered before the node existed);
        # no day before Monday is made up.
        (
            datetime(2026, 11, 23, 8, tzinfo=UTC),
            7,
            ["2026-11-23", "2026-11-24", "2026-11-25", "2026-W47"],
        ),
        # Started long ago and off for a while: at most 3 of each type.
        (
            datetime(2026, 1, 1, tzinfo=UTC),
            3,
            ["2026-11-23", "2026-11-24", "2026-11-25", "2026-W45", "2026-W46", "2026-W47"],
        ),
        # Started during W47: that week counts (partial, but this node's own).
        (datetime(2026, 11, 20, tzinfo=UTC), 2, ["2026-11-24", "2026-11-25", "2026-W47"]),
    ],
)
def test_catch_up(since: datetime | None, catch_up: int, expected: list[str]) -> None:
    due = due_periods(THURSDAY, UTC_ZONE, 15, 0, since, catch_up)
    assert [p.key for p in due] == expected


def test_nothing_due_before_midnight_grace_on_a_dst_day() -> None:
    # Europe/Berlin falls back at 03:00 on 2026-10-25; 00:10 local is 22:10 UTC the day before.
    berlin = zone("Europe/Berlin")
    just_after_midnight = datetime(2026, 10, 24, 22, 10, tzinfo=UTC)
    assert due_periods(just_after_midnight, berlin, 15, 0) == []
    assert [
        p.key for p in due_periods(just_after_midnight + timedelta(minutes=5), berlin, 15, 0)
    ] == ["2026-10-24", "2026-W42"]


async def test_idempotency_answers_expire(tmp_path: Path) -> None:
    db = await EdgeDatabase(tmp_path / "edge.db").open()
    try:
        now = datetime(2026, 11, 25, 12, tzinfo=UTC)
        async with db.write() as conn:
            for key, created in (
                ("old", "2026-11-24T11:59:59.000Z"),
                ("new", "2026-11-24T12:00:01.000Z"),
            ):
                await conn.execute(
                    "INSERT INTO idempotency_keys VALUES ('device:tab-a', ?, 'f', 200, x'80', ?)",
                    (key, created),
                )
        purged = await purge_idempotency_keys(db, EdgeSettings(), lambda: now)
        assert purged == 1  # only the answer older than 24 h
        async with db.read() as conn:
            row = await fetch_one(conn, "SELECT key FROM idempotency_keys")
        assert row is not None and row[0] == "new"
    finally:
        await db.close()

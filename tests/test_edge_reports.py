"""Facility reports made by the edge node (CONTRACT section 6), end to end.

Encounters of ``vectors/facility_report_metrics.json`` reach the edge through
the tablet API; the edge's report path (``edgenode.reports.generate_report``,
what ``edgenode report`` runs) must give exactly the vector's metrics for
every listed period, the gateway must hold the same numbers after a sync, and
a signed report is never regenerated. The report schedule is a pure function
(``edgenode.scheduler.due_periods``), tested as a table.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_harness import EdgeSystem, Tablet, edge_system
from edgenode.scheduler import due_periods
from edgenode.service import generate_due_reports
from shared.periods import zone
from shared.signing import verify_signature
from vectors import load_vector

VECTOR = load_vector("facility_report_metrics.json")
FACILITY = VECTOR["facilityId"]
EXPECTED = {e["periodKey"]: e for e in VECTOR["expected"]}
SYNCED = "population_health.facility_report.synced.v1"
# Monday 2026-11-30, 06:00 in Nairobi: every period of the vector has ended.
AFTER = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


async def push_vector(system: EdgeSystem, tablet: Tablet) -> None:
    """The vector's encounters, half as JSON and half as msgpack."""
    encounters = VECTOR["encounters"]
    half = len(encounters) // 2
    results = await system.push_encounters(tablet, encounters[:half])
    results += await system.push_encounters(tablet, encounters[half:], fmt="msgpack")
    assert [r["status"] for r in results] == ["applied"] * len(encounters)


async def test_vector_metrics_at_the_edge_and_the_gateway(tmp_path: Path) -> None:
    async with edge_system(
        tmp_path, facilities=(FACILITY,), time_zone=VECTOR["timeZone"], start=AFTER
    ) as system:
        tablet = await system.pair_tablet("tab-a")
        await push_vector(system, tablet)
        payloads: dict[str, bytes] = {}
        for key, expected in EXPECTED.items():
            stored = await system.generate_report(FACILITY, key)
            assert stored.created
            report = json.loads(stored.payload)
            assert report == {
                "schema": "phs.facility_report.v1",
                "tenantId": "t1",
                "facilityId": FACILITY,
                "deviceId": "edge-01",
                "periodType": expected["periodType"],
                "periodKey": key,
                "generatedAt": "2026-11-30T03:00:00.000Z",
                "metrics": expected["metrics"],
            }
            payloads[key] = stored.payload
        async with system.edge_db.read() as conn:
            cursor = await conn.execute("SELECT period_key, payload, signature FROM reports")
            for key, payload, signature in await cursor.fetchall():
                assert bytes(payload) == payloads[key]
                verify_signature(system.node_key.public_key, bytes(payload), bytes(signature))

        forwarded, _ = await system.sync()
        assert forwarded.error is None and forwarded.statuses == {"applied": len(EXPECTED)}
        at_gateway = {r["periodKey"]: r for r in await system.gateway_reports(facilityId=FACILITY)}
        assert set(at_gateway) == set(EXPECTED)
        for key, expected in EXPECTED.items():
            row = at_gateway[key]
            assert (row["periodType"], row["deviceId"]) == (expected["periodType"], "edge-01")
            assert row["metrics"] == expected["metrics"]
        events = [e for e in await system.gateway_events() if e["type"] == SYNCED]
        assert sorted(e["data"]["periodKey"] for e in events) == sorted(EXPECTED)
        async with system.edge_db.read() as conn:
            cursor = await conn.execute(
                "SELECT period_key, gateway_status, gateway_report_id FROM reports"
            )
            answered = {r[0]: (r[1], r[2]) for r in await cursor.fetchall()}
        assert answered == {k: ("applied", at_gateway[k]["reportId"]) for k in EXPECTED}


async def test_a_report_is_never_regenerated(tmp_path: Path) -> None:
    async with edge_system(
        tmp_path, facilities=(FACILITY,), time_zone=VECTOR["timeZone"], start=AFTER
    ) as system:
        tablet = await system.pair_tablet("tab-a")
        await push_vector(system, tablet)
        first = await system.generate_report(FACILITY, "2026-W47")
        await system.sync()
        # A late encounter of that week arrives, and the clock moves on.
        late = {**VECTOR["encounters"][0], "id": "late-1", "occurredAt": "2026-11-18T09:00:00.000Z"}
        assert (await system.push_encounters(tablet, [late]))[0]["status"] == "applied"
        system.advance(86_400)
        before = await system.edge_snapshot()
        again = await system.generate_report(FACILITY, "2026-W47")
        assert not again.created and again.payload == first.payload
        assert await system.edge_snapshot() == before  # nothing stored, nothing queued
        forwarded, _ = await system.sync()
        assert forwarded.items_sent == 0
        [row] = await system.gateway_reports(facilityId=FACILITY)
        assert row["metrics"] == EXPECTED["2026-W47"]["metrics"]


async def test_scheduled_reports_are_made_once(tmp_path: Path) -> None:
    """The service's schedule step at Monday 00:20 in Nairobi makes the daily
    report of Sunday and the weekly one of the week just ended, once."""
    monday = datetime(2026, 11, 29, 21, 20, tzinfo=UTC)  # 2026-11-30 00:20 EAT
    async with edge_system(
        tmp_path, facilities=(FACILITY, "f-002"), time_zone=VECTOR["timeZone"], start=monday
    ) as system:
        tablet = await system.pair_tablet("tab-a")
        await push_vector(system, tablet)
        made = await generate_due_reports(
            system.edge_db, system.edge_settings, system.node_key, system.edge_clock
        )
        assert made == 4  # two periods for each of two facilities
        again = await generate_due_reports(
            system.edge_db, system.edge_settings, system.node_key, system.edge_clock
        )
        assert again == 0
        async with system.edge_db.read() as conn:
            cursor = await conn.execute("SELECT facility_id, period_key, payload FROM reports")
            rows = {(r[0], r[1]): json.loads(r[2]) for r in await cursor.fetchall()}
        assert set(rows) == {
            (f, k) for f in (FACILITY, "f-002") for k in ("2026-11-29", "2026-W48")
        }
        assert rows[(FACILITY, "2026-W48")]["metrics"] == EXPECTED["2026-W48"]["metrics"]
        assert rows[("f-002", "2026-W48")]["metrics"]["encounterCount"] == 0


# (now in UTC, zone, daily_after_minutes, weekly_weekday) -> due period keys.
SCHEDULE: list[tuple[str, str, int, int, list[str], str]] = [
    # Nairobi is UTC+3: Monday 2026-11-23 begins at 2026-11-22T21:00Z.
    ("2026-11-22T21:14:59Z", "Africa/Nairobi", 15, 0, [], "Monday 00:14:59: not yet"),
    (
        "2026-11-22T21:15:00Z",
        "Africa/Nairobi",
        15,
        0,
        ["2026-11-22", "2026-W47"],
        "Monday 00:15: Sunday and the week just ended",
    ),
    (
        "2026-11-22T21:15:00Z",
        "UTC",
        15,
        0,
        ["2026-11-21", "2026-W46"],
        "the same instant is Sunday evening in UTC",
    ),
    (
        "2026-11-24T07:00:00Z",
        "Africa/Nairobi",
        15,
        0,
        ["2026-11-23", "2026-W47"],
        "Tuesday: Monday's report; last week's again (made once, so a catch-up)",
    ),
    # Los Angeles is UTC-8 in November: Monday begins at 08:00Z.
    ("2026-11-23T08:10:00Z", "America/Los_Angeles", 15, 0, [], "Monday 00:10 in LA"),
    (
        "2026-11-23T08:20:00Z",
        "America/Los_Angeles",
        15,
        0,
        ["2026-11-22", "2026-W47"],
        "Monday 00:20 in LA",
    ),
    # A weekly report from Wednesday on.
    (
        "2026-11-23T09:00:00Z",
        "UTC",
        15,
        2,
        ["2026-11-22"],
        "Monday: no weekly report before Wednesday",
    ),
    (
        "2026-11-25T09:00:00Z",
        "UTC",
        15,
        2,
        ["2026-11-24", "2026-W47"],
        "Wednesday: the weekly report is due",
    ),
    ("2026-11-23T00:00:00Z", "UTC", 0, 0, ["2026-11-22", "2026-W47"], "no grace: midnight"),
    # ISO week-years: 2026 has 53 ISO weeks, and week 1 of 2027 starts on 2027-01-04.
    (
        "2027-01-04T00:30:00Z",
        "UTC",
        15,
        0,
        ["2027-01-03", "2026-W53"],
        "the first Monday of ISO 2027",
    ),
    (
        "2027-01-01T12:00:00Z",
        "UTC",
        15,
        0,
        ["2026-12-31", "2026-W52"],
        "New Year's Day is in 2026-W53; the previous week is W52",
    ),
]


@pytest.mark.parametrize(
    ("now", "tz", "after", "weekday", "due", "why"), SCHEDULE, ids=[s[-1] for s in SCHEDULE]
)
def test_due_periods(now: str, tz: str, after: int, weekday: int, due: list[str], why: str) -> None:
    moment = datetime.fromisoformat(now)
    assert [p.key for p in due_periods(moment, zone(tz), after, weekday)] == due


def test_due_periods_types() -> None:
    got = due_periods(datetime(2026, 11, 23, 9, tzinfo=UTC), zone("UTC"), 15, 0)
    assert [(p.type.value, p.key) for p in got] == [
        ("daily", "2026-11-22"),
        ("weekly", "2026-W47"),
    ]

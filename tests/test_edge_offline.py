"""Store and forward: the edge keeps every record through a WAN outage.

A real gateway and edge node on loopback (``edge_harness``), driven one
forward cycle at a time with injected clocks and a seeded random source:

- the gateway is down for 30 forward cycles while tablets push 300
  transitions over 100 items and the edge makes reports; every cycle records
  one retry with jittered exponential backoff; when the gateway is back,
  everything arrives exactly once and in each item's push order, and the
  outbox drains;
- a record the gateway refuses for good, at the head of the outbox, becomes a
  visible problem and does not hold back the 2,000 records behind it, whether
  it is refused per item or takes its whole batch with it;
- an edge clock 10 minutes off syncs after one corrected retry.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from canaries import patient_ref
from edge_harness import EdgeSystem, Tablet, edge_system
from edgenode.store.database import fetch_all, fetch_one
from gateway.db.schema import outreach_transitions as log
from shared.values import format_timestamp, parse_timestamp

ITEMS = [f"oi-{n:03d}" for n in range(100)]
PATH = ("assigned", "in_progress", "contacted", "completed")
CYCLES = 30
PER_CYCLE = 10
SEED = 1234


def plan_pushes(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """300 transitions (id, item, from, to): each item's three moves in order,
    items interleaved at random."""
    steps = {item: 0 for item in ITEMS}
    plan: list[tuple[str, str, str, str]] = []
    while steps:
        item = rng.choice(sorted(steps))
        n = steps[item]
        plan.append((f"{item}-t{n}", item, PATH[n], PATH[n + 1]))
        if n + 1 == len(PATH) - 1:
            del steps[item]
        else:
            steps[item] = n + 1
    return plan


def encounter(eid: str, at: str, kind: str = "visit") -> dict[str, Any]:
    return {
        "id": eid,
        "patientRef": patient_ref(eid),
        "facilityId": "f-001",
        "occurredAt": at,
        "kind": kind,
        "screeningDue": kind == "screening",
        "immunizationDue": False,
    }


async def open_batch(system: EdgeSystem) -> dict[str, Any]:
    async with system.edge_db.read() as conn:
        row = await fetch_one(
            conn,
            "SELECT batch_id, attempts, next_attempt_at, last_error FROM outbox_batches "
            "WHERE stage = 'pending' ORDER BY seq",
        )
    assert row is not None
    return dict(row)


async def test_outage_then_recovery(tmp_path: Path) -> None:
    async with edge_system(tmp_path) as system:
        await system.create_items(ITEMS, "assigned", bulk=True)
        assert (await system.pull()).changes == len(ITEMS)
        tablets = [await system.pair_tablet("tab-a"), await system.pair_tablet("tab-b")]
        plan = plan_pushes(random.Random(SEED))
        assert len(plan) == CYCLES * PER_CYCLE
        pushed_by_item: dict[str, list[str]] = {item: [] for item in ITEMS}
        twin = random.Random(0)  # the harness forwarder's seed: predicts every delay
        settings = system.edge_settings
        first_push = format_timestamp(system.edge_clock())
        status_before = await system.edge_status()
        await system.stop_gateway()

        last_due = None
        for cycle in range(CYCLES):
            chunk = plan[cycle * PER_CYCLE : (cycle + 1) * PER_CYCLE]
            tablet = tablets[cycle % 2]
            results = await system.push_transitions(
                tablet,
                [tablet.transition(tid, item, frm, to) for tid, item, frm, to in chunk],
                fmt="msgpack" if cycle % 2 else "json",
            )
            assert [r["status"] for r in results] == ["applied"] * PER_CYCLE
            for tid, item, _, _ in chunk:
                pushed_by_item[item].append(tid)
            if cycle == 10:
                enc = [encounter("e-1", "2026-11-24T08:00:00.000Z", "screening")]
                await system.push_encounters(tablet, enc)
                assert (await system.generate_report("f-001", "2026-11-24")).created
            if cycle == 20:
                assert (await system.generate_report("f-001", "2026-W47")).created
                pulled = await system.pull()  # the puller fails alike, and keeps its cursor
                assert pulled.unreachable and pulled.cursor == status_before["changesCursor"]

            summary = await system.forward()
            batch = await open_batch(system)
            assert summary.error is not None and "Cannot connect" in summary.error
            assert batch["attempts"] == cycle + 1  # one retry recorded per cycle
            due = parse_timestamp(batch["next_attempt_at"], "due")
            assert summary.waiting_until == batch["next_attempt_at"]
            # Full jitter below a doubling cap: exactly the seeded draw, in bounds.
            cap = min(settings.retry_max_seconds, settings.retry_base_seconds * 2**cycle)
            delay = (due - system.edge_clock()).total_seconds()
            assert 0.2 <= delay <= cap
            assert delay == pytest.approx(max(0.2, twin.uniform(0, cap)), abs=0.001)
            assert last_due is None or due > last_due
            last_due = due

            # Before the retry is due, a cycle waits without trying.
            early = await system.forward()
            assert early.error is None and early.waiting_until == batch["next_attempt_at"]
            assert (await open_batch(system))["attempts"] == cycle + 1
            system.advance(delay + 1)

            status = await system.edge_status()
            assert status["unsentTransitions"] == (cycle + 1) * PER_CYCLE
            assert status["openBatches"] == 1 and "Cannot connect" in status["lastError"]
            assert status["oldestUnsentAt"] == first_push
            assert status["lastForwardOk"] is None
            assert status["lastPullOk"] == status_before["lastPullOk"]

        status = await system.edge_status()
        assert status["outboxDepth"] == CYCLES * PER_CYCLE + 2  # and two reports
        assert (
            status["oldestUnsentAgeSeconds"]
            == (system.edge_clock() - parse_timestamp(first_push, "t")).total_seconds()
        )

        await system.start_gateway()
        summary = await system.forward()
        assert summary.error is None, summary
        assert summary.items_sent == CYCLES * PER_CYCLE + 2
        assert summary.statuses == {"applied": CYCLES * PER_CYCLE + 2}
        assert (await system.pull()).error is None

        # Exactly once, in each item's push order, all applied.
        counts = await system.gateway.table_counts()
        assert counts["outreach_transitions"] == CYCLES * PER_CYCLE
        for item in ITEMS:
            doc = await system.gateway_item(item)
            assert [h["id"] for h in doc["history"]] == pushed_by_item[item]
            assert {h["disposition"] for h in doc["history"]} == {"applied"}
            assert doc["state"] == "completed"
        views = [await system.tablet_view(t) for t in tablets]
        for view in views:
            assert {i: v["state"] for i, v in view.items()} == dict.fromkeys(ITEMS, "completed")
        reports = await system.gateway_reports(facilityId="f-001")
        assert sorted(r["periodKey"] for r in reports) == ["2026-11-24", "2026-W47"]
        synced = [e for e in await system.gateway_events() if "facility_report" in e["type"]]
        assert len(synced) == 2

        status = await system.edge_status()
        assert status["outboxDepth"] == 0 and status["openBatches"] == 0
        assert status["oldestUnsentAt"] is None and status["lastError"] is None
        assert status["lastForwardOk"] == format_timestamp(system.edge_clock())
        assert status["gatewayDispositions"] == {"applied": CYCLES * PER_CYCLE}
        assert status["problems"] == 0 and await system.edge_problems() == []
        metrics = await (await system.edge.get("/metrics")).text()
        assert "phs_edge_outbox_depth 0.0\n" in metrics and "phs_edge_problems 0.0\n" in metrics


VALID = 2000
# From pending, an item takes four moves: the first by an edge supervisor.
FULL_PATH = ("pending", "assigned", "in_progress", "contacted", "completed")


async def push_valid_behind(system: EdgeSystem, tablet: Tablet, count: int = VALID) -> list[str]:
    """``count`` valid transitions, four per item, in rounds over all items."""
    items = [f"bulk-{n:04d}" for n in range(count // 4)]
    await system.create_items(items, "pending", bulk=True)
    await system.pull()
    ids: list[str] = []
    for frm, to in itertools.pairwise(FULL_PATH):
        extra = {"role": "supervisor"} if to == "assigned" else {}
        batch = [tablet.transition(f"{i}-{to}", i, frm, to, **extra) for i in items]
        results = await system.push_transitions(tablet, batch, fmt="msgpack")
        assert {r["status"] for r in results} == {"applied"}
        ids += [t["id"] for t in batch]
    return ids


async def assert_all_arrived(system: EdgeSystem, ids: list[str]) -> None:
    async with system.gateway.database.read() as conn:
        rows = (
            await conn.execute(
                sa.select(log.c.transition_id, log.c.disposition).order_by(log.c.seq)
            )
        ).all()
    applied = [tid for tid, disposition in rows if disposition == "applied"]
    assert applied == ids  # every one, once, in push order


async def test_item_rejected_at_head_does_not_hold_back(tmp_path: Path) -> None:
    async with edge_system(tmp_path) as system:
        await system.create_items(["head"], "assigned")
        tablet = await system.pair_tablet("tab-a")
        await system.pull()
        bad = tablet.transition("bad-1", "head", "assigned", "completed")
        [local] = await system.push_transitions(tablet, [bad])
        assert (local["status"], local["code"]) == ("rejected", "fsm_invalid_transition")
        ids = await push_valid_behind(system, tablet)

        forwarded = await system.forward()
        assert forwarded.error is None and forwarded.refused_batches == 0
        assert forwarded.statuses == {"rejected": 1, "applied": VALID}
        await assert_all_arrived(system, ids)
        [problem] = await system.edge_problems()
        assert (problem["kind"], problem["id"], problem["subject"], problem["code"]) == (
            "outreach.transition",
            "bad-1",
            "head",
            "fsm_invalid_transition",
        )
        assert problem["state"] == "assigned"
        status = await system.edge_status()
        assert status["outboxDepth"] == 0 and status["problems"] == 1


async def test_batch_refused_at_head_does_not_hold_back(tmp_path: Path) -> None:
    """A record the gateway's structural check refuses takes its whole batch
    with it (422); the edge isolates that record as a problem and delivers
    every record that shared its batch or queued behind it."""
    async with edge_system(tmp_path) as system:
        await system.create_items(["head"], "assigned")
        tablet = await system.pair_tablet("tab-a")
        await system.pull()
        # A record an older release accepted: an actor id with a space.
        async with system.edge_db.write() as conn:
            await conn.execute(
                "INSERT INTO transitions (transition_id, item_id, from_state, to_state, "
                "occurred_at, device_id, actor_id, role, received_at, local_disposition, "
                "forward) VALUES ('legacy-1', 'head', 'assigned', 'in_progress', "
                "'2026-11-25T11:00:00.000Z', 'tab-a', 'chw 7', 'worker', "
                "'2026-11-25T11:00:00.000Z', 'applied', 1)"
            )
        ids = await push_valid_behind(system, tablet)

        forwarded = await system.forward()
        # Halved until the legacy record is alone (500, 250, 125, 62, 31, 15, 7
        # and 3 split), then refused on its own.
        assert (forwarded.error, forwarded.split_batches, forwarded.refused_batches) == (
            None,
            8,
            1,
        )
        assert forwarded.statuses == {"applied": VALID}
        await assert_all_arrived(system, ids)
        [problem] = await system.edge_problems()
        assert (problem["id"], problem["code"]) == ("legacy-1", "validation_failed")
        status = await system.edge_status()
        assert status["outboxDepth"] == 0 and status["problems"] == 1
        assert status["gatewayDispositions"] == {"applied": VALID, "rejected": 1}


async def test_gateway_limits_below_the_edge_batches(tmp_path: Path) -> None:
    """A gateway that takes at most 100 items per batch (413) still receives
    every record of an edge configured for 500; none becomes a problem."""
    async with edge_system(tmp_path, gateway_overrides={"max_batch_items": 100}) as system:
        tablet = await system.pair_tablet("tab-a")
        ids = await push_valid_behind(system, tablet, 300)
        forwarded = await system.forward()
        # 300 records: 300 and 150 refused (413), then four batches of 75.
        assert (forwarded.error, forwarded.split_batches, forwarded.batches_sent) == (None, 2, 4)
        await assert_all_arrived(system, ids)
        assert await system.edge_problems() == []
        status = await system.edge_status()
        assert status["outboxDepth"] == 0 and status["problems"] == 0


@pytest.mark.parametrize("skew", [600, -600], ids=["ahead", "behind"])
async def test_clock_skew_corrected_in_one_retry(tmp_path: Path, skew: int) -> None:
    async with edge_system(tmp_path) as system:
        system.edge_clock.advance(skew)  # the edge's clock is 10 minutes off
        await system.create_items(["oi-1"], "assigned")
        tablet = await system.pair_tablet("tab-a")
        pulled = await system.puller(system.gateway_client()).pull_once()
        assert pulled.error is None and pulled.changes == 1  # corrected, on its own client
        t = tablet.transition("t-1", "oi-1", "assigned", "in_progress")
        await system.push_transitions(tablet, [t])
        client = system.default_client  # the forwarder's: it has not met the gateway yet
        assert client.clock_offset == 0
        forwarded = await system.forward()
        assert forwarded.error is None and forwarded.statuses == {"applied": 1}
        assert client.clock_offset == pytest.approx(-skew, abs=1)
        assert (await system.pull()).error is None  # later requests are signed right
        async with system.edge_db.read() as conn:
            batches = await fetch_all(conn, "SELECT attempts, stage FROM outbox_batches")
        assert [tuple(b) for b in batches] == [(0, "done")]  # no retry was scheduled
        item = await system.gateway_item("oi-1")
        assert [h["id"] for h in item["history"]] == ["t-1"]

"""Every case of ``vectors/outreach_fsm.json`` end to end: tablets → edge → gateway.

Both services are real aiohttp servers on loopback (``edge_harness``). Worker
steps are pushed by the paired tablet named in the step (``tab-a``/``tab-b``,
each signing with its own key) to the edge node; ``writer: server`` steps go
to the gateway's server-transition endpoint and reach the edge through its
change-feed pull. Two schedules:

- *synced*: a forward + pull cycle after every step, so the edge's local
  answer to each tablet is the vector's answer;
- *offline*: the edge forwards only after the last step, so its local
  answers may differ, but the gateway's answer is final.

Either way, after a last forward + pull every tablet's view of the item
equals the gateway's item, and the gateway's history lists every distinct
transition exactly once, with the vector's disposition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_harness import EdgeSystem, Tablet, edge_system
from vectors import load_vector

CASES = load_vector("outreach_fsm.json")["cases"]
ITEM = "item-1"
SHARED_FIELDS = ("id", "facilityId", "state", "assigneeId", "patientRef", "cohortId", "dueDate")


def expected_history(case: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(id, disposition, code) per distinct transition, in arrival order.

    A repeated id never reaches the gateway (the edge answers it as a local
    duplicate), so each id appears once. An applied step later beaten by a
    newer sibling (rule 5) reads ``superseded``.
    """
    rows: list[list[Any]] = []
    state = case["initial"]
    last_applied: int | None = None
    for step in case["steps"]:
        expect = step["expect"]
        if expect["status"] == "duplicate":
            continue
        rows.append([step["id"], expect["status"], expect.get("code")])
        if expect["status"] == "applied":
            if step["from"] != state:  # applied though not from the current state: LWW
                assert last_applied is not None
                rows[last_applied][1] = "superseded"
            last_applied = len(rows) - 1
            state = expect["state"]
    return [(r[0], r[1], r[2]) for r in rows]


async def run_case(system: EdgeSystem, case: dict[str, Any], synced: bool) -> None:
    await system.create_items([ITEM], case["initial"], assigneeId="chw-1")  # a canary patientRef
    _, pulled = await system.sync()
    assert pulled.error is None and pulled.changes == 1
    tablets = {d: await system.pair_tablet(d) for d in ("tab-a", "tab-b")}
    for step in case["steps"]:
        expect = step["expect"]
        want = (step["id"], expect["status"], expect.get("code"), expect["state"])
        if step["writer"] == "server":
            result = await system.server_transition(
                ITEM, step["id"], step["from"], step["to"], step["occurredAt"]
            )
            # Server steps precede every worker step in the vectors, so the
            # gateway sees them in the vector's order in both schedules.
            assert (result["id"], result["status"], result.get("code"), result["state"]) == want
        else:
            tablet = tablets[step["deviceId"]]
            t = tablet.transition(step["id"], ITEM, step["from"], step["to"], step["occurredAt"])
            [local] = await system.push_transitions(tablet, [t])
            got = (local["id"], local["status"], local.get("code"), local["state"])
            if synced:  # an up-to-date projection answers exactly as the gateway
                assert got == want
        if synced:
            forwarded, pulled = await system.sync()
            assert forwarded.error is None and pulled.error is None
    forwarded, pulled = await system.sync()
    assert forwarded.error is None and pulled.error is None
    await assert_converged(system, case, list(tablets.values()))


async def assert_converged(system: EdgeSystem, case: dict[str, Any], tablets: list[Tablet]) -> None:
    item = await system.gateway_item(ITEM)
    assert item["state"] == case["steps"][-1]["expect"]["state"]
    history = [(h["id"], h["disposition"], h["code"]) for h in item["history"]]
    assert history == expected_history(case)
    for row in item["history"]:  # recorded as sent, from the device that sent it
        [step] = [s for s in case["steps"] if s["id"] == row["id"]][:1]
        assert (row["from"], row["to"], row["occurredAt"], row["deviceId"]) == (
            step["from"],
            step["to"],
            step["occurredAt"],
            step["deviceId"],
        )
    for tablet in tablets:  # every tablet reads the gateway's item
        view = (await system.tablet_view(tablet))[ITEM]
        assert {k: view[k] for k in SHARED_FIELDS} == {k: item[k] for k in SHARED_FIELDS}
        assert view["version"] == item["version"]
    status = await system.edge_status()
    assert status["outboxDepth"] == 0 and status["openBatches"] == 0
    # The edge logged the gateway's own answer for every transition it forwarded.
    async with system.edge_db.read() as conn:
        cursor = await conn.execute(
            "SELECT transition_id, gateway_status, gateway_code FROM transitions "
            "WHERE forward = 1 ORDER BY seq"
        )
        logged = [tuple(r) for r in await cursor.fetchall()]
    worker = [s for s in case["steps"] if s["writer"] == "worker"]
    assert logged == [
        (s["id"], s["expect"]["status"], s["expect"].get("code"))
        for s in worker
        if s["expect"]["status"] != "duplicate"
    ]


@pytest.mark.parametrize("synced", [True, False], ids=["synced", "offline"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_vector_case_end_to_end(tmp_path: Path, case: dict[str, Any], synced: bool) -> None:
    async with edge_system(tmp_path) as system:
        await run_case(system, case, synced)


async def test_msgpack_tablet_and_final_answer_overrides_local(tmp_path: Path) -> None:
    """A tablet speaking msgpack, offline from the server's move: the edge
    applies its transition locally, the gateway answers noop, and the
    gateway's state replaces the local one on the tablet."""
    async with edge_system(tmp_path) as system:
        await system.create_items([ITEM], "in_progress")
        await system.pull()
        tablet = await system.pair_tablet("tab-a")
        await system.server_transition(ITEM, "cancel-1", "in_progress", "cancelled")
        t = tablet.transition("w-1", ITEM, "in_progress", "unreachable")
        [local] = await system.push_transitions(tablet, [t], fmt="msgpack")
        assert (local["status"], local["state"]) == ("applied", "unreachable")  # local view
        forwarded, _ = await system.sync()
        assert forwarded.statuses == {"noop": 1}
        view = await system.tablet_view(tablet)
        assert view[ITEM]["state"] == "cancelled"
        item = await system.gateway_item(ITEM)
        assert [(h["id"], h["disposition"], h["code"]) for h in item["history"]] == [
            ("cancel-1", "applied", None),
            ("w-1", "noop", "server_advanced"),
        ]


async def test_local_answer_after_pulled_server_move(tmp_path: Path) -> None:
    """After the edge pulls a server move, its local answer to a late sibling
    is the gateway's answer: the pulled state is not paired with a stale
    ``last`` transition of the edge's own (which rule 5 would misuse)."""
    async with edge_system(tmp_path) as system:
        await system.create_items([ITEM], "in_progress")
        await system.pull()
        tab_a, tab_b = await system.pair_tablet("tab-a"), await system.pair_tablet("tab-b")
        first = tab_a.transition(
            "a-1", ITEM, "in_progress", "contacted", "2026-11-25T10:00:00.000Z"
        )
        assert (await system.push_transitions(tab_a, [first]))[0]["status"] == "applied"
        await system.sync()
        await system.server_transition(ITEM, "cancel-1", "contacted", "cancelled")
        await system.sync()
        late = tab_b.transition(
            "b-1", ITEM, "in_progress", "unreachable", "2026-11-25T10:30:00.000Z"
        )
        [local] = await system.push_transitions(tab_b, [late])
        await system.sync()
        item = await system.gateway_item(ITEM)
        [gateway] = [h for h in item["history"] if h["id"] == "b-1"]
        assert (gateway["disposition"], gateway["code"]) == ("noop", "server_advanced")
        assert (local["status"], local.get("code"), local["state"]) == (
            "noop",
            "server_advanced",
            "cancelled",
        )
        assert (await system.tablet_view(tab_b))[ITEM]["state"] == "cancelled"

"""Every case of ``vectors/outreach_fsm.json`` through a live gateway.

Each case creates its item in state ``initial`` through the admin API; each
step is then its own request: worker steps as a signed batch from an enrolled
node, ``writer: server`` steps through ``POST …/outreach-items/{id}/transitions``
with an admin token. The item's history must then list every step with its
final disposition.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness import PREFIX, Gateway, NodeIdentity, bearer, document, transition
from vectors import load_vector

CASES = load_vector("outreach_fsm.json")["cases"]
ITEM = "item-1"


async def send_step(gateway: Gateway, node: NodeIdentity, admin: str, step: dict[str, Any]) -> Any:
    """One step as its own request; the per-item result."""
    if step["writer"] == "server":
        resp = await gateway.client.post(
            f"{PREFIX}/outreach-items/{ITEM}/transitions",
            json={k: step[k] for k in ("id", "from", "to", "occurredAt")},
            headers=bearer(admin),
        )
        assert resp.status == 200, await resp.text()
        return await resp.json()
    assert step["writer"] == "worker", step
    resp = await gateway.post_batch(
        node,
        [
            transition(
                step["id"], ITEM, step["from"], step["to"], step["occurredAt"], step["deviceId"]
            )
        ],
    )
    assert resp.status == 200, await resp.text()
    [result] = (await document(resp))["results"]
    return result


def expected_history(case: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(id, disposition, code) per step: the step's own status, except that an
    applied step later beaten by a newer sibling (rule 5) reads ``superseded``."""
    rows: list[list[Any]] = []
    state = case["initial"]
    last_applied: int | None = None
    for step in case["steps"]:
        expect = step["expect"]
        rows.append([step["id"], expect["status"], expect.get("code")])
        if expect["status"] == "applied":
            if step["from"] != state:  # applied though not from the current state: LWW
                assert last_applied is not None
                rows[last_applied][1] = "superseded"
            last_applied = len(rows) - 1
            state = expect["state"]
    return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_vector_case_step_by_step(gateway: Gateway, case: dict[str, Any]) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await gateway.create_item(admin, ITEM, case["initial"])
    for step in case["steps"]:
        result = await send_step(gateway, node, admin, step)
        expect = step["expect"]
        got = (result["id"], result["status"], result.get("code"), result["state"])
        assert got == (step["id"], expect["status"], expect.get("code"), expect["state"])

    resp = await gateway.client.get(f"{PREFIX}/outreach-items/{ITEM}", headers=bearer(admin))
    assert resp.status == 200, await resp.text()
    item = await resp.json()
    assert item["state"] == case["steps"][-1]["expect"]["state"]
    history = [(h["id"], h["disposition"], h["code"]) for h in item["history"]]
    assert history == expected_history(case)
    # Every incoming transition is listed as it was sent.
    for row, step in zip(item["history"], case["steps"], strict=True):
        sent = (step["from"], step["to"], step["occurredAt"], step["deviceId"])
        assert (row["from"], row["to"], row["occurredAt"], row["deviceId"]) == sent


WORKER_ONLY = [c for c in CASES if all(s["writer"] == "worker" for s in c["steps"])]


@pytest.mark.parametrize("case", WORKER_ONLY, ids=[c["name"] for c in WORKER_ONLY])
async def test_vector_case_in_one_batch(gateway: Gateway, case: dict[str, Any]) -> None:
    """The same steps in a single batch: applied in order, same answers."""
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await gateway.create_item(admin, ITEM, case["initial"])
    items = [
        transition(s["id"], ITEM, s["from"], s["to"], s["occurredAt"], s["deviceId"])
        for s in case["steps"]
    ]
    resp = await gateway.post_batch(node, items)
    assert resp.status == 200, await resp.text()
    results = (await document(resp))["results"]
    got = [(r["status"], r.get("code"), r["state"]) for r in results]
    want = [
        (s["expect"]["status"], s["expect"].get("code"), s["expect"]["state"])
        for s in case["steps"]
    ]
    assert got == want
    resp = await gateway.client.get(f"{PREFIX}/outreach-items/{ITEM}", headers=bearer(admin))
    history = [(h["id"], h["disposition"], h["code"]) for h in (await resp.json())["history"]]
    assert history == expected_history(case)


# LWW at the precision of the wire (milliseconds, CONTRACT section 1): two
# siblings 0.3 ms apart on one device are simultaneous, so the tie goes to the
# larger transition id, whether they arrive in one batch or in two.
SUB_MS = [
    transition("z-first", ITEM, "in_progress", "contacted", "2026-11-20T10:00:00.0005Z"),
    transition("a-second", ITEM, "in_progress", "unreachable", "2026-11-20T10:00:00.0002Z"),
]


@pytest.mark.parametrize("split", [False, True], ids=["one batch", "two batches"])
async def test_lww_does_not_depend_on_batch_split(gateway: Gateway, split: bool) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await gateway.create_item(admin, ITEM, "in_progress")
    groups = [SUB_MS[:1], SUB_MS[1:]] if split else [SUB_MS]
    results = []
    for group in groups:
        resp = await gateway.post_batch(node, group)
        assert resp.status == 200, await resp.text()
        results += (await document(resp))["results"]
    assert [(r["status"], r.get("code"), r["state"]) for r in results] == [
        ("applied", None, "contacted"),  # first sighting, from the current state
        (
            "noop",
            "superseded_by_newer",
            "contacted",
        ),  # same ms, same device: "z-first" > "a-second"
    ]


async def test_future_occurred_at_is_clamped_and_flagged(gateway: Gateway) -> None:
    """More than 5 minutes ahead of the gateway's clock: recorded at its clock."""
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await gateway.create_item(admin, ITEM, "assigned")
    await gateway.create_item(admin, "item-2", "assigned")
    resp = await gateway.post_batch(
        node,
        [
            transition("t-late", ITEM, "assigned", "in_progress", "2026-11-25T12:06:00.000Z"),
            transition("t-ok", "item-2", "assigned", "in_progress", "2026-11-25T12:05:00.000Z"),
        ],
    )
    late, ok = (await document(resp))["results"]
    assert (late["status"], late.get("clockAdjusted")) == ("applied", True)  # 6 min ahead
    assert "clockAdjusted" not in ok  # exactly 5 min ahead is tolerated
    for item_id, at, adjusted in [
        (ITEM, "2026-11-25T12:00:00.000Z", True),  # the gateway's clock (START)
        ("item-2", "2026-11-25T12:05:00.000Z", False),  # as sent
    ]:
        resp = await gateway.client.get(f"{PREFIX}/outreach-items/{item_id}", headers=bearer(admin))
        [row] = (await resp.json())["history"]
        assert (row["occurredAt"], row["clockAdjusted"]) == (at, adjusted)


async def test_server_transition_defaults_to_the_gateway_clock(gateway: Gateway) -> None:
    service = await gateway.token("service")  # service tokens may move items too
    await gateway.create_item(service, ITEM, "pending")
    gateway.clock.advance(90)
    resp = await gateway.client.post(
        f"{PREFIX}/outreach-items/{ITEM}/transitions",
        json={"id": "s-1", "from": "pending", "to": "assigned"},  # no occurredAt
        headers=bearer(service),
    )
    assert (await resp.json())["state"] == "assigned"
    resp = await gateway.client.get(f"{PREFIX}/outreach-items/{ITEM}", headers=bearer(service))
    [row] = (await resp.json())["history"]
    assert row["occurredAt"] == "2026-11-25T12:01:30.000Z"  # START + 90 s
    assert (row["deviceId"], row["role"]) == ("server", "server")

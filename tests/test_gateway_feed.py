"""What flows out of the gateway: the change feed towards edge nodes
(CONTRACT section 8), the event outbox for consumers (section 9), and the
health endpoints."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from harness import (
    PREFIX,
    Gateway,
    NodeIdentity,
    assert_problem,
    bearer,
    signed_report,
    transition,
)
from shared.signing import authorization_header

CHANGES = f"{PREFIX}/sync/changes"


async def feed(gateway: Gateway, node: NodeIdentity, query: str = "") -> dict[str, Any]:
    resp = await gateway.signed(node, "GET", f"{CHANGES}{query}")
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def scoped_world(gateway: Gateway) -> tuple[str, NodeIdentity]:
    """Items in and out of edge-01's scope (tenant t1, facility f-001)."""
    admin = await gateway.token("admin")
    admin2 = await gateway.token("admin", tenant="t2")
    node = await gateway.enroll("edge-01", "t1", ("f-001",))
    await gateway.create_item(admin, "in-1", "assigned")  # t1 / f-001: in scope
    await gateway.create_item(admin, "other-fac", "assigned", facility="f-002")  # t1 / f-002
    await gateway.create_item(admin2, "other-ten", "assigned")  # t2 / f-001
    await gateway.create_item(admin, "in-2", "pending")  # t1 / f-001: in scope
    return admin, node


async def test_feed_is_scoped_to_the_nodes_tenant_and_facilities(gateway: Gateway) -> None:
    _, node = await scoped_world(gateway)
    doc = await feed(gateway, node)
    assert [(c["id"], c["data"]["state"]) for c in doc["changes"]] == [
        ("in-1", "assigned"),  # created
        ("in-2", "pending"),  # created; other-fac and other-ten are not edge-01's
    ]
    change = doc["changes"][0]
    assert (change["aggregate"], change["op"]) == ("outreach_item", "upsert")
    assert change["data"]["facilityId"] == "f-001"
    assert doc["more"] is False
    # A node enrolled for both facilities of t1 sees f-002 too, never t2.
    wide = await gateway.enroll("edge-02", "t1", ("f-001", "f-002"))
    ids = [c["id"] for c in (await feed(gateway, wide))["changes"]]
    assert ids == ["in-1", "other-fac", "in-2"]


async def test_feed_carries_transitions_and_server_changes(gateway: Gateway) -> None:
    admin, node = await scoped_world(gateway)
    cursor = (await feed(gateway, node))["cursor"]
    resp = await gateway.post_batch(node, [transition("t-1", "in-1", "assigned", "in_progress")])
    assert resp.status == 200
    resp = await gateway.client.post(
        f"{PREFIX}/outreach-items/in-2/transitions",
        json={"id": "s-1", "from": "pending", "to": "assigned"},
        headers=bearer(admin),
    )
    assert resp.status == 200
    # A rejected transition changes no item, so nothing new in the feed for it.
    await gateway.post_batch(node, [transition("t-2", "in-1", "assigned", "completed")])
    doc = await feed(gateway, node, f"?since={cursor}")
    assert [(c["id"], c["data"]["state"], c["data"]["version"]) for c in doc["changes"]] == [
        ("in-1", "in_progress", 2),  # the node's own transition comes back, authoritative
        ("in-2", "assigned", 2),  # assigned by the server
    ]


async def test_cursor_pages_without_gaps_or_repeats(gateway: Gateway) -> None:
    admin, node = await scoped_world(gateway)
    for n in range(5):
        await gateway.create_item(admin, f"bulk-{n}", "pending")
    everything = await feed(gateway, node)
    assert len(everything["changes"]) == 7 and everything["more"] is False

    seen: list[int] = []
    cursor, pages = "", 0
    while True:
        page = await feed(gateway, node, f"?since={cursor}&limit=3")
        pages += 1
        seen += [c["seq"] for c in page["changes"]]
        assert len(page["changes"]) <= 3
        cursor = page["cursor"]
        if not page["more"]:
            break
    assert seen == [c["seq"] for c in everything["changes"]]  # same order, none missed or twice
    assert pages == 3  # 3 + 3 + 1
    assert cursor == everything["cursor"]

    # Resuming at the end: empty, the cursor stays, and new changes follow it.
    idle = await feed(gateway, node, f"?since={cursor}")
    assert (idle["changes"], idle["cursor"], idle["more"]) == ([], cursor, False)
    await gateway.create_item(admin, "late", "pending")
    late = await feed(gateway, node, f"?since={cursor}")
    assert [c["id"] for c in late["changes"]] == ["late"]
    assert int(late["cursor"]) > int(cursor)


async def test_limit_exactly_the_rest_reports_no_more(gateway: Gateway) -> None:
    _, node = await scoped_world(gateway)
    doc = await feed(gateway, node, "?limit=2")
    assert len(doc["changes"]) == 2 and doc["more"] is False  # 2 in scope, limit 2


BAD_QUERIES = [
    ("?since=abc", 400, "bad_cursor"),  # not a cursor of ours
    ("?since=-1", 400, "bad_cursor"),
    ("?since=1.5", 400, "bad_cursor"),
    ("?since=" + "9" * 20, 400, "bad_cursor"),  # longer than any sequence number
    ("?since=9999999999999999999", 400, "bad_cursor"),  # 19 digits, past a 64-bit integer
    ("?since=%C2%B2", 400, "bad_cursor"),  # "²" is a digit to str.isdigit, not to int()
    ("?since=%D9%A1", 400, "bad_cursor"),  # Arabic-Indic one: not a cursor we hand out
    ("?limit=0", 422, "validation_failed"),  # 1..5000
    ("?limit=5001", 422, "validation_failed"),
    ("?limit=ten", 422, "validation_failed"),
]


@pytest.mark.parametrize(("query", "status", "code"), BAD_QUERIES)
async def test_bad_feed_queries(gateway: Gateway, query: str, status: int, code: str) -> None:
    _, node = await scoped_world(gateway)
    await assert_problem(await gateway.signed(node, "GET", CHANGES + query), status, code)


async def test_feed_needs_a_node_signature(gateway: Gateway) -> None:
    admin, node = await scoped_world(gateway)
    resp = await gateway.client.get(CHANGES, headers=bearer(admin))
    await assert_problem(resp, 401, "unauthenticated")
    # The query is signed too: a node cannot be made to skip changes.
    auth = (await _signed_headers(gateway, node, f"{CHANGES}?since=0"))["Authorization"]
    resp = await gateway.client.get(f"{CHANGES}?since=2", headers={"Authorization": auth})
    await assert_problem(resp, 401, "bad_signature")


async def _signed_headers(gateway: Gateway, node: NodeIdentity, path: str) -> dict[str, str]:
    ts = int(gateway.clock().timestamp())
    return {"Authorization": authorization_header(node.keypair, node.node_id, "GET", path, b"", ts)}


# --- events -------------------------------------------------------------------------------


async def three_events(gateway: Gateway) -> str:
    node = await gateway.enroll()
    for week in ("2026-W45", "2026-W46", "2026-W47"):
        resp = await gateway.client.post(
            f"{PREFIX}/sync/facility-reports",
            json=_as_json(signed_report(node, period_key=week)),
        )
        assert resp.status == 201, await resp.text()
    return await gateway.token("service")


def _as_json(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "deviceId": report["deviceId"],
        "payload": base64.b64encode(report["payload"]).decode(),
        "signature": base64.b64encode(report["signature"]).decode(),
    }


async def events_page(gateway: Gateway, token: str, query: str = "") -> dict[str, Any]:
    resp = await gateway.client.get(f"{PREFIX}/events{query}", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_events_page_with_after_and_limit(gateway: Gateway) -> None:
    service = await three_events(gateway)
    everything = await events_page(gateway, service)
    weeks = [e["data"]["periodKey"] for e in everything["events"]]
    assert weeks == ["2026-W45", "2026-W46", "2026-W47"]  # in commit order
    assert len({e["id"] for e in everything["events"]}) == 3  # ids for broker de-duplication

    first = await events_page(gateway, service, "?limit=2")
    assert [e["data"]["periodKey"] for e in first["events"]] == weeks[:2]
    rest = await events_page(gateway, service, f"?after={first['cursor']}&limit=2")
    assert [e["data"]["periodKey"] for e in rest["events"]] == weeks[2:]
    end = await events_page(gateway, service, f"?after={rest['cursor']}")
    assert (end["events"], end["cursor"]) == ([], rest["cursor"])  # caught up, cursor kept


async def test_events_are_per_tenant_and_role(gateway: Gateway) -> None:
    await three_events(gateway)
    other = await gateway.token("service", tenant="t2")
    assert (await events_page(gateway, other))["events"] == []  # t2 sees none of t1's
    admin = await gateway.token("admin")
    assert len((await events_page(gateway, admin))["events"]) == 3  # admins may read too
    analyst = await gateway.token("analyst")
    resp = await gateway.client.get(f"{PREFIX}/events", headers=bearer(analyst))
    await assert_problem(resp, 403, "forbidden")
    for query in ("?after=-1", "?after=x", "?limit=0", "?limit=1001"):
        resp = await gateway.client.get(f"{PREFIX}/events{query}", headers=bearer(admin))
        await assert_problem(resp, 422, "validation_failed")


# --- health ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "status"), [("/healthz", "ok"), ("/readyz", "ready")])
async def test_health(gateway: Gateway, path: str, status: str) -> None:
    resp = await gateway.client.get(path)  # no credentials needed
    assert resp.status == 200 and resp.content_type == "application/json"
    assert (await resp.json())["status"] == status

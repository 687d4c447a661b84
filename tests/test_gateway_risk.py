"""Risk scores on the gateway: computed on every registry change, overridden by
admins (or nodes with the ``risk_override`` capability carrying the admin),
last write wins by ``occurredAt``, every attempt audited."""

from __future__ import annotations

from typing import Any

import msgpack
import sqlalchemy as sa

from gateway.db.schema import refused_writes, risk_override_audit
from gateway.registry import enroll_node
from gateway.risk_scores import recompute_all
from harness import PREFIX, Gateway, NodeIdentity, assert_problem, bearer
from test_gateway_registry import entry, feed, put

RISK = f"{PREFIX}/risk-scores"


async def risk(gateway: Gateway, token: str, entry_id: str = "e-1") -> dict[str, Any]:
    resp = await gateway.client.get(f"{RISK}/{entry_id}", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


def override(
    oid: str, value: int | None, at: str, reason: str = "seen at clinic"
) -> dict[str, Any]:
    return {"id": oid, "value": value, "reason": reason, "occurredAt": f"2026-11-25T{at}:00.000Z"}


async def post_override(gateway: Gateway, token: str, body: Any, entry_id: str = "e-1") -> Any:
    return await gateway.client.post(
        f"{RISK}/{entry_id}/overrides", json=body, headers=bearer(token)
    )


async def audit_rows(gateway: Gateway) -> list[dict[str, Any]]:
    async with gateway.database.read() as conn:
        rows = await conn.execute(
            sa.select(risk_override_audit).order_by(risk_override_audit.c.seq)
        )
        return [dict(r._mapping) for r in rows]


async def enroll(
    gateway: Gateway, node_id: str, facilities: tuple[str, ...], capabilities: list[str]
) -> NodeIdentity:
    node = NodeIdentity(node_id, "t1", list(facilities))
    async with gateway.database.write() as conn:
        await enroll_node(
            conn,
            node_id=node_id,
            tenant_id="t1",
            facility_ids=facilities,
            public_key=node.keypair.public_key,
            capabilities=capabilities,
            now=gateway.clock(),
        )
    return node


async def test_score_is_computed_and_recomputed_on_change(gateway: Gateway) -> None:
    service = await gateway.token("service")
    analyst = await gateway.token("analyst")
    node = await gateway.enroll()
    await put(gateway, service, entry("e-1"))
    doc = await risk(gateway, analyst)
    # age 67 (15) + diabetes (15) + diabetes since 2010, 16 years (10)
    assert (doc["score"], doc["band"], doc["source"]) == (40, "medium", "computed")
    assert [f["name"] for f in doc["computed"]["factors"]] == [
        "age_60_69",
        "diabetes",
        "long_standing_condition",
    ]
    assert doc["computed"]["modelVersion"] == "points-v1"
    assert (doc["override"], doc["audit"]) == (None, [])
    # Hypertension adds 10: high.
    await put(
        gateway,
        service,
        entry("e-1", conditions=[{"code": "E11.9", "onset": "2010-01-01"}, {"code": "I10"}]),
    )
    doc = await risk(gateway, analyst)
    assert (doc["score"], doc["band"]) == (50, "high")
    scores = [c for c in await feed(gateway, node) if c[0] == "risk_score"]
    assert scores == [("risk_score", "e-1", "upsert")] * 2
    resp = await gateway.client.get(f"{RISK}/nope", headers=bearer(analyst))
    await assert_problem(resp, 404, "not_found")
    service_read = await gateway.client.get(f"{RISK}/e-1", headers=bearer(service))
    await assert_problem(service_read, 403, "forbidden")


async def test_override_last_write_wins_out_of_order_with_complete_audit(gateway: Gateway) -> None:
    service = await gateway.token("service")
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await put(gateway, service, entry("e-1"))  # computed 40

    async def send(body: dict[str, Any]) -> dict[str, Any]:
        resp = await post_override(gateway, admin, body)
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]

    # Arrivals: 10:00 set 80, then the older 09:00 set 20, then a 11:00 clear,
    # then 10:00 again (a retry), then 10:30 set 70 (older than the clear).
    first = await send(override("ov-b", 80, "10:00"))
    assert (first["status"], first["risk"]["score"], first["risk"]["source"]) == (
        "applied",
        80,
        "override",
    )
    stale = await send(override("ov-a", 20, "09:00"))
    assert (stale["status"], stale["risk"]["score"]) == ("superseded", 80)
    clear = await send(override("ov-c", None, "11:00", reason="discharged"))
    assert (clear["status"], clear["risk"]["score"], clear["risk"]["source"]) == (
        "applied",
        40,
        "computed",
    )
    assert clear["risk"]["override"]["value"] is None  # the clear is in force, with its reason
    retry = await send(override("ov-b", 80, "10:00"))
    assert (retry["status"], retry["recordedDisposition"]) == ("duplicate", "applied")
    late = await send(override("ov-d", 70, "10:30"))
    assert (late["status"], late["risk"]["score"]) == ("superseded", 40)

    analyst = await gateway.token("analyst")
    doc = await risk(gateway, analyst)
    assert (doc["score"], doc["source"], doc["override"]["id"]) == (40, "computed", "ov-c")
    actor = doc["override"]["actorId"]
    assert actor.startswith("token:")
    trail = [
        (
            a["overrideId"],
            a["requestedValue"],
            a["disposition"],
            a["old"]["score"],
            a["old"]["source"],
            a["new"]["score"],
            a["new"]["source"],
        )
        for a in doc["audit"]
    ]
    assert trail == [
        ("ov-b", 80, "applied", 40, "computed", 80, "override"),
        ("ov-a", 20, "superseded", 80, "override", 80, "override"),
        ("ov-c", None, "applied", 80, "override", 40, "computed"),
        ("ov-b", 80, "duplicate", 40, "computed", 40, "computed"),
        ("ov-d", 70, "superseded", 40, "computed", 40, "computed"),
    ]
    assert {(a["actorId"], a["nodeId"], a["principal"]) for a in doc["audit"]} == {
        (actor, None, actor)
    }
    assert doc["audit"][2]["reason"] == "discharged"
    assert doc["audit"][1]["occurredAt"] == "2026-11-25T09:00:00.000Z"
    # The feed carries the effective score once per applied override (after creation).
    scores = [c for c in await feed(gateway, node) if c[0] == "risk_score"]
    assert len(scores) == 3


async def test_refused_override_attempts_are_audited(gateway: Gateway) -> None:
    service = await gateway.token("service")
    admin = await gateway.token("admin")
    analyst = await gateway.token("analyst")
    await put(gateway, service, entry("e-1"))
    resp = await post_override(gateway, analyst, override("ov-1", 90, "10:00"))
    await assert_problem(resp, 403, "forbidden")
    resp = await post_override(gateway, service, override("ov-2", 90, "10:00"))
    await assert_problem(resp, 403, "forbidden")
    resp = await post_override(gateway, admin, override("ov-3", 101, "10:00"))
    await assert_problem(resp, 422, "validation_failed")
    resp = await post_override(gateway, admin, {**override("ov-4", 5, "10:00"), "actorId": "me"})
    await assert_problem(resp, 422, "validation_failed")  # the token is the actor
    resp = await post_override(gateway, admin, override("ov-5", 5, "10:00"), entry_id="nope")
    await assert_problem(resp, 404, "not_found")
    # A refused id may be sent again, fixed: it is not a duplicate.
    resp = await post_override(gateway, admin, override("ov-3", 90, "10:00"))
    assert resp.status == 200 and (await resp.json())["status"] == "applied"
    rows = await audit_rows(gateway)
    assert [(r["override_id"], r["entry_id"], r["disposition"], r["code"]) for r in rows] == [
        ("ov-1", "e-1", "rejected", "forbidden"),
        ("ov-2", "e-1", "rejected", "forbidden"),
        ("ov-3", "e-1", "rejected", "validation_failed"),
        ("ov-4", "e-1", "rejected", "validation_failed"),
        ("ov-5", "nope", "rejected", "unknown_item"),
        ("ov-3", "e-1", "applied", None),
    ]
    assert rows[0]["old_score"] == rows[0]["new_score"] == 40  # heard; changed nothing
    assert rows[4]["old_score"] is None  # no such entry: no score before or after


async def test_batch_override_needs_the_capability_and_the_admins_identity(
    gateway: Gateway,
) -> None:
    service = await gateway.token("service")
    analyst = await gateway.token("analyst")
    await put(gateway, service, entry("e-1"))
    await put(gateway, service, entry("e-2", facility="f-002"))
    plain = await gateway.enroll("edge-plain", "t1", ("f-001",))
    trusted = await enroll(gateway, "edge-ok", ("f-001",), ["risk_override"])

    def item(oid: str, entry_id: str = "e-1", **extra: Any) -> dict[str, Any]:
        return {
            "kind": "risk_score.override",
            "id": oid,
            "entryId": entry_id,
            "value": 75,
            "reason": "home visit",
            "occurredAt": "2026-11-25T10:00:00.000Z",
            **extra,
        }

    async def results(node: NodeIdentity, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        resp = await gateway.post_batch(node, items)
        assert resp.status == 200, await resp.text()
        return msgpack.unpackb(await resp.read())["results"]  # type: ignore[no-any-return]

    [refused] = await results(plain, [item("ov-1", actorId="admin-7")])
    assert (refused["status"], refused["code"]) == ("rejected", "policy_server_authoritative")
    got = await results(
        trusted,
        [
            item("ov-2"),  # no actorId
            item("ov-3", entryId="e-2", actorId="admin-7"),  # f-002 is not edge-ok's
            item("ov-4", entryId="e-9", actorId="admin-7"),  # no such entry
            item("ov-5", actorId="admin-7", value="high"),  # not a score
            item("ov-6", actorId="admin-7"),
        ],
    )
    assert [(r["id"], r["status"], r.get("code")) for r in got] == [
        ("ov-2", "rejected", "policy_server_authoritative"),
        ("ov-3", "rejected", "out_of_scope"),
        ("ov-4", "rejected", "unknown_item"),
        ("ov-5", "rejected", "validation_failed"),
        ("ov-6", "applied", None),
    ]
    assert got[4]["risk"]["score"] == 75 and got[4]["risk"]["source"] == "override"
    doc = await risk(gateway, analyst)
    last = doc["audit"][-1]
    assert (last["actorId"], last["nodeId"], last["principal"]) == (
        "admin-7",
        "edge-ok",
        "node:edge-ok",
    )
    assert last["batchId"] and doc["override"]["nodeId"] == "edge-ok"
    rows = await audit_rows(gateway)
    assert [(r["override_id"], r["disposition"]) for r in rows] == [
        ("ov-1", "rejected"),
        ("ov-2", "rejected"),
        ("ov-3", "rejected"),
        ("ov-4", "rejected"),
        ("ov-5", "rejected"),
        ("ov-6", "applied"),
    ]
    async with gateway.database.read() as conn:
        kept = (await conn.execute(sa.select(refused_writes).order_by(refused_writes.c.seq))).all()
    assert [(r.principal, r.kind, r.record_id, r.item_index) for r in kept] == [
        ("node:edge-plain", "risk_score.override", "ov-1", 0),
        ("node:edge-ok", "risk_score.override", "ov-2", 0),
    ]


async def test_batch_items_of_server_authoritative_kinds_are_refused_and_recorded(
    gateway: Gateway,
) -> None:
    node = await gateway.enroll()
    kinds = ["disease_registry_entry", "cohort_membership", "risk_score.computed"]
    items = [{"kind": kind, "id": f"x-{n}"} for n, kind in enumerate(kinds)]
    items.append({"kind": "no_such_kind", "id": "x-9"})
    resp = await gateway.post_batch(node, items, batch_id="b-sa")
    assert resp.status == 200, await resp.text()
    results = msgpack.unpackb(await resp.read())["results"]
    assert [(r["id"], r["status"], r["code"]) for r in results] == [
        ("x-0", "rejected", "policy_server_authoritative"),
        ("x-1", "rejected", "policy_server_authoritative"),
        ("x-2", "rejected", "policy_server_authoritative"),
        ("x-9", "rejected", "unknown_kind"),  # kept too: nothing is silently dropped
    ]
    async with gateway.database.read() as conn:
        kept = (await conn.execute(sa.select(refused_writes).order_by(refused_writes.c.seq))).all()
    assert [(r.batch_id, r.item_index, r.kind, r.record_id, r.code) for r in kept] == [
        *(
            ("b-sa", n, kind, f"x-{n}", "policy_server_authoritative")
            for n, kind in enumerate(kinds)
        ),
        ("b-sa", 3, "no_such_kind", "x-9", "unknown_kind"),
    ]
    assert {(r.tenant_id, r.principal) for r in kept} == {("t1", "node:edge-01")}


async def test_recompute_all_follows_the_date(gateway: Gateway) -> None:
    service = await gateway.token("service")
    analyst = await gateway.token("analyst")
    node = await gateway.enroll()
    await put(gateway, service, entry("e-1"))  # 40 on 2026-11-25
    await put(gateway, service, entry("e-2"))
    await gateway.client.delete(f"{PREFIX}/registry/entries/e-2", headers=bearer(service))
    async with gateway.database.write() as conn:
        assert await recompute_all(conn, gateway.clock()) == 0  # same day: nothing moves
    gateway.clock.advance(200 * 86400)  # 2027-06-13
    async with gateway.database.write() as conn:
        assert await recompute_all(conn, gateway.clock()) == 1  # e-2 is deleted
    doc = await risk(gateway, analyst)
    # + screening overdue (2026-06-01, 377 days) 10 + immunization overdue 5
    assert (doc["score"], doc["computedAt"]) == (55, "2027-06-13T12:00:00.000Z")
    last = [c for c in await feed(gateway, node) if c[:2] == ("risk_score", "e-1")][-1]
    assert last == ("risk_score", "e-1", "upsert")

"""Disease registry entries on the gateway: ingest by service tokens, reads by
admins and analysts, the change feed, and refused writes recorded."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from canaries import patient_ref
from gateway.db.schema import cohort_memberships, cohort_versions, cohorts, refused_writes
from harness import PREFIX, Gateway, NodeIdentity, assert_problem, bearer, document
from shared.cohorts import canonical_json, parse_cohort

ENTRIES = f"{PREFIX}/registry/entries"
CHANGES = f"{PREFIX}/sync/changes"


def entry(entry_id: str, facility: str = "f-001", **fields: Any) -> dict[str, Any]:
    """A 67-year-old (on the test clock's 2026-11-25) with long-standing diabetes."""
    return {
        "id": entry_id,
        "facilityId": facility,
        "patientRef": patient_ref(entry_id),
        "sex": "female",
        "birthDate": "1959-03-02",
        "conditions": [{"code": "E11.9", "onset": "2010-01-01"}],
        "lastScreeningDate": "2026-06-01",
        "lastImmunizationDate": "2026-01-10",
        **fields,
    }


async def put(gateway: Gateway, token: str, body: dict[str, Any], **headers: str) -> Any:
    return await gateway.client.put(
        f"{ENTRIES}/{body['id']}", json=body, headers=bearer(token, **headers)
    )


async def feed(gateway: Gateway, node: NodeIdentity) -> list[tuple[str, str, str]]:
    resp = await gateway.signed(node, "GET", CHANGES)
    assert resp.status == 200, await resp.text()
    return [(c["aggregate"], c["id"], c["op"]) for c in (await resp.json())["changes"]]


async def refused(gateway: Gateway) -> list[dict[str, Any]]:
    async with gateway.database.read() as conn:
        rows = await conn.execute(sa.select(refused_writes).order_by(refused_writes.c.seq))
        return [dict(r._mapping) for r in rows]


async def test_upsert_read_update_and_feed(gateway: Gateway) -> None:
    service = await gateway.token("service")
    analyst = await gateway.token("analyst")
    node = await gateway.enroll("edge-01", "t1", ("f-001",))
    resp = await put(gateway, service, entry("e-1"))
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert (created["version"], created["patientRef"]) == (1, patient_ref("e-1"))
    assert created["conditions"] == [{"code": "E11.9", "onset": "2010-01-01"}]

    resp = await gateway.client.get(f"{ENTRIES}/e-1", headers=bearer(analyst))
    assert resp.status == 200 and await resp.json() == created

    # The same entry again: nothing of its own changes (no version, no feed row).
    resp = await put(gateway, service, entry("e-1"))
    assert resp.status == 200 and (await resp.json())["version"] == 1
    resp = await put(gateway, service, entry("e-1", lastScreeningDate="2026-11-20"))
    assert resp.status == 200 and (await resp.json())["version"] == 2
    assert await feed(gateway, node) == [
        ("disease_registry_entry", "e-1", "upsert"),
        ("risk_score", "e-1", "upsert"),  # computed on creation
        ("disease_registry_entry", "e-1", "upsert"),  # version 2; the score is unchanged
    ]


async def test_delete_keeps_a_tombstone_and_versions_continue(gateway: Gateway) -> None:
    service = await gateway.token("service")
    admin = await gateway.token("admin")
    node = await gateway.enroll("edge-01", "t1", ("f-001",))
    await put(gateway, service, entry("e-1"))
    resp = await gateway.client.delete(f"{ENTRIES}/e-1", headers=bearer(service))
    assert resp.status == 200, await resp.text()
    tomb = await resp.json()
    assert (tomb["id"], tomb["version"], tomb["facilityId"]) == ("e-1", 2, "f-001")
    assert tomb["deletedAt"]
    await assert_problem(
        await gateway.client.get(f"{ENTRIES}/e-1", headers=bearer(admin)), 404, "not_found"
    )
    again = await gateway.client.delete(f"{ENTRIES}/e-1", headers=bearer(service))
    assert again.status == 200 and await again.json() == tomb  # a repeat changes nothing
    await assert_problem(
        await gateway.client.delete(f"{ENTRIES}/nope", headers=bearer(service)), 404, "not_found"
    )
    listed = await gateway.client.get(ENTRIES, headers=bearer(admin))
    assert (await listed.json())["entries"] == []
    resp = await put(gateway, service, entry("e-1"))
    assert resp.status == 201 and (await resp.json())["version"] == 3  # back again
    assert await feed(gateway, node) == [
        ("disease_registry_entry", "e-1", "upsert"),
        ("risk_score", "e-1", "upsert"),
        ("disease_registry_entry", "e-1", "delete"),
        ("risk_score", "e-1", "delete"),
        ("disease_registry_entry", "e-1", "upsert"),
        ("risk_score", "e-1", "upsert"),
    ]


async def test_moving_facility_is_a_delete_for_the_old_facilitys_nodes(gateway: Gateway) -> None:
    service = await gateway.token("service")
    old = await gateway.enroll("edge-01", "t1", ("f-001",))
    new = await gateway.enroll("edge-02", "t1", ("f-002",))
    await put(gateway, service, entry("e-1"))
    await put(gateway, service, entry("e-1", facility="f-002"))
    assert await feed(gateway, old) == [
        ("disease_registry_entry", "e-1", "upsert"),
        ("risk_score", "e-1", "upsert"),
        ("disease_registry_entry", "e-1", "delete"),
        ("risk_score", "e-1", "delete"),
    ]
    assert await feed(gateway, new) == [
        ("disease_registry_entry", "e-1", "upsert"),
        ("risk_score", "e-1", "upsert"),
    ]


async def test_list_pages_by_id_within_tenant_and_facility(gateway: Gateway) -> None:
    service = await gateway.token("service")
    other_tenant = await gateway.token("service", tenant="t2")
    analyst = await gateway.token("analyst")
    for entry_id, facility in [("e-3", "f-001"), ("e-1", "f-001"), ("e-2", "f-002")]:
        assert (await put(gateway, service, entry(entry_id, facility))).status == 201
    assert (await put(gateway, other_tenant, entry("e-0"))).status == 201

    async def page(query: str) -> dict[str, Any]:
        resp = await gateway.client.get(f"{ENTRIES}?{query}", headers=bearer(analyst))
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]

    first = await page("limit=2")
    assert [e["id"] for e in first["entries"]] == ["e-1", "e-2"]  # never t2's e-0
    assert (first["cursor"], first["more"]) == ("e-2", True)
    rest = await page("limit=2&after=e-2")
    assert ([e["id"] for e in rest["entries"]], rest["more"]) == (["e-3"], False)
    mine = await page("facilityId=f-001")
    assert [e["id"] for e in mine["entries"]] == ["e-1", "e-3"]
    resp = await gateway.client.get(f"{ENTRIES}?limit=0", headers=bearer(analyst))
    await assert_problem(resp, 422, "validation_failed")


async def test_writes_by_other_roles_are_refused_and_recorded(gateway: Gateway) -> None:
    service = await gateway.token("service")
    await put(gateway, service, entry("e-1"))
    before = await gateway.snapshot()
    for role in ("admin", "analyst"):
        token = await gateway.token(role)
        resp = await put(gateway, token, entry("e-1", lastScreeningDate="2026-11-01"))
        doc = await assert_problem(resp, 403, "policy_server_authoritative")
        assert role in doc["detail"]
        resp = await gateway.client.delete(f"{ENTRIES}/e-1", headers=bearer(token))
        await assert_problem(resp, 403, "policy_server_authoritative")
    after = await gateway.snapshot()
    assert {t for t in before if before[t] != after[t]} <= {"refused_writes", "tokens"}
    rows = await refused(gateway)
    assert [(r["method"], r["path"], r["kind"], r["record_id"], r["code"]) for r in rows] == [
        (method, f"{ENTRIES}/e-1", "disease_registry_entry", "e-1", "policy_server_authoritative")
        for method in ("PUT", "DELETE", "PUT", "DELETE")
    ]
    assert all(r["principal"].startswith("token:") and r["tenant_id"] == "t1" for r in rows)


async def test_reads_need_admin_or_analyst_of_the_tenant(gateway: Gateway) -> None:
    service = await gateway.token("service")
    await put(gateway, service, entry("e-1"))
    resp = await gateway.client.get(f"{ENTRIES}/e-1", headers=bearer(service))
    await assert_problem(resp, 403, "forbidden")
    other = await gateway.token("admin", tenant="t2")
    resp = await gateway.client.get(f"{ENTRIES}/e-1", headers=bearer(other))
    await assert_problem(resp, 404, "not_found")  # another tenant's entry does not exist
    resp = await gateway.client.get(f"{ENTRIES}/e-1")
    await assert_problem(resp, 401, "unauthenticated")


async def test_nodes_cannot_write_entries_directly(gateway: Gateway) -> None:
    node = await gateway.enroll()
    body = b'{"id": "e-1", "facilityId": "f-001"}'
    resp = await gateway.signed(
        node, "PUT", f"{ENTRIES}/e-1", body, content_type="application/json"
    )
    await assert_problem(resp, 401, "unauthenticated")  # a node signature is not a token


async def test_bad_bodies_and_idempotent_replays(gateway: Gateway) -> None:
    service = await gateway.token("service")
    resp = await gateway.client.put(f"{ENTRIES}/e-2", json=entry("e-1"), headers=bearer(service))
    await assert_problem(resp, 422, "validation_failed")  # the body names another id
    resp = await put(gateway, service, entry("e-1", sex="x"))
    await assert_problem(resp, 422, "validation_failed")
    first = await put(gateway, service, entry("e-1"), **{"Idempotency-Key": "k-1"})
    assert first.status == 201
    replay = await put(gateway, service, entry("e-1"), **{"Idempotency-Key": "k-1"})
    assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert await document(replay) == await document(first)


async def test_memberships_follow_registry_changes(gateway: Gateway) -> None:
    """A cohort stored by the server; entries join and leave it as they change."""
    definition = {"condition": "I10"}
    async with gateway.database.write() as conn:
        stamp = "2026-11-25T11:00:00.000Z"
        await conn.execute(
            cohorts.insert().values(
                tenant_id="t1",
                cohort_id="htn",
                name="hypertension",
                latest_version=1,
                created_by="token:x",
                created_at=stamp,
                updated_at=stamp,
            )
        )
        await conn.execute(
            cohort_versions.insert().values(
                tenant_id="t1",
                cohort_id="htn",
                version=1,
                definition=definition,
                canonical=canonical_json(parse_cohort(definition)),
                created_by="token:x",
                source="admin",
                created_at=stamp,
            )
        )
    service = await gateway.token("service")
    node = await gateway.enroll()
    htn = [{"code": "I10"}]
    await put(gateway, service, entry("e-1", conditions=htn))
    await put(gateway, service, entry("e-2"))  # not a member
    await put(gateway, service, entry("e-2", conditions=htn))  # joins
    await put(gateway, service, entry("e-1"))  # leaves
    await gateway.client.delete(f"{ENTRIES}/e-2", headers=bearer(service))  # leaves
    async with gateway.database.read() as conn:
        held = (await conn.execute(sa.select(cohort_memberships))).all()
    assert held == []
    changes = [c for c in await feed(gateway, node) if c[0] == "cohort_membership"]
    assert changes == [
        ("cohort_membership", "htn/e-1", "upsert"),
        ("cohort_membership", "htn/e-2", "upsert"),
        ("cohort_membership", "htn/e-1", "delete"),
        ("cohort_membership", "htn/e-2", "delete"),
    ]

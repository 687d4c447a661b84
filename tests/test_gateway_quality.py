"""Quality metric snapshots through a live gateway (issue 5).

Reports are submitted through ``POST …/sync/facility-reports`` exactly as edge
nodes send them; the snapshot is then asked for with ``POST
…/quality-snapshots`` and read back, from the change feed and the event
outbox too. A snapshot is immutable: every attempt to change one is a 409.
"""

from __future__ import annotations

from typing import Any

import msgpack
import sqlalchemy as sa

from gateway.db.schema import refused_writes
from harness import (
    PREFIX,
    Gateway,
    assert_problem,
    bearer,
    report_metrics,
    submit_report,
    token_principal,
)

SNAPSHOTS = f"{PREFIX}/quality-snapshots"
CREATED = "population_health.quality_snapshot.created.v1"


# f-001: 41 patients, 20 due screening of whom 15 screened, 12 due immunization, 9 given.
F001 = report_metrics(41, 57, (20, 15), (12, 9))
# f-002: nobody due immunization, so its rate is null (and adds 0 to both sums).
F002 = report_metrics(10, 12, (5, 1), (0, 0))


async def world(gateway: Gateway) -> dict[str, Any]:
    """Tenant t1 with three enrolled facilities, two of which reported 2026-W47."""
    edge1 = await gateway.enroll("edge-01", "t1", ("f-001",))
    edge2 = await gateway.enroll("edge-02", "t1", ("f-002",))
    edge3 = await gateway.enroll("edge-03", "t1", ("f-003",))
    other = await gateway.enroll("edge-t2", "t2", ("f-001",))
    ids = {
        "f-001": await submit_report(gateway, edge1, "f-001", "2026-W47", F001),
        "f-002": await submit_report(gateway, edge2, "f-002", "2026-W47", F002),
    }
    # Not in the snapshot of t1's 2026-W47: another week, another tenant.
    await submit_report(gateway, edge1, "f-001", "2026-W46", report_metrics(99, 99, (9, 9), (9, 9)))
    await submit_report(gateway, other, "f-001", "2026-W47", report_metrics(77, 77, (7, 7), (7, 7)))
    return {"ids": ids, "edge1": edge1, "edge3": edge3}


async def post_snapshot(gateway: Gateway, token: str, key: str, kind: str = "weekly") -> Any:
    return await gateway.client.post(
        SNAPSHOTS, json={"periodType": kind, "periodKey": key}, headers=bearer(token)
    )


async def test_snapshot_of_merged_reports(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    analyst = await gateway.token("analyst")
    w = await world(gateway)
    resp = await post_snapshot(gateway, admin, "2026-W47")
    assert resp.status == 201, await resp.text()
    snapshot = await resp.json()
    assert snapshot == {
        "id": "2026-W47",
        "tenantId": "t1",
        "periodType": "weekly",
        "periodKey": "2026-W47",
        # f-001 and f-002 of the three enrolled facilities: 2/3.
        "coverage": {"enrolled": 3, "reporting": 2, "rate": 0.6667},
        "patientCount": 51,  # 41 + 10
        "encounterCount": 69,  # 57 + 12
        "screening": {"due": 25, "done": 16, "rate": 0.64},  # (15 + 1) / (20 + 5)
        "immunization": {"due": 12, "given": 9, "rate": 0.75},  # (9 + 0) / (12 + 0)
        "facilities": ["f-001", "f-002"],
        "facilitiesMissing": ["f-003"],
        "excluded": [],
        "reportIds": [w["ids"]["f-001"], w["ids"]["f-002"]],
        "createdBy": token_principal(admin),
        "createdAt": "2026-11-25T12:00:00.000Z",
    }

    # Read back by id and by range, by an analyst too.
    for token in (admin, analyst):
        resp = await gateway.client.get(f"{SNAPSHOTS}/2026-W47", headers=bearer(token))
        assert resp.status == 200 and await resp.json() == snapshot
    resp = await gateway.client.get(
        f"{SNAPSHOTS}?from=2026-W40&to=2026-W47", headers=bearer(analyst)
    )
    assert (await resp.json())["snapshots"] == [snapshot]
    resp = await gateway.client.get(f"{SNAPSHOTS}?periodType=daily", headers=bearer(analyst))
    assert (await resp.json())["snapshots"] == []

    # One event, and one tenant-wide change: edge-03 (no report) receives it too.
    resp = await gateway.client.get(f"{PREFIX}/events", headers=bearer(admin))
    created = [e for e in (await resp.json())["events"] if e["type"] == CREATED]
    assert [e["data"] for e in created] == [
        {
            "snapshotId": "2026-W47",
            "periodType": "weekly",
            "periodKey": "2026-W47",
            "coverage": {"enrolled": 3, "reporting": 2, "rate": 0.6667},
        }
    ]
    resp = await gateway.signed(w["edge3"], "GET", f"{PREFIX}/sync/changes")
    changes = [
        c for c in (await resp.json())["changes"] if c["aggregate"] == "quality_metric_snapshot"
    ]
    assert [(c["id"], c["op"], c["data"]) for c in changes] == [("2026-W47", "upsert", snapshot)]


async def test_asking_again_answers_the_stored_snapshot_or_409(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    w = await world(gateway)
    first = await (await post_snapshot(gateway, admin, "2026-W47")).json()
    gateway.clock.advance(3600)
    resp = await post_snapshot(gateway, admin, "2026-W47")  # same inputs
    assert resp.status == 200
    assert await resp.json() == first  # the stored one, createdAt unchanged
    before = await gateway.table_counts()

    # A late report for f-003 changes the inputs: the snapshot stays as it was.
    await submit_report(gateway, w["edge3"], "f-003", "2026-W47", F002)
    resp = await post_snapshot(gateway, admin, "2026-W47")
    problem = await assert_problem(resp, 409, "immutable")
    assert problem["snapshotId"] == "2026-W47"
    resp = await gateway.client.get(f"{SNAPSHOTS}/2026-W47", headers=bearer(admin))
    assert await resp.json() == first
    after = await gateway.table_counts()
    assert after["quality_snapshots"] == before["quality_snapshots"] == 1
    assert after["changes"] == before["changes"]  # no second change-feed row


async def test_a_snapshot_cannot_be_changed_or_deleted(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    analyst = await gateway.token("analyst")
    service = await gateway.token("service")
    await world(gateway)
    first = await (await post_snapshot(gateway, admin, "2026-W47")).json()
    attempts = 0
    for token in (admin, analyst, service):
        for method in ("PUT", "PATCH", "DELETE"):
            resp = await gateway.client.request(
                method, f"{SNAPSHOTS}/2026-W47", json={"coverage": 1}, headers=bearer(token)
            )
            await assert_problem(resp, 409, "immutable")
            attempts += 1
    # A snapshot that does not exist cannot be written by a client either.
    resp = await gateway.client.put(f"{SNAPSHOTS}/2026-W40", json={}, headers=bearer(admin))
    await assert_problem(resp, 403, "policy_server_authoritative")
    resp = await gateway.client.get(f"{SNAPSHOTS}/2026-W47", headers=bearer(admin))
    assert await resp.json() == first
    async with gateway.database.read() as conn:
        rows = (
            await conn.execute(
                sa.select(refused_writes.c.method, refused_writes.c.code, refused_writes.c.kind)
            )
        ).all()
    assert len(rows) == attempts + 1  # every attempt recorded
    assert {r.kind for r in rows} == {"quality_metric_snapshot"}
    assert [r.code for r in rows].count("immutable") == attempts
    # No bearer token: 401 before anything else.
    resp = await gateway.client.delete(f"{SNAPSHOTS}/2026-W47")
    await assert_problem(resp, 401, "unauthenticated")


async def test_roles_and_tenants(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    await world(gateway)
    for role in ("analyst", "service"):
        token = await gateway.token(role)
        resp = await post_snapshot(gateway, token, "2026-W47")
        await assert_problem(resp, 403, "policy_server_authoritative")
    resp = await gateway.client.post(SNAPSHOTS, json={"periodType": "weekly", "periodKey": "x"})
    await assert_problem(resp, 401, "unauthenticated")
    counts = await gateway.table_counts()
    assert counts["quality_snapshots"] == 0 and counts["refused_writes"] == 2

    service = await gateway.token("service")
    resp = await gateway.client.get(SNAPSHOTS, headers=bearer(service))
    await assert_problem(resp, 403, "forbidden")  # reading: admins and analysts

    assert (await post_snapshot(gateway, admin, "2026-W47")).status == 201
    admin2 = await gateway.token("admin", tenant="t2")
    resp = await gateway.client.get(f"{SNAPSHOTS}/2026-W47", headers=bearer(admin2))
    await assert_problem(resp, 404, "not_found")  # t1's snapshot is not t2's
    resp = await gateway.client.get(SNAPSHOTS, headers=bearer(admin2))
    assert (await resp.json())["snapshots"] == []
    # t2's own snapshot of the week: its one report, and its one enrolled facility.
    snapshot = await (await post_snapshot(gateway, admin2, "2026-W47")).json()
    assert (snapshot["tenantId"], snapshot["patientCount"], snapshot["coverage"]) == (
        "t2",
        77,
        {"enrolled": 1, "reporting": 1, "rate": 1.0},
    )


async def test_bad_requests(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    # 2026-W48 (Monday 2026-11-23 .. Sunday 11-29) is not over on 2026-11-25.
    resp = await post_snapshot(gateway, admin, "2026-W48")
    await assert_problem(resp, 422, "validation_failed")
    resp = await post_snapshot(gateway, admin, "2026-11-25", "daily")  # today
    await assert_problem(resp, 422, "validation_failed")
    resp = await post_snapshot(gateway, admin, "2025-W53")  # 2025 has 52 weeks
    await assert_problem(resp, 422, "validation_failed")
    resp = await gateway.client.post(
        SNAPSHOTS,
        json={"periodType": "weekly", "periodKey": "2026-W47", "coverage": 1},
        headers=bearer(admin),
    )
    await assert_problem(resp, 422, "validation_failed")  # no client-chosen content
    resp = await gateway.client.get(
        f"{SNAPSHOTS}?from=2026-W40&to=2026-11-01", headers=bearer(admin)
    )
    await assert_problem(resp, 422, "validation_failed")
    resp = await gateway.client.get(f"{SNAPSHOTS}/not-a-period", headers=bearer(admin))
    await assert_problem(resp, 404, "not_found")
    assert (await gateway.table_counts())["quality_snapshots"] == 0


async def test_daily_snapshot_without_reports_and_idempotency(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    await gateway.enroll("edge-01", "t1", ("f-001", "f-002"))
    headers = bearer(admin, **{"Idempotency-Key": "snap-1"})
    body = {"periodType": "daily", "periodKey": "2026-11-23"}
    resp = await gateway.client.post(SNAPSHOTS, json=body, headers=headers)
    assert resp.status == 201
    snapshot = await resp.json()
    assert snapshot["coverage"] == {"enrolled": 2, "reporting": 0, "rate": 0.0}
    assert (snapshot["patientCount"], snapshot["screening"], snapshot["facilitiesMissing"]) == (
        0,
        {"due": 0, "done": 0, "rate": None},  # nobody due: undefined, not 0
        ["f-001", "f-002"],
    )
    resp = await gateway.client.post(SNAPSHOTS, json=body, headers=headers)
    assert resp.status == 201 and resp.headers["Idempotent-Replayed"] == "true"
    assert await resp.json() == snapshot


async def test_a_facility_reported_by_two_devices_is_excluded_from_totals(
    gateway: Gateway,
) -> None:
    admin = await gateway.token("admin")
    edge1 = await gateway.enroll("edge-01", "t1", ("f-001", "f-002"))
    edge2 = await gateway.enroll("edge-02", "t1", ("f-002",))
    await submit_report(gateway, edge1, "f-001", "2026-W47", F001)
    a = await submit_report(gateway, edge1, "f-002", "2026-W47", F002)
    b = await submit_report(gateway, edge2, "f-002", "2026-W47", F002)
    snapshot = await (await post_snapshot(gateway, admin, "2026-W47")).json()
    assert snapshot["coverage"] == {"enrolled": 2, "reporting": 2, "rate": 1.0}
    assert (snapshot["patientCount"], snapshot["facilities"]) == (41, ["f-001"])  # f-001 alone
    assert snapshot["excluded"] == [
        {
            "facilityId": "f-002",
            "reason": "ambiguous_reports",
            "reportIds": [a, b],  # by device: edge-01, edge-02
            "detail": "2 devices reported this facility and period: edge-01, edge-02",
        }
    ]


async def test_batches_cannot_write_snapshots(gateway: Gateway) -> None:
    node = await gateway.enroll()
    item = {"kind": "quality_metric_snapshot", "id": "2026-W47", "coverage": 1}
    resp = await gateway.post_batch(node, [item])
    assert resp.status == 200
    [result] = msgpack.unpackb(await resp.read())["results"]
    assert (result["status"], result["code"]) == ("rejected", "policy_server_authoritative")
    assert (await gateway.table_counts())["quality_snapshots"] == 0

"""Facility reports (CONTRACT section 6) through a live gateway.

``POST …/sync/facility-reports`` in JSON (bytes as base64) and msgpack (raw
bytes), the same reports inside batches, the outbox event of each merge, and
the analytics read of ``GET …/analytics/facility-reports``.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import msgpack
import pytest
import sqlalchemy as sa

from gateway.db.schema import report_submissions
from harness import (
    PREFIX,
    START,
    Gateway,
    NodeIdentity,
    assert_problem,
    bearer,
    document,
    signed_report,
)
from shared.periods import parse_period
from shared.reports import FacilityReport, encode_report_payload
from shared.signing import KeyPair
from shared.values import format_timestamp

REPORTS = f"{PREFIX}/sync/facility-reports"
SYNCED = "population_health.facility_report.synced.v1"
METRICS = {
    "patientCount": 41,
    "encounterCount": 57,
    "screening": {"due": 20, "done": 15, "rate": 0.75},
    "immunization": {"due": 12, "given": 9, "rate": 0.75},
}


async def post_report(gateway: Gateway, report: dict[str, Any], as_json: bool = False) -> Any:
    if as_json:
        doc = {
            "deviceId": report["deviceId"],
            "payload": base64.b64encode(report["payload"]).decode(),
            "signature": base64.b64encode(report["signature"]).decode(),
        }
        return await gateway.client.post(REPORTS, json=doc)
    return await gateway.client.post(
        REPORTS, data=msgpack.packb(report), headers={"Content-Type": "application/msgpack"}
    )


def report_with(node: NodeIdentity, metrics: Any, period_key: str = "2026-W47") -> dict[str, Any]:
    """A correctly signed report carrying any metrics, valid or not."""
    payload = encode_report_payload(
        FacilityReport(
            tenant_id=node.tenant_id,
            facility_id=node.facility_ids[0],
            device_id=node.node_id,
            period=parse_period("weekly", period_key),
            generated_at=START,
            metrics=metrics,
        )
    )
    return {"deviceId": node.node_id, "payload": payload, "signature": node.keypair.sign(payload)}


async def events(gateway: Gateway) -> list[dict[str, Any]]:
    service = await gateway.token("service")
    resp = await gateway.client.get(f"{PREFIX}/events", headers=bearer(service))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["events"]  # type: ignore[no-any-return]


async def submissions(gateway: Gateway) -> list[tuple[str, str, bytes]]:
    async with gateway.database.read() as conn:
        rows = await conn.execute(
            sa.select(
                report_submissions.c.report_id,
                report_submissions.c.disposition,
                report_submissions.c.payload,
            ).order_by(report_submissions.c.seq)
        )
        return [(r.report_id, r.disposition, bytes(r.payload)) for r in rows]


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "msgpack"])
async def test_merged_then_duplicate(gateway: Gateway, as_json: bool) -> None:
    node = await gateway.enroll()
    report = signed_report(node)
    resp = await post_report(gateway, report, as_json)
    assert resp.status == 201, await resp.text()
    merged = await document(resp)
    assert merged["status"] == "merged" and merged["reportId"].startswith("rpt_")
    assert (merged["facilityId"], merged["periodKey"], merged["deviceId"]) == (
        "f-001",
        "2026-W47",
        "edge-01",
    )
    [event] = await events(gateway)  # exactly one event for the merge
    assert event["type"] == SYNCED and event["tenantId"] == "t1"
    assert event["time"] == format_timestamp(gateway.clock())
    assert event["data"] == {  # CONTRACT section 9
        "reportId": merged["reportId"],
        "facilityId": "f-001",
        "periodKey": "2026-W47",
        "periodType": "weekly",
        "deviceId": "edge-01",
    }

    resp = await post_report(gateway, report, as_json)  # the same report again
    assert resp.status == 200, await resp.text()
    duplicate = await document(resp)
    assert (duplicate["status"], duplicate["reportId"]) == ("duplicate", merged["reportId"])
    assert len(await events(gateway)) == 1  # no new event
    # The same bytes again carry nothing new: no second receipt (a captured
    # report replayed at will must not grow the table).
    assert [(r, d) for r, d, _ in await submissions(gateway)] == [(merged["reportId"], "merged")]


async def test_identical_reports_at_once_are_merged_once(gateway: Gateway) -> None:
    # On PostgreSQL the later inserts wait for the first one's commit on the
    # dedup key: they were 500s (unique violation); now they find it a duplicate.
    node = await gateway.enroll()
    report = signed_report(node)
    answers = await asyncio.gather(*(post_report(gateway, report) for _ in range(4)))
    assert sorted(resp.status for resp in answers) == [200, 200, 200, 201]
    [report_id] = {(await document(resp))["reportId"] for resp in answers}
    [event] = await events(gateway)
    assert event["data"]["reportId"] == report_id
    assert [d for _, d, _ in await submissions(gateway)] == ["merged"]


async def test_same_metrics_printed_differently_is_a_duplicate(gateway: Gateway) -> None:
    node = await gateway.enroll()
    assert (await post_report(gateway, report_with(node, METRICS))).status == 201
    resend = {**METRICS, "screening": {"due": 20, "done": 15, "rate": 0.7500000000001}}
    resp = await post_report(gateway, report_with(node, resend))
    assert resp.status == 200 and (await document(resp))["status"] == "duplicate"
    # Other bytes than the stored report's: this resend is on record.
    assert [d for _, d, _ in await submissions(gateway)] == ["merged", "duplicate"]


async def test_conflict_names_the_stored_report_and_keeps_the_copy(gateway: Gateway) -> None:
    node = await gateway.enroll()
    resp = await post_report(gateway, signed_report(node))
    stored = (await document(resp))["reportId"]
    refused = signed_report(node, patients=42)  # same facility, period, device; other metrics
    resp = await post_report(gateway, refused)
    doc = await assert_problem(resp, 409, "report_conflict")
    assert doc["reportId"] == stored
    assert len(await events(gateway)) == 1  # the conflict announces nothing
    rows = await submissions(gateway)
    assert rows[-1] == (stored, "conflict", refused["payload"])  # the refused bytes, for audit
    analyst = await gateway.token("analyst")
    resp = await gateway.client.get(f"{PREFIX}/analytics/facility-reports", headers=bearer(analyst))
    [kept] = (await resp.json())["reports"]
    assert kept["metrics"]["patientCount"] == 41  # the first report stands


async def test_conflict_is_not_replayed_as_success(gateway: Gateway) -> None:
    """A 409 is not stored under its Idempotency-Key: a retry is judged again."""
    node = await gateway.enroll()
    await post_report(gateway, signed_report(node))
    refused = signed_report(node, patients=42)
    for _ in range(2):
        resp = await gateway.client.post(
            REPORTS,
            data=msgpack.packb(refused),
            headers={"Content-Type": "application/msgpack", "Idempotency-Key": "r-1"},
        )
        assert "Idempotent-Replayed" not in resp.headers
        await assert_problem(resp, 409, "report_conflict")


REFUSED = [
    # (name, make the submission from the enrolled node, status, code)
    ("wrong key", lambda n: signed_report(n, keypair=KeyPair.generate()), 401, "bad_signature"),
    (
        "tampered payload",
        lambda n: {**signed_report(n), "payload": signed_report(n, patients=40)["payload"]},
        401,
        "bad_signature",
    ),
    (
        "short signature",
        lambda n: {**signed_report(n), "signature": b"\x00" * 10},
        401,
        "bad_signature",
    ),
    (
        "unknown device",
        lambda n: {**signed_report(n), "deviceId": "edge-99"},
        401,
        "unknown_key",
    ),
    ("due over patients", lambda n: signed_report(n, patients=10), 422, "invalid_report"),
    (
        "done over due",
        lambda n: report_with(n, {**METRICS, "screening": {"due": 20, "done": 21, "rate": 1.05}}),
        422,
        "invalid_report",
    ),
    (
        "rate inconsistent",
        lambda n: report_with(n, {**METRICS, "immunization": {"due": 12, "given": 9, "rate": 0.5}}),
        422,
        "invalid_report",
    ),
    (
        "negative count",
        lambda n: report_with(n, {**METRICS, "encounterCount": -1}),
        422,
        "invalid_report",
    ),
    ("payload device", lambda n: signed_report(n, device="edge-02"), 403, "out_of_scope"),
    ("payload tenant", lambda n: signed_report(n, tenant="t2"), 403, "out_of_scope"),
    ("payload facility", lambda n: signed_report(n, facility="f-002"), 403, "out_of_scope"),
]


@pytest.mark.parametrize(("name", "make", "status", "code"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_refused_report_stores_nothing(
    gateway: Gateway, name: str, make: Any, status: int, code: str
) -> None:
    node = await gateway.enroll()
    await gateway.enroll("edge-02", "t1", ("f-001", "f-002"))
    before = await gateway.snapshot()
    await assert_problem(await post_report(gateway, make(node)), status, code)
    await assert_problem(await post_report(gateway, make(node), as_json=True), status, code)
    assert await gateway.snapshot() == before


async def test_revoked_device_cannot_report(gateway: Gateway) -> None:
    node = await gateway.enroll()
    admin = await gateway.token("admin")
    resp = await gateway.client.delete(f"{PREFIX}/admin/nodes/edge-01", headers=bearer(admin))
    assert resp.status == 200
    before = await gateway.snapshot()
    await assert_problem(await post_report(gateway, signed_report(node)), 403, "key_revoked")
    assert await gateway.snapshot() == before


async def test_reports_in_a_batch_answer_the_same(gateway: Gateway) -> None:
    node = await gateway.enroll()
    await gateway.enroll("edge-02", "t1", ("f-001", "f-002"))
    first = signed_report(node)
    items = [
        first,  # merged
        first,  # the same again in the same batch
        signed_report(node, patients=42),  # same key, other metrics
        signed_report(node, keypair=KeyPair.generate()),  # bad signature
        signed_report(node, period_key="2026-W48", patients=10),  # invalid metrics
        signed_report(node, period_key="2026-W48", facility="f-002"),  # out of scope
        {**signed_report(node), "deviceId": "edge-99"},  # unknown device
    ]
    batch = [{"kind": "facility_report", "id": f"r-{i}", **r} for i, r in enumerate(items)]
    resp = await gateway.post_batch(node, batch)
    assert resp.status == 200, await resp.text()
    results = (await document(resp))["results"]
    report_id = results[0]["reportId"]
    assert [(r["id"], r["status"], r.get("code"), r.get("reportId")) for r in results] == [
        ("r-0", "applied", None, report_id),  # merged: 201 on its own
        ("r-1", "duplicate", None, report_id),  # 200 duplicate on its own
        ("r-2", "rejected", "report_conflict", report_id),  # 409, naming the stored one
        ("r-3", "rejected", "bad_signature", None),  # 401 on its own
        ("r-4", "rejected", "invalid_report", None),  # 422
        ("r-5", "rejected", "out_of_scope", None),  # 403
        ("r-6", "rejected", "unknown_key", None),  # 401
    ]
    assert len(await events(gateway)) == 1  # one merge, one event
    # The same report posted on its own afterwards is the duplicate of the batch's.
    resp = await post_report(gateway, first)
    assert resp.status == 200 and (await document(resp))["reportId"] == report_id


# --- analytics -------------------------------------------------------------------------------


async def seed_reports(gateway: Gateway) -> None:
    node = await gateway.enroll("edge-01", "t1", ("f-001", "f-002"))
    for facility, period_type, key in [
        ("f-001", "weekly", "2026-W45"),
        ("f-001", "weekly", "2026-W46"),
        ("f-001", "weekly", "2026-W47"),
        ("f-002", "weekly", "2026-W46"),
        ("f-001", "daily", "2026-11-10"),
        ("f-001", "daily", "2026-11-20"),
    ]:
        resp = await post_report(gateway, signed_report(node, period_type, key, facility=facility))
        assert resp.status == 201, await resp.text()
    other = await gateway.enroll("edge-t2", "t2", ("f-001",))
    assert (await post_report(gateway, signed_report(other))).status == 201  # tenant t2


FILTERS = [
    # (query, expected (facility, key) rows): t2's report never shows for t1
    (
        "",
        [
            ("f-001", "2026-11-10"),
            ("f-001", "2026-11-20"),
            ("f-001", "2026-W45"),
            ("f-001", "2026-W46"),
            ("f-001", "2026-W47"),
            ("f-002", "2026-W46"),
        ],
    ),
    ("facilityId=f-002", [("f-002", "2026-W46")]),
    ("periodType=daily", [("f-001", "2026-11-10"), ("f-001", "2026-11-20")]),
    (
        "periodType=weekly&from=2026-W46&to=2026-W47",  # inclusive on both ends
        [("f-001", "2026-W46"), ("f-001", "2026-W47"), ("f-002", "2026-W46")],
    ),
    ("facilityId=f-001&periodType=weekly&to=2026-W45", [("f-001", "2026-W45")]),
    ("periodType=daily&from=2026-11-15", [("f-001", "2026-11-20")]),
    # A range given in daily keys selects daily reports, never weekly ones.
    ("from=2026-11-15", [("f-001", "2026-11-20")]),
    ("from=2026-11-01&to=2026-11-30", [("f-001", "2026-11-10"), ("f-001", "2026-11-20")]),
    ("facilityId=f-404", []),  # no such facility: an empty list, not an error
]


@pytest.mark.parametrize(("query", "expected"), FILTERS, ids=[q or "all" for q, _ in FILTERS])
async def test_analytics_filters(gateway: Gateway, query: str, expected: list[Any]) -> None:
    await seed_reports(gateway)
    analyst = await gateway.token("analyst")
    resp = await gateway.client.get(
        f"{PREFIX}/analytics/facility-reports?{query}", headers=bearer(analyst)
    )
    assert resp.status == 200, await resp.text()
    reports = (await resp.json())["reports"]
    assert sorted((r["facilityId"], r["periodKey"]) for r in reports) == expected
    for r in reports:
        assert set(r) >= {"reportId", "facilityId", "periodType", "periodKey", "deviceId"}
        assert set(r) >= {"metrics", "receivedAt"}
        assert r["metrics"] == METRICS


BAD_FILTERS = [
    "periodType=monthly",  # not a period type
    "from=2026-W99",  # not a week
    "to=yesterday",  # not a period key
    "periodType=daily&from=2026-W40",  # a weekly bound for daily reports
    "from=2026-11-01&to=2026-W47",  # bounds of two different types
    "facilityId=a%20b",  # not an identifier
]


@pytest.mark.parametrize("query", BAD_FILTERS)
async def test_analytics_bad_filters(gateway: Gateway, query: str) -> None:
    await seed_reports(gateway)
    analyst = await gateway.token("analyst")
    resp = await gateway.client.get(
        f"{PREFIX}/analytics/facility-reports?{query}", headers=bearer(analyst)
    )
    await assert_problem(resp, 422, "validation_failed")


async def test_analytics_roles(gateway: Gateway) -> None:
    await seed_reports(gateway)
    for role, status in [("analyst", 200), ("admin", 200), ("service", 403)]:
        token = await gateway.token(role)
        resp = await gateway.client.get(
            f"{PREFIX}/analytics/facility-reports", headers=bearer(token)
        )
        if status == 200:
            assert resp.status == 200 and len((await resp.json())["reports"]) == 6
        else:
            await assert_problem(resp, 403, "forbidden")

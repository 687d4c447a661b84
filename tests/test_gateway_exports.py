"""HMIS (DHIS2) and de-identified export jobs through a live gateway (issue 5).

Reports arrive through ``POST …/sync/facility-reports`` and registry entries
through ``PUT …/registry/entries/{id}`` (service tokens), as in production;
jobs are created and read over HTTP and run by the gateway's own job runner.
The runner's state machine and its restarts are driven directly on a real
SQLite store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from canaries import MARKER, patient_ref
from gateway.app import create_app
from gateway.db.database import Database
from gateway.db.schema import export_downloads, hmis_export_jobs
from gateway.export_jobs import Finish, JobKind, JobRunner
from gateway.settings import Settings
from harness import (
    PREFIX,
    FakeClock,
    Gateway,
    assert_problem,
    bearer,
    report_metrics,
    submit_report,
    token_principal,
)
from shared.values import format_timestamp

HMIS = f"{PREFIX}/hmis-exports"
DEIDENT = f"{PREFIX}/deident-exports"
STAMP = "2026-11-25T12:00:00.000Z"  # the FakeClock's time: every job runs "now"

MAPPING = {
    "dataSet": "pBOMPrpg1QX",
    "orgUnits": {"f-001": "DiszpKrYNg8", "f-002": "FNnj3jKGS7i"},  # f-009 is not mapped
    "dataElements": {
        "patientCount": "f7n9E0hX8qk",
        "encounterCount": {"dataElement": "Ix2HsbDMLea"},
        "screening.due": {"dataElement": "eY5ehpbEsB7", "categoryOptionCombo": "bRowv6yZOF2"},
        "screening.done": {"dataElement": "eY5ehpbEsB7", "categoryOptionCombo": "aBcDeFgHiJ1"},
        "screening.rate": "sCrRate0001",
        "immunization.due": "iMmDue00001",
        "immunization.given": "iMmGiven001",
        # immunization.rate is not mapped: a DHIS2 indicator computes it.
    },
}
DISTRICTS = {"f-001": "north", "f-002": "north", "f-003": "south"}


@pytest.fixture
def gateway_settings(tmp_path: Path, database_url: str) -> Settings:
    mapping = tmp_path / "hmis-mapping.json"
    mapping.write_text(json.dumps(MAPPING))
    districts = tmp_path / "districts.json"
    districts.write_text(json.dumps(DISTRICTS))
    return Settings(
        data_dir=str(tmp_path / "gateway"),
        database_url=database_url,
        hmis_mapping_file=str(mapping),
        facility_districts_file=str(districts),
    )


def replace_file(path: Path, content: Any) -> None:
    """Write ``content`` as the JSON file at ``path`` (None: remove it)."""
    if content is None:
        path.unlink()
    else:
        path.write_text(json.dumps(content))


async def finished(gateway: Gateway, token: str, path: str) -> dict[str, Any]:
    """The job once the runner is done with it."""
    for _ in range(400):
        resp = await gateway.client.get(path, headers=bearer(token))
        assert resp.status == 200, await resp.text()
        job: dict[str, Any] = await resp.json()
        if job["state"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.025)
    raise AssertionError(f"{path} did not finish: {job}")


async def downloads(gateway: Gateway) -> list[tuple[str, str, int, str | None]]:
    async with gateway.database.read() as conn:
        rows = await conn.execute(sa.select(export_downloads).order_by(export_downloads.c.seq))
        return [(r.job_id, r.principal, r.status, r.code) for r in rows]


# --- HMIS ------------------------------------------------------------------


async def hmis_world(gateway: Gateway) -> None:
    edge1 = await gateway.enroll("edge-01", "t1", ("f-001",))
    edge2 = await gateway.enroll("edge-02", "t1", ("f-002",))
    edge9 = await gateway.enroll("edge-09", "t1", ("f-009",))
    await submit_report(
        gateway, edge1, "f-001", "2026-W47", report_metrics(41, 57, (20, 15), (12, 9))
    )
    await submit_report(gateway, edge2, "f-002", "2026-W47", report_metrics(10, 12, (5, 1), (0, 0)))
    await submit_report(gateway, edge9, "f-009", "2026-W47", report_metrics(3, 3, (1, 1), (1, 1)))
    # Another week: not in a 2026-W47 export.
    await submit_report(gateway, edge1, "f-001", "2026-W46", report_metrics(9, 9, (1, 1), (1, 1)))


def value(element: str, org_unit: str, text: str, combo: str | None = None) -> dict[str, str]:
    out = {"dataElement": element, "period": "2026W47", "orgUnit": org_unit}
    if combo is not None:
        out["categoryOptionCombo"] = combo
    out["value"] = text
    return out


# Ordered by orgUnit (DiszpKrYNg8 < FNnj3jKGS7i), then metric in METRIC_PATHS order.
EXPECTED_DOCUMENT = {
    "dataValues": [
        value("f7n9E0hX8qk", "DiszpKrYNg8", "41"),
        value("Ix2HsbDMLea", "DiszpKrYNg8", "57"),
        value("eY5ehpbEsB7", "DiszpKrYNg8", "20", "bRowv6yZOF2"),
        value("eY5ehpbEsB7", "DiszpKrYNg8", "15", "aBcDeFgHiJ1"),
        value("sCrRate0001", "DiszpKrYNg8", "0.75"),
        value("iMmDue00001", "DiszpKrYNg8", "12"),
        value("iMmGiven001", "DiszpKrYNg8", "9"),
        value("f7n9E0hX8qk", "FNnj3jKGS7i", "10"),
        value("Ix2HsbDMLea", "FNnj3jKGS7i", "12"),
        value("eY5ehpbEsB7", "FNnj3jKGS7i", "5", "bRowv6yZOF2"),
        value("eY5ehpbEsB7", "FNnj3jKGS7i", "1", "aBcDeFgHiJ1"),
        value("sCrRate0001", "FNnj3jKGS7i", "0.2"),
        value("iMmDue00001", "FNnj3jKGS7i", "0"),  # a 0 count is exported
        value("iMmGiven001", "FNnj3jKGS7i", "0"),
    ]
}
EXPECTED_SKIPPED = [
    {
        "reason": "unmapped_metric",
        "facilityId": None,
        "periodKey": None,
        "metric": "immunization.rate",
        "detail": "no data element is mapped for immunization.rate",
    },
    {
        "reason": "unmapped_facility",
        "facilityId": "f-009",
        "periodKey": "2026-W47",
        "metric": None,
        "detail": "no orgUnit is mapped for the facility",
    },
]


async def create_hmis(gateway: Gateway, token: str, key: str = "2026-W47", **headers: str) -> Any:
    return await gateway.client.post(
        HMIS, json={"periodType": "weekly", "periodKey": key}, headers=bearer(token, **headers)
    )


async def test_hmis_export_of_known_reports(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    await hmis_world(gateway)
    resp = await create_hmis(gateway, admin)
    assert resp.status == 202, await resp.text()
    queued = await resp.json()
    job_path = f"{HMIS}/{queued['id']}"
    assert resp.headers["Location"] == job_path
    assert queued == {
        "id": queued["id"],
        "kind": "hmis_export_job",
        "state": "queued",
        "periodType": "weekly",
        "periodKey": "2026-W47",
        "createdBy": token_principal(admin),
        "createdAt": STAMP,
        "startedAt": None,
        "finishedAt": None,
        "skipped": [],
        "error": None,
        "document": None,
    }
    job = await finished(gateway, admin, job_path)
    expected_bytes = json.dumps(EXPECTED_DOCUMENT, separators=(",", ":")).encode()
    assert job == {
        **queued,
        "state": "succeeded",
        "startedAt": STAMP,
        "finishedAt": STAMP,
        "skipped": EXPECTED_SKIPPED,
        "document": {
            "mediaType": "application/json",
            "sha256": hashlib.sha256(expected_bytes).hexdigest(),
            "bytes": len(expected_bytes),
        },
    }
    resp = await gateway.client.get(f"{job_path}/document", headers=bearer(admin))
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.read()
    assert body == expected_bytes  # the exact document, byte for byte
    assert resp.headers["X-Content-SHA256"] == job["document"]["sha256"]
    assert await downloads(gateway) == [(queued["id"], token_principal(admin), 200, None)]
    async with gateway.database.read() as conn:
        row = (await conn.execute(sa.select(hmis_export_jobs))).one()
    assert row.mapping["orgUnits"] == MAPPING["orgUnits"]  # the mapping the job used


async def test_hmis_mapping_is_read_when_the_job_runs(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    admin = await gateway.token("admin")
    await hmis_world(gateway)
    mapping = Path(gateway_settings.hmis_mapping_file)

    replace_file(mapping, None)  # missing
    job = await finished(
        gateway, admin, f"{HMIS}/{(await (await create_hmis(gateway, admin)).json())['id']}"
    )
    assert job["state"] == "failed" and job["document"] is None
    assert job["error"]["code"] == "hmis_mapping_unreadable"
    assert str(mapping) in job["error"]["message"]

    replace_file(mapping, {"orgUnits": {"f-001": "short"}})  # invalid
    job = await finished(
        gateway, admin, f"{HMIS}/{(await (await create_hmis(gateway, admin)).json())['id']}"
    )
    assert job["error"]["code"] == "hmis_mapping_invalid"
    assert [e["path"] for e in job["error"]["errors"]] == ["/dataElements", "/orgUnits/f-001"]

    # The failed job has nothing to download: 409 naming its state, audited.
    resp = await gateway.client.get(f"{HMIS}/{job['id']}/document", headers=bearer(admin))
    problem = await assert_problem(resp, 409, "export_not_downloadable")
    assert problem["state"] == "failed"
    assert (await downloads(gateway))[-1] == (
        job["id"],
        token_principal(admin),
        409,
        "export_not_downloadable",
    )

    replace_file(mapping, MAPPING)  # fixed: the next job succeeds, no restart
    job = await finished(
        gateway, admin, f"{HMIS}/{(await (await create_hmis(gateway, admin)).json())['id']}"
    )
    assert job["state"] == "succeeded" and job["skipped"] == EXPECTED_SKIPPED


async def test_hmis_job_fails_without_a_configured_mapping(
    clock: FakeClock, tmp_path: Path, database_url: str
) -> None:
    settings = Settings(data_dir=str(tmp_path / "gw"), database_url=database_url)
    async with TestClient(TestServer(create_app(settings, clock))) as client:
        gateway = Gateway(client, clock)
        admin = await gateway.token("admin")
        resp = await create_hmis(gateway, admin)
        job = await finished(gateway, admin, f"{HMIS}/{(await resp.json())['id']}")
    assert (job["state"], job["error"]["code"]) == ("failed", "hmis_mapping_not_configured")
    assert "hmis_mapping_file" in job["error"]["message"]


async def test_export_roles_tenants_and_idempotency(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    analyst = await gateway.token("analyst")
    service = await gateway.token("service")
    admin2 = await gateway.token("admin", tenant="t2")
    for token in (analyst, service):
        await assert_problem(await create_hmis(gateway, token), 403, "policy_server_authoritative")
        resp = await gateway.client.post(DEIDENT, json={}, headers=bearer(token))
        await assert_problem(resp, 403, "policy_server_authoritative")
    counts = await gateway.table_counts()
    assert counts["hmis_export_jobs"] == counts["deident_export_jobs"] == 0
    assert counts["refused_writes"] == 4  # every refusal recorded

    # An Idempotency-Key replay answers the same job and creates no other.
    first = await create_hmis(gateway, admin, **{"Idempotency-Key": "hmis-1"})
    again = await create_hmis(gateway, admin, **{"Idempotency-Key": "hmis-1"})
    assert again.headers["Idempotent-Replayed"] == "true"
    job_id = (await first.json())["id"]
    assert (await again.json())["id"] == job_id
    assert (await gateway.table_counts())["hmis_export_jobs"] == 1
    await finished(gateway, admin, f"{HMIS}/{job_id}")

    resp = await gateway.client.get(f"{HMIS}/{job_id}", headers=bearer(analyst))
    await assert_problem(resp, 403, "forbidden")  # jobs are the admins'
    resp = await gateway.client.get(f"{HMIS}/{job_id}", headers=bearer(admin2))
    await assert_problem(resp, 404, "not_found")  # another tenant's job
    # Refused downloads are audited like served ones.
    resp = await gateway.client.get(f"{HMIS}/{job_id}/document", headers=bearer(analyst))
    await assert_problem(resp, 403, "forbidden")
    resp = await gateway.client.get(f"{HMIS}/{job_id}/document", headers=bearer(admin2))
    await assert_problem(resp, 404, "not_found")
    resp = await gateway.client.get(f"{HMIS}/{job_id}/document")
    await assert_problem(resp, 401, "unauthenticated")  # no principal: nothing to record
    assert await downloads(gateway) == [
        (job_id, token_principal(analyst), 403, "forbidden"),
        (job_id, token_principal(admin2), 404, "not_found"),
    ]
    resp = await gateway.client.post(
        HMIS, json={"periodType": "weekly", "periodKey": "2025-W53"}, headers=bearer(admin)
    )
    await assert_problem(resp, 422, "validation_failed")


# --- The job runner ----------------------------------------------------------


async def insert_job(db: Database, job_id: str, state: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            hmis_export_jobs.insert().values(
                id=job_id,
                tenant_id="t1",
                period_type="weekly",
                period_key="2026-W47",
                state=state,
                created_by="token:test",
                created_at=STAMP,
            )
        )


async def job_row(db: Database, job_id: str) -> Any:
    async with db.read() as conn:
        return (
            await conn.execute(sa.select(hmis_export_jobs).where(hmis_export_jobs.c.id == job_id))
        ).one()


def gated_kind() -> tuple[JobKind, asyncio.Event, asyncio.Event]:
    """An HMIS job kind whose run says it has started (``entered``) and then
    waits for ``release`` before it succeeds: the test holds a job running."""
    entered = asyncio.Event()
    release = asyncio.Event()

    async def gated(database: Database, job: Any, settings: Settings) -> Finish:
        entered.set()
        await release.wait()
        return Finish("succeeded", {"result": b"{}", "result_sha256": "x"})

    return JobKind("hmis_export_job", hmis_export_jobs, gated), entered, release


async def test_runner_states_graceful_stop_and_crash_recovery(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings(data_dir=str(tmp_path), database_url=database_url)
    db = Database(settings.sqlalchemy_url())
    await db.migrate()
    clock = FakeClock()
    kind, entered, release = gated_kind()
    try:
        # queued -> running -> succeeded, with the clock's times.
        await insert_job(db, "j1", "queued")
        runner = JobRunner(db, settings, clock, [kind])
        task = asyncio.create_task(runner.run_pending())
        await entered.wait()
        row = await job_row(db, "j1")
        assert (row.state, row.started_at, row.finished_at) == ("running", STAMP, None)
        clock.advance(5)
        release.set()
        assert await task == 1
        row = await job_row(db, "j1")
        assert (row.state, row.finished_at) == ("succeeded", "2026-11-25T12:00:05.000Z")

        # A graceful stop that outlasts its grace puts the running job back in the queue.
        entered.clear()
        release.clear()
        await insert_job(db, "j2", "queued")
        runner = JobRunner(db, settings, clock, [kind], stop_grace_seconds=0.05)
        serving = asyncio.create_task(runner.serve())
        await entered.wait()
        await runner.stop(serving)
        row = await job_row(db, "j2")
        assert (row.state, row.started_at) == ("queued", None)

        # A crash leaves a job running: the next start fails it, with the reason.
        await insert_job(db, "j3", "running")
        assert await JobRunner(db, settings, clock, [kind]).recover() == 1
        row = await job_row(db, "j3")
        assert row.state == "failed"
        assert row.reasons == [
            {
                "code": "interrupted",
                "message": "the gateway stopped while the job ran; create a new job",
            }
        ]
    finally:
        await db.close()


async def test_runners_of_several_processes_leave_each_others_jobs_alone(
    tmp_path: Path, database_url: str
) -> None:
    """Two runners on one store (two gateway processes): a job running under a
    live lease is not failed by the other runner; once the lease runs out (its
    runner crashed and renews nothing), whichever runner looks fails it."""
    settings = Settings(data_dir=str(tmp_path), database_url=database_url)
    db = Database(settings.sqlalchemy_url())
    await db.migrate()
    clock = FakeClock()
    kind, entered, release = gated_kind()
    try:
        await insert_job(db, "j1", "queued")
        first = JobRunner(db, settings, clock, [kind])
        second = JobRunner(db, settings, clock, [kind])
        task = asyncio.create_task(first.run_pending())
        await entered.wait()
        row = await job_row(db, "j1")
        assert (row.state, row.runner_id) == ("running", first.runner_id)
        assert await second.recover() == 0  # a live lease: not the other's to touch
        assert await second.run_pending() == 0  # and not claimed twice
        release.set()
        assert await task == 1
        assert (await job_row(db, "j1")).state == "succeeded"

        # A runner that died mid-job: its lease runs out, and the other fails the job.
        await insert_job(db, "j2", "queued")
        entered.clear()
        release.clear()
        crashed = asyncio.create_task(first.run_pending())
        await entered.wait()
        crashed.cancel()  # stands in for SIGKILL: ...
        with contextlib.suppress(asyncio.CancelledError):
            await crashed
        async with db.write() as conn:  # ... which would not have requeued the job
            await conn.execute(
                hmis_export_jobs.update()
                .where(hmis_export_jobs.c.id == "j2")
                .values(
                    state="running", lease_until=format_timestamp(clock() + timedelta(seconds=60))
                )
            )
        assert await second.recover() == 0
        clock.advance(61)
        assert await second.recover() == 1
        row = await job_row(db, "j2")
        assert (row.state, row.reasons[0]["code"]) == ("failed", "interrupted")
    finally:
        await db.close()


async def test_queued_and_running_jobs_found_at_start(
    gateway: Gateway, gateway_settings: Settings, clock: FakeClock
) -> None:
    admin = await gateway.token("admin")
    await hmis_world(gateway)
    await insert_job(gateway.database, "hmis_crashed", "running")  # cut off by a crash
    await insert_job(gateway.database, "hmis_waiting", "queued")  # never started
    await gateway.client.close()  # the gateway stops ...

    # ... and starts again
    async with TestClient(TestServer(create_app(gateway_settings, clock))) as client:
        restarted = Gateway(client, clock)
        crashed = await finished(restarted, admin, f"{HMIS}/hmis_crashed")
        waiting = await finished(restarted, admin, f"{HMIS}/hmis_waiting")
    assert (crashed["state"], crashed["error"]["code"]) == ("failed", "interrupted")
    assert waiting["state"] == "succeeded" and waiting["skipped"] == EXPECTED_SKIPPED


# --- De-identified extracts ---------------------------------------------------


def entry(entry_id: str, facility: str, sex: str, birth: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": entry_id,
        "facilityId": facility,
        "patientRef": patient_ref(entry_id),
        "sex": sex,
        "birthDate": birth,
        **extra,
    }


def woman(n: int, facility: str = "f-001") -> dict[str, Any]:
    # 40 on 2026-11-25: band 35-44.
    return entry(
        f"w{n}",
        facility,
        "female",
        "1986-01-10",
        conditions=[{"code": "E11.9", "onset": "2018-07-03"}],
        lastScreeningDate="2026-10-02",
    )


def old_man(n: int) -> dict[str, Any]:
    # 70 on 2026-11-25: band 65+.
    return entry(f"m{n}", "f-003", "male", "1956-03-01", conditions=[{"code": "I10"}])


async def put_entries(gateway: Gateway, tenant: str, entries: list[dict[str, Any]]) -> None:
    service = await gateway.token("service", tenant=tenant)
    for body in entries:
        resp = await gateway.client.put(
            f"{PREFIX}/registry/entries/{body['id']}", json=body, headers=bearer(service)
        )
        assert resp.status == 201, await resp.text()


WOMAN_ROW = {
    "ageBand": "35-44",
    "sex": "female",
    "district": "north",
    "conditions": [{"group": "E11", "onsetMonth": "2018-07"}],
    "lastScreeningMonth": "2026-10",
    "lastImmunizationMonth": None,
}
OLD_MAN_ROW = {
    "ageBand": "65+",
    "sex": "male",
    "district": "south",
    "conditions": [{"group": "I10", "onsetMonth": None}],
    "lastScreeningMonth": None,
    "lastImmunizationMonth": None,
}
QUASI = ["ageBand", "sex", "district"]


async def test_deident_released_and_blocked(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    analyst = await gateway.token("analyst")
    # t1: two classes of five (women 35-44 in the north, men 65+ in the south).
    await put_entries(gateway, "t1", [woman(n, "f-001" if n % 2 else "f-002") for n in range(5)])
    await put_entries(gateway, "t1", [old_man(n) for n in range(5)])
    resp = await gateway.client.post(DEIDENT, json={}, headers=bearer(admin))
    assert resp.status == 202, await resp.text()
    queued = await resp.json()
    assert resp.headers["Location"] == f"{DEIDENT}/{queued['id']}"
    assert queued == {
        "id": queued["id"],
        "kind": "deident_export_job",
        "state": "queued",
        "cohortId": None,
        "cohortVersion": None,
        "asOf": "2026-11-25",  # the gateway's date
        "k": 5,  # deident_k
        "maxSuppressedShare": 0.05,
        "quasiIdentifiers": QUASI,
        "createdBy": token_principal(admin),
        "createdAt": STAMP,
        "startedAt": None,
        "finishedAt": None,
        "summary": None,
        "reasons": [],
        "download": None,
    }
    job = await finished(gateway, admin, f"{DEIDENT}/{queued['id']}")
    summary = {
        "status": "released",
        "k": 5,
        "quasiIdentifiers": QUASI,
        "total": 10,
        "suppressed": 0,
        "suppressedClasses": 0,
        "released": 10,
        "reasons": [],
    }
    expected = {
        "jobId": queued["id"],
        "asOf": "2026-11-25",
        "cohortId": None,
        "cohortVersion": None,
        **summary,
        "rows": [WOMAN_ROW] * 5 + [OLD_MAN_ROW] * 5,  # sorted by content
    }
    expected_bytes = json.dumps(expected, separators=(",", ":")).encode()
    assert job == {
        **queued,
        "state": "released",
        "startedAt": STAMP,
        "finishedAt": STAMP,
        "summary": summary,
        "download": {
            "mediaType": "application/json",
            "sha256": hashlib.sha256(expected_bytes).hexdigest(),
            "bytes": len(expected_bytes),
        },
    }
    resp = await gateway.client.get(f"{DEIDENT}/{queued['id']}/download", headers=bearer(admin))
    assert resp.status == 200
    body = await resp.read()
    assert body == expected_bytes
    assert MARKER.encode() not in body and b'"w1"' not in body  # no patientRef, no entry id

    # t2: five women and one man of 30: his class of one is 1 of 6 rows (16.7%) > 5%.
    admin2 = await gateway.token("admin", tenant="t2")
    await put_entries(
        gateway, "t2", [*(woman(n) for n in range(5)), entry("x1", "f-003", "male", "1996-05-05")]
    )
    resp = await gateway.client.post(DEIDENT, json={}, headers=bearer(admin2))
    blocked = await finished(gateway, admin2, f"{DEIDENT}/{(await resp.json())['id']}")
    reasons = [
        {
            "code": "too_much_suppressed",
            "detail": "1 of 6 rows (16.7%) fall in classes smaller than k=5; "
            "at most 5.0% may be suppressed",
        }
    ]
    assert (blocked["state"], blocked["reasons"], blocked["download"]) == (
        "blocked",
        reasons,
        None,
    )
    assert blocked["summary"] == {
        "status": "blocked",
        "k": 5,
        "quasiIdentifiers": QUASI,
        "total": 6,
        "suppressed": 1,
        "suppressedClasses": 1,
        "released": 0,
        "reasons": reasons,
    }
    resp = await gateway.client.get(f"{DEIDENT}/{blocked['id']}/download", headers=bearer(admin2))
    problem = await assert_problem(resp, 409, "export_not_downloadable")
    assert problem["state"] == "blocked"
    resp = await gateway.client.get(f"{DEIDENT}/{queued['id']}/download", headers=bearer(analyst))
    await assert_problem(resp, 403, "forbidden")

    # Every attempt, served or refused, with who and when.
    async with gateway.database.read() as conn:
        rows = (
            await conn.execute(sa.select(export_downloads).order_by(export_downloads.c.seq))
        ).all()
    assert [
        (r.tenant_id, r.job_kind, r.job_id, r.principal, r.status, r.code, r.downloaded_at)
        for r in rows
    ] == [
        ("t1", "deident_export_job", queued["id"], token_principal(admin), 200, None, STAMP),
        (
            "t2",
            "deident_export_job",
            blocked["id"],
            token_principal(admin2),
            409,
            "export_not_downloadable",
            STAMP,
        ),
        (
            "t1",
            "deident_export_job",
            queued["id"],
            token_principal(analyst),
            403,
            "forbidden",
            STAMP,
        ),
    ]
    assert (rows[0].result_sha256, rows[0].bytes) == (
        job["download"]["sha256"],
        len(expected_bytes),
    )


async def test_deident_of_a_cohort_and_request_checks(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    await put_entries(gateway, "t1", [woman(n) for n in range(5)])
    await put_entries(gateway, "t1", [old_man(n) for n in range(5)])
    resp = await gateway.client.post(
        f"{PREFIX}/cohorts",
        json={
            "cohortId": "women",
            "name": "Women",
            "definition": {"field": "sex", "op": "eq", "value": "female"},
        },
        headers=bearer(admin),
    )
    assert resp.status == 201, await resp.text()
    resp = await gateway.client.post(DEIDENT, json={"cohortId": "women"}, headers=bearer(admin))
    assert resp.status == 202, await resp.text()
    job = await finished(gateway, admin, f"{DEIDENT}/{(await resp.json())['id']}")
    assert (job["state"], job["cohortId"], job["cohortVersion"]) == ("released", "women", 1)
    assert (job["summary"]["total"], job["summary"]["released"]) == (5, 5)  # the members only
    resp = await gateway.client.get(f"{DEIDENT}/{job['id']}/download", headers=bearer(admin))
    assert json.loads(await resp.read())["rows"] == [WOMAN_ROW] * 5

    # k above the setting: classes of five are too small for k=6.
    resp = await gateway.client.post(
        DEIDENT, json={"k": 6, "asOf": "2026-01-01"}, headers=bearer(admin)
    )
    job = await finished(gateway, admin, f"{DEIDENT}/{(await resp.json())['id']}")
    assert (job["state"], job["k"], job["asOf"]) == ("blocked", 6, "2026-01-01")
    assert [r["code"] for r in job["reasons"]] == ["too_much_suppressed", "too_few_rows"]

    for body in (
        {"k": 4},  # below deident_k: a request cannot weaken the configured k
        {"k": "5"},
        {"asOf": "2026-11-26"},  # after today
        {"asOf": "2026-02-30"},
        {"cohortId": "nobody"},  # no such cohort in the tenant
        {"rows": []},  # unknown field
    ):
        resp = await gateway.client.post(DEIDENT, json=body, headers=bearer(admin))
        await assert_problem(resp, 422, "validation_failed")
    assert (await gateway.table_counts())["deident_export_jobs"] == 2


async def test_deident_job_fails_on_a_bad_districts_file(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    admin = await gateway.token("admin")
    replace_file(Path(gateway_settings.facility_districts_file), ["north"])
    resp = await gateway.client.post(DEIDENT, json={}, headers=bearer(admin))
    job = await finished(gateway, admin, f"{DEIDENT}/{(await resp.json())['id']}")
    assert job["state"] == "failed" and job["summary"] is None
    assert [r["code"] for r in job["reasons"]] == ["facility_districts_invalid"]
    resp = await gateway.client.get(f"{DEIDENT}/{job['id']}/download", headers=bearer(admin))
    assert (await assert_problem(resp, 409, "export_not_downloadable"))["state"] == "failed"


# --- Together, with concurrent snapshot requests (row locks on PostgreSQL) ------


async def test_snapshot_and_exports_with_concurrent_requests(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    await hmis_world(gateway)
    resp = await gateway.client.post(
        f"{PREFIX}/quality-snapshots",
        json={"periodType": "weekly", "periodKey": "2026-W47"},
        headers=bearer(admin),
    )
    assert resp.status == 201, await resp.text()
    snapshot = await resp.json()
    assert snapshot["coverage"] == {"enrolled": 3, "reporting": 3, "rate": 1.0}
    resp = await gateway.client.post(
        f"{PREFIX}/quality-snapshots",
        json={"periodType": "weekly", "periodKey": "2026-W47"},
        headers=bearer(admin),
    )
    assert resp.status == 200 and await resp.json() == snapshot
    # Two requests at once for one period: one stores it, the other answers it.
    both = await asyncio.gather(
        *(
            gateway.client.post(
                f"{PREFIX}/quality-snapshots",
                json={"periodType": "weekly", "periodKey": "2026-W46"},
                headers=bearer(admin),
            )
            for _ in range(2)
        )
    )
    assert sorted(r.status for r in both) == [200, 201]

    job = await finished(
        gateway, admin, f"{HMIS}/{(await (await create_hmis(gateway, admin)).json())['id']}"
    )
    resp = await gateway.client.get(f"{HMIS}/{job['id']}/document", headers=bearer(admin))
    assert await resp.read() == json.dumps(EXPECTED_DOCUMENT, separators=(",", ":")).encode()

    await put_entries(gateway, "t1", [woman(n) for n in range(5)])
    await put_entries(gateway, "t1", [old_man(n) for n in range(5)])
    resp = await gateway.client.post(DEIDENT, json={}, headers=bearer(admin))
    job = await finished(gateway, admin, f"{DEIDENT}/{(await resp.json())['id']}")
    assert job["state"] == "released"
    resp = await gateway.client.get(f"{DEIDENT}/{job['id']}/download", headers=bearer(admin))
    assert json.loads(await resp.read())["rows"] == [WOMAN_ROW] * 5 + [OLD_MAN_ROW] * 5
    assert [(d[2], d[3]) for d in await downloads(gateway)] == [(200, None), (200, None)]

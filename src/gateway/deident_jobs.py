"""De-identified export jobs (``deident_export_job``): registry extracts with k-anonymity.

An admin creates a job (``parse_request``, ``create_job``): the whole
registry of their tenant, or the current members of one cohort (its latest
version, pinned when the job is created). Everything that decides the
outcome but the data is fixed then too, in ``params``: the extract date
``asOf`` (default: the gateway's date), ``k`` (default the setting
``deident_k``, which is also the least a request may ask for) and the
largest suppressed share (the setting ``deident_max_suppressed_share``).

The ``JobRunner`` runs it (``run_job``): it reads the facility → district
file (setting ``facility_districts_file``) and the live registry entries,
calls ``shared.deident.deidentify`` and stores the outcome: ``released``
with its rows (the only result that can be downloaded), or ``blocked`` with
its reasons and no rows. ``summary`` keeps the counts of either.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.database import Database
from gateway.db.schema import cohort_memberships, cohorts, deident_export_jobs, registry_entries
from gateway.export_jobs import QUEUED, Finish, JobFailed, JobKind, read_json_file
from gateway.settings import Settings
from shared.deident import DEFAULT_QUASI_IDENTIFIERS, DeidentResult, deidentify
from shared.errors import NotFound, ValidationFailed
from shared.registry import RegistryEntry, parse_date, parse_registry_entry
from shared.values import format_timestamp, identifier, integer, only_fields

KIND = "deident_export_job"
RELEASED = "released"
BLOCKED = "blocked"
MEDIA_TYPE = "application/json"
MAX_K = 1000
REQUEST_FIELDS = frozenset({"cohortId", "asOf", "k"})


def parse_request(doc: Mapping[str, Any], settings: Settings, today: date) -> dict[str, Any]:
    """The job's parameters from a request body (cohort version not yet known)."""
    only_fields(doc, REQUEST_FIELDS, "de-identified export request")
    cohort = doc.get("cohortId")
    raw_as_of = doc.get("asOf")
    as_of = today if raw_as_of is None else parse_date(raw_as_of, "asOf")
    if as_of > today:
        raise ValidationFailed("asOf must not be after today", field="asOf")
    raw_k = doc.get("k")
    floor = max(2, settings.deident_k)
    k = floor if raw_k is None else integer(raw_k, "k", minimum=floor)
    if k > MAX_K:
        raise ValidationFailed(f"k must be at most {MAX_K}", field="k")
    return {
        "cohortId": None if cohort is None else identifier(cohort, "cohortId"),
        "cohortVersion": None,
        "asOf": as_of.isoformat(),
        "k": k,
        "maxSuppressedShare": settings.deident_max_suppressed_share,
        "quasiIdentifiers": list(DEFAULT_QUASI_IDENTIFIERS),
    }


async def create_job(
    conn: AsyncConnection,
    tenant_id: str,
    params: dict[str, Any],
    created_by: str,
    moment: datetime,
) -> dict[str, Any]:
    cohort_id = params["cohortId"]
    if cohort_id is not None:
        version = (
            await conn.execute(
                sa.select(cohorts.c.latest_version).where(
                    cohorts.c.tenant_id == tenant_id, cohorts.c.cohort_id == cohort_id
                )
            )
        ).scalar_one_or_none()
        if version is None:
            raise ValidationFailed(f"no cohort {cohort_id} in this tenant", field="cohortId")
        params = {**params, "cohortVersion": version}
    job_id = f"deid_{uuid.uuid4().hex}"
    await conn.execute(
        deident_export_jobs.insert().values(
            id=job_id,
            tenant_id=tenant_id,
            cohort_id=cohort_id,
            cohort_version=params["cohortVersion"],
            k=params["k"],
            params=params,
            state=QUEUED,
            created_by=created_by,
            created_at=format_timestamp(moment),
        )
    )
    return await get_job(conn, tenant_id, job_id)


async def get_job(conn: AsyncConnection, tenant_id: str, job_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(
            sa.select(deident_export_jobs).where(
                deident_export_jobs.c.id == job_id, deident_export_jobs.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"no {KIND} {job_id[:128]}")
    return job_to_wire(row)


def job_to_wire(row: Any) -> dict[str, Any]:
    params = row.params
    released = row.state == RELEASED and row.result is not None
    return {
        "id": row.id,
        "kind": KIND,
        "state": row.state,
        "cohortId": row.cohort_id,
        "cohortVersion": row.cohort_version,
        "asOf": params["asOf"],
        "k": row.k,
        "maxSuppressedShare": params["maxSuppressedShare"],
        "quasiIdentifiers": params["quasiIdentifiers"],
        "createdBy": row.created_by,
        "createdAt": row.created_at,
        "startedAt": row.started_at,
        "finishedAt": row.finished_at,
        "summary": row.summary,
        "reasons": list(row.reasons or []),
        "download": (
            {
                "mediaType": row.result_media_type,
                "sha256": row.result_sha256,
                "bytes": len(row.result),
            }
            if released
            else None
        ),
    }


def load_districts(path: str) -> dict[str, str]:
    raw = read_json_file(path, "facility_districts", "facility_districts_file")
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and 0 < len(v) <= 128 for k, v in raw.items()
    ):
        raise JobFailed(
            "facility_districts_invalid",
            f"facility_districts_file {path} must be one object of facility id → district "
            "name (a string of 1-128 characters)",
        )
    return raw


async def _entries(conn: AsyncConnection, tenant_id: str) -> list[RegistryEntry]:
    rows = await conn.execute(
        sa.select(registry_entries.c.data)
        .where(registry_entries.c.tenant_id == tenant_id, registry_entries.c.deleted_at.is_(None))
        .order_by(registry_entries.c.id)
    )
    return [parse_registry_entry(r.data) for r in rows]


async def _members(conn: AsyncConnection, tenant_id: str, cohort_id: str, version: int) -> set[str]:
    rows = await conn.execute(
        sa.select(cohort_memberships.c.entry_id).where(
            cohort_memberships.c.tenant_id == tenant_id,
            cohort_memberships.c.cohort_id == cohort_id,
            cohort_memberships.c.version == version,
        )
    )
    return {r.entry_id for r in rows}


def encode_extract(job: Any, result: DeidentResult) -> bytes:
    document = {
        "jobId": job.id,
        "asOf": job.params["asOf"],
        "cohortId": job.cohort_id,
        "cohortVersion": job.cohort_version,
        **result.to_wire(),
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def run_job(database: Database, job: Any, settings: Settings) -> Finish:
    params = job.params
    districts = load_districts(settings.facility_districts_file)
    async with database.read() as conn:
        entries = await _entries(conn, job.tenant_id)
        members = (
            None
            if job.cohort_id is None
            else await _members(conn, job.tenant_id, job.cohort_id, job.cohort_version)
        )
    # Pure and CPU-bound over a whole registry: off the event loop.
    result = await asyncio.to_thread(
        deidentify,
        entries,
        districts,
        date.fromisoformat(params["asOf"]),
        member_ids=members,
        k=params["k"],
        max_suppressed_share=params["maxSuppressedShare"],
        quasi_identifiers=params["quasiIdentifiers"],
    )
    summary = {key: value for key, value in result.to_wire().items() if key != "rows"}
    reasons = [r.to_wire() for r in result.reasons]
    if not result.released:
        return Finish(BLOCKED, {"summary": summary, "reasons": reasons})
    body = encode_extract(job, result)
    return Finish(
        RELEASED,
        {
            "summary": summary,
            "reasons": reasons,
            "result": body,
            "result_media_type": MEDIA_TYPE,
            "result_sha256": hashlib.sha256(body).hexdigest(),
        },
    )


DEIDENT_JOBS = JobKind(KIND, deident_export_jobs, run_job)

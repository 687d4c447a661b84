"""HMIS export jobs (``hmis_export_job``): a period's merged reports as DHIS2 JSON.

An admin creates a job for one period of their tenant (``create_job``); the
``JobRunner`` runs it (``run_job``): it reads the mapping file named by the
setting ``hmis_mapping_file`` *when it runs*, the tenant's merged reports of
the period, and stores ``shared.hmis.data_value_sets``' document as the
job's result, with the mapping it used. Skipped items (docs/exports.md) are
kept in the row's ``reasons`` of a succeeded job; a failed job's ``reasons``
holds the one reason it failed (``hmis_mapping_not_configured``,
``hmis_mapping_unreadable``, ``hmis_mapping_invalid`` with the mapping's
``errors``, ``interrupted``, ``internal_error``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.database import Database
from gateway.db.schema import facility_reports, hmis_export_jobs
from gateway.export_jobs import QUEUED, Finish, JobFailed, JobKind, read_json_file
from gateway.settings import Settings
from shared.errors import NotFound, ValidationFailed
from shared.hmis import HmisMapping, data_value_sets, hmis_mapping_to_wire, parse_hmis_mapping
from shared.periods import Period, parse_period
from shared.reports import FacilityReport
from shared.values import format_timestamp, parse_timestamp

KIND = "hmis_export_job"
SUCCEEDED = "succeeded"
MEDIA_TYPE = "application/json"


async def create_job(
    conn: AsyncConnection, tenant_id: str, period: Period, created_by: str, moment: datetime
) -> dict[str, Any]:
    row = {
        "id": f"hmis_{uuid.uuid4().hex}",
        "tenant_id": tenant_id,
        "period_type": period.type.value,
        "period_key": period.key,
        "state": QUEUED,
        "created_by": created_by,
        "created_at": format_timestamp(moment),
    }
    await conn.execute(hmis_export_jobs.insert().values(**row))
    return await get_job(conn, tenant_id, row["id"])


async def get_job(conn: AsyncConnection, tenant_id: str, job_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(
            sa.select(hmis_export_jobs).where(
                hmis_export_jobs.c.id == job_id, hmis_export_jobs.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"no {KIND} {job_id[:128]}")
    return job_to_wire(row)


def job_to_wire(row: Any) -> dict[str, Any]:
    succeeded = row.state == SUCCEEDED
    return {
        "id": row.id,
        "kind": KIND,
        "state": row.state,
        "periodType": row.period_type,
        "periodKey": row.period_key,
        "createdBy": row.created_by,
        "createdAt": row.created_at,
        "startedAt": row.started_at,
        "finishedAt": row.finished_at,
        "skipped": list(row.reasons or []) if succeeded else [],
        "error": (row.reasons or [None])[0] if row.state == "failed" else None,
        "document": (
            {
                "mediaType": row.result_media_type,
                "sha256": row.result_sha256,
                "bytes": len(row.result),
            }
            if succeeded and row.result is not None
            else None
        ),
    }


def load_mapping(path: str) -> HmisMapping:
    raw = read_json_file(path, "hmis_mapping", "hmis_mapping_file")
    try:
        return parse_hmis_mapping(raw)
    except ValidationFailed as err:
        raise JobFailed(
            "hmis_mapping_invalid",
            f"hmis_mapping_file {path}: {err.detail}",
            errors=err.extra.get("errors", []),
        ) from err


def _report(row: Any) -> FacilityReport:
    return FacilityReport(
        tenant_id=row.tenant_id,
        facility_id=row.facility_id,
        device_id=row.device_id,
        period=parse_period(row.period_type, row.period_key),
        generated_at=parse_timestamp(row.generated_at, "generatedAt"),
        metrics=row.metrics,
    )


def encode_document(document: dict[str, Any]) -> bytes:
    """The bytes served: compact JSON, keys in the order DHIS2's examples use."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def run_job(database: Database, job: Any, settings: Settings) -> Finish:
    mapping = load_mapping(settings.hmis_mapping_file)
    async with database.read() as conn:
        rows = await conn.execute(
            sa.select(facility_reports).where(
                facility_reports.c.tenant_id == job.tenant_id,
                facility_reports.c.period_type == job.period_type,
                facility_reports.c.period_key == job.period_key,
            )
        )
        reports = [_report(r) for r in rows]
    export = data_value_sets(reports, mapping)
    body = encode_document(export.document)
    return Finish(
        SUCCEEDED,
        {
            "mapping": hmis_mapping_to_wire(mapping),
            "result": body,
            "result_media_type": MEDIA_TYPE,
            "result_sha256": hashlib.sha256(body).hexdigest(),
            "reasons": export.skipped_to_wire(),
        },
    )


HMIS_JOBS = JobKind(KIND, hmis_export_jobs, run_job)

"""``POST …/sync/facility-reports``: one signed report (CONTRACT section 6).

The report's own signature authenticates it; 201 merged, 200 duplicate,
409 report_conflict (the refused copy is committed for audit all the same).
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.http import database, now, read_document
from gateway.idempotency import Reply, run_write
from gateway.key_rotation import refused_use
from gateway.reports import check_report, store_report
from shared.errors import ReportConflict
from shared.wire import REPORT_FIELDS, parse_report_submission


async def submit(request: web.Request) -> web.Response:
    body, doc = await read_document(request)
    submission = parse_report_submission(doc, fields=REPORT_FIELDS)
    async with database(request).read() as conn:
        checked = await check_report(conn, submission, now(request))
    if checked.refusal is not None:  # signed by a retired or revoked key: recorded
        await audit.record(request, refused_use(checked.node, checked.key, now(request)))
        raise checked.refusal
    report = checked.report

    # The report's own signature authenticates it: its device (an enrolled node) acts.
    actor = audit.Actor(f"node:{report.device_id}", report.tenant_id, report.device_id)

    async def write(conn: AsyncConnection) -> Reply:
        outcome = await store_report(conn, submission, report, now(request))
        row = actor.entry(
            "facility_report.submit",
            outcome.report_id,
            outcome.status,
            now(request),
            report.facility_id,
        )
        await audit.append(conn, [row], now(request))
        if outcome.status == "conflict":
            return Reply.from_error(
                ReportConflict(
                    f"a different report for {report.facility_id} {report.period.key} from "
                    f"{report.device_id} is already stored",
                    reportId=outcome.report_id,
                )
            )
        status = 201 if outcome.status == "merged" else 200
        return Reply(
            status,
            {
                "status": outcome.status,
                "reportId": outcome.report_id,
                "facilityId": report.facility_id,
                "periodKey": report.period.key,
                "deviceId": report.device_id,
            },
        )

    return await run_write(request, f"node:{submission.device_id}", body, write)

"""What an operator needs to see: outbox depth and age, last sync, problems
(records the gateway refused, tablet writes the edge refused), and the field
devices seen on the LAN.

Shared by ``edgenode status``/``problems``, the status page and /metrics.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiosqlite

from edgenode.devices_seen import list_devices_seen
from edgenode.outbox import get_state
from edgenode.store.database import fetch_all, fetch_one
from shared.values import parse_timestamp


async def collect_status(conn: aiosqlite.Connection, now: datetime) -> dict[str, Any]:
    unsent = await fetch_one(
        conn,
        "SELECT count(*), min(received_at) FROM transitions "
        "WHERE forward = 1 AND gateway_status IS NULL",
    )
    reports = await fetch_one(
        conn, "SELECT count(*), min(generated_at) FROM reports WHERE gateway_status IS NULL"
    )
    drafts = await fetch_one(
        conn, "SELECT count(*), min(received_at) FROM cohort_drafts WHERE gateway_status IS NULL"
    )
    refused = await fetch_one(conn, "SELECT count(*) FROM refused_writes")
    batches = await fetch_one(
        conn,
        "SELECT count(*), sum(attempts), max(last_error) FROM outbox_batches "
        "WHERE stage = 'pending'",
    )
    counts = {
        row[0]: row[1]
        for row in await fetch_all(
            conn,
            "SELECT gateway_status, count(*) FROM transitions WHERE forward = 1 "
            "GROUP BY gateway_status",
        )
    }
    assert unsent is not None and reports is not None and batches is not None
    assert drafts is not None and refused is not None
    oldest = min((t for t in (unsent[1], reports[1], drafts[1]) if t), default=None)
    last_error = await fetch_one(
        conn,
        "SELECT last_error FROM outbox_batches WHERE last_error IS NOT NULL "
        "ORDER BY seq DESC LIMIT 1",
    )
    devices = await fetch_one(conn, "SELECT count(*) FROM devices WHERE status = 'active'")
    encounters = await fetch_one(conn, "SELECT count(*) FROM encounters")
    reports_total = await fetch_one(conn, "SELECT count(*) FROM reports")
    problems = await fetch_one(
        conn,
        "SELECT (SELECT count(*) FROM transitions WHERE gateway_status = 'rejected') + "
        "(SELECT count(*) FROM reports WHERE gateway_status = 'rejected') + "
        "(SELECT count(*) FROM cohort_drafts WHERE gateway_status = 'rejected')",
    )
    return {
        "outboxDepth": int(unsent[0]) + int(reports[0]) + int(drafts[0]),
        "unsentTransitions": int(unsent[0]),
        "unsentReports": int(reports[0]),
        "unsentCohortDrafts": int(drafts[0]),
        "openBatches": int(batches[0]),
        "oldestUnsentAt": oldest,
        "oldestUnsentAgeSeconds": (now - parse_timestamp(oldest, "oldest")).total_seconds()
        if oldest
        else None,
        "lastForwardOk": await get_state(conn, "last_forward_ok"),
        "lastPullOk": await get_state(conn, "last_pull_ok"),
        "changesCursor": await get_state(conn, "changes_cursor"),
        "lastError": last_error[0] if last_error else None,
        "gatewayDispositions": {str(k or "unanswered"): v for k, v in counts.items()},
        "pairedDevices": int(devices[0]) if devices else 0,
        "encounters": int(encounters[0]) if encounters else 0,
        "reportsGenerated": int(reports_total[0]) if reports_total else 0,
        "problems": int(problems[0]) if problems else 0,
        # Tablet writes the edge refused itself (POST …/sync/items): never sent.
        "refusedWrites": int(refused[0]),
        "devicesSeen": await list_devices_seen(conn),
    }


async def collect_problems(conn: aiosqlite.Connection, limit: int = 200) -> list[dict[str, Any]]:
    """Records the gateway refused, with their reasons; never deleted."""
    rows = await fetch_all(
        conn,
        "SELECT 'outreach.transition' AS kind, transition_id AS id, item_id AS subject, "
        "gateway_code AS code, gateway_state AS state, gateway_at AS at, batch_id "
        "FROM transitions WHERE gateway_status = 'rejected' "
        "UNION ALL SELECT 'facility_report', facility_id || '/' || period_key, facility_id, "
        "gateway_code, NULL, gateway_at, batch_id FROM reports "
        "WHERE gateway_status = 'rejected' "
        "UNION ALL SELECT 'cohort.draft', draft_id, cohort_id, gateway_code, NULL, gateway_at, "
        "batch_id FROM cohort_drafts WHERE gateway_status = 'rejected' "
        "ORDER BY at DESC LIMIT ?",
        (limit,),
    )
    return [dict(row) for row in rows]


async def collect_refused_writes(
    conn: aiosqlite.Connection, limit: int = 200
) -> list[dict[str, Any]]:
    """Tablet writes the edge refused itself (policy, unknown kind, invalid
    cohort draft), newest first, with their reasons; never deleted."""
    rows = await fetch_all(
        conn,
        "SELECT kind, record_id AS id, device_id, code, detail, received_at AS at "
        "FROM refused_writes ORDER BY seq DESC LIMIT ?",
        (limit,),
    )
    return [dict(row) for row in rows]

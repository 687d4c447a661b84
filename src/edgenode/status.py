"""What an operator needs to see: outbox depth and age, last sync, problems
(records the gateway refused, tablet writes the edge refused), and the field
devices seen on the LAN.

Shared by ``edgenode status``/``problems``, the status page and /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from edgenode.devices_seen import list_devices_seen
from edgenode.outbox import clear_state, get_state, set_state
from edgenode.settings import EdgeSettings
from edgenode.store.database import fetch_all, fetch_one
from shared.signing import fingerprint
from shared.values import format_timestamp, parse_timestamp

# Answers that say the gateway does not take this node's key: not enrolled
# (yet), revoked, or enrolled with another key.
NOT_ENROLLED_CODES = frozenset({"unknown_key", "key_revoked", "bad_signature"})
RECENT_ROWS = 20  # rejected items listed on the status page and in GET /status


@dataclass(frozen=True)
class GatewayContact:
    """One exchange of the forwarder or the puller with the gateway.

    ``status`` None: the gateway was not reached (network, timeout, an
    unreadable answer). ``error`` None: the exchange did what it was for.
    """

    kind: str  # forward | pull
    at: datetime
    status: int | None
    code: str | None = None  # the problem code of an answer that is not a success
    error: str | None = None


async def record_contact(conn: aiosqlite.Connection, contact: GatewayContact) -> None:
    """Keep the outcome in ``sync_state``, in the caller's transaction (it is
    written with what the exchange changed, so a restart shows the truth)."""
    stamp = format_timestamp(contact.at)
    await set_state(conn, f"last_{contact.kind}_attempt", stamp)
    if contact.error is None:
        await clear_state(conn, f"last_{contact.kind}_error")
    else:
        await set_state(conn, f"last_{contact.kind}_error", contact.error[:500])
    if contact.status is None:
        await set_state(conn, "gateway_unreachable_at", stamp)
        await set_state(conn, "gateway_unreachable_error", (contact.error or "")[:500])
    else:
        await set_state(conn, "gateway_answered_at", stamp)
        answer = f"{contact.status} {contact.code}" if contact.code else str(contact.status)
        await set_state(conn, "gateway_answer", answer)


async def collect_gateway(conn: aiosqlite.Connection) -> dict[str, Any]:
    """Reachability and enrollment as the last exchanges found them.

    ``reachable``: the gateway answered more recently than it failed to
    (None: never tried). ``enrolled``: it took this node's signature (False
    when it answered unknown_key, key_revoked or bad_signature; None: no answer yet).
    """
    answered = await get_state(conn, "gateway_answered_at")
    unreachable = await get_state(conn, "gateway_unreachable_at")
    answer = await get_state(conn, "gateway_answer")
    reachable = None if not (answered or unreachable) else (answered or "") >= (unreachable or "")
    code = answer.partition(" ")[2] if answer else ""
    return {
        "reachable": reachable,
        "enrolled": None if answer is None else code not in NOT_ENROLLED_CODES,
        "lastAnswerAt": answered,
        "lastAnswer": answer,
        "lastUnreachableAt": unreachable,
        "lastUnreachableError": await get_state(conn, "gateway_unreachable_error"),
    }


def node_identity(settings: EdgeSettings, public_key: bytes) -> dict[str, Any]:
    return {
        "nodeId": settings.node_id,
        "tenantId": settings.tenant_id,
        "facilityIds": list(settings.facility_ids),
        "gatewayUrl": settings.gateway_url,
        "keyFingerprint": fingerprint(public_key),
    }


async def status_document(
    conn: aiosqlite.Connection, now: datetime, settings: EdgeSettings, public_key: bytes
) -> dict[str, Any]:
    """Everything the status page shows, as ``GET /status`` answers it."""
    return {
        **node_identity(settings, public_key),
        "at": format_timestamp(now),
        **await collect_status(conn, now),
        "recentProblems": await collect_problems(conn, RECENT_ROWS),
        "recentRefusedWrites": await collect_refused_writes(conn, RECENT_ROWS),
    }


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
    report_answers = {
        str(row[0]): int(row[1])
        for row in await fetch_all(
            conn,
            "SELECT gateway_status, count(*) FROM reports WHERE gateway_status IS NOT NULL "
            "GROUP BY gateway_status",
        )
    }
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
        "lastForwardAttemptAt": await get_state(conn, "last_forward_attempt"),
        "lastForwardError": await get_state(conn, "last_forward_error"),
        "lastPullOk": await get_state(conn, "last_pull_ok"),
        "lastPullAttemptAt": await get_state(conn, "last_pull_attempt"),
        "lastPullError": await get_state(conn, "last_pull_error"),
        "gateway": await collect_gateway(conn),
        "changesCursor": await get_state(conn, "changes_cursor"),
        "lastError": last_error[0] if last_error else None,
        "gatewayDispositions": {str(k or "unanswered"): v for k, v in counts.items()},
        "pairedDevices": int(devices[0]) if devices else 0,
        "encounters": int(encounters[0]) if encounters else 0,
        "reportsGenerated": int(reports_total[0]) if reports_total else 0,
        # Answered by the gateway (merged, duplicate, conflict or rejected), by answer.
        "reportsForwarded": sum(report_answers.values()),
        "reportDispositions": report_answers,
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

"""Facility reports (CONTRACT section 6): verify, check scope, dedup, merge.

Used by ``POST …/sync/facility-reports`` (errors become problem documents)
and by batches (errors become per-item rejections): one code path, so both
answer the same.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.schema import facility_reports, report_submissions
from gateway.events import append_event
from gateway.node_keys import keys_of
from gateway.registry import Node, get_node
from shared.errors import BadSignature, KeyRevoked, OutOfScope, PhsError, UnknownKey
from shared.node_keys import KeyStatus, NodeKey, signs_report
from shared.reports import FacilityReport, parse_report_payload, same_metrics
from shared.signing import verify_signature
from shared.values import format_timestamp
from shared.wire import ReportSubmission

SYNCED_EVENT = "population_health.facility_report.synced.v1"


@dataclass(frozen=True)
class ReportOutcome:
    status: str  # merged | duplicate | conflict
    report_id: str  # the stored report (for a conflict: the one it conflicts with)


@dataclass(frozen=True)
class CheckedReport:
    """A report whose signature verified under ``key`` of ``node``, within
    the node's enrollment; ``refusal``: the key may not sign it (the answer)."""

    report: FacilityReport
    node: Node
    key: NodeKey
    refusal: PhsError | None


async def check_report(
    conn: AsyncConnection,
    submission: ReportSubmission,
    now: datetime,
    tenant_id: str | None = None,
) -> CheckedReport:
    """Check the signature with the device's keys (before decoding the
    payload), then that the payload lies within the device's enrollment.
    ``tenant_id``, when given, is the tenant of the node relaying it.

    A report names its device, not a key: the node's keys are tried, those
    it may sign with now first. One signed by a retired key is accepted if it
    was made before the key's window ended, one signed by a revoked key never
    (shared.node_keys.signs_report): else ``refusal`` says why."""
    node = await get_node(conn, submission.device_id)
    if node is None:
        raise UnknownKey(f"no enrolled device {submission.device_id}")
    if not node.active:
        raise KeyRevoked(f"device {submission.device_id} is revoked")
    key = await _signing_key(conn, node, submission)
    report = parse_report_payload(submission.payload)
    if report.device_id != node.node_id:
        raise OutOfScope("the payload's deviceId is not the signing device")
    if report.tenant_id != node.tenant_id or (
        tenant_id is not None and tenant_id != node.tenant_id
    ):
        raise OutOfScope(f"tenant {report.tenant_id} is outside the device's enrollment")
    if report.facility_id not in node.facility_ids:
        raise OutOfScope(f"facility {report.facility_id} is outside the device's enrollment")
    refusal = signs_report(key, report.generated_at, report.period.start, now)
    return CheckedReport(report, node, key, refusal)


async def verified_report(
    conn: AsyncConnection,
    submission: ReportSubmission,
    now: datetime,
    tenant_id: str | None = None,
) -> FacilityReport:
    """``check_report``, its refusal raised."""
    checked = await check_report(conn, submission, now, tenant_id)
    if checked.refusal is not None:
        raise checked.refusal
    return checked.report


async def _signing_key(conn: AsyncConnection, node: Node, submission: ReportSubmission) -> NodeKey:
    """The node's key whose signature this is (BadSignature: none of them)."""
    keys = await keys_of(conn, node.node_id)
    # Usable keys first (newest first): the usual report costs one verification.
    keys.sort(key=lambda k: (k.status in (KeyStatus.ACTIVE, KeyStatus.RETIRING), k.created_at))
    for key in reversed(keys):
        try:
            verify_signature(key.public_key, submission.payload, submission.signature)
        except BadSignature:
            continue
        return key
    raise BadSignature("the report's signature does not verify under any key of its device")


_DEDUP_KEY = ["facility_id", "period_key", "device_id"]  # uq_report_dedup
# INSERT … ON CONFLICT (facility_id, period_key, device_id) DO NOTHING.
_INSERT_IF_NEW: dict[str, sa.Insert] = {
    "sqlite": sqlite.insert(facility_reports).on_conflict_do_nothing(index_elements=_DEDUP_KEY),
    "postgresql": postgresql.insert(facility_reports).on_conflict_do_nothing(
        index_elements=_DEDUP_KEY
    ),
}


async def store_report(
    conn: AsyncConnection, submission: ReportSubmission, report: FacilityReport, now: datetime
) -> ReportOutcome:
    """Merge the report, or find it a duplicate or a conflict of the stored one.

    The insert skips a report already stored under its dedup key: of two
    identical reports submitted at once on PostgreSQL, the second waits for
    the first to commit and then finds it (instead of failing on the unique
    key with a 500), so exactly one is merged and announced.
    """
    stamp = format_timestamp(now)
    outcome = ReportOutcome("merged", f"rpt_{uuid.uuid4().hex}")
    inserted = await conn.execute(
        _INSERT_IF_NEW[conn.dialect.name].values(
            report_id=outcome.report_id,
            tenant_id=report.tenant_id,
            facility_id=report.facility_id,
            period_type=report.period.type.value,
            period_key=report.period.key,
            device_id=report.device_id,
            payload=submission.payload,
            signature=submission.signature,
            metrics=report.metrics,
            generated_at=format_timestamp(report.generated_at),
            received_at=stamp,
        )
    )
    if inserted.rowcount == 1:
        await append_event(
            conn,
            SYNCED_EVENT,
            report.tenant_id,
            now,
            {
                "reportId": outcome.report_id,
                "facilityId": report.facility_id,
                "periodKey": report.period.key,
                "periodType": report.period.type.value,
                "deviceId": report.device_id,
            },
        )
    else:
        existing = (
            await conn.execute(
                sa.select(
                    facility_reports.c.report_id,
                    facility_reports.c.metrics,
                    facility_reports.c.signature,
                ).where(
                    facility_reports.c.facility_id == report.facility_id,
                    facility_reports.c.period_key == report.period.key,
                    facility_reports.c.device_id == report.device_id,
                )
            )
        ).one()
        same = same_metrics(existing.metrics, report.metrics)
        outcome = ReportOutcome("duplicate" if same else "conflict", existing.report_id)
        if bytes(existing.signature) == submission.signature:
            # The stored report's own bytes again (Ed25519 is deterministic: the
            # same signature is the same payload): a replay or a resend carries
            # nothing new, and a receipt per copy would let anyone holding one
            # captured report grow the table without bound.
            return outcome
    # Every other submission that passed the signature check is kept, refused
    # copies too.
    await conn.execute(
        report_submissions.insert().values(
            report_id=outcome.report_id,
            device_id=report.device_id,
            facility_id=report.facility_id,
            period_key=report.period.key,
            disposition=outcome.status,
            payload=submission.payload,
            signature=submission.signature,
            received_at=stamp,
        )
    )
    return outcome


def report_to_wire(row: Any) -> dict[str, Any]:
    return {
        "reportId": row.report_id,
        "facilityId": row.facility_id,
        "periodType": row.period_type,
        "periodKey": row.period_key,
        "deviceId": row.device_id,
        "metrics": row.metrics,
        "generatedAt": row.generated_at,
        "receivedAt": row.received_at,
    }

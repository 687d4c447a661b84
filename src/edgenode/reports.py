"""Facility reports generated offline from the local encounters (CONTRACT section 6).

A report is signed with the node key and stored once per facility and
period: append-only, never regenerated, queued for the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import aiosqlite

from edgenode.store.database import fetch_one
from shared.errors import ValidationFailed
from shared.periods import Period, utc_bounds
from shared.reports import (
    FacilityReport,
    MetricTotals,
    encode_report_payload,
    metrics_from_totals,
)
from shared.signing import KeyPair
from shared.values import format_timestamp


@dataclass(frozen=True)
class StoredReport:
    facility_id: str
    period_key: str
    payload: bytes
    created: bool  # False: it existed already and was not regenerated


async def period_totals(
    conn: aiosqlite.Connection, facility_id: str, period: Period, tz: ZoneInfo
) -> MetricTotals:
    """The period's metric totals, reduced inside SQLite: a busy district's week
    is a million encounters, too many to load as objects on a Pi. The inner
    query is one row per patient (as ``compute_metrics`` builds in memory);
    tests hold the two to the same vectors."""
    start, end = utc_bounds(period, tz)
    row = await fetch_one(
        conn,
        "SELECT count(*), coalesce(sum(n), 0), coalesce(sum(sd), 0), "
        "coalesce(sum(sd AND sc), 0), coalesce(sum(idue), 0), coalesce(sum(idue AND im), 0) "
        "FROM (SELECT count(*) AS n, max(screening_due) AS sd, max(kind = 'screening') AS sc, "
        "max(immunization_due) AS idue, max(kind = 'immunization') AS im FROM encounters "
        "WHERE facility_id = ? AND occurred_at >= ? AND occurred_at < ? GROUP BY patient_ref)",
        (facility_id, format_timestamp(start), format_timestamp(end)),
    )
    assert row is not None  # an aggregate always answers one row
    return MetricTotals(*(int(v) for v in row))


async def generate_report(
    conn: aiosqlite.Connection,
    *,
    tenant_id: str,
    node_id: str,
    keypair: KeyPair,
    facility_id: str,
    period: Period,
    tz: ZoneInfo,
    now: datetime,
) -> StoredReport:
    existing = await fetch_one(
        conn,
        "SELECT payload FROM reports WHERE facility_id = ? AND period_key = ?",
        (facility_id, period.key),
    )
    if existing is not None:
        return StoredReport(facility_id, period.key, bytes(existing[0]), created=False)
    metrics = metrics_from_totals(await period_totals(conn, facility_id, period, tz))
    report = FacilityReport(tenant_id, facility_id, node_id, period, now, metrics)
    payload = encode_report_payload(report)
    await conn.execute(
        "INSERT INTO reports (facility_id, period_type, period_key, payload, signature, "
        "generated_at) VALUES (?,?,?,?,?,?)",
        (
            facility_id,
            period.type.value,
            period.key,
            payload,
            keypair.sign(payload),
            format_timestamp(now),
        ),
    )
    return StoredReport(facility_id, period.key, payload, created=True)


def ensure_complete(period: Period, tz: ZoneInfo, now: datetime) -> None:
    """Refuse a period that has not ended: a signed report is never regenerated,
    so one made too early would freeze a partial count for good."""
    _, end = utc_bounds(period, tz)
    if now < end:
        raise ValidationFailed(
            f"period {period.key} ends at {format_timestamp(end)}; a report "
            "for it can be made once it is complete"
        )

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
    Encounter,
    EncounterKind,
    FacilityReport,
    compute_metrics,
    encode_report_payload,
)
from shared.signing import KeyPair
from shared.values import format_timestamp, parse_timestamp


@dataclass(frozen=True)
class StoredReport:
    facility_id: str
    period_key: str
    payload: bytes
    created: bool  # False: it existed already and was not regenerated


async def encounters_in(
    conn: aiosqlite.Connection, facility_id: str, period: Period, tz: ZoneInfo
) -> list[Encounter]:
    start, end = utc_bounds(period, tz)
    # Stored times share one fixed-width format, so text order is time order.
    cursor = await conn.execute(
        "SELECT id, patient_ref, facility_id, occurred_at, kind, screening_due, "
        "immunization_due FROM encounters WHERE facility_id = ? AND occurred_at >= ? "
        "AND occurred_at < ?",
        (facility_id, format_timestamp(start), format_timestamp(end)),
    )
    return [
        Encounter(
            r[0],
            r[1],
            r[2],
            parse_timestamp(r[3], "occurred_at"),
            EncounterKind(r[4]),
            bool(r[5]),
            bool(r[6]),
        )
        for r in await cursor.fetchall()
    ]


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
    encounters = await encounters_in(conn, facility_id, period, tz)
    report = FacilityReport(
        tenant_id, facility_id, node_id, period, now, compute_metrics(encounters, period, tz)
    )
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

"""Encounters pushed by tablets: kept on the edge for reports, never forwarded."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiosqlite

from edgenode.store.database import fetch_one
from shared.reports import Encounter
from shared.values import format_timestamp


def _row(e: Encounter, device_id: str, stamp: str) -> tuple[Any, ...]:
    return (
        e.id,
        e.patient_ref,
        e.facility_id,
        format_timestamp(e.occurred_at),
        e.kind.value,
        int(e.screening_due),
        int(e.immunization_due),
        device_id,
        stamp,
    )


async def ingest_encounters(
    conn: aiosqlite.Connection, device_id: str, encounters: Sequence[Encounter], now: datetime
) -> list[dict[str, Any]]:
    """Store new encounters; a resent one is a duplicate, a changed one is refused."""
    stamp = format_timestamp(now)
    results: list[dict[str, Any]] = []
    for e in encounters:
        row = _row(e, device_id, stamp)
        cursor = await conn.execute(
            "INSERT INTO encounters (id, patient_ref, facility_id, occurred_at, kind, "
            "screening_due, immunization_due, device_id, received_at) "
            "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
            row,
        )
        if cursor.rowcount:
            results.append({"id": e.id, "status": "applied"})
            continue
        stored = await fetch_one(
            conn,
            "SELECT patient_ref, facility_id, occurred_at, kind, screening_due, "
            "immunization_due FROM encounters WHERE id = ?",
            (e.id,),
        )
        if stored is not None and tuple(stored) == row[1:7]:
            results.append({"id": e.id, "status": "duplicate"})
        else:
            # Encounters are facts once recorded: a different copy is not merged.
            results.append(
                {
                    "id": e.id,
                    "status": "rejected",
                    "code": "already_exists",
                    "detail": "an encounter with this id and other content exists",
                }
            )
    return results

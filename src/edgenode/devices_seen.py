"""The registry of field devices seen on the LAN (CONTRACT section 10).

The LAN browser (``edgenode.lan``) records every valid ``_phs-field._tcp``
advert here as it is added or updated, and marks a device gone when its
advert is withdrawn; the gatherer records how each gather went. Whether a
device is paired is not copied: it is read from ``devices`` (an active
pairing) whenever asked, so a pairing made or revoked later counts at once.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from edgenode.store.database import fetch_all, fetch_one
from shared.discovery import FieldAdvert
from shared.values import format_timestamp

_SELECT = (
    "SELECT s.device_id, s.service_name, s.addresses, s.port, s.pending, s.first_seen, "
    "s.last_seen, s.present, s.gone_at, s.last_gather_at, s.last_gather_error, "
    "s.gathered_records, d.device_id IS NOT NULL AS paired, d.public_key FROM devices_seen s "
    "LEFT JOIN devices d ON d.device_id = s.device_id AND d.status = 'active'"
)


@dataclass(frozen=True)
class SeenDevice:
    device_id: str
    service_name: str
    addresses: tuple[str, ...]
    port: int
    pending: int
    present: bool
    paired: bool
    public_key: bytes | None = None  # of the active pairing: what its answers are signed with


def _device(row: sqlite3.Row) -> SeenDevice:
    return SeenDevice(
        device_id=row["device_id"],
        service_name=row["service_name"],
        addresses=tuple(json.loads(row["addresses"])),
        port=int(row["port"]),
        pending=int(row["pending"]),
        present=bool(row["present"]),
        paired=bool(row["paired"]),
        public_key=None if row["public_key"] is None else bytes(row["public_key"]),
    )


async def record_seen(conn: aiosqlite.Connection, advert: FieldAdvert, now: datetime) -> SeenDevice:
    """Add or update the device an advert names; it is present from now on."""
    stamp = format_timestamp(now)
    await conn.execute(
        "INSERT INTO devices_seen (device_id, service_name, addresses, port, pending, "
        "first_seen, last_seen, present) VALUES (?,?,?,?,?,?,?,1) "
        "ON CONFLICT (device_id) DO UPDATE SET service_name = excluded.service_name, "
        "addresses = excluded.addresses, port = excluded.port, pending = excluded.pending, "
        "last_seen = excluded.last_seen, present = 1, gone_at = NULL",
        (
            advert.device_id,
            advert.name,
            json.dumps(list(advert.addresses)),
            advert.port,
            advert.pending,
            stamp,
            stamp,
        ),
    )
    device = await seen_device(conn, advert.device_id)
    assert device is not None
    return device


async def mark_gone(conn: aiosqlite.Connection, service_name: str, now: datetime) -> list[str]:
    """A withdrawn advert: the devices it named are no longer present."""
    rows = await fetch_all(
        conn,
        "UPDATE devices_seen SET present = 0, gone_at = ? "
        "WHERE service_name = ? AND present = 1 RETURNING device_id",
        (format_timestamp(now), service_name),
    )
    return [row[0] for row in rows]


async def mark_all_gone(conn: aiosqlite.Connection, now: datetime) -> None:
    """At start: nobody is known to be present until their advert is seen again."""
    await conn.execute(
        "UPDATE devices_seen SET present = 0, gone_at = ? WHERE present = 1",
        (format_timestamp(now),),
    )


async def record_gather(
    conn: aiosqlite.Connection,
    device_id: str,
    now: datetime,
    gathered: int,
    error: str | None,
    pending: int | None = None,
) -> None:
    """How a gather went: records acknowledged, the error that stopped it (or
    None), and the device's count of unsynced records when it told us."""
    await conn.execute(
        "UPDATE devices_seen SET last_gather_at = ?, last_gather_error = ?, "
        "gathered_records = gathered_records + ?, pending = coalesce(?, pending) "
        "WHERE device_id = ?",
        (format_timestamp(now), error, gathered, pending, device_id),
    )


async def seen_device(conn: aiosqlite.Connection, device_id: str) -> SeenDevice | None:
    row = await fetch_one(conn, f"{_SELECT} WHERE s.device_id = ?", (device_id,))
    return None if row is None else _device(row)


async def gather_candidates(conn: aiosqlite.Connection) -> list[SeenDevice]:
    """Present, paired devices that advertise unsynced records."""
    rows = await fetch_all(
        conn,
        f"{_SELECT} WHERE s.present = 1 AND s.pending > 0 AND d.device_id IS NOT NULL "
        "ORDER BY s.device_id",
    )
    return [_device(row) for row in rows]


async def list_devices_seen(conn: aiosqlite.Connection) -> list[dict[str, Any]]:
    """Every device seen, for ``edgenode status`` and the status page."""
    rows = await fetch_all(conn, f"{_SELECT} ORDER BY s.device_id")
    return [
        {
            "deviceId": row["device_id"],
            "addresses": json.loads(row["addresses"]),
            "port": row["port"],
            "pending": row["pending"],
            "firstSeen": row["first_seen"],
            "lastSeen": row["last_seen"],
            "present": bool(row["present"]),
            "paired": bool(row["paired"]),
            "lastGatherAt": row["last_gather_at"],
            "lastGatherError": row["last_gather_error"],
            "gatheredRecords": row["gathered_records"],
        }
        for row in rows
    ]

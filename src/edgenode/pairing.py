"""One-time pairing codes for tablets (CONTRACT section 2).

The office shows a code (``edgenode pair-device``); the tablet redeems it
once, before it expires, with its public key. Only the code's hash is kept.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import aiosqlite

from edgenode.store.database import fetch_one
from shared.errors import MissingCredentials, ValidationFailed
from shared.values import format_timestamp, identifier

# No 0/O or 1/I/L: the code is read aloud and typed on a tablet.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10


def code_hash(code: str) -> str:
    normalised = code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(normalised.encode("ascii", "replace")).hexdigest()


async def issue_code(
    conn: aiosqlite.Connection, device_id: str, now: datetime, ttl_seconds: int
) -> tuple[str, datetime]:
    identifier(device_id, "deviceId")
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    code = f"{raw[:5]}-{raw[5:]}"
    expires = now + timedelta(seconds=ttl_seconds)
    await conn.execute(
        "INSERT INTO pairing_codes (code_hash, device_id, created_at, expires_at) VALUES (?,?,?,?)",
        (code_hash(code), device_id, format_timestamp(now), format_timestamp(expires)),
    )
    return code, expires


async def redeem_code(
    conn: aiosqlite.Connection, code: str, device_id: str, public_key: bytes, now: datetime
) -> None:
    """Pair (or re-pair with a new key) the device the code was issued for."""
    if not isinstance(code, str) or len(code) > 64:
        raise ValidationFailed("pairingCode must be a string", field="pairingCode")
    row = await fetch_one(
        conn,
        "SELECT device_id, expires_at, used_at FROM pairing_codes WHERE code_hash = ?",
        (code_hash(code),),
    )
    stamp = format_timestamp(now)
    # One answer for every failure: a guesser learns nothing about which codes exist.
    if (
        row is None
        or row["used_at"] is not None
        or row["expires_at"] <= stamp
        or row["device_id"] != device_id
    ):
        raise MissingCredentials(
            "pairing code unknown, already used, expired, or issued for another device"
        )
    await conn.execute(
        "UPDATE pairing_codes SET used_at = ? WHERE code_hash = ?", (stamp, code_hash(code))
    )
    await conn.execute(
        "INSERT INTO devices (device_id, public_key, paired_at, status) VALUES (?,?,?,'active') "
        "ON CONFLICT (device_id) DO UPDATE SET public_key = excluded.public_key, "
        "paired_at = excluded.paired_at, status = 'active'",
        (device_id, public_key, stamp),
    )

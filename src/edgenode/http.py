"""The edge node's application keys, device authentication and idempotency.

Request plumbing (body limits, negotiation, problem documents) is the
gateway's ``gateway.http`` and ``gateway.middleware``, shared so both
services answer errors in exactly the same shape.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import msgpack
from aiohttp import web

from edgenode.settings import EdgeSettings
from edgenode.store.database import EdgeDatabase, fetch_one
from gateway.http import CLOCK, decode_document, path_with_query, read_body, respond
from shared.errors import (
    BadCursor,
    BatchTooLarge,
    IdempotencyInFlight,
    IdempotencyKeyMismatch,
    UnknownKey,
    ValidationFailed,
)
from shared.idempotency import request_fingerprint, validate_key
from shared.signing import KeyPair, parse_authorization, verify_request
from shared.values import format_timestamp, only_fields, required

EDGE_SETTINGS = web.AppKey("edge_settings", EdgeSettings)
EDGE_DB = web.AppKey("edge_db", EdgeDatabase)
NODE_KEY = web.AppKey("node_key", KeyPair)
IN_FLIGHT = web.AppKey("idempotency_in_flight", set[tuple[str, str]])
OUTBOX_WAKE = web.AppKey("outbox_wake", asyncio.Event)

Reply = tuple[int, object]
WriteFn = Callable[[aiosqlite.Connection], Awaitable[Reply]]

# A tablet cursor: ASCII digits only (str.isdigit() also takes "²", which
# int() refuses), short enough for an SQLite integer.
_CURSOR_RE = re.compile(r"[0-9]{1,18}")


def parse_since(raw: str | None) -> int:
    """A tablet read's ``since``: a cursor this edge returned; empty is the start."""
    if not raw:
        return 0
    if _CURSOR_RE.fullmatch(raw) is None:
        raise BadCursor("since must be a cursor returned by this endpoint")
    return int(raw)


def edge_db(request: web.Request) -> EdgeDatabase:
    return request.app[EDGE_DB]


def edge_settings(request: web.Request) -> EdgeSettings:
    return request.app[EDGE_SETTINGS]


async def authenticate_device(request: web.Request, body: bytes) -> str:
    """The paired device that signed this request (CONTRACT section 2)."""
    auth = parse_authorization(request.headers.get("Authorization"))
    async with edge_db(request).read() as conn:
        row = await fetch_one(
            conn, "SELECT public_key, status FROM devices WHERE device_id = ?", (auth.key_id,)
        )
    if row is None or row["status"] != "active":
        raise UnknownKey(f"no paired device {auth.key_id}")
    verify_request(
        auth,
        bytes(row["public_key"]),
        request.method,
        path_with_query(request),
        body,
        request.app[CLOCK]().timestamp(),
        edge_settings(request).clock_skew_seconds,
    )
    return auth.key_id


async def read_device_push(request: web.Request, field: str) -> tuple[str, bytes, list[Any]]:
    """A signed tablet push ``{field: [...]}``: the signing device, the raw body
    (for the idempotency fingerprint) and the list, checked for shape and size."""
    body = await read_body(request)
    device_id = await authenticate_device(request, body)
    doc = decode_document(request, body)
    only_fields(doc, frozenset({field}), f"{field} push")
    records = required(doc, field)
    if not isinstance(records, list):
        raise ValidationFailed(f"{field} must be an array", field=field)
    most = edge_settings(request).max_push_items
    if len(records) > most:
        raise BatchTooLarge(f"at most {most} {field} in one push")
    return device_id, body, records


async def run_write(
    request: web.Request, principal: str, body: bytes, write: WriteFn
) -> web.Response:
    """Run a write in one transaction; a 2xx answer is stored with it under the
    Idempotency-Key (CONTRACT section 4). One process owns the store, so keys
    in flight are tracked in memory."""
    key = validate_key(request.headers.get("Idempotency-Key"))
    db = edge_db(request)
    if key is None:
        async with db.write() as conn:
            status, document = await write(conn)
        request.app[OUTBOX_WAKE].set()
        return respond(request, status, document)
    fingerprint = request_fingerprint(request.method, path_with_query(request), body)
    async with db.read() as conn:
        stored = await _stored_reply(conn, principal, key)
    if stored is not None:
        return replay(request, stored, fingerprint)
    in_flight = request.app[IN_FLIGHT]
    if (principal, key) in in_flight:
        raise IdempotencyInFlight("the first request with this key is still running")
    in_flight.add((principal, key))
    try:
        async with db.write() as conn:
            # Again under the write lock: a twin may have finished between our
            # read and now (it is no longer in flight, and its answer is stored).
            stored = await _stored_reply(conn, principal, key)
            if stored is not None:
                return replay(request, stored, fingerprint)
            status, document = await write(conn)
            if 200 <= status < 300:
                await conn.execute(
                    "INSERT INTO idempotency_keys (principal, key, fingerprint, status_code, "
                    "reply, created_at) VALUES (?,?,?,?,?,?)",
                    (
                        principal,
                        key,
                        fingerprint,
                        status,
                        msgpack.packb(document, use_bin_type=True),
                        format_timestamp(request.app[CLOCK]()),
                    ),
                )
    finally:
        in_flight.discard((principal, key))
    request.app[OUTBOX_WAKE].set()
    return respond(request, status, document)


async def _stored_reply(conn: aiosqlite.Connection, principal: str, key: str) -> sqlite3.Row | None:
    return await fetch_one(
        conn,
        "SELECT fingerprint, status_code, reply FROM idempotency_keys "
        "WHERE principal = ? AND key = ?",
        (principal, key),
    )


def replay(request: web.Request, stored: sqlite3.Row, fingerprint: str) -> web.Response:
    """The stored answer of an earlier success with this key (CONTRACT section 4)."""
    if stored["fingerprint"] != fingerprint:
        raise IdempotencyKeyMismatch("this Idempotency-Key was used for another request")
    return respond(
        request,
        stored["status_code"],
        msgpack.unpackb(stored["reply"], raw=False),
        {"Idempotent-Replayed": "true"},
    )

"""Tablet outreach sync: ``POST …/sync/outreach`` and ``GET …/outreach-items``."""

from __future__ import annotations

import aiosqlite
from aiohttp import web

from edgenode.http import authenticate_device, edge_db, edge_settings, run_write
from edgenode.outreach import ingest_transitions, items_since
from gateway.http import CLOCK, decode_document, query_int, read_body, respond
from shared.errors import BadCursor, BatchTooLarge, OutOfScope, ValidationFailed
from shared.values import only_fields, required
from shared.wire import parse_transition


async def push(request: web.Request) -> web.Response:
    body = await read_body(request)
    device_id = await authenticate_device(request, body)
    doc = decode_document(request, body)
    only_fields(doc, frozenset({"transitions"}), "outreach push")
    raw = required(doc, "transitions")
    if not isinstance(raw, list):
        raise ValidationFailed("transitions must be an array", field="transitions")
    if len(raw) > edge_settings(request).max_push_items:
        raise BatchTooLarge(f"at most {edge_settings(request).max_push_items} transitions")
    transitions = [parse_transition(t, f"/transitions/{n}") for n, t in enumerate(raw)]
    for t in transitions:
        if t.device_id != device_id:
            raise OutOfScope(f"transition {t.id} names device {t.device_id}, not the signer")

    async def write(conn: aiosqlite.Connection) -> tuple[int, object]:
        results = await ingest_transitions(conn, transitions, request.app[CLOCK]())
        return 200, {"results": results}

    return await run_write(request, f"device:{device_id}", body, write)


async def list_items(request: web.Request) -> web.Response:
    await authenticate_device(request, await request.read())
    raw = request.query.get("since", "") or "0"
    if not raw.isdigit() or len(raw) > 18:
        raise BadCursor("since must be a cursor returned by this endpoint")
    limit = query_int(request, "limit", 1000, 1, 5000)
    async with edge_db(request).read() as conn:
        items, cursor, more = await items_since(
            conn, edge_settings(request).facility_ids, int(raw), limit
        )
    return respond(request, 200, {"items": items, "cursor": str(cursor), "more": more})

"""Tablet outreach sync: ``POST …/sync/outreach`` and ``GET …/outreach-items``."""

from __future__ import annotations

from aiohttp import web

from edgenode.http import (
    OUTBOX_WAKE,
    authenticate_device,
    edge_db,
    edge_settings,
    parse_since,
    read_device_push,
    replay,
)
from edgenode.intake import OUTREACH_INTAKE
from edgenode.outreach import items_since
from edgenode.records import device_transitions
from edgenode.resources.metrics import TRANSITIONS, record_push
from gateway.http import path_with_query, query_int, respond
from shared.idempotency import request_fingerprint, validate_key


async def push(request: web.Request) -> web.Response:
    device_id, body, raw = await read_device_push(request, "transitions")
    transitions = device_transitions(raw, device_id)  # as a gather reads them

    # Written together with the pushes queued beside it (edgenode.intake);
    # Idempotency-Key as in run_write.
    key = validate_key(request.headers.get("Idempotency-Key"))
    fingerprint = request_fingerprint(request.method, path_with_query(request), body)
    answer = await request.app[OUTREACH_INTAKE].submit(
        f"device:{device_id}", key, fingerprint, transitions
    )
    if answer.stored is not None:
        return replay(request, answer.stored, fingerprint)
    request.app[OUTBOX_WAKE].set()
    record_push(request, TRANSITIONS, answer.document["results"])  # committed
    return respond(request, answer.status, answer.document)


async def list_items(request: web.Request) -> web.Response:
    await authenticate_device(request, await request.read())
    since = parse_since(request.query.get("since"))
    limit = query_int(request, "limit", 1000, 1, 5000)
    async with edge_db(request).read() as conn:
        items, cursor, more = await items_since(
            conn, edge_settings(request).facility_ids, since, limit
        )
    return respond(request, 200, {"items": items, "cursor": str(cursor), "more": more})

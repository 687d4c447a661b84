"""``POST …/sync/encounters``: tablets push encounters (kept on the edge)."""

from __future__ import annotations

import aiosqlite
from aiohttp import web

from edgenode.encounters import ingest_encounters
from edgenode.http import authenticate_device, edge_settings, run_write
from gateway.http import CLOCK, decode_document, read_body
from shared.errors import BatchTooLarge, OutOfScope, ValidationFailed
from shared.reports import parse_encounter
from shared.values import only_fields, required


async def push(request: web.Request) -> web.Response:
    body = await read_body(request)
    device_id = await authenticate_device(request, body)
    doc = decode_document(request, body)
    only_fields(doc, frozenset({"encounters"}), "encounter push")
    raw = required(doc, "encounters")
    if not isinstance(raw, list):
        raise ValidationFailed("encounters must be an array", field="encounters")
    settings = edge_settings(request)
    if len(raw) > settings.max_push_items:
        raise BatchTooLarge(f"at most {settings.max_push_items} encounters")
    encounters = []
    for n, item in enumerate(raw):
        try:
            encounters.append(parse_encounter(item))
        except ValidationFailed as err:
            raise ValidationFailed(
                f"/encounters/{n}: {err.detail}", path=f"/encounters/{n}"
            ) from err
    for e in encounters:
        if e.facility_id not in settings.facility_ids:
            raise OutOfScope(f"encounter {e.id}: facility {e.facility_id} is not served here")

    async def write(conn: aiosqlite.Connection) -> tuple[int, object]:
        results = await ingest_encounters(conn, device_id, encounters, request.app[CLOCK]())
        return 200, {"results": results}

    return await run_write(request, f"device:{device_id}", body, write)

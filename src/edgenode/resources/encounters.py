"""``POST …/sync/encounters``: tablets push encounters (kept on the edge)."""

from __future__ import annotations

from typing import Any

import aiosqlite
from aiohttp import web

from edgenode.encounters import ingest_encounters
from edgenode.http import edge_settings, read_device_push, run_write
from edgenode.records import device_encounters
from edgenode.resources.metrics import ENCOUNTERS, record_push
from gateway.http import CLOCK


async def push(request: web.Request) -> web.Response:
    device_id, body, raw = await read_device_push(request, "encounters")
    encounters = device_encounters(raw, edge_settings(request).facility_ids)  # as a gather

    written: list[list[dict[str, Any]]] = []  # the results of this request's own write

    async def write(conn: aiosqlite.Connection) -> tuple[int, object]:
        results = await ingest_encounters(conn, device_id, encounters, request.app[CLOCK]())
        written.append(results)
        return 200, {"results": results}

    response = await run_write(request, f"device:{device_id}", body, write)
    if written:  # committed (run_write raises otherwise); a replayed answer is not counted
        record_push(request, ENCOUNTERS, written[-1])
    return response

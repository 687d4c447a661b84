"""``POST …/sync/encounters``: tablets push encounters (kept on the edge)."""

from __future__ import annotations

import aiosqlite
from aiohttp import web

from edgenode.encounters import ingest_encounters
from edgenode.http import edge_settings, read_device_push, run_write
from edgenode.records import device_encounters
from gateway.http import CLOCK


async def push(request: web.Request) -> web.Response:
    device_id, body, raw = await read_device_push(request, "encounters")
    encounters = device_encounters(raw, edge_settings(request).facility_ids)  # as a gather

    async def write(conn: aiosqlite.Connection) -> tuple[int, object]:
        results = await ingest_encounters(conn, device_id, encounters, request.app[CLOCK]())
        return 200, {"results": results}

    return await run_write(request, f"device:{device_id}", body, write)

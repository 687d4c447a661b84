"""``POST …/sync/encounters``: tablets push encounters (kept on the edge)."""

from __future__ import annotations

import aiosqlite
from aiohttp import web

from edgenode.encounters import ingest_encounters
from edgenode.http import edge_settings, read_device_push, run_write
from gateway.http import CLOCK
from shared.errors import OutOfScope, ValidationFailed
from shared.reports import parse_encounter


async def push(request: web.Request) -> web.Response:
    device_id, body, raw = await read_device_push(request, "encounters")
    settings = edge_settings(request)
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

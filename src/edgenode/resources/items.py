"""``POST …/sync/items``: tablet writes of any kind, judged by the policy table
(``edgenode.tablet_items``): cohort drafts queued for the gateway, writes to
server-authoritative aggregates refused and recorded."""

from __future__ import annotations

import aiosqlite
from aiohttp import web

from edgenode.http import read_device_push, run_write
from edgenode.tablet_items import ingest_items, parse_items
from gateway.http import CLOCK


async def push(request: web.Request) -> web.Response:
    device_id, body, raw = await read_device_push(request, "items")
    items = parse_items(raw)  # a bad envelope refuses the whole push, storing nothing

    async def write(conn: aiosqlite.Connection) -> tuple[int, object]:
        results = await ingest_items(conn, device_id, items, request.app[CLOCK]())
        return 200, {"results": results}

    return await run_write(request, f"device:{device_id}", body, write)

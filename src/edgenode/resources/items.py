"""``POST …/sync/items``: tablet writes of any kind, judged by the policy table
(``edgenode.tablet_items``): cohort drafts queued for the gateway, writes to
server-authoritative aggregates refused and recorded."""

from __future__ import annotations

from typing import Any

import aiosqlite
from aiohttp import web

from edgenode.http import read_device_push, run_write
from edgenode.resources.metrics import ITEMS, record_push
from edgenode.tablet_items import ingest_items, parse_items
from gateway.http import CLOCK


async def push(request: web.Request) -> web.Response:
    device_id, body, raw = await read_device_push(request, "items")
    items = parse_items(raw)  # a bad envelope refuses the whole push, storing nothing

    written: list[list[dict[str, Any]]] = []  # the results of this request's own write

    async def write(conn: aiosqlite.Connection) -> tuple[int, object]:
        results = await ingest_items(conn, device_id, items, request.app[CLOCK]())
        written.append(results)
        return 200, {"results": results}

    response = await run_write(request, f"device:{device_id}", body, write)
    if written:  # committed (run_write raises otherwise); a replayed answer is not counted
        record_push(request, ITEMS, written[-1])
    return response

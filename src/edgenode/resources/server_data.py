"""``GET …/server-data``: the server-authoritative projection, read-only for
tablets (``edgenode.server_data``)."""

from __future__ import annotations

from aiohttp import web

from edgenode.http import authenticate_device, edge_db, edge_settings, parse_since
from edgenode.server_data import records_since
from gateway.http import query_int, respond


async def list_records(request: web.Request) -> web.Response:
    await authenticate_device(request, await request.read())
    since = parse_since(request.query.get("since"))
    limit = query_int(request, "limit", 1000, 1, 5000)
    async with edge_db(request).read() as conn:
        records, cursor, more = await records_since(
            conn, edge_settings(request).facility_ids, since, limit
        )
    return respond(request, 200, {"records": records, "cursor": str(cursor), "more": more})

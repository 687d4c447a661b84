"""``GET …/events?after=&limit=``: the event outbox for consumers (service or admin)."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import authenticate_token
from gateway.events import read_events
from gateway.http import database, query_int, respond, settings
from gateway.registry import Role


async def read(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, Role.SERVICE, Role.ADMIN)
    after = query_int(request, "after", 0, 0, 2**63 - 1)
    most = settings(request).events_max_limit
    limit = query_int(request, "limit", most, 1, most)
    async with database(request).read() as conn:
        events, cursor = await read_events(conn, principal.tenant_id, after, limit)
    return respond(request, 200, {"events": events, "cursor": cursor})

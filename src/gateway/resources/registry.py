"""``…/registry/entries``: disease registry entries (``disease_registry_entry``).

Written by ``service`` tokens only (upstream clinical data); any other role's
write is refused with 403 ``policy_server_authoritative`` and recorded. Read
by admins and analysts of the same tenant.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.auth import authenticate_token
from gateway.http import database, now, query_int, read_document, respond
from gateway.idempotency import Reply, run_write
from gateway.refusals import authenticate_writer
from gateway.registry import Role
from gateway.registry_entries import (
    DEFAULT_LIST,
    MAX_LIST,
    delete_entry,
    get_entry,
    list_entries,
    upsert_entry,
)
from shared.errors import ValidationFailed
from shared.registry import parse_registry_entry
from shared.values import identifier

KIND = "disease_registry_entry"


async def put(request: web.Request) -> web.Response:
    entry_id = request.match_info["id"]
    principal = await authenticate_writer(request, KIND, entry_id, Role.SERVICE)
    body, doc = await read_document(request)
    entry = parse_registry_entry(doc)
    if entry.id != entry_id:
        raise ValidationFailed(f"body id {entry.id} is not the path's {entry_id}", field="id")

    async def write(conn: AsyncConnection) -> Reply:
        done = await upsert_entry(conn, principal.tenant_id, entry, now(request))
        return Reply(201 if done.created else 200, done.entry)

    return await run_write(request, principal.principal, body, write)


async def delete(request: web.Request) -> web.Response:
    entry_id = request.match_info["id"]
    principal = await authenticate_writer(request, KIND, entry_id, Role.SERVICE)
    body = await request.read()

    async def write(conn: AsyncConnection) -> Reply:
        return Reply(200, await delete_entry(conn, principal.tenant_id, entry_id, now(request)))

    return await run_write(request, principal.principal, body, write)


async def read(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, Role.ADMIN, Role.ANALYST)
    async with database(request).read() as conn:
        entry = await get_entry(conn, principal.tenant_id, request.match_info["id"])
    return respond(request, 200, entry)


async def list_(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, Role.ADMIN, Role.ANALYST)
    q = request.query
    facility = identifier(q["facilityId"], "facilityId") if q.get("facilityId") else None
    after = identifier(q["after"], "after") if q.get("after") else None
    limit = query_int(request, "limit", DEFAULT_LIST, 1, MAX_LIST)
    async with database(request).read() as conn:
        page = await list_entries(
            conn, principal.tenant_id, facility_id=facility, after=after, limit=limit
        )
    return respond(request, 200, page)

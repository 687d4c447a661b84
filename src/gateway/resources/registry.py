"""``…/registry/entries``: disease registry entries (``disease_registry_entry``).

Written by ``service`` tokens only (upstream clinical data); any other role's
write is refused with 403 ``policy_server_authoritative`` and recorded. Read
by admins and analysts of the same tenant.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
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
from shared.audit import Outcome
from shared.errors import ValidationFailed
from shared.registry import parse_registry_entry
from shared.values import identifier

KIND = "disease_registry_entry"
READERS = (Role.ADMIN, Role.ANALYST)


async def put(request: web.Request) -> web.Response:
    entry_id = request.match_info["id"]
    principal = await authenticate_writer(request, KIND, entry_id, Role.SERVICE)
    body, doc = await read_document(request)
    entry = parse_registry_entry(doc)
    if entry.id != entry_id:
        raise ValidationFailed(f"body id {entry.id} is not the path's {entry_id}", field="id")

    async def write(conn: AsyncConnection) -> Reply:
        done = await upsert_entry(conn, principal.tenant_id, entry, now(request))
        row = audit.Actor.of_token(principal).entry(
            "registry_entry.put", entry.id, Outcome.OK, now(request), entry.facility_id
        )
        await audit.append(conn, [row], now(request))
        return Reply(201 if done.created else 200, done.entry)

    return await run_write(request, principal.principal, body, write)


async def delete(request: web.Request) -> web.Response:
    entry_id = request.match_info["id"]
    principal = await authenticate_writer(request, KIND, entry_id, Role.SERVICE)
    body = await request.read()

    actor = audit.Actor.of_token(principal)

    async def write(conn: AsyncConnection) -> Reply:
        deleted = await delete_entry(conn, principal.tenant_id, entry_id, now(request))
        row = actor.entry(
            "registry_entry.delete", entry_id, Outcome.OK, now(request), deleted.get("facilityId")
        )
        await audit.append(conn, [row], now(request))
        return Reply(200, deleted)

    # No such entry (or another tenant's): its own row, as the write rolled back.
    async with audit.audited(request, actor, "registry_entry.delete", entry_id, success=False):
        return await run_write(request, principal.principal, body, write)


async def read(request: web.Request) -> web.Response:
    entry_id = request.match_info["id"]
    action = "registry_entry.read"
    principal = await audit.authenticate_reader(request, action, entry_id, *READERS)
    actor = audit.Actor.of_token(principal)
    async with audit.audited(request, actor, action, entry_id) as access:
        async with database(request).read() as conn:
            entry = await get_entry(conn, principal.tenant_id, entry_id)
        access.facility = entry.get("facilityId")
    return respond(request, 200, entry)


async def list_(request: web.Request) -> web.Response:
    action = "registry_entry.list"
    principal = await audit.authenticate_reader(request, action, None, *READERS)
    q = request.query
    facility = identifier(q["facilityId"], "facilityId") if q.get("facilityId") else None
    after = identifier(q["after"], "after") if q.get("after") else None
    limit = query_int(request, "limit", DEFAULT_LIST, 1, MAX_LIST)
    actor = audit.Actor.of_token(principal)
    async with audit.audited(request, actor, action, None, facility) as access:
        async with database(request).read() as conn:
            page = await list_entries(
                conn, principal.tenant_id, facility_id=facility, after=after, limit=limit
            )
        ids = [entry["id"] for entry in page["entries"]]
        access.record = audit.span("entries", ids[0], ids[-1]) if ids else None
    return respond(request, 200, page)

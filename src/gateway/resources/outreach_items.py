"""``…/outreach-items``: create (imports), read with history, server transitions."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.auth import authenticate_token
from gateway.http import database, now, read_document, respond
from gateway.idempotency import Reply, run_write
from gateway.outreach import Scope, Source, apply_transitions, create_item, get_item, parse_new_item
from gateway.registry import Role
from shared.audit import Outcome
from shared.fsm import Role as FsmRole
from shared.fsm import Transition
from shared.values import identifier, only_fields, parse_timestamp, required, text

SERVER_TRANSITION_FIELDS = frozenset({"id", "from", "to", "occurredAt"})


async def create(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, Role.ADMIN, Role.SERVICE)
    body, doc = await read_document(request)
    fields = parse_new_item(doc)

    async def write(conn: AsyncConnection) -> Reply:
        item = await create_item(conn, principal.tenant_id, fields, now(request))
        entry = audit.Actor.of_token(principal).entry(
            "outreach_item.create", item["id"], Outcome.OK, now(request), item["facilityId"]
        )
        await audit.append(conn, [entry], now(request))
        return Reply(201, item)

    return await run_write(request, principal.principal, body, write)


async def read(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, Role.ADMIN, Role.SERVICE, Role.ANALYST)
    actor = audit.Actor.of_token(principal)
    item_id = request.match_info["id"]
    async with audit.audited(request, actor, "outreach_item.read", item_id) as access:
        async with database(request).read() as conn:
            item = await get_item(conn, item_id, principal.tenant_id)
        access.facility = item["facilityId"]
    return respond(request, 200, item)


async def transition(request: web.Request) -> web.Response:
    """A server-side transition (assign, cancel); answered like a batch item."""
    principal = await authenticate_token(request, Role.ADMIN, Role.SERVICE)
    body, doc = await read_document(request)
    only_fields(doc, SERVER_TRANSITION_FIELDS, "transition")
    moment = now(request)
    occurred = doc.get("occurredAt")
    incoming = Transition(
        id=identifier(required(doc, "id"), "id"),
        item_id=identifier(request.match_info["id"], "item id"),
        from_state=text(required(doc, "from"), "from", 64),
        to_state=text(required(doc, "to"), "to", 64),
        occurred_at=moment if occurred is None else parse_timestamp(occurred, "occurredAt"),
        device_id="server",
        actor_id=principal.principal,
        role=FsmRole.SERVER,
    )

    async def write(conn: AsyncConnection) -> Reply:
        [result] = await apply_transitions(
            conn, [incoming], Scope(principal.tenant_id, None), Source(principal.principal), moment
        )
        entry = audit.Actor.of_token(principal).entry(
            "outreach_item.transition", incoming.item_id, result["status"], moment
        )
        await audit.append(conn, [entry], moment)
        return Reply(200, result)

    return await run_write(request, principal.principal, body, write)

"""``…/admin/nodes``: enroll, read and revoke edge nodes (admin token)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.auth import authenticate_token
from gateway.http import database, now, read_document, respond
from gateway.idempotency import Reply, run_write
from gateway.registry import CAPABILITIES, Role, enroll_node, get_node, revoke_node
from shared.audit import Outcome
from shared.errors import NotFound, OutOfScope, ValidationFailed
from shared.signing import public_key_from
from shared.values import identifier, only_fields, required

NODE_FIELDS = frozenset({"nodeId", "tenantId", "facilityIds", "publicKey", "capabilities"})


def parse_capabilities(value: Any) -> list[str]:
    """``capabilities``: an array of capability names the gateway knows
    (CONTRACT section 3), each checked before it goes near a set or the store:
    a number, a map or a list among them was a 500 (unhashable, unsortable)."""
    if not isinstance(value, list):
        raise ValidationFailed("capabilities must be an array", field="capabilities")
    known = ", ".join(sorted(CAPABILITIES))
    for n, item in enumerate(value):
        if not isinstance(item, str) or item not in CAPABILITIES:
            raise ValidationFailed(
                f"capabilities[{n}] must be one of: {known}", field="capabilities"
            )
    return value


async def enroll(request: web.Request) -> web.Response:
    admin = await authenticate_token(request, Role.ADMIN)
    body, doc = await read_document(request)
    only_fields(doc, NODE_FIELDS, "node")
    tenant_id = identifier(required(doc, "tenantId"), "tenantId")
    if tenant_id != admin.tenant_id:
        raise OutOfScope(f"an admin of {admin.tenant_id} cannot enroll nodes of {tenant_id}")
    facilities = required(doc, "facilityIds")
    if not isinstance(facilities, list):  # each item: enroll_node (an identifier)
        raise ValidationFailed("facilityIds must be an array", field="facilityIds")
    capabilities = parse_capabilities(doc.get("capabilities", []))
    node_id = identifier(required(doc, "nodeId"), "nodeId")
    public_key = public_key_from(required(doc, "publicKey"))

    async def write(conn: AsyncConnection) -> Reply:
        node = await enroll_node(
            conn,
            node_id=node_id,
            tenant_id=tenant_id,
            facility_ids=facilities,
            public_key=public_key,
            capabilities=capabilities,
            now=now(request),
        )
        row = audit.Actor.of_token(admin).entry(
            "node.enroll", f"node:{node_id}", Outcome.OK, now(request)
        )
        await audit.append(conn, [row], now(request))
        return Reply(201, node.to_wire())

    return await run_write(request, admin.principal, body, write)


async def read(request: web.Request) -> web.Response:
    admin = await authenticate_token(request, Role.ADMIN)
    async with database(request).read() as conn:
        node = await get_node(conn, request.match_info["nodeId"])
    if node is None or node.tenant_id != admin.tenant_id:
        raise NotFound(f"no node {request.match_info['nodeId']}")
    return respond(request, 200, node.to_wire())


async def revoke(request: web.Request) -> web.Response:
    admin = await authenticate_token(request, Role.ADMIN)
    node_id = request.match_info["nodeId"]

    async def write(conn: AsyncConnection) -> Reply:
        node = await revoke_node(conn, node_id, now(request), tenant_id=admin.tenant_id)
        row = audit.Actor.of_token(admin).entry(
            "node.revoke", f"node:{node_id}", Outcome.OK, now(request)
        )
        await audit.append(conn, [row], now(request))
        return Reply(200, node.to_wire())

    return await run_write(request, admin.principal, await request.read(), write)

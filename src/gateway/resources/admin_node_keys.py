"""``…/admin/nodes/{nodeId}/keys``: an admin lists, adds, retires and revokes
one node's signing keys without revoking the node (docs/key-rotation.md).

- ``GET`` the node's keys, each with its status now;
- ``POST`` ``{publicKey, overlapSeconds?}``: a rotation made by the admin
  (for a node whose own key is already refused: the key ``edgenode
  rotate-key`` printed); 201, or 200 when it is the node's active key already;
- ``POST …/{keyId}/retire`` ``{overlapSeconds?}``: the key is accepted that
  much longer (default ``key_overlap_seconds``; 0: retired now). The node
  learns it from the ``PHS-Key-Retires-At`` header and rotates itself;
- ``DELETE …/{keyId}``: the key is revoked at once.

Every change is audited (gateway.key_rotation); a call that changes nothing
answers the key as it is and adds no row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import key_rotation
from gateway.auth import authenticate_token
from gateway.http import database, decode_document, now, read_body, respond, settings
from gateway.idempotency import Reply, run_write
from gateway.node_keys import KeyChange, get_key, keys_document
from gateway.registry import Node, Role, TokenPrincipal, get_node
from shared.errors import NotFound
from shared.node_keys import overlap_seconds
from shared.signing import public_key_from
from shared.values import only_fields, required

NEW_KEY_FIELDS = frozenset({"publicKey", "overlapSeconds"})
RETIRE_FIELDS = frozenset({"overlapSeconds"})


async def _node(conn: AsyncConnection, admin: TokenPrincipal, node_id: str) -> Node:
    node = await get_node(conn, node_id)
    if node is None or node.tenant_id != admin.tenant_id:
        raise NotFound(f"no node {node_id}")  # another tenant's node is not found
    return node


async def _answer(conn: AsyncConnection, request: web.Request, node: Node, key_id: str) -> Any:
    return await keys_document(conn, node.node_id, now(request), key_id)


def _overlap(request: web.Request, doc: Mapping[str, Any]) -> int:
    if "overlapSeconds" in doc:
        return overlap_seconds(doc["overlapSeconds"])
    return settings(request).key_overlap_seconds  # checked when the settings loaded


async def list_keys(request: web.Request) -> web.Response:
    admin = await authenticate_token(request, Role.ADMIN)
    async with database(request).read() as conn:
        node = await _node(conn, admin, request.match_info["nodeId"])
        document = await keys_document(conn, node.node_id, now(request))
    return respond(request, 200, document)


async def add(request: web.Request) -> web.Response:
    admin = await authenticate_token(request, Role.ADMIN)
    body = await read_body(request)
    doc = decode_document(request, body)
    only_fields(doc, NEW_KEY_FIELDS, "key")
    public_key = public_key_from(required(doc, "publicKey"))
    overlap = _overlap(request, doc)

    async def write(conn: AsyncConnection) -> Reply:
        node = await _node(conn, admin, request.match_info["nodeId"])
        moment = now(request)
        change = await key_rotation.rotate(conn, admin.principal, node, public_key, moment, overlap)
        return Reply(
            201 if change.changed else 200,
            await _answer(conn, request, node, change.key.key_id),
        )

    return await run_write(request, admin.principal, body, write)


async def _key_of_node(conn: AsyncConnection, admin: TokenPrincipal, request: web.Request) -> None:
    """404 unless the path's key is one of the path's node, of the admin's tenant."""
    node = await _node(conn, admin, request.match_info["nodeId"])
    key = await get_key(conn, request.match_info["keyId"])
    if key is None or key.node_id != node.node_id:
        raise NotFound(f"no key {request.match_info['keyId']} of node {node.node_id}")


async def retire(request: web.Request) -> web.Response:
    admin = await authenticate_token(request, Role.ADMIN)
    body = await read_body(request)
    doc = decode_document(request, body) if body else {}
    only_fields(doc, RETIRE_FIELDS, "retirement")
    overlap = _overlap(request, doc)

    async def write(conn: AsyncConnection) -> Reply:
        await _key_of_node(conn, admin, request)
        node, change = await key_rotation.retire(
            conn, admin.principal, request.match_info["keyId"], now(request), overlap
        )
        return await _changed(conn, request, node, change)

    return await run_write(request, admin.principal, body, write)


async def revoke(request: web.Request) -> web.Response:
    admin = await authenticate_token(request, Role.ADMIN)

    async def write(conn: AsyncConnection) -> Reply:
        await _key_of_node(conn, admin, request)
        node, change = await key_rotation.revoke(
            conn, admin.principal, request.match_info["keyId"], now(request)
        )
        return await _changed(conn, request, node, change)

    return await run_write(request, admin.principal, await request.read(), write)


async def _changed(
    conn: AsyncConnection, request: web.Request, node: Node, change: KeyChange
) -> Reply:
    return Reply(200, await _answer(conn, request, node, change.key.key_id))

"""Authentication at the HTTP edge: node request signatures and bearer tokens.

A request signed with a key in its overlap window is answered with the
``PHS-Key-Retires-At`` header (when the key stops being accepted), so the
node rotates before then (docs/key-rotation.md).

A node's successful requests also keep when it was last seen and its clock
offset (its signed time minus ours) on its ``nodes`` row, for the admin page:
after the answer is ready and only if it succeeded and is not a replay (a
refused request changes nothing), and at most once per
``NODE_SEEN_INTERVAL`` unless the offset moved, so a busy node costs one
small write every half minute, not one per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from gateway.db.schema import nodes
from gateway.http import SETTINGS, database, now, path_with_query
from gateway.registry import Node, Role, TokenPrincipal, find_token, get_key_and_node
from shared.errors import (
    BadSignature,
    ClockSkew,
    KeyRevoked,
    MissingCredentials,
    PhsError,
    RoleForbidden,
    UnknownKey,
)
from shared.node_keys import KEY_RETIRES_HEADER, KeyStatus, NodeKey
from shared.signing import parse_authorization, verify_request
from shared.values import format_timestamp, parse_timestamp

log = logging.getLogger("gateway.auth")

NODE_SEEN_INTERVAL = timedelta(seconds=30)
OFFSET_CHANGE_SECONDS = 2.0  # a clock that moved this much is written at once


@dataclass(frozen=True)
class NodeContact:
    node: Node
    at: datetime
    clock_offset_seconds: float  # the signed ts minus the gateway's clock
    key: NodeKey | None = None  # the key the request was signed with

    def worth_writing(self) -> bool:
        node = self.node
        if node.last_seen_at is None or node.clock_offset_seconds is None:
            return True
        if abs(self.clock_offset_seconds - node.clock_offset_seconds) >= OFFSET_CHANGE_SECONDS:
            return True
        return parse_timestamp(node.last_seen_at, "last_seen_at") <= self.at - NODE_SEEN_INTERVAL


NODE_CONTACT = web.RequestKey("node_contact", NodeContact)


async def authenticate_node(request: web.Request, body: bytes) -> Node:
    """Verify ``Authorization: PHS-Ed25519 …`` against the key its ``keyId``
    names (the node's enrollment key, or one its rotations added:
    docs/key-rotation.md). A key of a revoked node, a revoked key: 403
    ``key_revoked``; a retired key: 401 ``key_retired``; each recorded in the
    audit log when the signature shows the key's holder sent it."""
    auth = parse_authorization(request.headers.get("Authorization"))
    async with database(request).read() as conn:
        found = await get_key_and_node(conn, auth.key_id)
    if found is None:
        raise UnknownKey(f"no enrolled key {auth.key_id}")
    key, node = found
    moment = now(request)
    skew = request.app[SETTINGS].clock_skew_seconds
    refusal: PhsError | None = (
        KeyRevoked(f"node {node.node_id} is revoked") if not node.active else key.refusal(moment)
    )
    path = path_with_query(request)
    try:
        verify_request(auth, key.public_key, request.method, path, body, moment.timestamp(), skew)
    except (BadSignature, ClockSkew):
        if refusal is None:
            raise
        # A forged header naming a refused key proves nothing: refused as the
        # key is, and not recorded (strangers cannot fill the audit log).
        raise refusal from None
    if refusal is not None:
        # Its holder really used a retired or revoked key (a stolen key, or a
        # node that missed its rotation): recorded (docs/audit.md).
        # gateway.audit imports this module (authenticate_token): imported here.
        from gateway import audit
        from gateway.key_rotation import refused_use

        await audit.record(request, refused_use(node, key, moment))
        raise refusal
    request[NODE_CONTACT] = NodeContact(node, moment, round(auth.ts - moment.timestamp(), 1), key)
    return node


async def note_node_seen(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: keep a node's last contact once its request succeeded."""
    contact = request.get(NODE_CONTACT)
    if contact is None:
        return
    if contact.key is not None and contact.key.status_at(contact.at) is KeyStatus.RETIRING:
        # Tells the node to rotate (edgenode.rotation) while its key still works.
        response.headers[KEY_RETIRES_HEADER] = contact.key.retires_at or ""
    if response.status >= 400 or "Idempotent-Replayed" in response.headers:
        return
    if not contact.worth_writing():
        return
    try:
        async with database(request).write() as conn:
            await conn.execute(
                nodes.update()
                .where(nodes.c.node_id == contact.node.node_id)
                .values(
                    last_seen_at=format_timestamp(contact.at),
                    clock_offset_seconds=contact.clock_offset_seconds,
                )
            )
    except SQLAlchemyError:  # the answer is ready: a missed "last seen" is not worth failing it
        log.warning("could not record when node %s was last seen", contact.node.node_id)


async def authenticate_token(request: web.Request, *roles: Role) -> TokenPrincipal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MissingCredentials("a bearer token is required")
    async with database(request).read() as conn:
        principal = await find_token(conn, token.strip())
    if principal is None:
        raise MissingCredentials("unknown bearer token")
    if principal.role not in roles:
        raise RoleForbidden(f"role {principal.role} may not do this; needs {' or '.join(roles)}")
    return principal

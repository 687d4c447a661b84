"""Authentication at the HTTP edge: node request signatures and bearer tokens."""

from __future__ import annotations

from aiohttp import web

from gateway.http import SETTINGS, database, now, path_with_query
from gateway.registry import Node, Role, TokenPrincipal, find_token, get_node
from shared.errors import KeyRevoked, MissingCredentials, RoleForbidden, UnknownKey
from shared.signing import parse_authorization, verify_request


async def authenticate_node(request: web.Request, body: bytes) -> Node:
    """Verify ``Authorization: PHS-Ed25519 …`` against the enrolled key."""
    auth = parse_authorization(request.headers.get("Authorization"))
    async with database(request).read() as conn:
        node = await get_node(conn, auth.key_id)
    if node is None:
        raise UnknownKey(f"no enrolled node {auth.key_id}")
    if not node.active:
        raise KeyRevoked(f"node {auth.key_id} is revoked")
    verify_request(
        auth,
        node.public_key,
        request.method,
        path_with_query(request),
        body,
        now(request).timestamp(),
        request.app[SETTINGS].clock_skew_seconds,
    )
    return node


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

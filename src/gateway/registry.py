"""Node enrollment and bearer tokens: who may talk to the gateway.

Shared by the admin API and the CLI so both enroll and revoke the same way.
Tokens are stored only as SHA-256 hashes; the plaintext is shown once.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.schema import node_keys, nodes, tokens
from gateway.node_keys import insert_key, key_from_row
from shared.errors import AlreadyExists, NotFound, ValidationFailed
from shared.node_keys import KeyStatus, NodeKey
from shared.signing import fingerprint
from shared.values import format_timestamp, identifier

CAPABILITIES = frozenset({"risk_override"})
TOKEN_PREFIX = "phs_"


class Role(StrEnum):
    ADMIN = "admin"
    SERVICE = "service"
    ANALYST = "analyst"


@dataclass(frozen=True)
class Node:
    node_id: str
    tenant_id: str
    facility_ids: frozenset[str]
    public_key: bytes
    capabilities: frozenset[str]
    status: str
    enrolled_at: str
    revoked_at: str | None
    # From its authenticated requests (gateway.auth); None until the first.
    last_seen_at: str | None = None
    clock_offset_seconds: float | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_wire(self) -> dict[str, Any]:
        return {
            "nodeId": self.node_id,
            "tenantId": self.tenant_id,
            "facilityIds": sorted(self.facility_ids),
            "publicKey": self.public_key,
            "fp": fingerprint(self.public_key),
            "capabilities": sorted(self.capabilities),
            "status": self.status,
            "enrolledAt": self.enrolled_at,
            "revokedAt": self.revoked_at,
        }


@dataclass(frozen=True)
class TokenPrincipal:
    token_id: str
    tenant_id: str
    role: Role

    @property
    def principal(self) -> str:
        return f"token:{self.token_id}"


def _node_from_row(row: Mapping[str, Any]) -> Node:
    return Node(
        row["node_id"],
        row["tenant_id"],
        frozenset(row["facility_ids"]),
        bytes(row["public_key"]),
        frozenset(row["capabilities"]),
        row["status"],
        row["enrolled_at"],
        row["revoked_at"],
        row.get("last_seen_at"),
        row.get("clock_offset_seconds"),
    )


async def get_node(conn: AsyncConnection, node_id: str) -> Node | None:
    row = (await conn.execute(sa.select(nodes).where(nodes.c.node_id == node_id))).first()
    return None if row is None else _node_from_row(dict(row._mapping))


async def get_key_and_node(conn: AsyncConnection, key_id: str) -> tuple[NodeKey, Node] | None:
    """The key ``key_id`` names and its node, in one query (every signed request)."""
    key_columns = [column.label(f"key_{column.name}") for column in node_keys.c]
    row = (
        await conn.execute(
            sa.select(nodes, *key_columns)
            .join(node_keys, node_keys.c.node_id == nodes.c.node_id)
            .where(node_keys.c.key_id == key_id)
        )
    ).first()
    if row is None:
        return None
    found = dict(row._mapping)
    key = key_from_row({column.name: found[f"key_{column.name}"] for column in node_keys.c})
    return key, _node_from_row(found)


async def tenant_nodes(conn: AsyncConnection, tenant_id: str) -> list[Node]:
    """Every node of a tenant, revoked ones included, by id."""
    rows = await conn.execute(
        sa.select(nodes).where(nodes.c.tenant_id == tenant_id).order_by(nodes.c.node_id)
    )
    return [_node_from_row(dict(row._mapping)) for row in rows]


async def enroll_node(
    conn: AsyncConnection,
    *,
    node_id: str,
    tenant_id: str,
    facility_ids: Iterable[str],
    public_key: bytes,
    capabilities: Iterable[str],
    now: datetime,
) -> Node:
    facilities = sorted({identifier(f, "facilityIds[]") for f in facility_ids})
    if not facilities:
        raise ValidationFailed("a node needs at least one facility", field="facilityIds")
    caps = sorted(set(capabilities))
    unknown = set(caps) - CAPABILITIES
    if unknown:
        raise ValidationFailed(
            f"unknown capabilities: {', '.join(sorted(unknown))}", field="capabilities"
        )
    checked_id = identifier(node_id, "nodeId")
    row = {
        "node_id": checked_id,
        "tenant_id": identifier(tenant_id, "tenantId"),
        "facility_ids": facilities,
        "public_key": public_key,
        "capabilities": caps,
        "status": "active",
        "enrolled_at": format_timestamp(now),
        "revoked_at": None,
    }
    # The enrollment key signs as the node id (CONTRACT section 2); rotations
    # add others (gateway.node_keys).
    key = NodeKey(checked_id, checked_id, public_key, KeyStatus.ACTIVE, format_timestamp(now))
    try:
        async with conn.begin_nested():
            await conn.execute(nodes.insert().values(**row))
            await insert_key(conn, key)
    except IntegrityError as err:
        raise AlreadyExists(f"node {node_id} (or a key of that id) is already enrolled") from err
    return _node_from_row(row)


async def revoke_node(
    conn: AsyncConnection, node_id: str, now: datetime, tenant_id: str | None = None
) -> Node:
    """Revoke a node (idempotent). ``tenant_id`` limits it to one tenant's nodes."""
    node = await get_node(conn, node_id)
    if node is None or (tenant_id is not None and node.tenant_id != tenant_id):
        raise NotFound(f"no node {node_id}")
    if node.active:
        await conn.execute(
            nodes.update()
            .where(nodes.c.node_id == node_id)
            .values(status="revoked", revoked_at=format_timestamp(now))
        )
        node = await get_node(conn, node_id)
        assert node is not None
    return node


def token_hash(token: str) -> str:
    # surrogateescape: aiohttp decodes a header's non-UTF-8 bytes to lone
    # surrogates; a Bearer token of such bytes hashes to no token (was a 500).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


async def create_token(
    conn: AsyncConnection, *, tenant_id: str, role: str, label: str, now: datetime
) -> tuple[str, TokenPrincipal]:
    """A new bearer token; the plaintext is returned once and never stored."""
    try:
        checked_role = Role(role)
    except ValueError as err:
        raise ValidationFailed(f"role must be one of {', '.join(Role)}", field="role") from err
    token_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    await conn.execute(
        tokens.insert().values(
            token_hash=token_hash(token),
            token_id=token_id,
            tenant_id=identifier(tenant_id, "tenant"),
            role=checked_role.value,
            label=label[:200],
            created_at=format_timestamp(now),
        )
    )
    return token, TokenPrincipal(token_id, tenant_id, checked_role)


async def find_token(conn: AsyncConnection, token: str) -> TokenPrincipal | None:
    row = (
        await conn.execute(
            sa.select(tokens.c.token_id, tokens.c.tenant_id, tokens.c.role).where(
                tokens.c.token_hash == token_hash(token)
            )
        )
    ).first()
    return None if row is None else TokenPrincipal(row.token_id, row.tenant_id, Role(row.role))

"""The ``node_keys`` table: the keys each node may sign with (docs/key-rotation.md).

Reading keys, and the three changes a key can undergo, each inside the
caller's transaction: ``add_key`` (a rotation: the new key becomes active,
the node's active keys start their overlap window), ``retire_key`` and
``revoke_key``. What the statuses mean is ``shared.node_keys``; the audit
rows of each change are written by ``gateway.key_rotation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.schema import node_keys, nodes
from shared.errors import AlreadyExists, Forbidden, NotFound
from shared.node_keys import KeyStatus, NodeKey, key_id_for, retire, revoke
from shared.values import format_timestamp


@dataclass(frozen=True)
class KeyChange:
    """What one operation did: ``key`` as it is now, the keys a rotation moved
    into their window, and whether anything changed at all (a resend, or a key
    already retired or revoked, changes nothing)."""

    key: NodeKey
    changed: bool
    retired: list[NodeKey] = field(default_factory=list)


def key_from_row(row: Mapping[str, Any]) -> NodeKey:
    return NodeKey(
        key_id=row["key_id"],
        node_id=row["node_id"],
        public_key=bytes(row["public_key"]),
        status=KeyStatus(row["status"]),
        created_at=row["created_at"],
        retires_at=row["retires_at"],
        revoked_at=row["revoked_at"],
    )


async def get_key(conn: AsyncConnection, key_id: str) -> NodeKey | None:
    row = (await conn.execute(sa.select(node_keys).where(node_keys.c.key_id == key_id))).first()
    return None if row is None else key_from_row(dict(row._mapping))


async def keys_document(
    conn: AsyncConnection, node_id: str, moment: datetime, key_id: str | None = None
) -> dict[str, Any]:
    """The answer about a node's keys: each with its status at ``moment``, and
    ``keyId``, the key the operation was about, when there is one."""
    keys = [key.to_wire(moment) for key in await keys_of(conn, node_id)]
    document: dict[str, Any] = {"nodeId": node_id}
    if key_id is not None:
        document["keyId"] = key_id
    return {**document, "keys": keys}


async def keys_of(conn: AsyncConnection, node_id: str) -> list[NodeKey]:
    """Every key of a node, oldest first."""
    rows = await conn.execute(
        sa.select(node_keys)
        .where(node_keys.c.node_id == node_id)
        .order_by(node_keys.c.created_at, node_keys.c.key_id)
    )
    return [key_from_row(dict(row._mapping)) for row in rows]


async def insert_key(conn: AsyncConnection, key: NodeKey) -> None:
    await conn.execute(
        node_keys.insert().values(
            key_id=key.key_id,
            node_id=key.node_id,
            public_key=key.public_key,
            status=key.status.value,
            created_at=key.created_at,
            retires_at=key.retires_at,
            revoked_at=key.revoked_at,
        )
    )


async def _store(conn: AsyncConnection, key: NodeKey) -> None:
    await conn.execute(
        node_keys.update()
        .where(node_keys.c.key_id == key.key_id)
        .values(status=key.status.value, retires_at=key.retires_at, revoked_at=key.revoked_at)
    )


async def lock_node(conn: AsyncConnection, node_id: str) -> None:
    """Serialise changes to one node's keys (two rotations at once would leave
    two active keys): its ``nodes`` row locked until the commit on PostgreSQL;
    SQLite has one writer anyway."""
    if conn.dialect.name != "sqlite":
        await conn.execute(
            sa.select(nodes.c.node_id).where(nodes.c.node_id == node_id).with_for_update()
        )


async def add_key(
    conn: AsyncConnection,
    node_id: str,
    public_key: bytes,
    now: datetime,
    overlap: int,
    signer: NodeKey | None = None,
) -> KeyChange:
    """Rotate ``node_id`` to ``public_key``: a new active key, and the node's
    active keys retiring ``overlap`` seconds from now (keys already retiring
    keep their window). Registering a key the node may still use again is a
    resend: nothing changes (the answer to the first was lost; a key an admin
    has retired since is still the node's, until its window ends). A key the
    gateway has seen in any other state, or for another node, is refused (a
    retired or revoked key never comes back).

    ``signer``: the key that signed the node's own request (None: an admin).
    A new key needs the node's active key, or a retiring one when the node has
    no active key left (an admin retired it, and the node rotates as asked):
    a key the node has rotated away from, perhaps because it leaked, cannot
    register keys of its own choosing while its window lasts."""
    await lock_node(conn, node_id)
    key_id = key_id_for(node_id, public_key)
    existing = await get_key(conn, key_id)
    if existing is not None:
        if existing.node_id == node_id and existing.usable_at(now):
            return KeyChange(existing, changed=False)
        raise AlreadyExists(
            f"this key is already registered ({existing.status_at(now)}); make a new key"
        )
    taken = (
        await conn.execute(
            sa.select(node_keys.c.key_id).where(node_keys.c.public_key == public_key).limit(1)
        )
    ).first()
    if taken is not None:
        raise AlreadyExists("this public key is already registered; make a new key")
    held = await keys_of(conn, node_id)
    if signer is not None and signer.status_at(now) is not KeyStatus.ACTIVE:
        if any(key.status_at(now) is KeyStatus.ACTIVE for key in held):
            raise Forbidden(
                f"key {signer.key_id} is retiring and the node has a newer active key: "
                "only that key may register another"
            )
    retired: list[NodeKey] = []
    for key in held:
        if key.status_at(now) is KeyStatus.ACTIVE:
            retired.append(retire(key, now, overlap))
            await _store(conn, retired[-1])
    new = NodeKey(key_id, node_id, public_key, KeyStatus.ACTIVE, format_timestamp(now))
    await insert_key(conn, new)
    return KeyChange(new, changed=True, retired=retired)


async def _locked_key(conn: AsyncConnection, key_id: str) -> NodeKey:
    """``key_id`` read again once its node is locked (a rotation may have just
    moved it); NotFound when there is none. (Callers check the key is in the
    caller's scope: the admin routes, resources.admin_node_keys.)"""
    key = await get_key(conn, key_id)
    if key is not None:
        await lock_node(conn, key.node_id)
        key = await get_key(conn, key_id)
    if key is None:
        raise NotFound(f"no key {key_id}")
    return key


async def retire_key(conn: AsyncConnection, key_id: str, now: datetime, overlap: int) -> KeyChange:
    """``key_id`` accepted ``overlap`` more seconds (shared.node_keys.retire)."""
    key = await _locked_key(conn, key_id)
    after = retire(key, now, overlap)
    if after != key:
        await _store(conn, after)
    return KeyChange(after, changed=after != key)


async def revoke_key(conn: AsyncConnection, key_id: str, now: datetime) -> KeyChange:
    """``key_id`` refused from now on; the node and its other keys are untouched."""
    key = await _locked_key(conn, key_id)
    after = revoke(key, now)
    if after != key:
        await _store(conn, after)
    return KeyChange(after, changed=after != key)

"""Key rotation at the gateway: each change to a node's keys with its audit
rows, and the audit row of a refused use of a retired or revoked key
(docs/key-rotation.md, docs/audit.md).

Shared by the node's own rotation (``POST …/sync/keys``), the admin API and
the ``phs-gateway`` key commands, so all three change keys and record them
the same way. A change's rows are its transaction's last step; an operation
that changes nothing (a resend, a key already retired or revoked) adds none.

The rows name the node whose key it is in their ``node`` column, whoever
acted (the node itself, an admin token, an operator at the command line),
and the key in their ``record``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.node_keys import KeyChange, add_key, keys_of, retire_key, revoke_key
from gateway.registry import Node, get_node
from shared.audit import AuditEntry, Outcome
from shared.errors import NotFound
from shared.node_keys import KeyStatus, NodeKey

ROTATE = "node_key.rotate"  # a new key (record: it)
RETIRE = "node_key.retire"  # a key's overlap window set (record: that key)
REVOKE = "node_key.revoke"
USE = "node_key.use"  # a refused use of a retired or revoked key (outcome refused)


def _entry(
    principal: str, node: Node, action: str, key_id: str, outcome: str, at: datetime
) -> AuditEntry:
    return audit.Actor(principal, node.tenant_id, node.node_id).entry(action, key_id, outcome, at)


def change_entries(
    principal: str, node: Node, action: str, change: KeyChange, at: datetime
) -> list[AuditEntry]:
    """The rows of a change: the key acted on, then each key a rotation moved
    into its overlap window (a ``node_key.retire`` row each)."""
    if not change.changed:
        return []
    rows = [_entry(principal, node, action, change.key.key_id, Outcome.OK, at)]
    rows += [_entry(principal, node, RETIRE, k.key_id, Outcome.OK, at) for k in change.retired]
    return rows


async def rotate(
    conn: AsyncConnection,
    principal: str,
    node: Node,
    public_key: bytes,
    at: datetime,
    overlap: int,
    signer: NodeKey | None = None,
) -> KeyChange:
    """``node`` rotates to ``public_key`` (gateway.node_keys.add_key), recorded;
    ``signer``: the key that signed the node's own request (None: an admin)."""
    change = await add_key(conn, node.node_id, public_key, at, overlap, signer)
    await audit.append(conn, change_entries(principal, node, ROTATE, change, at), at)
    return change


async def start_rotation(
    conn: AsyncConnection, principal: str, node: Node, at: datetime, overlap: int
) -> list[KeyChange]:
    """Every active key of ``node`` accepted ``overlap`` more seconds: the node,
    told so on its next request (``PHS-Key-Retires-At``), rotates itself."""
    changes = []
    for key in await keys_of(conn, node.node_id):
        if key.status_at(at) is KeyStatus.ACTIVE:
            changes.append(await retire_key(conn, key.key_id, at, overlap))
    rows = [row for c in changes for row in change_entries(principal, node, RETIRE, c, at)]
    await audit.append(conn, rows, at)  # last: the chain head's lock until commit
    return changes


async def _node_of(conn: AsyncConnection, key: NodeKey) -> Node:
    node = await get_node(conn, key.node_id)
    if node is None:  # the foreign key makes this impossible; say so if it happens
        raise NotFound(f"no node {key.node_id} for key {key.key_id}")
    return node


async def retire(
    conn: AsyncConnection,
    principal: str,
    key_id: str,
    at: datetime,
    overlap: int,
) -> tuple[Node, KeyChange]:
    """``key_id`` accepted ``overlap`` more seconds (0: retired now), recorded."""
    change = await retire_key(conn, key_id, at, overlap)
    node = await _node_of(conn, change.key)
    await audit.append(conn, change_entries(principal, node, RETIRE, change, at), at)
    return node, change


async def revoke(
    conn: AsyncConnection, principal: str, key_id: str, at: datetime
) -> tuple[Node, KeyChange]:
    """``key_id`` refused from now on, recorded; the node keeps its other keys."""
    change = await revoke_key(conn, key_id, at)
    node = await _node_of(conn, change.key)
    await audit.append(conn, change_entries(principal, node, REVOKE, change, at), at)
    return node, change


def refused_use(node: Node, key: NodeKey, at: datetime) -> AuditEntry:
    """The row of a refused use of ``key``, by the node itself."""
    return _entry(f"node:{node.node_id}", node, USE, key.key_id, Outcome.REFUSED, at)

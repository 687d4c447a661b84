"""``phs-gateway`` key commands: a node's signing keys from the command line
(docs/key-rotation.md).

    phs-gateway list-keys --node-id ID
    phs-gateway rotate-key --node-id ID [--public-key B64] [--overlap-seconds S]
    phs-gateway retire-key --key-id KEY [--overlap-seconds S]
    phs-gateway revoke-key --key-id KEY

``rotate-key`` without ``--public-key`` starts the node's rotation: its active
keys are accepted ``S`` more seconds (default ``key_overlap_seconds``), and
the node, told so on its next request, registers a new key itself. With
``--public-key`` (the key ``edgenode rotate-key`` printed) the new key is
registered here, for a node whose own key is already refused.

Unlike enroll-node and revoke-node, every change is recorded in the audit
log (actor ``cli:<login name>``): the issue asks that every rotation,
retirement and revocation be, whoever makes it.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import key_rotation
from gateway.db.database import Database
from gateway.http import system_clock
from gateway.node_keys import keys_document
from gateway.registry import Node, get_node
from gateway.settings import Settings
from shared.encoding import JSON, encode
from shared.errors import NotFound
from shared.node_keys import overlap_seconds
from shared.signing import public_key_from

NAMES = ("list-keys", "rotate-key", "retire-key", "revoke-key")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The key commands, on phs-gateway's subparsers ``sub``."""
    listing = sub.add_parser("list-keys", parents=[common], help="a node's signing keys")
    listing.add_argument("--node-id", required=True)
    rotate = sub.add_parser(
        "rotate-key", parents=[common], help="start a node's key rotation (or register its new key)"
    )
    rotate.add_argument("--node-id", required=True)
    rotate.add_argument("--public-key", help="base64 Ed25519 public key the node made")
    rotate.add_argument("--overlap-seconds", type=int, help="how long its old key still works")
    retire = sub.add_parser(
        "retire-key", parents=[common], help="retire one key after an overlap window"
    )
    retire.add_argument("--key-id", required=True)
    retire.add_argument("--overlap-seconds", type=int, help="0: retired now")
    revoke = sub.add_parser("revoke-key", parents=[common], help="revoke one key at once")
    revoke.add_argument("--key-id", required=True)


def operator() -> str:
    """The audit actor of a command: ``cli:<login name>``."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment or passwd
        name = "unknown"
    printable = "".join(c for c in name if c.isascii() and c.isprintable())[:100]
    return f"cli:{printable or 'unknown'}"


async def _node(conn: AsyncConnection, node_id: str) -> Node:
    node = await get_node(conn, node_id)
    if node is None:
        raise NotFound(f"no node {node_id}")
    return node


async def _print_keys(conn: AsyncConnection, node_id: str) -> None:
    document = await keys_document(conn, node_id, system_clock())
    print(json.dumps(json.loads(encode(document, JSON)), indent=2))


async def run(args: argparse.Namespace, database: Database, settings: Settings) -> None:
    chosen = getattr(args, "overlap_seconds", None)
    overlap = (
        settings.key_overlap_seconds  # checked when the settings loaded
        if chosen is None
        else overlap_seconds(chosen, "--overlap-seconds")
    )
    who, moment = operator(), system_clock()

    async def list_keys(conn: AsyncConnection) -> str:
        return (await _node(conn, args.node_id)).node_id

    async def rotate(conn: AsyncConnection) -> str:
        node = await _node(conn, args.node_id)
        if args.public_key is not None:
            key = public_key_from(args.public_key)
            await key_rotation.rotate(conn, who, node, key, moment, overlap)
            return node.node_id
        await key_rotation.start_rotation(conn, who, node, moment, overlap)
        return node.node_id

    async def retire(conn: AsyncConnection) -> str:
        node, _ = await key_rotation.retire(conn, who, args.key_id, moment, overlap)
        return node.node_id

    async def revoke(conn: AsyncConnection) -> str:
        node, _ = await key_rotation.revoke(conn, who, args.key_id, moment)
        return node.node_id

    actions: dict[str, Callable[[AsyncConnection], Awaitable[str]]] = {
        "list-keys": list_keys,
        "rotate-key": rotate,
        "retire-key": retire,
        "revoke-key": revoke,
    }
    async with database.write() as conn:
        node_id = await actions[args.command](conn)
    async with database.read() as conn:
        await _print_keys(conn, node_id)

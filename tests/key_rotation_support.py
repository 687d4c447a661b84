"""Helpers of the key rotation tests (tests/test_key_rotation.py,
tests/test_edge_key_rotation.py; docs/key-rotation.md): signed requests with
a chosen key, rotations, batches, reports made at a chosen time, and the
audit rows of key operations."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
import msgpack
import sqlalchemy as sa

from edgenode.keys import SigningKey
from gateway import audit
from gateway.db.schema import node_keys
from harness import PREFIX, Gateway, NodeIdentity, transition
from shared.audit import ChainedRow
from shared.encoding import MSGPACK
from shared.node_keys import key_id_for
from shared.periods import parse_period
from shared.reports import FacilityReport, encode_report_payload
from shared.signing import KeyPair, authorization_header

WEEK = 7 * 24 * 3600  # key_overlap_seconds by default
KEYS = f"{PREFIX}/sync/keys"
TIMEOUT = aiohttp.ClientTimeout(total=10)


async def signed(
    gw: Gateway,
    key: SigningKey,
    method: str,
    path: str,
    doc: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    """A msgpack request signed with ``key`` at the gateway's time: status, answer, headers."""
    body = b"" if doc is None else msgpack.packb(doc, use_bin_type=True)
    ts = int(gw.clock().timestamp())
    all_headers = {
        "Authorization": authorization_header(key.keypair, key.key_id, method, path, body, ts),
        "Accept": MSGPACK,
        **(headers or {}),
    }
    if body:
        all_headers["Content-Type"] = MSGPACK
    resp = await gw.client.request(method, path, data=body, headers=all_headers)
    raw = await resp.read()
    return resp.status, (msgpack.unpackb(raw) if raw else None), resp.headers


async def rotate(gw: Gateway, signer: SigningKey, new: KeyPair) -> tuple[int, Any]:
    status, doc, _ = await signed(gw, signer, "POST", KEYS, {"publicKey": new.public_key})
    return status, doc


async def batch(
    gw: Gateway, node: NodeIdentity, key: SigningKey, items: list[dict[str, Any]]
) -> tuple[int, Any, Mapping[str, str]]:
    batch_id, body = gw.batch(node, items)
    doc = msgpack.unpackb(body)
    return await signed(
        gw, key, "POST", f"{PREFIX}/sync/batches", doc, {"Idempotency-Key": batch_id}
    )


def step(n: int, item: str = "oi-1") -> dict[str, Any]:
    """The n-th of a chain of legal transitions of one item (assigned → … → completed)."""
    states = ["assigned", "in_progress", "contacted", "completed"]
    return transition(f"t-{item}-{n}", item, states[n], states[n + 1])


def report(
    node: NodeIdentity, keypair: KeyPair, generated_at: datetime, period_key: str
) -> dict[str, Any]:
    """A report submission made (and signed with ``keypair``) at ``generated_at``."""
    metrics = {
        "patientCount": 3,
        "encounterCount": 4,
        "screening": {"due": 2, "done": 1, "rate": 0.5},
        "immunization": {"due": 0, "given": 0, "rate": None},
    }
    payload = encode_report_payload(
        FacilityReport(
            node.tenant_id,
            node.facility_ids[0],
            node.node_id,
            parse_period("daily", period_key),
            generated_at,
            metrics,
        )
    )
    return {"deviceId": node.node_id, "payload": payload, "signature": keypair.sign(payload)}


async def key_rows(gw: Gateway) -> list[tuple[Any, ...]]:
    """The audit rows of key operations: (actor, node, tenant, action, record, outcome)."""
    async with gw.database.read() as conn:
        rows: list[ChainedRow] = await audit.read_rows(conn, 0, 100_000)
    return [
        (
            r.entry.actor,
            r.entry.node,
            r.entry.tenant,
            r.entry.action,
            r.entry.record,
            r.entry.outcome,
        )
        for r in rows
        if r.entry.action.startswith("node_key.")
    ]


async def assert_chain_intact(gw: Gateway) -> int:
    result = await audit.verify(gw.database)
    assert result.broken is None, result.broken
    return result.checked


async def key_table(gw: Gateway) -> list[tuple[Any, ...]]:
    async with gw.database.read() as conn:
        return [tuple(r) for r in await conn.execute(sa.select(node_keys).order_by("key_id"))]


def identity_key(node: NodeIdentity) -> SigningKey:
    return SigningKey(node.node_id, node.keypair)


def new_key(node: NodeIdentity) -> SigningKey:
    keypair = KeyPair.generate()
    return SigningKey(key_id_for(node.node_id, keypair.public_key), keypair)

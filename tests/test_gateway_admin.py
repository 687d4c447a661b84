"""Node enrollment and revocation: the admin API (``…/admin/nodes``) and the
``phs-gateway`` command line, run as real subprocesses against the data
directory of a live gateway."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from typing import Any

import msgpack
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from canaries import scan_output
from gateway.app import create_app
from gateway.db.schema import tokens
from gateway.settings import Settings
from harness import (
    PREFIX,
    FakeClock,
    Gateway,
    NodeIdentity,
    assert_problem,
    bearer,
    document,
    transition,
)
from shared.signing import KeyPair
from shared.values import format_timestamp

NODES = f"{PREFIX}/admin/nodes"


def enrollment(
    node_id: str = "edge-07", key: KeyPair | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "nodeId": node_id,
        "tenantId": "t1",
        "facilityIds": ["f-002", "f-001"],
        "publicKey": (key or KeyPair.generate()).public_key_b64,
        **extra,
    }


async def test_enroll_read_revoke(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    await gateway.create_item(admin, "item-1", "assigned")
    key = KeyPair.generate()
    resp = await gateway.client.post(
        NODES, json=enrollment(key=key, capabilities=["risk_override"]), headers=bearer(admin)
    )
    assert resp.status == 201, await resp.text()
    node = await resp.json()
    assert (
        node
        == {
            "nodeId": "edge-07",
            "tenantId": "t1",
            "facilityIds": ["f-001", "f-002"],  # sorted, as stored
            "publicKey": key.public_key_b64,
            "fp": hashlib.sha256(key.public_key).hexdigest()[:16],  # CONTRACT section 10
            "capabilities": ["risk_override"],
            "status": "active",
            "enrolledAt": format_timestamp(gateway.clock()),
            "revokedAt": None,
        }
    )
    resp = await gateway.client.get(f"{NODES}/edge-07", headers=bearer(admin))
    assert await resp.json() == node

    # The enrolled key now signs requests.
    identity = NodeIdentity("edge-07", "t1", ["f-001", "f-002"], key)
    resp = await gateway.post_batch(
        identity, [transition("t-1", "item-1", "assigned", "in_progress")]
    )
    assert resp.status == 200, await resp.text()

    gateway.clock.advance(60)
    resp = await gateway.client.delete(f"{NODES}/edge-07", headers=bearer(admin))
    assert resp.status == 200, await resp.text()
    revoked = await resp.json()
    assert (revoked["status"], revoked["revokedAt"]) == (
        "revoked",
        format_timestamp(gateway.clock()),
    )

    before = await gateway.snapshot()
    resp = await gateway.post_batch(
        identity, [transition("t-2", "item-1", "in_progress", "contacted")]
    )
    await assert_problem(resp, 403, "key_revoked")
    resp = await gateway.signed(identity, "GET", f"{PREFIX}/sync/changes")
    await assert_problem(resp, 403, "key_revoked")
    assert await gateway.snapshot() == before

    gateway.clock.advance(60)  # revoking again: still revoked, at the first time
    resp = await gateway.client.delete(f"{NODES}/edge-07", headers=bearer(admin))
    assert resp.status == 200 and (await resp.json())["revokedAt"] == revoked["revokedAt"]


async def test_enroll_twice_is_a_conflict(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    assert (
        await gateway.client.post(NODES, json=enrollment(), headers=bearer(admin))
    ).status == 201
    before = await gateway.snapshot()
    resp = await gateway.client.post(NODES, json=enrollment(), headers=bearer(admin))  # new key
    await assert_problem(resp, 409, "already_exists")
    assert await gateway.snapshot() == before  # the first key stays


async def test_enroll_in_msgpack_with_raw_key_bytes(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    key = KeyPair.generate()
    doc = {**enrollment(key=key), "publicKey": key.public_key}
    resp = await gateway.client.post(
        NODES,
        data=msgpack.packb(doc),
        headers=bearer(admin, **{"Content-Type": "application/msgpack"}),
    )
    assert resp.status == 201, await resp.text()
    assert resp.content_type == "application/msgpack"
    assert (await document(resp))["publicKey"] == key.public_key  # raw bin back


async def test_enrollment_replays_under_its_key(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    body = enrollment()
    headers = bearer(admin, **{"Idempotency-Key": "enroll-07"})
    first = await gateway.client.post(NODES, json=body, headers=headers)
    again = await gateway.client.post(NODES, json=body, headers=headers)
    assert (first.status, again.status) == (201, 201)  # a replay, not already_exists
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()


SMALL_ORDER_POINT = "AQ" + "A" * 41 + "="  # the identity point (y = 1): no valid key

BAD_ENROLLMENTS = [
    ("key not base64", {"publicKey": "not base64!"}),
    ("key 31 bytes", {"publicKey": "A" * 40 + "Aw=="}),
    ("key not a point", {"publicKey": SMALL_ORDER_POINT}),
    ("key a number", {"publicKey": 7}),
    ("no facilities", {"facilityIds": []}),
    ("facilities a string", {"facilityIds": "f-001"}),
    ("bad facility id", {"facilityIds": ["f 001"]}),
    ("bad node id", {"nodeId": "edge/07"}),
    ("unknown capability", {"capabilities": ["root"]}),
    ("unknown field", {"role": "admin"}),
]


@pytest.mark.parametrize(("name", "change"), BAD_ENROLLMENTS, ids=[b[0] for b in BAD_ENROLLMENTS])
async def test_bad_enrollment(gateway: Gateway, name: str, change: dict[str, Any]) -> None:
    admin = await gateway.token("admin")
    before = await gateway.snapshot()
    resp = await gateway.client.post(NODES, json={**enrollment(), **change}, headers=bearer(admin))
    await assert_problem(resp, 422, "validation_failed")
    assert await gateway.snapshot() == before


async def test_admins_see_only_their_tenants_nodes(gateway: Gateway) -> None:
    await gateway.enroll("edge-01", "t1")
    admin2 = await gateway.token("admin", tenant="t2")
    before = await gateway.snapshot()
    for method in ("GET", "DELETE"):  # neither read nor revoke: to t2 it does not exist
        resp = await gateway.client.request(method, f"{NODES}/edge-01", headers=bearer(admin2))
        await assert_problem(resp, 404, "not_found")
    resp = await gateway.client.delete(f"{NODES}/edge-99", headers=bearer(admin2))
    await assert_problem(resp, 404, "not_found")  # no such node at all
    assert await gateway.snapshot() == before


async def test_revoke_with_unacceptable_accept_revokes_nothing(gateway: Gateway) -> None:
    node = await gateway.enroll("edge-01", "t1")
    admin = await gateway.token("admin")
    before = await gateway.snapshot()
    resp = await gateway.client.delete(f"{NODES}/edge-01", headers=bearer(admin, Accept="text/csv"))
    await assert_problem(resp, 406, "not_acceptable")
    assert await gateway.snapshot() == before
    resp = await gateway.signed(node, "GET", f"{PREFIX}/sync/changes")
    assert resp.status == 200  # still active


# --- the command line --------------------------------------------------------------------------


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run ``phs-gateway`` as its own process on the store of ``settings``;
    (exit code, stdout, stderr)."""
    store = ["--database-url", settings.database_url] if settings.database_url else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        "--data-dir",
        settings.data_dir,
        *store,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    scan_output(err, f"phs-gateway {args[0]} stderr")  # its log; stdout is its answer
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_against_a_live_gateway(
    gateway_settings: Settings, store: str, clock: FakeClock
) -> None:
    code, out, _ = await cli(gateway_settings, "migrate")
    assert (code, out.strip()) == (0, f"schema at head ({store})")
    async with TestClient(TestServer(create_app(gateway_settings, clock))) as client:
        await cli_commands(Gateway(client, clock), gateway_settings, store)


async def cli_commands(gateway: Gateway, settings: Settings, store: str) -> None:

    # create-token and enroll-node, side by side (two writers besides the gateway).
    key = KeyPair.generate()
    (code, out, err), (enroll_code, enroll_out, enroll_err) = await asyncio.gather(
        cli(settings, "create-token", "--tenant", "t1", "--role", "admin"),
        cli(
            settings,
            "enroll-node",
            "--node-id=edge-01",
            "--tenant=t1",
            "--facility=f-001",
            "--facility=f-002",
            f"--public-key={key.public_key_b64}",
        ),
    )
    # create-token prints the token once; the store keeps only its hash.
    assert code == 0, err
    token = out.strip()
    assert token.startswith("phs_") and "\n" not in token
    assert "role admin" in err and token not in err
    async with gateway.database.read() as conn:
        query = sa.select(tokens.c.token_hash, tokens.c.tenant_id, tokens.c.role)
        rows = [tuple(row) for row in await conn.execute(query)]
    assert rows == [(hashlib.sha256(token.encode()).hexdigest(), "t1", "admin")]
    assert token not in repr(await gateway.snapshot())

    # enroll-node prints the node, fp included; the live gateway knows it at once.
    assert enroll_code == 0, enroll_err
    enrolled = json.loads(enroll_out)
    assert enrolled["fp"] == hashlib.sha256(key.public_key).hexdigest()[:16]
    assert (enrolled["facilityIds"], enrolled["status"]) == (["f-001", "f-002"], "active")

    resp = await gateway.client.get(f"{NODES}/edge-01", headers=bearer(token))  # the CLI's token
    assert resp.status == 200 and (await resp.json())["fp"] == enrolled["fp"]
    await gateway.create_item(token, "item-1", "assigned")
    node = NodeIdentity("edge-01", "t1", ["f-001", "f-002"], key)
    resp = await gateway.post_batch(node, [transition("t-1", "item-1", "assigned", "in_progress")])
    assert resp.status == 200, await resp.text()

    # revoke-node while the gateway runs: the node's next request is refused.
    code, out, err = await cli(settings, "revoke-node", "--node-id", "edge-01")
    assert code == 0, err
    assert json.loads(out)["status"] == "revoked"
    resp = await gateway.post_batch(node, [transition("t-2", "item-1", "in_progress", "contacted")])
    await assert_problem(resp, 403, "key_revoked")

    # Refusals: exit code 2 and the problem code on stderr; nothing changes,
    # nor does migrating a store already at head.
    before = await gateway.snapshot()
    results = await asyncio.gather(
        cli(settings, "enroll-node", "--node-id", "edge-01", "--tenant", "t1",
            "--facility", "f-001", "--public-key", key.public_key_b64),
        cli(settings, "revoke-node", "--node-id", "edge-99"),
        cli(settings, "create-token", "--tenant", "t 1", "--role", "admin"),
        cli(settings, "enroll-node", "--node-id", "edge-02", "--tenant", "t1",
            "--facility", "f-001", "--public-key", "short"),
        cli(settings, "migrate"),
    )  # fmt: skip
    *refusals, (code, out, _) = results
    assert [(code, err.split(":")[1].strip()) for code, _, err in refusals] == [
        (2, "already_exists"),  # edge-01 is enrolled (revoked, but its id is taken)
        (2, "not_found"),  # no such node
        (2, "validation_failed"),  # "t 1" is not an identifier
        (2, "validation_failed"),  # not a public key
    ]
    assert (code, out.strip()) == (0, f"schema at head ({store})")  # a re-run is a no-op
    assert await gateway.snapshot() == before

"""Key rotation of node signing keys at the gateway (docs/key-rotation.md),
on SQLite and PostgreSQL.

- A node rotates itself (``POST …/sync/keys`` signed with its current key):
  both keys are accepted in the overlap window, the old one is refused with
  401 ``key_retired`` after it (frozen clock), the new one goes on working; a
  resend changes nothing.
- An admin revokes one key (403 ``key_revoked`` at once), retires another at
  once, registers a new key for the node; the node is never revoked.
- Facility reports signed by a retired key: kept if made before it retired.
- Every change and every refused use by the key's holder has its audit row;
  the chain verifies; refusals change nothing else (``Gateway.snapshot``).
- The ``phs-gateway`` key commands, the real CLI against the same store.

The edge node's side is tests/test_edge_key_rotation.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest

from edgenode.keys import SigningKey
from gateway import cli
from gateway.settings import Settings
from harness import PREFIX, START, Gateway, bearer, transition
from key_rotation_support import (
    WEEK,
    assert_chain_intact,
    batch,
    identity_key,
    key_rows,
    key_table,
    new_key,
    report,
    rotate,
    signed,
    step,
)
from shared.encoding import MSGPACK
from shared.node_keys import KEY_RETIRES_HEADER
from shared.signing import KeyPair
from stores import run_apart


async def test_node_rotates_overlap_window_then_old_key_retired(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await gateway.create_item(admin, "oi-1", "assigned")
    old, new = identity_key(node), new_key(node)

    status, doc = await rotate(gateway, old, new.keypair)
    assert status == 201, doc
    assert doc["keyId"] == new.key_id
    by_id = {k["keyId"]: k for k in doc["keys"]}
    retires_at = "2026-12-02T12:00:00.000Z"  # START + key_overlap_seconds (7 days)
    assert by_id[old.key_id]["status"] == "retiring"
    assert by_id[old.key_id]["retiresAt"] == retires_at
    assert by_id[new.key_id]["status"] == "active"
    assert by_id[new.key_id]["publicKey"] == new.keypair.public_key
    keys_after_rotation = await key_table(gateway)

    # Resent (the answer was lost), signed with the old key or the new one: 200, nothing changes.
    for signer in (old, new):
        assert await rotate(gateway, signer, new.keypair) == (200, doc)
    assert await key_table(gateway) == keys_after_rotation

    # In the window both keys are accepted; the old key's answers say until when.
    status, answer, headers = await batch(gateway, node, old, [step(0)])
    assert (status, answer["results"][0]["status"]) == (200, "applied")
    assert headers[KEY_RETIRES_HEADER] == retires_at
    gateway.clock.advance(WEEK - 1)
    status, answer, headers = await batch(gateway, node, new, [step(1)])
    assert (status, answer["results"][0]["status"]) == (200, "applied")
    assert KEY_RETIRES_HEADER not in headers
    status, answer, _ = await batch(gateway, node, old, [step(2)])  # the window's last second
    assert (status, answer["results"][0]["status"]) == (200, "applied")

    # The window is over: the old key is retired (401), and the refusal changes nothing.
    gateway.clock.advance(1)
    before = await gateway.snapshot()
    status, problem, _ = await batch(
        gateway, node, old, [transition("t-x", "oi-1", "completed", "cancelled")]
    )
    assert (status, problem["code"]) == (401, "key_retired"), problem
    # A forged header naming the retired key: refused the same, but not recorded
    # (nothing shows the key's holder sent it).
    forged = SigningKey(old.key_id, KeyPair.generate())
    status, problem, _ = await batch(gateway, node, forged, [step(2)])
    assert (status, problem["code"]) == (401, "key_retired")
    status, problem = await rotate(gateway, old, KeyPair.generate())  # nor can it rotate
    assert (status, problem["code"]) == (401, "key_retired")
    assert await gateway.snapshot() == before

    # The node keeps working with the new key; an unknown key id is unknown.
    status, _, _ = await signed(gateway, new, "GET", f"{PREFIX}/sync/changes?since=0")
    assert status == 200
    status, problem, _ = await batch(gateway, node, SigningKey("edge-01.nope", new.keypair), [])
    assert (status, problem["code"]) == (401, "unknown_key")
    resp = await gateway.client.get(f"{PREFIX}/admin/nodes/edge-01/keys", headers=bearer(admin))
    listed = {k["keyId"]: k["status"] for k in (await resp.json())["keys"]}
    assert listed == {old.key_id: "retired", new.key_id: "active"}

    node_actor = ("node:edge-01", "edge-01", "t1")
    assert await key_rows(gateway) == [
        (*node_actor, "node_key.rotate", new.key_id, "ok"),
        (*node_actor, "node_key.retire", old.key_id, "ok"),
        (*node_actor, "node_key.use", old.key_id, "refused"),  # the batch
        (*node_actor, "node_key.use", old.key_id, "refused"),  # the rotation
    ]
    await assert_chain_intact(gateway)


async def test_admin_revokes_and_retires_keys_without_revoking_the_node(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    other_admin = await gateway.token("admin", tenant="t2")
    node = await gateway.enroll()
    await gateway.create_item(admin, "oi-1", "assigned")
    old, new = identity_key(node), new_key(node)
    assert (await rotate(gateway, old, new.keypair))[0] == 201
    token_id = admin.split("_")[1]
    keys_path = f"{PREFIX}/admin/nodes/edge-01/keys"

    # The new key is revoked: refused at once (403), though the old one still works.
    resp = await gateway.client.delete(f"{keys_path}/{new.key_id}", headers=bearer(admin))
    assert resp.status == 200, await resp.text()
    statuses = {k["keyId"]: k["status"] for k in (await resp.json())["keys"]}
    assert statuses == {old.key_id: "retiring", new.key_id: "revoked"}
    before = await gateway.snapshot()
    status, problem, _ = await batch(gateway, node, new, [step(0)])
    assert (status, problem["code"]) == (403, "key_revoked")
    assert await gateway.snapshot() == before
    status, answer, _ = await batch(gateway, node, old, [step(0)])
    assert (status, answer["results"][0]["status"]) == (200, "applied")
    # Revoking again changes nothing and adds no row; another tenant's admin finds no key.
    resp = await gateway.client.delete(f"{keys_path}/{new.key_id}", headers=bearer(admin))
    assert resp.status == 200
    resp = await gateway.client.delete(f"{keys_path}/{new.key_id}", headers=bearer(other_admin))
    assert resp.status == 404
    resp = await gateway.client.post(f"{keys_path}/nope/retire", headers=bearer(admin))
    assert resp.status == 404

    # The old key retired at once by the admin: 401; the node is still enrolled.
    resp = await gateway.client.post(
        f"{keys_path}/{old.key_id}/retire", json={"overlapSeconds": 0}, headers=bearer(admin)
    )
    assert resp.status == 200, await resp.text()
    status, problem, _ = await batch(gateway, node, old, [step(1)])
    assert (status, problem["code"]) == (401, "key_retired")
    resp = await gateway.client.get(f"{PREFIX}/admin/nodes/edge-01", headers=bearer(admin))
    assert (await resp.json())["status"] == "active"

    # The admin registers the key the node made: the node works again.
    third = new_key(node)
    resp = await gateway.client.post(
        keys_path, json={"publicKey": third.keypair.public_key_b64}, headers=bearer(admin)
    )
    assert resp.status == 201, await resp.text()
    status, answer, _ = await batch(gateway, node, third, [step(1)])
    assert (status, answer["results"][0]["status"]) == (200, "applied")
    # A retired or revoked key never comes back.
    for again in (old, new):
        resp = await gateway.client.post(
            keys_path, json={"publicKey": again.keypair.public_key_b64}, headers=bearer(admin)
        )
        assert resp.status == 409, await resp.text()
    resp = await gateway.client.post(
        f"{keys_path}/{third.key_id}/retire", json={"overlapSeconds": -1}, headers=bearer(admin)
    )
    assert resp.status == 422

    admin_actor = (f"token:{token_id}", "edge-01", "t1")
    node_actor = ("node:edge-01", "edge-01", "t1")
    assert await key_rows(gateway) == [
        (*node_actor, "node_key.rotate", new.key_id, "ok"),
        (*node_actor, "node_key.retire", old.key_id, "ok"),
        (*admin_actor, "node_key.revoke", new.key_id, "ok"),
        (*node_actor, "node_key.use", new.key_id, "refused"),
        (*admin_actor, "node_key.retire", old.key_id, "ok"),
        (*node_actor, "node_key.use", old.key_id, "refused"),
        (*admin_actor, "node_key.rotate", third.key_id, "ok"),
    ]
    await assert_chain_intact(gateway)


async def test_reports_signed_by_a_retired_key(gateway: Gateway) -> None:
    """A report made before its key retired still arrives (offline-first); one
    made after, or signed by a revoked key, is refused, recorded, and kept nowhere."""
    node = await gateway.enroll()
    old, new = identity_key(node), new_key(node)
    made_before = report(node, old.keypair, START, "2026-11-24")
    assert (await rotate(gateway, old, new.keypair))[0] == 201
    gateway.clock.advance(WEEK + 60)  # the old key is retired
    made_after = report(node, old.keypair, gateway.clock(), "2026-11-26")
    path = f"{PREFIX}/sync/facility-reports"

    items = [{"kind": "facility_report", "id": "r-1", **made_before},
             {"kind": "facility_report", "id": "r-2", **made_after}]  # fmt: skip
    status, answer, _ = await batch(gateway, node, new, items)
    assert status == 200, answer
    assert [(r["status"], r.get("code")) for r in answer["results"]] == [
        ("applied", None),
        ("rejected", "key_retired"),
    ]
    before = await gateway.snapshot()
    resp = await gateway.client.post(
        path, data=msgpack.packb(made_after), headers={"Content-Type": MSGPACK}
    )
    assert resp.status == 401 and (msgpack.unpackb(await resp.read()))["code"] == "key_retired"
    assert await gateway.snapshot() == before

    admin = await gateway.token("admin")
    resp = await gateway.client.delete(
        f"{PREFIX}/admin/nodes/edge-01/keys/{new.key_id}", headers=bearer(admin)
    )
    assert resp.status == 200
    revoked = report(node, new.keypair, gateway.clock(), "2026-11-27")
    before = await gateway.snapshot()
    resp = await gateway.client.post(
        path, data=msgpack.packb(revoked), headers={"Content-Type": MSGPACK}
    )
    assert resp.status == 403 and (msgpack.unpackb(await resp.read()))["code"] == "key_revoked"
    assert await gateway.snapshot() == before
    rows = await key_rows(gateway)
    assert [(r[3], r[4], r[5]) for r in rows if r[3] == "node_key.use"] == [
        ("node_key.use", old.key_id, "refused"),
        ("node_key.use", new.key_id, "refused"),
    ]
    await assert_chain_intact(gateway)


def _gateway_cli(settings: Settings, *argv: str) -> int:
    """``phs-gateway`` in a thread of its own (it runs its own event loop)."""
    options = ["--data-dir", settings.data_dir, "--database-url", settings.database_url]
    return int(run_apart(asyncio.to_thread(cli.main, [*argv, *options])))


async def test_gateway_key_commands(
    gateway: Gateway, gateway_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    node = await gateway.enroll()
    old, new = identity_key(node), new_key(node)

    def run(*argv: str) -> dict[str, Any]:
        assert _gateway_cli(gateway_settings, *argv) == 0
        return dict(json.loads(capsys.readouterr().out))

    # rotate-key --public-key: the admin registers the node's new key.
    doc = run("rotate-key", "--node-id", "edge-01", "--public-key", new.keypair.public_key_b64)
    assert {k["keyId"]: k["status"] for k in doc["keys"]} == {
        old.key_id: "retiring",
        new.key_id: "active",
    }
    doc = run("revoke-key", "--key-id", old.key_id)
    assert {k["keyId"]: k["status"] for k in doc["keys"]}[old.key_id] == "revoked"
    # rotate-key alone starts the node's rotation: its active key goes retiring.
    doc = run("rotate-key", "--node-id", "edge-01", "--overlap-seconds", "3600")
    assert {k["keyId"]: k["status"] for k in doc["keys"]}[new.key_id] == "retiring"
    doc = run("retire-key", "--key-id", new.key_id, "--overlap-seconds", "0")
    assert {k["keyId"]: k["status"] for k in doc["keys"]}[new.key_id] == "retired"
    assert run("list-keys", "--node-id", "edge-01")["nodeId"] == "edge-01"
    assert _gateway_cli(gateway_settings, "revoke-key", "--key-id", "nope") == 2
    assert "not_found" in capsys.readouterr().err

    rows = await key_rows(gateway)
    assert [(r[0].split(":")[0], r[1], r[3], r[4]) for r in rows] == [
        ("cli", "edge-01", "node_key.rotate", new.key_id),
        ("cli", "edge-01", "node_key.retire", old.key_id),
        ("cli", "edge-01", "node_key.revoke", old.key_id),
        ("cli", "edge-01", "node_key.retire", new.key_id),
        ("cli", "edge-01", "node_key.retire", new.key_id),
    ]
    assert _gateway_cli(gateway_settings, "audit", "verify") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "OK"
    # The gateway (frozen clock) refuses both keys now.
    status, problem, _ = await batch(gateway, node, new, [])
    assert (status, problem["code"]) == (401, "key_retired")
    status, problem, _ = await batch(gateway, node, old, [])
    assert (status, problem["code"]) == (403, "key_revoked")


async def test_a_key_rotated_away_from_cannot_register_keys(gateway: Gateway) -> None:
    """After K1 → K2, K1 is retiring and may have leaked (why nodes rotate): it
    still signs the node's work for its window, but cannot register a key of
    its own choosing (403, nothing changes). K2 can. A key an admin has retired
    since it was registered is still the node's: its resend is 200."""
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    first, second, thief, third = identity_key(node), new_key(node), new_key(node), new_key(node)
    assert (await rotate(gateway, first, second.keypair))[0] == 201
    before = await key_table(gateway)
    status, doc = await rotate(gateway, first, thief.keypair)
    assert status == 403 and doc["code"] == "forbidden", doc
    assert await key_table(gateway) == before
    status, doc = await rotate(gateway, second, third.keypair)
    assert status == 201, doc
    # An admin retires the active key with a window: the node, with no active key
    # left, rotates with the retiring one, as it is asked to.
    resp = await gateway.client.post(
        f"{PREFIX}/admin/nodes/{node.node_id}/keys/{third.key_id}/retire",
        json={"overlapSeconds": 3600},
        headers=bearer(admin),
    )
    assert resp.status == 200, await resp.text()
    assert (await rotate(gateway, third, thief.keypair))[0] == 201
    # A resend naming a key that is retiring now (answer lost, then retired): 200.
    assert (await rotate(gateway, third, third.keypair))[0] == 200
    await assert_chain_intact(gateway)

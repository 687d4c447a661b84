"""Key rotation at the edge node (docs/key-rotation.md), against a real gateway.

- A rotation whose answer the WAN dropped (fault proxy, reset after the
  response) loses nothing, even when the old key's window ends before the
  node hears back: records wait, the rotation finishes with the new key, and
  everything is delivered once.
- A rotation the gateway asks for (``PHS-Key-Retires-At``) happens at the
  node's next cycle.
- ``edgenode rotate-key`` end to end, with the gateway down and then up.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edge_harness import EdgeSystem, closed_url, edge_system
from edgenode import cli as edge_cli
from edgenode.gateway_client import GatewayClient
from edgenode.keys import GATEWAY_KEY, PENDING_KEY, NodeKeys, SigningKey, load_key
from edgenode.reports import generate_report
from edgenode.rotation import REFUSED, ROTATED, WAITING, KeyRotation
from edgenode.sync import Forwarder
from faultproxy import FaultPlan, FaultProxy
from gateway.app import create_app
from gateway.http import DATABASE
from gateway.registry import enroll_node
from gateway.settings import Settings
from harness import PREFIX, bearer
from key_rotation_support import (
    TIMEOUT,
    WEEK,
    assert_chain_intact,
    key_rows,
)
from shared.periods import period_from_key, zone
from shared.signing import KeyPair

LOOPBACK = "127.0.0.1"


class EdgeKeys:
    """The edge's keys and a client through ``base_url`` signing with the current
    one, as ``edgenode run`` makes them at start (a new one: a restart)."""

    def __init__(self, system: EdgeSystem, session: aiohttp.ClientSession, base_url: str) -> None:
        s = system.edge_settings
        self.system, self.session, self.base_url = system, session, base_url
        self.keys = NodeKeys(s.data_path, s.node_id, system.node_key)

    def start(self) -> tuple[GatewayClient, KeyRotation, Forwarder]:
        current, system = self.keys.current(), self.system
        client = GatewayClient(
            self.session,
            self.base_url,
            system.edge_settings.node_id,
            current.keypair,
            clock=lambda: system.edge_clock().timestamp(),
            key_id=current.key_id,
        )
        forwarder = Forwarder(
            system.edge_db, client, system.edge_settings, system.edge_clock, random.Random(0)
        )
        return client, KeyRotation(client, self.keys), forwarder


async def gateway_keys(system: EdgeSystem) -> dict[str, str]:
    resp = await system.gateway.client.get(
        f"{PREFIX}/admin/nodes/{system.edge_settings.node_id}/keys",
        headers=bearer(system.admin_token),
    )
    assert resp.status == 200, await resp.text()
    return {k["keyId"]: k["status"] for k in (await resp.json())["keys"]}


async def test_edge_rotation_survives_a_wan_drop_and_a_window_missed(tmp_path: Path) -> None:
    """The gateway registers the new key but the WAN drops its answer; the WAN
    then stays down past the old key's window. The node loses nothing: it
    keeps its records and its new key, finishes the rotation with the new key
    once the old one is refused, and delivers everything, once."""
    proxy = FaultProxy()
    async with edge_system(tmp_path) as system, aiohttp.ClientSession(timeout=TIMEOUT) as wan:
        node_id, data = system.edge_settings.node_id, system.edge_settings.data_path
        gateway_port = int(system.gateway_url.rsplit(":", 1)[1])
        proxy_url = f"http://{LOOPBACK}:{await proxy.start(LOOPBACK, gateway_port)}"
        try:
            await system.create_items(["oi-1"], "assigned")
            await system.pull()
            tablet = await system.pair_tablet("tab-a")
            pushed = tablet.transition("t-1", "oi-1", "assigned", "in_progress")
            await system.push_transitions(tablet, [pushed])
            await system.generate_report("f-001", "2026-W47")  # signed with the first key
            edge = EdgeKeys(system, wan, proxy_url)
            client, rotation, forwarder = edge.start()

            proxy.set_plan(FaultPlan(reset_after_response=1.0))
            outcome = await rotation.rotate()
            pending = edge.keys.pending()
            assert pending is not None and (data / PENDING_KEY).exists()
            assert (outcome.state, outcome.key_id) == (WAITING, node_id)
            assert outcome.pending_key_id == pending.key_id
            assert proxy.resets_after_response == 1
            # The gateway did it; the node did not hear, so still signs with its first key.
            assert await gateway_keys(system) == {node_id: "retiring", pending.key_id: "active"}
            assert client.key_id == node_id

            proxy.set_plan(FaultPlan())
            proxy.down = True  # the WAN is down longer than the overlap window
            assert (await forwarder.forward_once(ignore_schedule=True)).unreachable
            assert (await rotation.resume()) is not None
            system.advance(WEEK + 60)
            proxy.down = False

            # Restarted: the keys come from disk; the first key is now refused.
            client, rotation, forwarder = edge.start()
            assert client.key_id == node_id
            refused = await forwarder.forward_once(ignore_schedule=True)
            assert refused.error is not None and "key_retired" in refused.error
            assert (await system.edge_status())["outboxDepth"] == 2  # kept, to be sent again
            resumed = await rotation.resume()
            assert resumed is not None
            assert (resumed.state, resumed.key_id) == (ROTATED, pending.key_id)
            assert (data / GATEWAY_KEY).exists() and not (data / PENDING_KEY).exists()
            assert load_key(data / GATEWAY_KEY).public_key == pending.keypair.public_key
            assert (await rotation.resume()) is None  # nothing left to do

            delivered = await forwarder.forward_once(ignore_schedule=True)
            assert delivered.error is None, delivered.error
            # The report made before the rotation, signed with the retired key: accepted.
            assert delivered.statuses == {"applied": 2}
        finally:
            await proxy.stop()
        assert await system.edge_problems() == []
        history = (await system.gateway_item("oi-1"))["history"]
        assert [h["id"] for h in history] == ["t-1"]
        assert len(await system.gateway_reports()) == 1
        node = ("node:edge-01", "edge-01", "t1")
        assert await key_rows(system.gateway) == [
            (*node, "node_key.rotate", pending.key_id, "ok"),
            (*node, "node_key.retire", node_id, "ok"),
            (*node, "node_key.use", node_id, "refused"),  # the batch
            (*node, "node_key.use", node_id, "refused"),  # the rotation's resend
        ]
        await assert_chain_intact(system.gateway)


async def test_edge_rotates_when_the_gateway_retires_its_key(tmp_path: Path) -> None:
    """An admin's ``retire`` (or ``phs-gateway rotate-key``) opens a window; the
    node sees ``PHS-Key-Retires-At`` on its next answer and rotates itself."""
    async with edge_system(tmp_path) as system, aiohttp.ClientSession(timeout=TIMEOUT) as wan:
        node_id = system.edge_settings.node_id
        client, rotation, _ = EdgeKeys(system, wan, system.gateway_url).start()
        assert await rotation.resume() is None
        resp = await system.gateway.client.post(
            f"{PREFIX}/admin/nodes/{node_id}/keys/{node_id}/retire",
            json={"overlapSeconds": 3600},
            headers=bearer(system.admin_token),
        )
        assert resp.status == 200, await resp.text()
        assert (await system.puller(client).pull_once()).error is None
        assert client.key_retires_at == "2026-11-25T13:00:00.000Z"
        outcome = await rotation.resume()
        assert outcome is not None and outcome.state == ROTATED
        assert outcome.key_id != node_id and client.key_id == outcome.key_id
        system.advance(3601)
        assert (await system.puller(client).pull_once()).error is None
        assert client.key_retires_at is None and await rotation.resume() is None
        assert await gateway_keys(system) == {node_id: "retired", outcome.key_id: "active"}
        # Reports made from now on are signed with the new key, and accepted.
        async with system.edge_db.write() as conn:
            await generate_report(
                conn,
                tenant_id="t1",
                node_id=node_id,
                keypair=NodeKeys(system.edge_settings.data_path, node_id, system.node_key)
                .current()
                .keypair,
                facility_id="f-001",
                period=period_from_key("2026-11-25"),
                tz=zone("UTC"),
                now=system.edge_clock(),
            )
        forwarded = await system.forwarder(client).forward_once(ignore_schedule=True)
        assert forwarded.statuses == {"applied": 1}, forwarded.error


async def test_edgenode_rotate_key_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``edgenode rotate-key`` against a real gateway: waits while the gateway
    is unreachable (exit 1, the new key kept), then registers that same key."""
    server = TestServer(create_app(Settings(data_dir=str(tmp_path / "gateway"))), host=LOOPBACK)
    await server.start_server()
    try:
        data = tmp_path / "edge"
        url = f"http://{LOOPBACK}:{server.port}"
        init = ["init", "--node-id", "edge-07", "--tenant", "t1", "--facility", "f-001"]
        assert (
            await asyncio.to_thread(
                edge_cli.main, [*init, "--gateway-url", url, "--data-dir", str(data)]
            )
            == 0
        )
        identity = load_key(data / "node.key")
        async with server.app[DATABASE].write() as conn:
            await enroll_node(
                conn,
                node_id="edge-07",
                tenant_id="t1",
                facility_ids=["f-001"],
                public_key=identity.public_key,
                capabilities=[],
                now=datetime.now(UTC),
            )
        capsys.readouterr()

        def edgenode(*argv: str) -> int:
            return int(edge_cli.main([*argv, "--data-dir", str(data)]))

        monkeypatch.setenv("PHS_EDGE_GATEWAY_URL", closed_url())
        assert await asyncio.to_thread(edgenode, "rotate-key") == 1
        out = capsys.readouterr().out
        pending = NodeKeys(data, "edge-07", identity).pending()
        assert pending is not None and "waiting" in out and pending.key_id in out
        monkeypatch.delenv("PHS_EDGE_GATEWAY_URL")

        assert await asyncio.to_thread(edgenode, "rotate-key") == 0
        assert f"signed with key {pending.key_id}" in capsys.readouterr().out
        assert await asyncio.to_thread(edgenode, "status") == 0
        status = json.loads(capsys.readouterr().out)
        assert (status["gatewayKeyId"], status["pendingKeyId"]) == (pending.key_id, None)
        assert await asyncio.to_thread(edgenode, "sync") == 0  # signed with the new key
    finally:
        await server.close()


async def test_a_refused_rotation_is_asked_again_after_a_growing_pause(tmp_path: Path) -> None:
    """The node's key was revoked and the gateway never registered its new one:
    every attempt is refused, and each is an audit row at the gateway. After a
    refusal ``resume`` (each forward cycle) asks again only after a pause that
    doubles from 60 s to 30 min; ``finish`` (``edgenode rotate-key``) asks at once."""
    async with edge_system(tmp_path) as system, aiohttp.ClientSession(timeout=TIMEOUT) as wan:
        node_id = system.edge_settings.node_id
        edge = EdgeKeys(system, wan, system.gateway_url)
        client, _, _ = edge.start()
        now = [1000.0]
        rotation = KeyRotation(client, edge.keys, clock=lambda: now[0])
        pending = edge.keys.make_pending()
        resp = await system.gateway.client.delete(
            f"{PREFIX}/admin/nodes/{node_id}/keys/{node_id}", headers=bearer(system.admin_token)
        )
        assert resp.status == 200, await resp.text()

        async def attempts_seen() -> int:  # one refused-use row per attempt that reached it
            rows = await key_rows(system.gateway)
            return sum(1 for r in rows if r[3] == "node_key.use" and r[5] == "refused")

        first = await rotation.resume()
        assert first is not None and first.state == REFUSED
        assert first.pending_key_id == pending.key_id and await attempts_seen() == 1
        asked_at, waits = now[0], []
        for _ in range(7):
            held = await rotation.resume()  # the next forward cycle, at once: held back
            assert held is not None and held.state == REFUSED and "asking again" in held.detail
            seen = await attempts_seen()
            while (await rotation.resume()) is not None and await attempts_seen() == seen:
                now[0] += 30  # forward cycles every 30 s until it asks again
            waits.append(now[0] - asked_at)
            asked_at = now[0]
        assert waits == [60, 120, 240, 480, 960, 1800, 1800]  # doubling, then capped
        assert await attempts_seen() == 8
        explicit = await rotation.finish()  # edgenode rotate-key: no pause
        assert explicit.state == REFUSED and await attempts_seen() == 9
        assert client.key_id == node_id and edge.keys.pending() is not None


def test_a_pending_key_appears_whole_and_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending key is linked into place only once written and synced, so a
    reader never meets half of it; two makers racing end with one key between
    them (the second's link finds the first's file); a torn file left by an
    older release is taken for none and made again."""
    identity = KeyPair.generate()
    first, second = NodeKeys(tmp_path, "edge-01", identity), NodeKeys(tmp_path, "edge-01", identity)
    made = first.make_pending()
    assert (tmp_path / PENDING_KEY).stat().st_mode & 0o777 == 0o600
    # The race: the second maker looked before the first's key was in place.
    real_pending, looked = second.pending, []

    def pending_not_there_yet() -> SigningKey | None:
        looked.append(True)
        return None if len(looked) == 1 else real_pending()

    monkeypatch.setattr(second, "pending", pending_not_there_yet)
    assert second.make_pending() == made == first.pending()
    assert sorted(p.name for p in tmp_path.iterdir()) == [PENDING_KEY]  # no draft left
    (tmp_path / PENDING_KEY).write_text("c2VlZA")  # torn: a seed cut short
    assert first.pending() is None and not (tmp_path / PENDING_KEY).exists()
    assert first.make_pending() != made

"""A real gateway and a real edge node on loopback, for end-to-end edge tests.

Both services are the production aiohttp apps on real TCP ports of
127.0.0.1, each with its own SQLite file under ``tmp_path`` and its own
injected :class:`~harness.FakeClock`. The edge app runs with
``background=False``: nothing syncs unless a test says so, through a
:class:`~edgenode.sync.Forwarder` / :class:`~edgenode.sync.Puller` built on
the edge's own database and a signed :class:`~edgenode.gateway_client.GatewayClient`.
Tablets are simulated: each has its own Ed25519 key and signs its requests
exactly as a field device does.

Usage::

    async with edge_system(tmp_path) as system:          # enrolled by default
        await system.create_items(["oi-1"], "assigned")  # at the gateway
        await system.pull()                               # into the edge projection
        tablet = await system.pair_tablet("tab-a")
        t = tablet.transition("t-1", "oi-1", "assigned", "in_progress")
        [result] = await system.push_transitions(tablet, [t])   # answered by the edge
        forwarded, pulled = await system.sync()           # one forward + pull cycle
        item = await system.gateway_item("oi-1")          # state and full history

API of :class:`EdgeSystem` (``system`` below):

Parts and clocks
    ``system.gateway`` (``harness.Gateway``: ``.client`` is a ``TestClient``
    on the gateway port, ``.token(role)``, ``.create_item(...)``),
    ``system.edge`` (``TestClient`` of the edge app), ``system.edge_db``,
    ``system.edge_settings``, ``system.gateway_settings``, ``system.node_key``,
    ``system.admin_token``, ``system.gateway_url``; ``system.gateway_clock`` and
    ``system.edge_clock`` are separate clocks (both start at ``start``);
    ``system.advance(seconds)`` moves both.
Start
    ``edge_system(tmp_path, *, node_id, tenant, facilities, time_zone,
    gateway_url, start, enroll, gateway_overrides, edge_overrides,
    edge_settings, node_key)``: settings overrides are keyword maps of
    ``gateway.settings.Settings`` / ``EdgeSettings`` fields; ``gateway_url``
    aims the edge's client elsewhere (a proxy); ``edge_settings`` + ``node_key``
    serve an existing node directory (e.g. made by ``edgenode init``).
Gateway side
    ``enroll_edge()`` (admin API), ``create_items(ids, state, bulk=False, **fields)``
    (``bulk=True``: the gateway's ``create_item`` in one transaction, for thousands),
    ``server_transition(item, id, from, to)``, ``gateway_item(id)``,
    ``gateway_reports(**query)`` (analytics), ``gateway_events()``,
    ``stop_gateway()`` / ``start_gateway()`` (same port, same database).
Tablets
    ``issue_pairing_code(device_id)``, ``redeem(code, device_id, public_key)``
    (the raw answer), ``pair_tablet(device_id)`` -> :class:`Tablet`
    (``tablet.transition(id, item, from, to, at)`` builds a T of that device),
    ``tablet_request(tablet, method, path, doc, fmt=..., ...)`` (raw signed
    request, JSON or msgpack; every part of the signature can be spoiled),
    ``push_transitions``, ``push_encounters`` (assert 200, return results),
    ``tablet_view(tablet)`` (every item the tablet can read, by id).
Sync, deterministically
    ``gateway_client(base_url=None, clock=None)``, ``forwarder(client, rng)``,
    ``puller(client)``; ``forward()`` (like the service loop: respects the
    retry schedule), ``pull()``, ``sync()`` (like ``edgenode sync``: forward
    ignoring the schedule, then pull). The default client and forwarder are
    kept, so a learnt clock offset survives between cycles; the default rng
    is ``random.Random(0)``.
Edge state
    ``edge_status()`` (``collect_status``), ``edge_problems()``,
    ``edge_snapshot()`` (every row of every edge table, to prove that a
    refused request stored nothing), ``generate_report(facility, key)``.

``closed_url()`` gives a loopback URL on which nothing listens.
"""

from __future__ import annotations

import base64
import json
import random
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgpack
from aiohttp.test_utils import TestClient, TestServer

from edgenode.gateway_client import GatewayClient
from edgenode.http import EDGE_DB
from edgenode.pairing import issue_code
from edgenode.reports import StoredReport, generate_report
from edgenode.service import create_app as create_edge_app
from edgenode.settings import EdgeSettings
from edgenode.status import collect_problems, collect_status
from edgenode.store.database import EdgeDatabase
from edgenode.sync import Forwarder, ForwardSummary, Puller, PullSummary
from gateway.app import create_app as create_gateway_app
from gateway.outreach import create_item, parse_new_item
from gateway.settings import Settings
from harness import PREFIX, START, FakeClock, Gateway, bearer, document, item_fields
from shared.encoding import JSON, MSGPACK
from shared.periods import period_from_key, zone
from shared.signing import KeyPair, authorization_header

__all__ = ["EdgeSystem", "Tablet", "closed_url", "edge_system", "encode"]

LOOPBACK = "127.0.0.1"


def closed_url() -> str:
    """A loopback URL on which nothing listens (a gateway that is down)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    return f"http://{LOOPBACK}:{port}"


def encode(doc: Any, fmt: str) -> bytes:
    """A request body in ``fmt`` (``"json"`` or ``"msgpack"``)."""
    if fmt == "json":
        return json.dumps(doc).encode()
    assert fmt == "msgpack", fmt
    return bytes(msgpack.packb(doc, use_bin_type=True))


@dataclass(frozen=True)
class Tablet:
    """A simulated field device: an id and its own keypair."""

    device_id: str
    keypair: KeyPair = field(default_factory=KeyPair.generate)
    actor_id: str = "worker-1"

    def transition(
        self,
        tid: str,
        item: str,
        frm: str,
        to: str,
        at: str = "2026-11-25T11:00:00.000Z",
        **extra: Any,
    ) -> dict[str, Any]:
        """A transition T of CONTRACT section 5, signed off by this device."""
        return {
            "id": tid,
            "itemId": item,
            "from": frm,
            "to": to,
            "occurredAt": at,
            "deviceId": self.device_id,
            "actorId": self.actor_id,
            **extra,
        }


class EdgeSystem:
    """A running gateway + edge node pair; build it with :func:`edge_system`."""

    def __init__(
        self,
        tmp_path: Path,
        gateway_settings: Settings,
        edge_settings: EdgeSettings,
        node_key: KeyPair,
        start: datetime,
    ) -> None:
        self.tmp_path = tmp_path
        self.gateway_settings = gateway_settings
        self.edge_settings = edge_settings
        self.node_key = node_key
        self.gateway_clock = FakeClock(start)
        self.edge_clock = FakeClock(start)
        self.admin_token = ""
        self._analyst_token: str | None = None
        self._gateway: Gateway | None = None
        self._gateway_port: int | None = None
        self._edge: TestClient | None = None  # type: ignore[type-arg]
        self._session: aiohttp.ClientSession | None = None
        self._client: GatewayClient | None = None
        self._forwarder: Forwarder | None = None

    # -- parts -------------------------------------------------------------

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "the gateway is stopped"
        return self._gateway

    @property
    def edge(self) -> TestClient:  # type: ignore[type-arg]
        assert self._edge is not None, "the edge node is not running"
        return self._edge

    @property
    def edge_db(self) -> EdgeDatabase:
        db: EdgeDatabase = self.edge.app[EDGE_DB]
        return db

    @property
    def gateway_url(self) -> str:
        return f"http://{LOOPBACK}:{self._gateway_port}"

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self.gateway_clock.advance(seconds)
        self.edge_clock.advance(seconds)

    # -- life cycle ------------------------------------------------------------

    async def start_gateway(self) -> None:
        """Start the gateway (again): same port, same database, same tokens."""
        assert self._gateway is None, "the gateway is already running"
        app = create_gateway_app(self.gateway_settings, self.gateway_clock)
        server = TestServer(app, host=LOOPBACK, port=self._gateway_port)
        client = TestClient(server)
        await client.start_server()
        self._gateway_port = server.port
        self._gateway = Gateway(client, self.gateway_clock)

    async def stop_gateway(self) -> None:
        """Stop the gateway: its port refuses connections until ``start_gateway``."""
        await self.gateway.client.close()
        self._gateway = None

    async def _start(self) -> None:
        await self.start_gateway()
        self.admin_token = await self.gateway.token("admin", self.edge_settings.tenant_id)
        settings = self.edge_settings
        if not settings.gateway_url:
            settings = replace(settings, gateway_url=self.gateway_url)
            self.edge_settings = settings
        app = create_edge_app(settings, self.node_key, self.edge_clock, background=False)
        self._edge = TestClient(TestServer(app, host=LOOPBACK))
        await self._edge.start_server()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._edge is not None:
            await self._edge.close()
        if self._gateway is not None:
            await self.stop_gateway()

    # -- gateway side ------------------------------------------------------------

    async def enroll_edge(self, facilities: Sequence[str] | None = None) -> dict[str, Any]:
        """Enroll the edge node's key through the admin API (CONTRACT section 11)."""
        s = self.edge_settings
        resp = await self.gateway.client.post(
            f"{PREFIX}/admin/nodes",
            json={
                "nodeId": s.node_id,
                "tenantId": s.tenant_id,
                "facilityIds": list(s.facility_ids if facilities is None else facilities),
                "publicKey": self.node_key.public_key_b64,
            },
            headers=bearer(self.admin_token),
        )
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())

    async def create_items(
        self,
        ids: Sequence[str],
        state: str,
        facility: str | None = None,
        *,
        bulk: bool = False,
        **fields: Any,
    ) -> None:
        """Import outreach items at the gateway: through the admin API, or with
        ``bulk=True`` through the same ``create_item`` in one transaction (fast).
        Each item's patientRef is a canary unless ``fields`` give one."""
        facility = facility or self.edge_settings.facility_ids[0]
        if bulk:
            async with self.gateway.database.write() as conn:
                for item_id in ids:
                    doc = {
                        "id": item_id,
                        "facilityId": facility,
                        "state": state,
                        **item_fields(item_id, fields),
                    }
                    await create_item(
                        conn,
                        self.edge_settings.tenant_id,
                        parse_new_item(doc),
                        self.gateway_clock(),
                    )
            return
        for item_id in ids:
            await self.gateway.create_item(self.admin_token, item_id, state, facility, **fields)

    async def server_transition(
        self, item_id: str, tid: str, frm: str, to: str, occurred_at: str | None = None
    ) -> dict[str, Any]:
        """A server-side transition (``POST …/outreach-items/{id}/transitions``)."""
        doc: dict[str, Any] = {"id": tid, "from": frm, "to": to}
        if occurred_at is not None:
            doc["occurredAt"] = occurred_at
        resp = await self.gateway.client.post(
            f"{PREFIX}/outreach-items/{item_id}/transitions",
            json=doc,
            headers=bearer(self.admin_token),
        )
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())

    async def gateway_item(self, item_id: str) -> dict[str, Any]:
        """The gateway's item with its full history."""
        resp = await self.gateway.client.get(
            f"{PREFIX}/outreach-items/{item_id}", headers=bearer(self.admin_token)
        )
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())

    async def gateway_reports(self, **query: str) -> list[dict[str, Any]]:
        """``GET …/analytics/facility-reports`` as an analyst."""
        if self._analyst_token is None:
            self._analyst_token = await self.gateway.token("analyst", self.edge_settings.tenant_id)
        resp = await self.gateway.client.get(
            f"{PREFIX}/analytics/facility-reports?{urlencode(query)}",
            headers=bearer(self._analyst_token),
        )
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["reports"])

    async def gateway_events(self) -> list[dict[str, Any]]:
        """Every event of the gateway's outbox (admin token)."""
        events: list[dict[str, Any]] = []
        after = "0"
        while True:
            resp = await self.gateway.client.get(
                f"{PREFIX}/events?after={after}", headers=bearer(self.admin_token)
            )
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
            if not doc["events"]:
                return events
            events += doc["events"]
            after = str(doc["cursor"])

    # -- tablets ---------------------------------------------------------------

    async def issue_pairing_code(self, device_id: str, ttl_seconds: int | None = None) -> str:
        """A one-time code, as ``edgenode pair-device`` prints it (edge clock)."""
        ttl = self.edge_settings.pairing_code_ttl_seconds if ttl_seconds is None else ttl_seconds
        async with self.edge_db.write() as conn:
            code, _ = await issue_code(conn, device_id, self.edge_clock(), ttl)
        return code

    async def redeem(
        self, code: str, device_id: str, public_key: bytes, fmt: str = "json"
    ) -> aiohttp.ClientResponse:
        """``POST …/devices/pair`` as a tablet sends it (the raw answer)."""
        key: bytes | str = base64.b64encode(public_key).decode() if fmt == "json" else public_key
        doc = {"pairingCode": code, "deviceId": device_id, "publicKey": key}
        return await self.edge.post(
            f"{PREFIX}/devices/pair",
            data=encode(doc, fmt),
            headers={"Content-Type": JSON if fmt == "json" else MSGPACK},
        )

    async def pair_tablet(self, device_id: str, keypair: KeyPair | None = None) -> Tablet:
        """Issue a code and redeem it with a fresh (or the given) key."""
        tablet = Tablet(device_id, keypair or KeyPair.generate())
        code = await self.issue_pairing_code(device_id)
        resp = await self.redeem(code, device_id, tablet.keypair.public_key)
        assert resp.status == 201, await resp.text()
        return tablet

    async def tablet_request(
        self,
        tablet: Tablet,
        method: str,
        path: str,
        doc: Any = None,
        *,
        fmt: str = "json",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        keypair: KeyPair | None = None,
        key_id: str | None = None,
        ts: int | None = None,
        signed: bool = True,
    ) -> aiohttp.ClientResponse:
        """A request signed by ``tablet`` (or spoilt: another key, id, time or none).

        ``body`` overrides the encoding of ``doc``; the answer comes in ``fmt``.
        """
        raw = body if body is not None else (b"" if doc is None else encode(doc, fmt))
        media = JSON if fmt == "json" else MSGPACK
        all_headers = {"Accept": media}
        if raw:
            all_headers["Content-Type"] = media
        if signed:
            stamp = int(self.edge_clock().timestamp()) if ts is None else ts
            all_headers["Authorization"] = authorization_header(
                keypair or tablet.keypair, key_id or tablet.device_id, method, path, raw, stamp
            )
        all_headers.update(headers or {})
        return await self.edge.request(method, path, data=raw, headers=all_headers)

    async def push_transitions(
        self,
        tablet: Tablet,
        transitions: Sequence[Mapping[str, Any]],
        *,
        fmt: str = "json",
        idempotency_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """``POST …/sync/outreach``; asserts 200 and returns the per-item results."""
        return await self._push(
            tablet, "outreach", "transitions", transitions, fmt, idempotency_key
        )

    async def push_encounters(
        self,
        tablet: Tablet,
        encounters: Sequence[Mapping[str, Any]],
        *,
        fmt: str = "json",
        idempotency_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """``POST …/sync/encounters``; asserts 200 and returns the per-item results."""
        return await self._push(
            tablet, "encounters", "encounters", encounters, fmt, idempotency_key
        )

    async def _push(
        self,
        tablet: Tablet,
        resource: str,
        field: str,
        records: Sequence[Mapping[str, Any]],
        fmt: str,
        idempotency_key: str | None,
    ) -> list[dict[str, Any]]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        resp = await self.tablet_request(
            tablet,
            "POST",
            f"{PREFIX}/sync/{resource}",
            {field: list(records)},
            fmt=fmt,
            headers=headers,
        )
        assert resp.status == 200, await resp.read()
        return list((await document(resp))["results"])

    async def tablet_view(self, tablet: Tablet, limit: int = 1000) -> dict[str, dict[str, Any]]:
        """Every item the tablet reads from the edge (``GET …/outreach-items``), by id."""
        view: dict[str, dict[str, Any]] = {}
        since = "0"
        while True:
            path = f"{PREFIX}/outreach-items?{urlencode({'since': since, 'limit': limit})}"
            resp = await self.tablet_request(tablet, "GET", path)
            assert resp.status == 200, await resp.read()
            doc = await document(resp)
            for item in doc["items"]:
                view[item["id"]] = item
            since = doc["cursor"]
            if not doc["more"]:
                return view

    # -- sync ----------------------------------------------------------------------

    def gateway_client(
        self, base_url: str | None = None, clock: FakeClock | None = None
    ) -> GatewayClient:
        """A signed client of the node key; its clock defaults to the edge clock."""
        assert self._session is not None
        tick = clock or self.edge_clock
        return GatewayClient(
            self._session,
            base_url or self.edge_settings.gateway_url,
            self.edge_settings.node_id,
            self.node_key,
            clock=lambda: tick().timestamp(),
        )

    def forwarder(
        self, client: GatewayClient | None = None, rng: random.Random | None = None
    ) -> Forwarder:
        return Forwarder(
            self.edge_db,
            client or self.default_client,
            self.edge_settings,
            self.edge_clock,
            rng or random.Random(0),
        )

    def puller(self, client: GatewayClient | None = None) -> Puller:
        return Puller(self.edge_db, client or self.default_client, self.edge_clock)

    @property
    def default_client(self) -> GatewayClient:
        if self._client is None:
            self._client = self.gateway_client()
        return self._client

    async def forward(self, ignore_schedule: bool = False) -> ForwardSummary:
        """One forward cycle of the service loop (waits out a scheduled retry)."""
        if self._forwarder is None:
            self._forwarder = self.forwarder()
        return await self._forwarder.forward_once(ignore_schedule=ignore_schedule)

    async def pull(self) -> PullSummary:
        return await self.puller().pull_once()

    async def sync(self) -> tuple[ForwardSummary, PullSummary]:
        """One ``edgenode sync``: forward now (ignoring the retry schedule), then pull."""
        return await self.forward(ignore_schedule=True), await self.pull()

    # -- edge state ------------------------------------------------------------------

    async def edge_status(self) -> dict[str, Any]:
        async with self.edge_db.read() as conn:
            return await collect_status(conn, self.edge_clock())

    async def edge_problems(self) -> list[dict[str, Any]]:
        async with self.edge_db.read() as conn:
            return await collect_problems(conn, limit=10_000)

    async def edge_snapshot(self) -> dict[str, list[str]]:
        """Every row of every edge table, sorted: equal snapshots, nothing stored."""
        rows: dict[str, list[str]] = {}
        async with self.edge_db.read() as conn:
            cursor = await conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
            for (table,) in await cursor.fetchall():
                found = await (await conn.execute(f'SELECT * FROM "{table}"')).fetchall()
                rows[table] = sorted(repr(tuple(r)) for r in found)
        return rows

    async def generate_report(self, facility_id: str, period_key: str) -> StoredReport:
        """``edgenode report`` in process: generate, sign and queue (edge clock)."""
        s = self.edge_settings
        async with self.edge_db.write() as conn:
            return await generate_report(
                conn,
                tenant_id=s.tenant_id,
                node_id=s.node_id,
                keypair=self.node_key,
                facility_id=facility_id,
                period=period_from_key(period_key),
                tz=zone(s.time_zone),
                now=self.edge_clock(),
            )


@asynccontextmanager
async def edge_system(
    tmp_path: Path,
    *,
    node_id: str = "edge-01",
    tenant: str = "t1",
    facilities: Sequence[str] = ("f-001",),
    time_zone: str = "UTC",
    gateway_url: str = "",
    start: datetime = START,
    enroll: bool = True,
    gateway_overrides: Mapping[str, Any] | None = None,
    edge_overrides: Mapping[str, Any] | None = None,
    edge_settings: EdgeSettings | None = None,
    node_key: KeyPair | None = None,
) -> AsyncIterator[EdgeSystem]:
    """Start a gateway and an edge node (enrolled unless ``enroll=False``).

    ``gateway_url`` points the edge elsewhere (a proxy, a closed port); by
    default it is the gateway's own loopback port. ``edge_settings`` and
    ``node_key`` serve an existing node (e.g. one ``edgenode init`` made):
    its data directory, identity and facilities, instead of the arguments
    above; its ``gateway_url`` is replaced as just said.
    """
    gateway_settings = Settings(data_dir=str(tmp_path / "gateway"), **dict(gateway_overrides or {}))
    if edge_settings is None:
        edge_settings = EdgeSettings(
            node_id=node_id,
            tenant_id=tenant,
            facility_ids=list(facilities),
            time_zone=time_zone,
            data_dir=str(tmp_path / "edge"),
            **dict(edge_overrides or {}),
        )
    edge_settings = replace(edge_settings, gateway_url=gateway_url)
    system = EdgeSystem(
        tmp_path, gateway_settings, edge_settings, node_key or KeyPair.generate(), start
    )
    try:
        await system._start()
        if enroll:
            await system.enroll_edge()
        yield system
    finally:
        await system._close()

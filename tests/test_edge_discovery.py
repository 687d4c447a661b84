"""The edge side of LAN discovery, without multicast (issue 4, docs/discovery.md).

The devices-seen registry, and the gatherer against a small real aiohttp
server on 127.0.0.1 that implements the two documented device endpoints
(``GET …/field/pending``, ``POST …/field/acks``): it checks the edge's
signature with the node's public key, serves records oldest first, signs
its answers with its own key, and records the acknowledgements. Gathered
records must be stored exactly as a push would store them, and an answer the
paired device did not sign for the request is not stored at all. Real
multicast is in the netns tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import ifaddr
import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from canaries import MARKER, patient_ref, scan_output
from edge_harness import EdgeSystem, Tablet, edge_system
from edgenode.devices_seen import gather_candidates, list_devices_seen, record_seen
from edgenode.gather import Gatherer
from edgenode.http import EDGE_DB, OUTBOX_WAKE
from edgenode.intake import OUTREACH_INTAKE
from edgenode.lan import FieldDevices, discovery_addresses
from edgenode.service import create_app
from edgenode.settings import EdgeSettings
from edgenode.store.database import EdgeDatabase, SQLiteStore
from edgenode.store.migrations import MIGRATIONS
from gateway.http import http_date
from harness import PREFIX, START, FakeClock
from lan.interfaces import NoUsableInterface
from shared.discovery import FieldAdvert
from shared.errors import PhsError, UnknownKey
from shared.signing import (
    ANSWER_HEADER,
    NONCE_HEADER,
    KeyPair,
    answer_signature_header,
    parse_authorization,
    verify_request,
)

MSGPACK = "application/msgpack"
FIELD_TABLES = ("transitions", "items", "encounters")


def encounter(eid: str, facility: str = "f-001", **extra: Any) -> dict[str, Any]:
    return {
        "id": eid,
        "patientRef": patient_ref(1),
        "facilityId": facility,
        "occurredAt": "2026-11-24T09:00:00.000Z",
        "kind": "screening",
        "screeningDue": True,
        "immunizationDue": False,
        **extra,
    }


# -- a field device's API, as docs/discovery.md lays it down ---------------------------


class FakeDevice:
    """``GET …/field/pending`` and ``POST …/field/acks`` of one device, on loopback."""

    def __init__(
        self, device_id: str, keypair: KeyPair, node_id: str, node_key: bytes, clock: FakeClock
    ) -> None:
        self.device_id = device_id
        self.keypair = keypair  # the device's own, paired with the node
        self.node_id = node_id
        self.node_key = node_key  # the key it stored at pairing
        self.clock = clock
        self.skew = 0.0  # the device's clock minus the edge's
        self.sign_properly()
        self.chunked = False  # stream the answer without a Content-Length
        self.transitions: list[dict[str, Any]] = []  # unsynced, oldest first
        self.encounters: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self.gets = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.lose_acks = 0  # acknowledgements to lose (answered 503, nothing cleared)
        self.ignore_acks = False  # answer acknowledgements but clear nothing
        self.gate: asyncio.Event | None = None  # when set: a GET waits for it, page in hand
        self.serving = asyncio.Event()  # a GET has its page
        app = web.Application()
        app.router.add_get(f"{PREFIX}/field/pending", self._pending)
        app.router.add_post(f"{PREFIX}/field/acks", self._acks)
        self.server = TestServer(app, host="127.0.0.1")

    def sign_properly(self) -> None:
        """Sign answers as docs/discovery.md lays down; tests spoil one of these
        (an impostor's or a broken device's ways)."""
        self.signer: KeyPair | None = self.keypair  # None: unsigned
        self.key_id = self.device_id  # the keyId it signs as
        self.answer_skew = 0.0  # added to the ts of its answer signature
        self.nonce: str | None = None  # sign over this nonce, not the request's
        self.tamper: Callable[[bytes], bytes] | None = None  # changes the body after signing
        self.sign_acks = True  # False: the acknowledgement's answer goes unsigned

    @property
    def pending(self) -> int:
        return len(self.transitions) + len(self.encounters)

    def advert(self, addresses: Sequence[str] = ("127.0.0.1",)) -> FieldAdvert:
        return FieldAdvert(
            name=f"{self.device_id}._phs-field._tcp.local.",
            device_id=self.device_id,
            pending=self.pending,
            port=self.server.port or 0,
            addresses=tuple(addresses),
        )

    def _now(self) -> datetime:
        return self.clock() + timedelta(seconds=self.skew)

    def _refuse(self, err: PhsError) -> web.Response:
        return web.Response(
            status=err.status,
            body=msgpack.packb(err.problem()),
            content_type=MSGPACK,
            headers={"Date": http_date(self._now())},
        )

    async def _answer(
        self, request: web.Request, doc: dict[str, Any], signer: KeyPair | None
    ) -> web.StreamResponse:
        """``doc`` in msgpack, signed as docs/discovery.md lays down (or spoilt)."""
        body = msgpack.packb(doc)
        headers = {}
        if signer is not None:
            nonce = request.headers.get(NONCE_HEADER, "") if self.nonce is None else self.nonce
            ts = int(self._now().timestamp() + self.answer_skew)
            headers[ANSWER_HEADER] = answer_signature_header(
                signer, self.key_id, request.method, request.raw_path, nonce, body, ts
            )
        if self.tamper is not None:
            body = self.tamper(body)
        if not self.chunked:
            return web.Response(body=body, content_type=MSGPACK, headers=headers)
        response = web.StreamResponse(headers=headers)
        response.content_type = MSGPACK
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 512):
            await response.write(body[start : start + 512])
        await response.write_eof()
        return response

    def _check(self, request: web.Request, body: bytes) -> None:
        auth = parse_authorization(request.headers.get("Authorization"))
        if auth.key_id != self.node_id:
            raise UnknownKey(f"not the paired node: {auth.key_id}")
        verify_request(
            auth,
            self.node_key,
            request.method,
            request.raw_path,
            body,
            self._now().timestamp(),
            300,
        )

    async def _pending(self, request: web.Request) -> web.StreamResponse:
        try:
            self._check(request, await request.read())
        except PhsError as err:
            return self._refuse(err)
        self.gets += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            limit = int(request.query.get("limit", "500"))
            transitions = self.transitions[:limit]
            encounters = self.encounters[: limit - len(transitions)]
            doc = {
                "deviceId": self.device_id,
                "transitions": transitions,
                "encounters": encounters,
                "more": len(transitions) + len(encounters) < self.pending,
            }
            self.serving.set()
            if self.gate is not None:
                await self.gate.wait()
            return await self._answer(request, doc, self.signer)
        finally:
            self.in_flight -= 1

    async def _acks(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            self._check(request, body)
        except PhsError as err:
            return self._refuse(err)
        if self.lose_acks:
            self.lose_acks -= 1
            return web.Response(status=503)
        doc = msgpack.unpackb(body)
        self.acks.append(doc)
        done = {r["id"] for r in doc["transitions"]} | {r["id"] for r in doc["encounters"]}
        if self.ignore_acks:
            done = set()
        before = self.pending
        self.transitions = [t for t in self.transitions if t.get("id") not in done]
        self.encounters = [e for e in self.encounters if e["id"] not in done]
        answer = {"cleared": before - self.pending, "pending": self.pending}
        return await self._answer(request, answer, self.signer if self.sign_acks else None)


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[EdgeSystem]:
    async with edge_system(tmp_path) as system:
        await system.create_items(["oi-1", "oi-2"], "assigned")
        await system.pull()
        yield system


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


StartDevice = Callable[..., Awaitable[FakeDevice]]


@pytest.fixture
async def start_device() -> AsyncIterator[StartDevice]:
    """Start a device's API for a node, with the device's key (a fresh one if
    none is given); closed after the test, whatever happens."""
    started: list[FakeDevice] = []

    async def start(system: EdgeSystem, keypair: KeyPair | None = None) -> FakeDevice:
        s = system.edge_settings
        device = FakeDevice(
            "tab-a",
            keypair or KeyPair.generate(),
            s.node_id,
            system.node_key.public_key,
            system.edge_clock,
        )
        started.append(device)
        await device.server.start_server()
        return device

    yield start
    for device in started:
        await device.server.close()


def gatherer(system: EdgeSystem, session: aiohttp.ClientSession, **settings: Any) -> Gatherer:
    app = system.edge.app
    return Gatherer(
        app[EDGE_DB],
        app[OUTREACH_INTAKE],
        app[OUTBOX_WAKE],
        session,
        system.node_key,
        replace(system.edge_settings, **settings),
        system.edge_clock,
    )


async def see(system: EdgeSystem, advert: FieldAdvert) -> None:
    async with system.edge_db.write() as conn:
        await record_seen(conn, advert, system.edge_clock())


async def seen(system: EdgeSystem) -> dict[str, dict[str, Any]]:
    async with system.edge_db.read() as conn:
        return {d["deviceId"]: d for d in await list_devices_seen(conn)}


async def stored(system: EdgeSystem) -> dict[str, list[str]]:
    snapshot = await system.edge_snapshot()
    return {table: snapshot[table] for table in FIELD_TABLES}


# -- the store and the registry --------------------------------------------------------


async def test_migration_3_upgrades_a_version_2_store(tmp_path: Path) -> None:
    path = tmp_path / "edgenode.db"
    old = await SQLiteStore(path, MIGRATIONS[:2]).open()  # the store as released
    assert await old.schema_version() == 2
    await old.close()
    for _ in range(2):  # the second open finds it current and does nothing
        db = await EdgeDatabase(path).open()
        try:
            assert await db.schema_version() == MIGRATIONS[-1][0]  # 3, and any later step
            async with db.read() as conn:
                cursor = await conn.execute("PRAGMA table_info(devices_seen)")
                columns = [row[1] for row in await cursor.fetchall()]
        finally:
            await db.close()
    assert columns == [
        "device_id",
        "service_name",
        "addresses",
        "port",
        "pending",
        "first_seen",
        "last_seen",
        "present",
        "gone_at",
        "last_gather_at",
        "last_gather_error",
        "gathered_records",
    ]
    # Step 3 survives being run again over its own result.
    db = await EdgeDatabase(path).open()
    try:
        async with db.write() as conn:
            for statement in MIGRATIONS[2][2]:
                await conn.execute(statement)
    finally:
        await db.close()


async def test_registry_add_update_remove_and_paired(
    system: EdgeSystem, session: aiohttp.ClientSession
) -> None:
    first = FieldAdvert("tab-a._phs-field._tcp.local.", "tab-a", 2, 8500, ("192.168.1.30",))
    await see(system, first)
    [a] = (await seen(system)).values()
    assert a == {
        "deviceId": "tab-a",
        "addresses": ["192.168.1.30"],
        "port": 8500,
        "pending": 2,
        "firstSeen": "2026-11-25T12:00:00.000Z",
        "lastSeen": "2026-11-25T12:00:00.000Z",
        "present": True,
        "paired": False,  # seen, never paired
        "lastGatherAt": None,
        "lastGatherError": None,
        "gatheredRecords": 0,
    }

    system.advance(60)  # the advert is updated: new count, new address, new port
    await see(system, replace(first, pending=5, port=8501, addresses=("192.168.1.31", "fe80::1")))
    a = (await seen(system))["tab-a"]
    assert (a["pending"], a["port"], a["addresses"]) == (5, 8501, ["192.168.1.31", "fe80::1"])
    assert (a["firstSeen"], a["lastSeen"]) == (
        "2026-11-25T12:00:00.000Z",  # first seen stays
        "2026-11-25T12:01:00.000Z",
    )

    devices = FieldDevices(system.edge_db, gatherer(system, session), system.edge_clock)
    await devices.on_gone("someone-else._phs-field._tcp.local.")  # not ours: nothing changes
    assert (await seen(system))["tab-a"]["present"] is True
    await devices.on_gone(first.name)
    assert (await seen(system))["tab-a"]["present"] is False
    async with system.edge_db.read() as conn:
        assert await gather_candidates(conn) == []

    await system.pair_tablet("tab-a")  # paired is read from devices, not copied
    await see(system, first)  # back on the LAN
    a = (await seen(system))["tab-a"]
    assert (a["present"], a["paired"], a["pending"]) == (True, True, 2)
    async with system.edge_db.read() as conn:
        assert [d.device_id for d in await gather_candidates(conn)] == ["tab-a"]
    async with system.edge_db.write() as conn:
        await conn.execute("UPDATE devices SET status = 'revoked' WHERE device_id = 'tab-a'")
    assert (await seen(system))["tab-a"]["paired"] is False  # a revoked pairing does not count


# -- gathering ---------------------------------------------------------------------------


def field_records(tablet: Tablet) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Records with every disposition: applied, duplicate, refused by the FSM, unknown."""
    t = tablet.transition
    transitions = [
        t("t-1", "oi-1", "assigned", "in_progress", "2026-11-25T11:00:00.000Z"),
        t("t-2", "oi-1", "in_progress", "contacted", "2026-11-25T11:05:00.000Z"),
        t("t-1", "oi-1", "assigned", "in_progress", "2026-11-25T11:00:00.000Z"),
        t("t-3", "oi-2", "assigned", "completed", "2026-11-25T11:10:00.000Z"),
        t("t-4", "ghost", "assigned", "in_progress", "2026-11-25T11:20:00.000Z", seq=7),
    ]
    return transitions, [encounter("e-1"), encounter("e-2", kind="visit", screeningDue=False)]


async def test_gathered_records_are_stored_exactly_as_pushed(
    tmp_path: Path, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    key = KeyPair.generate()  # the same tablet, paired with two identical nodes
    node_key = KeyPair.generate()
    async with (
        edge_system(tmp_path / "push", node_key=node_key) as pushed,
        edge_system(tmp_path / "gather", node_key=node_key) as gathered,
    ):
        for s in (pushed, gathered):
            await s.create_items(["oi-1", "oi-2"], "assigned")
            await s.pull()
        tablet = await pushed.pair_tablet("tab-a", key)
        await gathered.pair_tablet("tab-a", key)
        transitions, encounters = field_records(tablet)
        t_results = await pushed.push_transitions(tablet, transitions)
        e_results = await pushed.push_encounters(tablet, encounters)

        device = await start_device(gathered, key)
        device.transitions, device.encounters = list(transitions), list(encounters)
        await see(gathered, device.advert())
        wake = gathered.edge.app[OUTBOX_WAKE]
        wake.clear()
        outcome = await gatherer(gathered, session).gather_once("tab-a")
        await device.server.close()

        assert (outcome.error, outcome.pages, outcome.records, outcome.rejected) == (None, 1, 7, 0)
        # The device is answered what the push was answered, record for record.
        assert device.acks == [{"transitions": t_results, "encounters": e_results}]
        assert [r["status"] for r in t_results] == [
            "applied",
            "applied",
            "duplicate",
            "rejected",
            "rejected",
        ]
        assert device.pending == 0
        assert wake.is_set()  # the forwarder is told at once, as after a push
        # The same rows: log, projection, outbox marks, encounters.
        assert await stored(gathered) == await stored(pushed)
        assert (await seen(gathered))["tab-a"]["gatheredRecords"] == 7
        assert (await seen(gathered))["tab-a"]["pending"] == 0  # from the ack's answer


async def test_invalid_records_are_rejected_and_not_stored(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    good = tablet.transition("t-1", "oi-1", "assigned", "in_progress")
    device.transitions = [
        {"id": "t-bad", "itemId": "oi-1", "from": "assigned"},  # fields missing
        good,
        {**tablet.transition("t-other", "oi-2", "assigned", "in_progress"), "deviceId": "tab-z"},
        {"itemId": "oi-2"},  # no id: nothing to answer it by, so it is left out of the ack
    ]
    device.encounters = [
        encounter("e-1"),
        encounter("e-far", facility="f-999"),  # a facility this node does not serve
        encounter("e-odd", kind="party"),
    ]
    await see(system, device.advert())
    outcome = await gatherer(system, session).gather_once("tab-a")
    assert (outcome.error, outcome.records, outcome.rejected) == (None, 6, 5)

    [ack] = device.acks
    codes = {r["id"]: (r["status"], r.get("code")) for r in ack["transitions"] + ack["encounters"]}
    refused = ("rejected", "validation_failed")
    assert codes == {
        "t-bad": refused,
        "t-1": ("applied", None),
        "t-other": refused,
        "e-1": ("applied", None),
        "e-far": refused,
        "e-odd": refused,
    }
    details = {
        r["id"]: r["detail"] for r in ack["transitions"] + ack["encounters"] if "detail" in r
    }
    assert "/transitions/0" in details["t-bad"]
    assert "tab-z" in details["t-other"]  # the push's own wording
    assert "f-999" in details["e-far"] and "kind" in details["e-odd"]
    assert device.pending == 1  # the device stops offering what was refused (and answered)

    snapshot = await stored(system)
    text = repr(snapshot)
    assert [r for r in snapshot["encounters"] if "e-1" in r] and "e-far" not in text
    assert "t-bad" not in text and "t-other" not in text and "e-odd" not in text
    assert len(snapshot["transitions"]) == 1 and "'t-1'" in snapshot["transitions"][0]


async def test_lost_ack_regather_answers_duplicates(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.transitions = [tablet.transition("t-1", "oi-1", "assigned", "in_progress")]
    device.encounters = [encounter("e-1")]
    device.lose_acks = 1
    await see(system, device.advert())
    g = gatherer(system, session)

    first = await g.gather_once("tab-a")
    assert first.error is not None and "503" in first.error
    assert device.acks == [] and device.pending == 2  # nothing cleared on the device
    after_first = await stored(system)
    registry = (await seen(system))["tab-a"]
    assert registry["lastGatherError"] == first.error and registry["gatheredRecords"] == 0

    second = await g.gather_once("tab-a")  # offered the same records again
    assert (second.error, second.records) == (None, 2)
    [ack] = device.acks
    assert [r["status"] for r in ack["transitions"] + ack["encounters"]] == [
        "duplicate",
        "duplicate",
    ]
    # Stored once, as a repeated push: the log keeps the copy as a duplicate,
    # not forwarded; the projection and the encounters do not change.
    again = await stored(system)
    assert (again["items"], again["encounters"]) == (
        after_first["items"],
        after_first["encounters"],
    )
    [copy] = set(again["transitions"]) - set(after_first["transitions"])
    assert "'duplicate', None, 0, 0" in copy
    registry = (await seen(system))["tab-a"]
    assert (registry["lastGatherError"], registry["gatheredRecords"]) == (None, 2)


async def test_unpaired_device_is_never_gathered(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    device = await start_device(system)
    device.encounters = [encounter("e-1")]
    g = gatherer(system, session)
    devices = FieldDevices(system.edge_db, g, system.edge_clock)
    await devices.on_seen(device.advert())
    await g.idle()
    assert await g.sweep() == 0
    assert (await g.gather_once("tab-a")).skipped == "not paired"
    await g.idle()
    assert device.gets == 0  # not even asked

    await system.pair_tablet("tab-a", device.keypair)
    await devices.on_seen(device.advert())  # its next advert: now it is gathered
    await g.idle()
    assert device.gets == 1 and device.pending == 0


async def test_pages_while_more_and_rounds_are_bounded(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.transitions = [
        tablet.transition(f"t-{n}", "oi-1", "assigned", "in_progress") for n in range(5)
    ]
    device.encounters = [encounter("e-1"), encounter("e-2")]
    await see(system, device.advert())
    outcome = await gatherer(system, session, gather_page_size=3).gather_once("tab-a")
    assert (outcome.pages, outcome.records, outcome.more) == (3, 7, False)
    assert [len(a["transitions"]) + len(a["encounters"]) for a in device.acks] == [3, 3, 1]
    assert device.gets == 3 and device.pending == 0

    # Page by page: a round stops after MAX_PAGES_PER_ROUND (10) and another follows.
    device.encounters = [encounter(f"e-{n}", patientRef=patient_ref(n)) for n in range(10, 22)]
    await see(system, device.advert())
    g = gatherer(system, session, gather_page_size=1)
    outcome = await g.gather_once("tab-a")
    assert (outcome.pages, outcome.more, device.pending) == (10, True, 2)
    g.request("tab-a")
    await g.idle()
    assert device.pending == 0 and device.gets == 3 + 12


async def test_a_device_that_clears_nothing_is_not_asked_again_at_once(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.encounters = [encounter(f"e-{n}", patientRef=patient_ref(n)) for n in range(3)]
    device.ignore_acks = True
    await see(system, device.advert())
    g = gatherer(system, session, gather_page_size=1)
    outcome = await g.gather_once("tab-a")
    # The same page would come again and again: the round ends; the sweep retries later.
    assert (outcome.pages, outcome.more, device.gets) == (1, False, 1)


async def test_one_round_at_a_time_and_one_more_after_an_update(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.transitions = [tablet.transition("t-1", "oi-1", "assigned", "in_progress")]
    device.gate = asyncio.Event()
    g = gatherer(system, session)
    devices = FieldDevices(system.edge_db, g, system.edge_clock)
    await devices.on_seen(device.advert())
    await asyncio.wait_for(device.serving.wait(), 10)  # the first round holds its page
    # The device records more and re-announces, twice, while the round runs.
    device.transitions.append(tablet.transition("t-2", "oi-2", "assigned", "in_progress"))
    await devices.on_seen(device.advert())
    device.encounters.append(encounter("e-1"))
    await devices.on_seen(device.advert())
    await g.sweep()
    device.gate.set()
    await g.idle()
    assert device.most_in_flight == 1  # never two rounds with one device at once
    assert device.gets == 2  # the round, then exactly one more
    assert [len(a["transitions"]) + len(a["encounters"]) for a in device.acks] == [1, 2]
    assert device.pending == 0


async def test_addresses_tried_in_order_and_a_skewed_clock_learnt(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.encounters = [encounter("e-1")]
    device.skew = 1000.0  # the tablet's clock is 1000 s ahead of the node's
    # 127.0.0.2 is loopback too, but nothing listens there on that port.
    await see(system, device.advert(("127.0.0.2", "127.0.0.1")))
    outcome = await gatherer(system, session).gather_once("tab-a")
    assert (outcome.error, outcome.records) == (None, 1)


async def test_a_refused_gather_is_recorded(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.node_key = KeyPair.generate().public_key  # it was paired with another node
    device.encounters = [encounter("e-1")]
    before = await stored(system)
    await see(system, device.advert())
    outcome = await gatherer(system, session).gather_once("tab-a")
    assert outcome.error is not None and "401 bad_signature" in outcome.error
    assert (await seen(system))["tab-a"]["lastGatherError"] == outcome.error
    assert await stored(system) == before
    await device.server.close()

    await see(system, device.advert())  # its advert outlives it: unreachable
    outcome = await gatherer(system, session).gather_once("tab-a")
    assert outcome.error is not None and outcome.error.startswith("unreachable")


SPOILT_ANSWERS: list[tuple[str, dict[str, Any], str]] = [
    ("unsigned", {"signer": None}, "unauthenticated: PHS-Signature header"),
    ("signed by another key", {"signer": KeyPair.generate()}, "bad_signature"),
    ("signed as another device", {"key_id": "tab-b"}, "unknown_key: the answer is signed by tab-b"),
    ("changed after signing", {"tamper": lambda b: b.replace(b"e-1", b"e-9")}, "bad_signature"),
    ("signed for another request", {"nonce": "an-earlier-nonce"}, "bad_signature"),
    ("signed ten minutes ahead", {"answer_skew": 600.0}, "clock_skew"),
    ("signed ten minutes behind", {"answer_skew": -600.0}, "clock_skew"),
]


@pytest.mark.parametrize(
    ("case", "spoil", "expected"), SPOILT_ANSWERS, ids=[c[0] for c in SPOILT_ANSWERS]
)
async def test_an_answer_the_device_did_not_sign_is_not_stored(
    system: EdgeSystem,
    session: aiohttp.ClientSession,
    start_device: StartDevice,
    caplog: pytest.LogCaptureFixture,
    case: str,
    spoil: dict[str, Any],
    expected: str,
) -> None:
    # Whoever answers on the device's address (or advertises its id) with
    # records it did not sign for this very request puts nothing in.
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.transitions = [tablet.transition("t-1", "oi-1", "assigned", "in_progress")]
    device.encounters = [encounter("e-1", patientRef=patient_ref("secret"))]
    for name, value in spoil.items():
        setattr(device, name, value)
    before = await stored(system)
    await see(system, device.advert())
    caplog.set_level(logging.INFO, "edgenode.gather")
    outcome = await gatherer(system, session).gather_once("tab-a")

    assert outcome.error is not None and outcome.error.startswith(
        f"GET {PREFIX}/field/pending: answer refused, "
    )
    assert expected in outcome.error
    assert (outcome.pages, outcome.records) == (0, 0)
    assert await stored(system) == before  # nothing stored
    assert device.gets == 1 and device.acks == [] and device.pending == 2  # nothing acknowledged
    registry = (await seen(system))["tab-a"]
    assert (registry["lastGatherError"], registry["gatheredRecords"]) == (outcome.error, 0)
    assert f"gathering from tab-a stopped: {outcome.error}" in caplog.text
    assert MARKER not in caplog.text + outcome.error  # no PHI in the log or the registry

    device.sign_properly()  # the device itself, signing properly again, is gathered
    outcome = await gatherer(system, session).gather_once("tab-a")
    assert (outcome.error, outcome.records, device.pending) == (None, 2, 0)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_oversized_answer_is_refused(
    system: EdgeSystem,
    session: aiohttp.ClientSession,
    start_device: StartDevice,
    chunked: bool,
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.encounters = [encounter(f"e-{n}", patientRef=patient_ref(n)) for n in range(40)]
    device.chunked = chunked  # no Content-Length: the cap holds while reading
    before = await stored(system)
    await see(system, device.advert())
    outcome = await gatherer(system, session, max_body_bytes=2048).gather_once("tab-a")
    assert outcome.error == f"GET {PREFIX}/field/pending?limit=500: answer over 2048 bytes"
    assert await stored(system) == before
    assert device.acks == [] and device.pending == 40
    assert (await seen(system))["tab-a"]["lastGatherError"] == outcome.error

    outcome = await gatherer(system, session).gather_once("tab-a")  # under the default cap
    assert (outcome.error, outcome.records, device.pending) == (None, 40, 0)


async def test_an_unsigned_acknowledgement_answer_is_not_believed(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.encounters = [encounter("e-1"), encounter("e-2", patientRef=patient_ref(2))]
    device.sign_acks = False
    await see(system, device.advert())
    outcome = await gatherer(system, session).gather_once("tab-a")
    assert outcome.error is not None
    assert outcome.error.startswith(f"POST {PREFIX}/field/acks: answer refused, unauthenticated")
    assert device.pending == 0  # the signed page was stored and acknowledged ...
    registry = (await seen(system))["tab-a"]
    assert registry["pending"] == 2  # ... but the unsigned count is not taken
    assert registry["lastGatherError"] == outcome.error


async def test_status_shows_devices_seen(
    system: EdgeSystem, session: aiohttp.ClientSession, start_device: StartDevice
) -> None:
    tablet = await system.pair_tablet("tab-a")
    device = await start_device(system, tablet.keypair)
    device.encounters = [encounter("e-1")]
    await see(system, device.advert())
    await see(system, FieldAdvert("tab-b._phs-field._tcp.local.", "tab-b", 3, 9, ("10.0.0.9",)))
    await gatherer(system, session).gather_once("tab-a")
    await device.server.close()

    status = await system.edge_status()
    a, b = status["devicesSeen"]
    assert (a["deviceId"], a["paired"], a["present"], a["gatheredRecords"]) == (
        "tab-a",
        True,
        True,
        1,
    )
    assert a["lastGatherAt"] == "2026-11-25T12:00:00.000Z" and a["lastGatherError"] is None
    assert (b["deviceId"], b["paired"], b["addresses"], b["pending"]) == (
        "tab-b",
        False,
        ["10.0.0.9"],
        3,
    )
    page = await (await system.edge.get("/")).text()
    assert "Devices seen on the LAN" in page and "tab-a" in page and "10.0.0.9" in page
    metrics = await (await system.edge.get("/metrics")).text()
    assert "phs_edge_devices_present 2" in metrics


# -- LAN presence without multicast ---------------------------------------------------------

ADAPTERS = [
    ifaddr.Adapter(
        "lo", "lo", [ifaddr.IP("127.0.0.1", 8, "lo"), ifaddr.IP(("::1", 0, 0), 128, "lo")]
    ),
    ifaddr.Adapter(
        "wlan7",
        "wlan7",
        [ifaddr.IP("192.168.1.20", 24, "wlan7"), ifaddr.IP(("2001:db8::20", 0, 0), 64, "wlan7")],
    ),
    ifaddr.Adapter("wlan8", "wlan8", [ifaddr.IP("10.1.0.5", 16, "wlan8")]),
]


@pytest.mark.parametrize(
    ("host", "interfaces", "expected"),
    [
        ("0.0.0.0", [], ["192.168.1.20", "10.1.0.5"]),  # IPv4 only: the API listens on IPv4
        ("::", [], ["192.168.1.20", "10.1.0.5", "2001:db8::20"]),
        ("0.0.0.0", ["wlan8"], ["10.1.0.5"]),
        ("10.1.0.5", [], ["10.1.0.5"]),  # the address the API listens on
        ("127.0.0.1", [], None),  # loopback only, nothing named: discovery stays off
        ("localhost", [], None),
        ("127.0.0.1", ["lo"], ["127.0.0.1"]),  # named: a private test namespace
        ("0.0.0.0", ["lo"], ["127.0.0.1"]),
        ("::", ["lo"], ["127.0.0.1", "::1"]),
    ],
)
def test_discovery_addresses(host: str, interfaces: list[str], expected: list[str] | None) -> None:
    settings = EdgeSettings(host=host, interfaces=interfaces)
    assert discovery_addresses(settings, ADAPTERS) == expected


def test_discovery_addresses_refuses_what_is_not_there() -> None:
    with pytest.raises(NoUsableInterface):
        discovery_addresses(EdgeSettings(interfaces=["eth9"]), ADAPTERS)
    v6 = [ifaddr.Adapter("wlan7", "wlan7", [ifaddr.IP(("2001:db8::20", 0, 0), 64, "wlan7")])]
    with pytest.raises(NoUsableInterface, match="IPv4"):
        discovery_addresses(EdgeSettings(host="0.0.0.0"), v6)
    with pytest.raises(NoUsableInterface, match=r"listens on 10\.1\.0\.5 only"):
        discovery_addresses(EdgeSettings(host="10.1.0.5", interfaces=["wlan7"]), ADAPTERS)


async def test_no_usable_interface_serves_without_discovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = EdgeSettings(
        node_id="edge-01",
        tenant_id="t1",
        facility_ids=["f-001"],
        data_dir=str(tmp_path),
        interfaces=["no-such-if0"],
    )
    app = create_app(
        settings, KeyPair.generate(), FakeClock(START), background=False, discovery=True
    )
    caplog.set_level(logging.WARNING, "edgenode.lan")
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.get("/healthz")).status == 200
    assert "LAN discovery is off: no interface or local address named no-such-if0" in caplog.text


async def edgenode_run(data_dir: Path, *args: str) -> tuple[str, str]:
    """``edgenode run --port 0`` until it answers /healthz, then SIGTERM: its
    stdout (its log, JSON lines: docs/logging.md) and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgenode.cli",
        "run",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PHS_EDGE_REPORT_SCHEDULE": "false"},
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        line, match = "", None
        async with asyncio.timeout(30):
            for _ in range(100):  # log lines may come before "Running on"
                line += (await process.stdout.readline()).decode()
                match = re.search(r"Running on http://127\.0\.0\.1:(\d+)", line)
                if match:
                    break
        assert match, line
        port = int(match.group(1))
        assert port != 0  # the bound port, not the one asked for
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    scan_output(line.encode() + out + err, "edgenode run output")  # a service: all of it is log
    assert process.returncode == 0, err.decode()
    return line + out.decode(), err.decode()


async def test_edgenode_run_binds_port_0_and_takes_interface_flags(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    init = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgenode.cli",
        "init",
        "--data-dir",
        str(data),
        "--node-id",
        "edge-01",
        "--tenant",
        "t1",
        "--facility",
        "f-001",
        "--gateway-url",
        "http://127.0.0.1:9",
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert await init.wait() == 0
    # An interface that does not exist: discovery is off, with the reason; tablets served.
    out, _ = await edgenode_run(data, "--interface", "no-such-if0", "--interface", "10.9.9.9")
    assert "LAN discovery is off: no interface or local address named" in out
    assert "10.9.9.9" in out and "no-such-if0" in out
    out, _ = await edgenode_run(data, "--interface", "no-such-if0", "--no-discovery")
    assert "discovery" not in out

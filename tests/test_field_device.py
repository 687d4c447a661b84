"""The reference field device against a real edge node, without multicast.

A real gateway and edge node run on loopback (``edge_harness``); the device
is the real ``FieldDevice`` with its own SQLite store under ``tmp_path``.
Discovery is off here (``discovery=False``, the edge's URL given): the
real-multicast tests run in a private network namespace elsewhere. A refused
request to the device's gather API must change nothing: every row of its
store is compared before and after.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from canaries import patient_ref, scan_output
from edge_harness import EdgeSystem, closed_url, edge_system, encode
from edgenode.devices_seen import record_seen
from edgenode.gather import Gatherer
from edgenode.http import EDGE_DB, OUTBOX_WAKE
from edgenode.intake import OUTREACH_INTAKE
from edgenode.keys import load_key
from edgenode.settings import load_edge_settings
from edgenode.store.database import SQLiteStore
from fielddevice import device as device_module
from fielddevice.client import EdgeClient, PairingRefused, check_pair_answer
from fielddevice.device import FieldDevice
from fielddevice.finder import (
    EdgeNotFound,
    Plan,
    advert_addresses,
    choose_edge,
    choose_for_pairing,
    plan,
)
from fielddevice.gather_api import create_gather_app
from fielddevice.migrations import MIGRATIONS
from fielddevice.service import DeviceRuntime
from fielddevice.settings import FieldSettings
from fielddevice.simulate import plan_walk, read_codes
from fielddevice.store import FieldStore, Pairing
from gateway.db.schema import changes
from harness import PREFIX, START, FakeClock, assert_problem, bearer, document
from shared.cohorts import validate_cohort
from shared.discovery import EdgeAdvert, FieldAdvert
from shared.encoding import JSON, MSGPACK
from shared.errors import (
    AlreadyExists,
    BadSignature,
    CohortInvalid,
    OutOfScope,
    ValidationFailed,
)
from shared.signing import (
    ANSWER_HEADER,
    NONCE_HEADER,
    KeyPair,
    authorization_header,
    fingerprint,
    parse_answer_signature,
    verify_answer,
)

PENDING = f"{PREFIX}/field/pending"
ACKS = f"{PREFIX}/field/acks"
ROOT = Path(__file__).resolve().parents[1]

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]  # type: ignore[type-arg]


def edge_url(system: EdgeSystem) -> str:
    return f"http://127.0.0.1:{system.edge.port}"


def encounter(eid: str, facility: str = "f-001") -> dict[str, Any]:
    return {
        "id": eid,
        "patientRef": patient_ref(1),
        "facilityId": facility,
        "occurredAt": "2026-11-25T09:00:00.000Z",
        "kind": "screening",
        "screeningDue": True,
        "immunizationDue": False,
    }


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[EdgeSystem]:
    async with edge_system(tmp_path) as running:
        await running.create_items(["oi-1", "oi-2", "oi-3"], "assigned")
        await running.pull()
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


@pytest.fixture
def device_clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def device(tmp_path: Path, device_clock: FakeClock) -> AsyncIterator[FieldDevice]:
    settings = FieldSettings(device_id="tab-a", data_dir=str(tmp_path / "field"), discovery=False)
    opened = await FieldDevice.open(settings, device_clock, create=True)
    try:
        yield opened
    finally:
        await opened.close()


async def paired(device: FieldDevice, system: EdgeSystem, session: aiohttp.ClientSession) -> None:
    code = await system.issue_pairing_code(device.device_id)
    await device.pair(session, edge_url(system), code)


def flag_plan(system: EdgeSystem) -> Plan:
    return plan(None, _unused_pairing(), "", edge_url(system))


def _unused_pairing() -> Pairing:
    return Pairing("edge-01", "t1", ("f-001",), "0" * 16, b"", "", "")


async def rows(store: FieldStore) -> dict[str, list[str]]:
    """Every row of every table of the device's store."""
    found: dict[str, list[str]] = {}
    async with store.read() as conn:
        tables = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE type='table'")
        for (table,) in tables:
            data = await conn.execute_fetchall(f'SELECT * FROM "{table}"')
            found[table] = sorted(repr(tuple(r)) for r in data)
    return found


# -- pairing ------------------------------------------------------------------------


async def test_pairing_stores_the_nodes_key_once_its_fp_checks(
    system: EdgeSystem, device: FieldDevice, session: aiohttp.ClientSession
) -> None:
    code = await system.issue_pairing_code("tab-a")
    expected = fingerprint(system.node_key.public_key)
    pairing = await device.pair(session, edge_url(system), code, expect_fp=expected)
    assert pairing.node_id == "edge-01" and pairing.tenant_id == "t1"
    assert pairing.facility_ids == ("f-001",)
    assert pairing.fingerprint == expected
    assert pairing.node_public_key == system.node_key.public_key
    assert pairing.edge_url == edge_url(system)
    assert await device.store.pairing() == pairing  # survives in the store


async def test_pairing_with_another_expected_fp_is_refused_and_stores_nothing(
    system: EdgeSystem, device: FieldDevice, session: aiohttp.ClientSession
) -> None:
    code = await system.issue_pairing_code("tab-a")
    with pytest.raises(PairingRefused, match="not the expected"):
        await device.pair(session, edge_url(system), code, expect_fp="0123456789abcdef")
    assert await device.store.pairing() is None


async def test_pairing_through_a_discovered_advert_must_match_its_fp(
    system: EdgeSystem, device: FieldDevice, session: aiohttp.ClientSession
) -> None:
    # An impostor advertising the node's id with its own fp, but proxying to
    # the real node: the answer's key does not have the advert's fp.
    code = await system.issue_pairing_code("tab-a")
    with pytest.raises(PairingRefused, match="advert's fp"):
        await device.pair(
            session, edge_url(system), code, advert_fp="0123456789abcdef", advert_node="edge-01"
        )
    assert await device.store.pairing() is None


def _answer(**changes: Any) -> dict[str, Any]:
    key = KeyPair.from_seed(bytes(32)).public_key
    doc = {
        "nodeId": "edge-01",
        "tenantId": "t1",
        "facilityIds": ["f-001"],
        "fp": fingerprint(key),
        "publicKey": base64.b64encode(key).decode(),
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (_answer(publicKey=None), "no publicKey"),  # an edge older than discovery
        (_answer(fp="0123456789abcdef"), "states fp"),  # fp not of the key sent
        # Another valid key, with the fp of the first: the fp does not prove it.
        (
            _answer(publicKey=base64.b64encode(KeyPair.generate().public_key).decode()),
            "states fp",
        ),
        (_answer(publicKey="bm90IGEga2V5"), "malformed"),  # not 32 bytes
        (_answer(nodeId="no spaces"), "malformed"),
        (_answer(facilityIds="f-001"), "malformed"),
        ([], "not an object"),
    ],
)
def test_pair_answers_that_do_not_prove_the_node_are_refused(answer: Any, why: str) -> None:
    with pytest.raises(PairingRefused, match=why):
        check_pair_answer(answer, None)


def test_a_good_pair_answer_is_accepted_with_or_without_a_pin() -> None:
    answer = check_pair_answer(_answer(), None)
    assert check_pair_answer(_answer(), answer.fingerprint.upper()) == answer


# -- recording and pushing --------------------------------------------------------------


async def test_record_push_and_pull_keep_each_result(
    system: EdgeSystem, device: FieldDevice, session: aiohttp.ClientSession
) -> None:
    await paired(device, system, session)
    await device.record_transition("oi-1", "assigned", "in_progress", record_id="t-1")
    await device.record_transition("oi-9", "assigned", "in_progress", record_id="t-2")
    await device.record_encounter(encounter("e-1"))
    assert await device.store.pending_counts() == {"transitions": 2, "encounters": 1}

    summary = await device.sync(session, flag_plan(system))

    assert summary["pushed"]["sent"] == {"transitions": 2, "encounters": 1}
    assert summary["pushed"]["results"] == {"applied": 2, "rejected": 1}
    assert summary["pulledItems"] == 3
    assert await device.store.pending_counts() == {"transitions": 0, "encounters": 0}
    by_id = {r.record_id: r for r in await device.store.records()}
    assert by_id["t-1"].synced_via == "push"
    assert (by_id["t-1"].result_status, by_id["t-1"].result_state) == ("applied", "in_progress")
    # Refused by the edge (unknown item): synced all the same, the code kept for the user.
    assert (by_id["t-2"].result_status, by_id["t-2"].result_code) == ("rejected", "unknown_item")
    assert by_id["e-1"].result_status == "applied"
    assert by_id["t-1"].body["seq"] == by_id["t-1"].seq  # the device's own sequence
    # The edge stored what was pushed, and the device holds the edge's items.
    assert (await system.edge_status())["outboxDepth"] >= 1
    assert sorted(i["id"] for i in await device.store.items()) == ["oi-1", "oi-2", "oi-3"]
    status = await device.status()
    assert status["synced"] == {"push": 3, "gather": 0}
    assert status["lastSync"]["edgeUrl"].startswith(edge_url(system))

    # Nothing left: a second sync pushes nothing and the records keep their results.
    again = await device.sync(session, flag_plan(system))
    assert again["pushed"]["sent"] == {"transitions": 0, "encounters": 0}
    assert {r.record_id: r for r in await device.store.records()} == by_id


async def test_a_device_clock_off_by_an_hour_is_corrected_once(
    system: EdgeSystem,
    device: FieldDevice,
    device_clock: FakeClock,
    session: aiohttp.ClientSession,
) -> None:
    await paired(device, system, session)
    device_clock.advance(-3600)
    await device.record_transition("oi-1", "assigned", "in_progress")
    summary = await device.sync(session, flag_plan(system))
    assert summary["pushed"]["results"] == {"applied": 1}
    assert 3590 <= summary["clockOffsetSeconds"] <= 3610


async def test_recording_validates_with_the_shared_readers(device: FieldDevice) -> None:
    with pytest.raises(ValidationFailed, match="not a field worker"):
        await device.record_transition("oi-1", "assigned", "completed")
    with pytest.raises(ValidationFailed, match="not a field worker"):
        await device.record_transition("oi-1", "pending", "assigned")  # a supervisor's
    with pytest.raises(ValidationFailed):
        await device.record_transition("bad item", "assigned", "in_progress")
    with pytest.raises(ValidationFailed):
        await device.record_encounter({**encounter("e-1"), "kind": "party"})
    await device.record_transition("oi-1", "assigned", "in_progress", record_id="t-1")
    # The same record again is a no-op; other content under its id is refused.
    await device.record_transition("oi-1", "assigned", "in_progress", record_id="t-1")
    with pytest.raises(AlreadyExists):
        await device.record_transition("oi-2", "assigned", "in_progress", record_id="t-1")
    assert await device.store.pending_counts() == {"transitions": 1, "encounters": 0}


async def test_encounters_for_facilities_the_node_does_not_serve_are_refused(
    system: EdgeSystem, device: FieldDevice, session: aiohttp.ClientSession
) -> None:
    await paired(device, system, session)
    with pytest.raises(OutOfScope):
        await device.record_encounter(encounter("e-1", facility="f-999"))
    assert await device.store.pending_total() == 0


# -- server data and cohort drafts ----------------------------------------------------------

GOOD_DEFINITION = {"all": [{"field": "sex", "op": "eq", "value": "female"}, {"condition": "E11"}]}
BAD_DEFINITION = {
    "all": [{"field": "age", "op": "gt", "value": -1}, {"condition": ""}, {"field": "sex"}]
}
BAD_PATHS = ["/all/0/value", "/all/1/condition", "/all/2/op"]


async def feed_change(
    system: EdgeSystem,
    aggregate: str,
    entity_id: str,
    data: Any,
    *,
    op: str = "upsert",
    facility: str | None = None,
) -> None:
    """A change row as the gateway writes one, straight into its feed."""
    async with system.gateway.database.write() as conn:
        await conn.execute(
            changes.insert().values(
                tenant_id="t1",
                facility_id=facility,
                aggregate=aggregate,
                entity_id=entity_id,
                op=op,
                data=data,
                committed_at="2026-11-25T10:00:00.000Z",
            )
        )


def registry_entry(entry_id: str, facility: str = "f-001") -> dict[str, Any]:
    return {
        "id": entry_id,
        "facilityId": facility,
        "patientRef": patient_ref(entry_id),
        "sex": "female",
        "birthDate": "1970-05-01",
        "conditions": [{"code": "E11"}],
    }


async def gateway_call(
    system: EdgeSystem, method: str, path: str, token: str, doc: Any = None
) -> Any:
    resp = await system.gateway.client.request(method, path, json=doc, headers=bearer(token))
    assert 200 <= resp.status < 300, await resp.text()
    return await resp.json()


async def test_sync_pulls_server_data_page_by_page_from_its_cursor(
    system: EdgeSystem,
    device: FieldDevice,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await paired(device, system, session)
    entry = registry_entry("e-1")
    cohort = {"cohortId": "c-1", "name": "Diabetics", "version": 1}
    membership = {"cohortId": "c-1", "version": 1, "entryId": "e-1", "facilityId": "f-001"}
    risk = {"entryId": "e-1", "facilityId": "f-001", "score": 7, "source": "computed"}
    await feed_change(system, "disease_registry_entry", "e-1", entry, facility="f-001")
    await feed_change(system, "population_cohort", "c-1", cohort)  # tenant-wide
    await feed_change(system, "cohort_membership", "c-1/e-1", membership, facility="f-001")
    await feed_change(system, "risk_score", "e-1", risk, facility="f-001")
    assert (await system.pull()).error is None
    asked: list[str] = []
    server_data = EdgeClient.server_data

    async def spy(client: EdgeClient, since: str, limit: int = 1000) -> Any:
        asked.append(since)
        return await server_data(client, since, limit)

    monkeypatch.setattr(EdgeClient, "server_data", spy)
    monkeypatch.setattr(device_module, "SERVER_DATA_PAGE", 3)

    summary = await device.sync(session, flag_plan(system))
    assert summary["pulledItems"] == 3 and summary["pulledServerRecords"] == 4
    assert len(asked) == 2 and asked[0] == "0"  # two pages, the second from the cursor
    held = await device.store.server_records()
    assert [(r["aggregate"], r["id"], r["facilityId"], r["data"]) for r in held] == [
        ("cohort_membership", "c-1/e-1", "f-001", membership),
        ("disease_registry_entry", "e-1", "f-001", entry),
        ("population_cohort", "c-1", None, cohort),
        ("risk_score", "e-1", "f-001", risk),
    ]
    cursor = await device.store.state("server_data_cursor")
    assert cursor == str(max(r["seq"] for r in held))

    # An update and two removals (one with no data: it keeps its facility).
    await feed_change(system, "population_cohort", "c-1", {**cohort, "version": 2})
    await feed_change(system, "cohort_membership", "c-1/e-1", None, op="delete", facility="f-001")
    await feed_change(system, "risk_score", "e-1", {"entryId": "e-1"}, op="delete")
    await system.pull()
    asked.clear()
    summary = await device.sync(session, flag_plan(system))
    assert summary["pulledServerRecords"] == 3
    assert asked == [cursor]
    live = await device.store.server_records()
    assert [(r["id"], r["data"].get("version")) for r in live] == [("e-1", None), ("c-1", 2)]
    tombstones = [r for r in await device.store.server_records(deleted=True) if r.get("deleted")]
    assert [(r["aggregate"], r["id"], r["facilityId"], r["data"]) for r in tombstones] == [
        ("cohort_membership", "c-1/e-1", "f-001", None),
        ("risk_score", "e-1", "f-001", {"entryId": "e-1"}),
    ]
    assert (await device.status())["serverData"] == {
        "disease_registry_entry": 1,
        "population_cohort": 1,
    }

    # Nothing new: one request from the cursor, nothing pulled, nothing changed.
    cursor = await device.store.state("server_data_cursor")
    before = await rows(device.store)
    asked.clear()
    again = await device.sync(session, flag_plan(system))
    assert (again["pulledServerRecords"], asked) == (0, [cursor])
    after = await rows(device.store)
    assert after["server_records"] == before["server_records"]
    assert await device.store.state("server_data_cursor") == cursor


async def test_a_cohort_draft_is_sent_accepted_forwarded_and_read_back(
    system: EdgeSystem, device: FieldDevice, session: aiohttp.ClientSession
) -> None:
    service = await system.gateway.token("service")
    await gateway_call(
        system, "PUT", f"{PREFIX}/registry/entries/e-1", service, registry_entry("e-1")
    )
    await gateway_call(
        system,
        "POST",
        f"{PREFIX}/cohorts",
        system.admin_token,
        {"cohortId": "dm", "name": "Diabetes", "definition": {"condition": "E11"}},
    )
    assert (await system.pull()).error is None
    await paired(device, system, session)

    draft = await device.draft_cohort("dm", GOOD_DEFINITION, "d-1")
    assert (draft.draft_id, draft.cohort_id, draft.synced_at) == ("d-1", "dm", None)
    assert await device.store.pending_draft_count() == 1
    assert await device.store.pending(500) == ([], False)  # never offered to gather
    assert (await device.status())["drafts"] == {"recorded": 1, "pending": 1, "results": {}}

    summary = await device.sync(session, flag_plan(system))
    assert summary["drafts"] == {"sent": 1, "results": {"accepted": 1}, "cleared": 1}
    [kept] = await device.store.drafts()
    assert kept.synced_at is not None and kept.result_status == "accepted"
    assert kept.result == {
        "id": "d-1",
        "kind": "cohort.draft",
        "status": "accepted",
        "cohortId": "dm",
    }
    # The edge queued it for the gateway, as this device's draft.
    status = await system.edge_status()
    assert status["unsentCohortDrafts"] == 1 and status["refusedWrites"] == 0
    async with system.edge_db.read() as conn:
        [row] = await conn.execute_fetchall(
            "SELECT draft_id, device_id, cohort_id, definition FROM cohort_drafts"
        )
    assert tuple(row[:3]) == ("d-1", "tab-a", "dm")
    assert json.loads(row[3]) == GOOD_DEFINITION

    # Forwarded and numbered by the gateway; the new version reaches the device.
    forwarded, pulled = await system.sync()
    assert forwarded.statuses == {"applied": 1} and pulled.error is None
    again = await device.sync(session, flag_plan(system))
    assert again["drafts"] == {"sent": 0, "results": {}, "cleared": 0}
    [cohort] = await device.store.server_records("population_cohort")
    assert cohort["id"] == "dm" and cohort["data"]["version"] == 2
    assert cohort["data"]["definition"] == GOOD_DEFINITION
    assert [r["id"] for r in await device.store.server_records("cohort_membership")] == ["dm/e-1"]


async def test_drafts_the_edge_refuses_are_kept_with_code_and_errors(
    system: EdgeSystem, device: FieldDevice, session: aiohttp.ClientSession
) -> None:
    await paired(device, system, session)
    other = await system.pair_tablet("tab-b")
    taken = {"kind": "cohort.draft", "id": "d-taken", "cohortId": "c-1"}
    resp = await system.tablet_request(
        other, "POST", f"{PREFIX}/sync/items", {"items": [{**taken, "definition": GOOD_DEFINITION}]}
    )
    assert resp.status == 200
    await device.draft_cohort("c-1", GOOD_DEFINITION, "d-taken")
    # A draft queued by an older release, which did not validate: the edge's judgement.
    await device.store.add_draft("d-bad", "c-1", BAD_DEFINITION, device.clock())

    summary = await device.sync(session, flag_plan(system))
    assert summary["drafts"] == {"sent": 2, "results": {"rejected": 2}, "cleared": 2}
    by_id = {d.draft_id: d for d in await device.store.drafts()}
    assert (by_id["d-taken"].result_status, by_id["d-taken"].result_code) == (
        "rejected",
        "validation_failed",
    )
    bad = by_id["d-bad"]
    assert (bad.result_status, bad.result_code) == ("rejected", "cohort_invalid")
    assert bad.result is not None
    assert bad.result["errors"] == [e.to_wire() for e in validate_cohort(BAD_DEFINITION)]
    assert await device.store.pending_draft_count() == 0
    assert (await device.status())["drafts"]["results"] == {"rejected": 2}
    assert (await system.edge_status())["refusedWrites"] == 2


async def test_an_invalid_draft_is_refused_here_with_every_error_path(
    device: FieldDevice,
) -> None:
    with pytest.raises(CohortInvalid) as caught:
        await device.draft_cohort("c-1", BAD_DEFINITION)
    assert [e["path"] for e in caught.value.errors] == BAD_PATHS
    assert all(path in caught.value.detail for path in BAD_PATHS)
    with pytest.raises(CohortInvalid):
        await device.draft_cohort("c-1", ["not", "an", "expression"])
    with pytest.raises(ValidationFailed):
        await device.draft_cohort("no spaces", GOOD_DEFINITION)
    with pytest.raises(ValidationFailed):
        await device.draft_cohort("c-1", GOOD_DEFINITION, "d/1")
    assert await device.store.drafts() == []
    # The same draft again is a no-op; other content under its id is refused.
    first = await device.draft_cohort("c-1", GOOD_DEFINITION, "d-1")
    assert await device.draft_cohort("c-1", GOOD_DEFINITION, "d-1") == first
    with pytest.raises(AlreadyExists):
        await device.draft_cohort("c-2", GOOD_DEFINITION, "d-1")
    with pytest.raises(AlreadyExists):
        await device.draft_cohort("c-1", {"condition": "I10"}, "d-1")
    assert [d.draft_id for d in await device.store.drafts()] == ["d-1"]
    assert (await device.draft_cohort("c-1", GOOD_DEFINITION)).draft_id.startswith("d-")


# -- the gather API ----------------------------------------------------------------------


class Gather:
    """The device's gather API on loopback, and requests to it signed as the node."""

    def __init__(self, client: TestClient, system: EdgeSystem) -> None:  # type: ignore[type-arg]
        self.client = client
        self.system = system

    async def request(
        self,
        method: str,
        path: str,
        doc: Any = None,
        *,
        fmt: str = "json",
        body: bytes | None = None,
        keypair: KeyPair | None = None,
        key_id: str = "edge-01",
        ts: int | None = None,
        signed: bool = True,
        spoil: bool = False,
        nonce: str | None = None,
    ) -> Any:
        raw = body if body is not None else (b"" if doc is None else encode(doc, fmt))
        media = JSON if fmt == "json" else MSGPACK
        headers = {"Accept": media}
        if nonce is not None:
            headers[NONCE_HEADER] = nonce
        if raw:
            headers["Content-Type"] = media
        if signed:
            stamp = int(START.timestamp()) if ts is None else ts
            header = authorization_header(
                keypair or self.system.node_key, key_id, method, path, raw, stamp
            )
            if spoil:  # flip one signature byte
                head, sig = header.rsplit("sig=", 1)
                raw_sig = bytearray(base64.b64decode(sig))
                raw_sig[0] ^= 1
                header = head + "sig=" + base64.b64encode(bytes(raw_sig)).decode()
            headers["Authorization"] = header
        return await self.client.request(method, path, data=raw, headers=headers)


@pytest.fixture
async def gather(
    system: EdgeSystem,
    device: FieldDevice,
    session: aiohttp.ClientSession,
    aiohttp_client: ClientFactory,
) -> Gather:
    await paired(device, system, session)
    await device.record_transition("oi-1", "assigned", "in_progress", record_id="t-1")
    await device.record_encounter(encounter("e-1"))
    await device.record_transition("oi-2", "assigned", "in_progress", record_id="t-2")
    return Gather(await aiohttp_client(create_gather_app(device)), system)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_the_paired_node_reads_pending_records_oldest_first(gather: Gather, fmt: str) -> None:
    resp = await gather.request("GET", PENDING, fmt=fmt)
    assert resp.status == 200, await resp.read()
    page = await document(resp)
    assert page["deviceId"] == "tab-a" and page["more"] is False
    assert [t["id"] for t in page["transitions"]] == ["t-1", "t-2"]
    assert [e["id"] for e in page["encounters"]] == ["e-1"]
    assert page["transitions"][0]["deviceId"] == "tab-a"

    resp = await gather.request("GET", f"{PENDING}?limit=2", fmt=fmt)
    page = await document(resp)
    assert page["more"] is True  # oldest first: t-1 and e-1, t-2 waits
    assert [t["id"] for t in page["transitions"]] == ["t-1"]
    assert [e["id"] for e in page["encounters"]] == ["e-1"]


async def test_acks_mark_records_synced_by_gather_and_are_idempotent(
    gather: Gather, device: FieldDevice
) -> None:
    ack = {
        "transitions": [{"id": "t-1", "status": "applied", "state": "in_progress"}],
        "encounters": [{"id": "e-1", "status": "duplicate"}],
    }
    resp = await gather.request("POST", ACKS, ack)
    assert resp.status == 200, await resp.read()
    assert await resp.json() == {"cleared": 2, "pending": 1}
    before = await rows(device.store)
    resp = await gather.request("POST", ACKS, ack, fmt="msgpack")  # the ack again
    assert (await document(resp)) == {"cleared": 0, "pending": 1}
    after = await rows(device.store)
    assert before["records"] == after["records"]  # the first result is kept
    by_id = {r.record_id: r for r in await device.store.records()}
    assert (by_id["t-1"].synced_via, by_id["t-1"].result_state) == ("gather", "in_progress")
    assert by_id["e-1"].result_status == "duplicate" and by_id["t-2"].synced_at is None
    page = await document(await gather.request("GET", PENDING))
    assert [t["id"] for t in page["transitions"]] == ["t-2"] and page["encounters"] == []
    # Results for records this device does not hold clear nothing.
    resp = await gather.request("POST", ACKS, {"transitions": [{"id": "t-x", "status": "noop"}]})
    assert await resp.json() == {"cleared": 0, "pending": 1}
    status = await device.status()
    assert status["synced"] == {"push": 0, "gather": 2}
    assert status["lastGather"]["nodeId"] == "edge-01"


WRONG_KEY = KeyPair.generate()
NOW = int(START.timestamp())


async def paired_key(system: EdgeSystem, device_id: str) -> bytes:
    """The device's public key as the edge stored it at pairing."""
    async with system.edge_db.read() as conn:
        cursor = await conn.execute(
            "SELECT public_key FROM devices WHERE device_id = ? AND status = 'active'",
            (device_id,),
        )
        row = await cursor.fetchone()
    assert row is not None
    return bytes(row[0])


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_answers_are_signed_with_the_device_key(
    gather: Gather, system: EdgeSystem, device: FieldDevice, fmt: str
) -> None:
    key = await paired_key(system, "tab-a")
    assert key == device.keypair.public_key
    path = f"{PENDING}?limit=2"
    resp = await gather.request("GET", path, fmt=fmt, nonce="n-1")
    body = await resp.read()
    assert resp.status == 200, body
    auth = parse_answer_signature(resp.headers[ANSWER_HEADER])
    assert (auth.key_id, auth.ts) == ("tab-a", NOW)  # the device's id, its clock
    verify_answer(auth, "tab-a", key, "GET", path, "n-1", body, NOW)

    # Any change to the answer, or to the request it answers, breaks it.
    spoilt: list[tuple[str, str, str, bytes, bytes]] = [
        ("GET", path, "n-1", body.replace(b"t-1", b"t-9"), key),  # a record changed
        ("GET", path, "n-1", body + b" ", key),  # a byte added
        ("GET", path, "n-1", body[:-1], key),  # a byte cut
        ("GET", path, "n-2", body, key),  # an answer to another request (its nonce)
        ("GET", PENDING, "n-1", body, key),  # ... to another query
        ("POST", path, "n-1", body, key),  # ... to another method
        ("GET", path, "n-1", body, WRONG_KEY.public_key),  # another device's key
    ]
    for method, where, nonce, answer, public_key in spoilt:
        with pytest.raises(BadSignature):
            verify_answer(auth, "tab-a", public_key, method, where, nonce, answer, NOW)

    # The acknowledgement's answer is signed the same way.
    ack = {"transitions": [{"id": "t-1", "status": "applied", "state": "in_progress"}]}
    resp = await gather.request("POST", ACKS, ack, fmt=fmt, nonce="n-3")
    body = await resp.read()
    assert resp.status == 200, body
    auth = parse_answer_signature(resp.headers[ANSWER_HEADER])
    verify_answer(auth, "tab-a", key, "POST", ACKS, "n-3", body, NOW)
    with pytest.raises(BadSignature):
        verify_answer(auth, "tab-a", key, "GET", ACKS, "n-3", body, NOW)

    # Without a nonce, the signature covers an empty one.
    resp = await gather.request("GET", PENDING)
    body = await resp.read()
    auth = parse_answer_signature(resp.headers[ANSWER_HEADER])
    verify_answer(auth, "tab-a", key, "GET", PENDING, "", body, NOW)


@pytest.mark.parametrize("nonce", ["", "two words", "a\tb", "n" * 129, "é"])
async def test_a_bad_nonce_is_refused_and_changes_nothing(
    gather: Gather, device: FieldDevice, nonce: str
) -> None:
    if nonce == "":  # an empty header is no nonce at all
        resp = await gather.request("GET", PENDING, nonce=nonce)
        assert resp.status == 200
        return
    before = await rows(device.store)
    ack = {"transitions": [{"id": "t-1", "status": "applied"}]}
    for resp in (
        await gather.request("GET", PENDING, nonce=nonce),
        await gather.request("POST", ACKS, ack, nonce=nonce),
    ):
        problem = await assert_problem(resp, 422, "validation_failed")
        assert problem["field"] == NONCE_HEADER and ANSWER_HEADER not in resp.headers
    assert await rows(device.store) == before


async def test_the_edge_gathers_from_the_real_device_api(
    system: EdgeSystem, device: FieldDevice, session: aiohttp.ClientSession
) -> None:
    # Both halves of the answer signature: the device's API signs, the
    # edge's gatherer verifies with the key it stored at pairing.
    await paired(device, system, session)
    await device.record_transition("oi-1", "assigned", "in_progress", record_id="t-1")
    await device.record_encounter(encounter("e-1"))
    runtime = DeviceRuntime(device, "127.0.0.1", 0)
    await runtime.start()
    try:
        advert = FieldAdvert(
            "tab-a._phs-field._tcp.local.", "tab-a", 2, runtime.port, ("127.0.0.1",)
        )
        async with system.edge_db.write() as conn:
            await record_seen(conn, advert, system.edge_clock())
        app = system.edge.app
        gatherer = Gatherer(
            app[EDGE_DB],
            app[OUTREACH_INTAKE],
            app[OUTBOX_WAKE],
            session,
            system.node_key,
            system.edge_settings,
            system.edge_clock,
        )
        outcome = await gatherer.gather_once("tab-a")
    finally:
        await runtime.stop()
    assert (outcome.error, outcome.records, outcome.rejected) == (None, 2, 0)
    assert await device.store.pending_total() == 0
    assert (await device.status())["synced"] == {"push": 0, "gather": 2}


REFUSED: list[tuple[str, dict[str, Any], int, str]] = [
    ("unsigned", {"signed": False}, 401, "unauthenticated"),
    ("another node", {"key_id": "edge-02"}, 401, "unknown_key"),
    ("another key, the node's id", {"keypair": WRONG_KEY}, 401, "bad_signature"),
    ("a spoilt signature", {"spoil": True}, 401, "bad_signature"),
    ("ten minutes slow", {"ts": NOW - 600}, 401, "clock_skew"),
    ("ten minutes fast", {"ts": NOW + 600}, 401, "clock_skew"),
]


@pytest.mark.parametrize(("case", "how", "status", "code"), REFUSED, ids=[r[0] for r in REFUSED])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_requests_not_signed_by_the_paired_node_are_refused(
    gather: Gather,
    device: FieldDevice,
    case: str,
    how: dict[str, Any],
    status: int,
    code: str,
    method: str,
) -> None:
    before = await rows(device.store)
    if method == "GET":
        resp = await gather.request("GET", PENDING, **how)
    else:
        ack = {"transitions": [{"id": "t-1", "status": "applied"}]}
        resp = await gather.request("POST", ACKS, ack, **how)
    problem = await assert_problem(resp, status, code)
    if code == "clock_skew":
        assert resp.headers["Date"]  # the device's time, for the node to correct
    assert "transitions" not in problem
    assert await rows(device.store) == before


async def test_an_unpaired_device_refuses_every_node(
    tmp_path: Path, system: EdgeSystem, aiohttp_client: ClientFactory
) -> None:
    settings = FieldSettings(device_id="tab-b", data_dir=str(tmp_path / "b"), discovery=False)
    lonely = await FieldDevice.open(settings, FakeClock(START), create=True)
    try:
        gather = Gather(await aiohttp_client(create_gather_app(lonely)), system)
        await assert_problem(await gather.request("GET", PENDING), 401, "unknown_key")
    finally:
        await lonely.close()


MALFORMED: list[tuple[str, dict[str, Any], int, str]] = [
    ("not JSON", {"body": b"{nope"}, 400, "malformed_body"),
    ("an array", {"body": b"[]"}, 400, "malformed_body"),
    ("unknown field", {"doc": {"transitions": [], "extra": 1}}, 422, "validation_failed"),
    ("not a list", {"doc": {"transitions": {"id": "t-1"}}}, 422, "validation_failed"),
    (
        "unknown status",
        {"doc": {"transitions": [{"id": "t-1", "status": "fine"}]}},
        422,
        "validation_failed",
    ),
    ("no id", {"doc": {"transitions": [{"status": "applied"}]}}, 422, "validation_failed"),
    (
        "a good result then a bad one",
        {"doc": {"transitions": [{"id": "t-1", "status": "applied"}, {"id": 7}]}},
        422,
        "validation_failed",
    ),
    (
        "code not text",
        {"doc": {"encounters": [{"id": "e-1", "status": "rejected", "code": 5}]}},
        422,
        "validation_failed",
    ),
]


MALFORMED_IDS = [m[0] for m in MALFORMED]


@pytest.mark.parametrize(("case", "how", "status", "code"), MALFORMED, ids=MALFORMED_IDS)
async def test_malformed_acks_are_refused_and_change_nothing(
    gather: Gather, device: FieldDevice, case: str, how: dict[str, Any], status: int, code: str
) -> None:
    before = await rows(device.store)
    resp = await gather.request("POST", ACKS, how.get("doc"), body=how.get("body"))
    await assert_problem(resp, status, code)
    assert await rows(device.store) == before


@pytest.mark.parametrize("query", ["limit=0", "limit=5001", "limit=ten"])
async def test_bad_limits_are_refused(gather: Gather, query: str) -> None:
    await assert_problem(
        await gather.request("GET", f"{PENDING}?{query}"), 422, "validation_failed"
    )


async def test_a_runtime_without_discovery_serves_its_gather_api(
    device: FieldDevice, session: aiohttp.ClientSession
) -> None:
    runtime = DeviceRuntime(device, "127.0.0.1", 0)
    await runtime.start()
    try:
        async with session.get(f"http://127.0.0.1:{runtime.port}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["deviceId"] == "tab-a"
        assert runtime.advertiser is None
    finally:
        await runtime.stop()


# -- finding the edge (pure) ------------------------------------------------------------


def advert(node: str, fp: str, name: str | None = None) -> EdgeAdvert:
    return EdgeAdvert(
        name=name or f"{node}._phs-edge._tcp.local.",
        node_id=node,
        tenant_id="t1",
        fingerprint=fp,
        path=PREFIX,
        port=8490,
        addresses=("192.0.2.7",),
    )


PAIRED = Pairing("edge-01", "t1", ("f-001",), "aaaaaaaaaaaaaaaa", b"k", "", "")


def test_only_the_advert_with_the_paired_node_and_fp_is_chosen() -> None:
    genuine = advert("edge-01", "aaaaaaaaaaaaaaaa", "edge-01 (2)._phs-edge._tcp.local.")
    impostor = advert("edge-01", "bbbbbbbbbbbbbbbb")  # took the name first
    neighbour = advert("edge-07", "cccccccccccccccc")
    chosen, refused = choose_edge([impostor, neighbour, genuine], PAIRED)
    assert chosen == genuine
    reasons = {r.advert.name: r.reason for r in refused}
    assert "not the paired fp" in reasons[impostor.name]
    assert "another node (edge-07)" in reasons[neighbour.name]
    found = plan([impostor, neighbour, genuine], PAIRED, "http://10.0.0.5:8490")
    assert found.source == "discovery"
    # The advert's address first; the configured one after it as a last resort.
    assert found.candidates == (f"http://192.0.2.7:8490{PREFIX}", f"http://10.0.0.5:8490{PREFIX}")


def test_no_matching_advert_falls_back_to_the_configured_url_and_says_so() -> None:
    found = plan([advert("edge-01", "bbbbbbbbbbbbbbbb")], PAIRED, "http://10.0.0.5:8490/")
    assert found.source == "configured"
    assert found.candidates == (f"http://10.0.0.5:8490{PREFIX}",)
    assert any("falling back to the configured edge_url" in n for n in found.notes)
    assert found.describe()["refused"][0]["fp"] == "bbbbbbbbbbbbbbbb"


def test_without_a_match_or_a_url_the_error_lists_what_was_refused() -> None:
    with pytest.raises(EdgeNotFound) as caught:
        plan([advert("edge-01", "bbbbbbbbbbbbbbbb")], PAIRED, "")
    assert "edge-01._phs-edge._tcp.local." in str(caught.value)
    assert "not the paired fp" in str(caught.value)
    assert len(caught.value.refused) == 1
    with pytest.raises(EdgeNotFound, match="discovery did not run: no interface"):
        plan(None, PAIRED, "", None, "no interface")


def test_pairing_picks_the_only_edge_or_the_named_one() -> None:
    one, two = advert("edge-01", "aaaaaaaaaaaaaaaa"), advert("edge-02", "bbbbbbbbbbbbbbbb")
    assert choose_for_pairing([one], None, None)[0] == one
    with pytest.raises(EdgeNotFound, match="name one with --node"):
        choose_for_pairing([one, two], None, None)
    chosen, refused = choose_for_pairing([one, two], "edge-02", None)
    assert chosen == two and [r.advert for r in refused] == [one]
    with pytest.raises(EdgeNotFound, match="no edge node to pair with"):
        choose_for_pairing([one], None, "bbbbbbbbbbbbbbbb")
    with pytest.raises(EdgeNotFound, match="adverts seen: none"):
        choose_for_pairing([], None, None)


def test_a_server_on_every_ipv4_address_advertises_only_ipv4() -> None:
    addresses = ["10.0.0.2", "fe80::1%eth0", "2001:db8::2"]
    assert advert_addresses("0.0.0.0", addresses) == ["10.0.0.2"]
    assert advert_addresses("::", addresses) == addresses
    assert advert_addresses("10.0.0.2", addresses) == ["10.0.0.2"]


# -- simulation (pure parts) --------------------------------------------------------------


def test_each_simulated_device_walks_its_own_share_of_the_items() -> None:
    items = [{"id": f"oi-{n}", "state": "assigned"} for n in range(1, 7)]
    items += [{"id": "oi-done", "state": "completed"}, {"id": "oi-half", "state": "contacted"}]
    steps = plan_walk(items, 1, 3, 5, START, random.Random(0))
    # Walkable by id: oi-1..oi-6, oi-half; device 1 of 3 takes oi-2, oi-5.
    assert [(s.item_id, s.from_state, s.to_state) for s in steps] == [
        ("oi-2", "assigned", "in_progress"),
        ("oi-2", "in_progress", "contacted"),
        ("oi-2", "contacted", "completed"),
        ("oi-5", "assigned", "in_progress"),
        ("oi-5", "in_progress", "contacted"),
    ]
    times = [s.at for s in steps]
    assert times == sorted(times) and times[-1] < START
    assert times[0] > START - timedelta(hours=1)


def test_codes_file_lines(tmp_path: Path) -> None:
    codes = tmp_path / "codes.txt"
    codes.write_text("# device code\ntab-1 AAAAA-BBBBB\n\ntab-2 CCCCC-DDDDD\n")
    assert read_codes(str(codes), 2) == [("tab-1", "AAAAA-BBBBB"), ("tab-2", "CCCCC-DDDDD")]
    with pytest.raises(ValidationFailed, match="fewer than --devices 3"):
        read_codes(str(codes), 3)


async def test_the_store_migrations_survive_a_second_open(tmp_path: Path) -> None:
    store = await FieldStore(tmp_path / "field.db").open()
    await store.close()
    store = await FieldStore(tmp_path / "field.db").open()
    try:
        assert await store.schema_version() == 2
    finally:
        await store.close()


async def test_migration_2_upgrades_a_version_1_store(tmp_path: Path) -> None:
    path = tmp_path / "field.db"
    old = await SQLiteStore(path, MIGRATIONS[:1]).open()  # the store as released
    async with old.write() as conn:
        await conn.execute(
            "INSERT INTO records (seq, record_id, kind, body, created_at) "
            "VALUES (1, 't-1', 'transition', '{}', '2026-11-25T09:00:00.000Z')"
        )
        await conn.execute("INSERT INTO sync_state (key, value) VALUES ('items_cursor', '7')")
    await old.close()
    for _ in range(2):  # the second open finds it current
        store = await FieldStore(path).open()
        try:
            assert await store.schema_version() == 2
            assert [r.record_id for r in await store.records()] == ["t-1"]  # kept
            assert await store.state("items_cursor") == "7"
            assert await store.state("server_data_cursor") == "0"
            assert await store.server_records() == [] and await store.drafts() == []
        finally:
            await store.close()
    store = await FieldStore(path).open()
    try:  # step 2 survives being run again over its own result
        async with store.write() as conn:
            for statement in MIGRATIONS[1][2]:
                await conn.execute(statement)
    finally:
        await store.close()


# -- the command line, as subprocesses ------------------------------------------------------


async def phs_field(*args: str, data_dir: Path) -> tuple[int, Any, str]:
    env = {**os.environ, "PHS_FIELD_DISCOVERY": "false"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fielddevice.cli",
        *args,
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(ROOT),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    scan_output(err, f"phs-field {args[0]} stderr")  # its log; stdout is its answer
    text = out.decode()
    try:
        doc = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        doc = text
    assert proc.returncode is not None
    return proc.returncode, doc, err.decode()


async def test_command_line_init_pair_record_sync_status(
    tmp_path: Path, system: EdgeSystem
) -> None:
    data = tmp_path / "tab-cli"
    url = edge_url(system)
    code, doc, err = await phs_field("init", "--device-id", "tab-cli", data_dir=data)
    assert code == 0, err
    assert doc["deviceId"] == "tab-cli" and len(doc["fp"]) == 16
    assert oct((data / "device.key").stat().st_mode & 0o777) == "0o600"
    code, _, err = await phs_field("init", "--device-id", "tab-cli", data_dir=data)
    assert code == 2 and "refusing to replace" in err  # a device keeps its identity

    # A wrong pin: refused, nothing stored (and the code is spent).
    pairing_code = await system.issue_pairing_code("tab-cli")
    code, _, err = await phs_field(
        "pair", "--code", pairing_code, "--edge-url", url, "--expect-fp", "0" * 16, data_dir=data
    )
    assert code == 2 and "not the expected" in err
    pairing_code = await system.issue_pairing_code("tab-cli")
    fp = fingerprint(system.node_key.public_key)
    code, doc, err = await phs_field(
        "pair", "--code", pairing_code, "--edge-url", url, "--expect-fp", fp, data_dir=data
    )
    assert code == 0, err
    assert doc["paired"]["nodeId"] == "edge-01" and doc["paired"]["fp"] == fp

    code, doc, err = await phs_field(
        "record", "--item", "oi-1", "--from", "assigned", "--to", "in_progress", data_dir=data
    )
    assert code == 0, err
    assert doc["pending"] == {"transitions": 1, "encounters": 0}
    code, _, err = await phs_field(
        "record", "--item", "oi-1", "--from", "assigned", "--to", "completed", data_dir=data
    )
    assert code == 2 and "validation_failed" in err
    patient = patient_ref(1)
    args = ["--id", "e-1", "--patient", patient, "--facility", "f-001", "--kind", "screening"]
    code, doc, err = await phs_field(
        "encounter", *args, "--at", "2026-11-25T09:00:00.000Z", "--screening-due", data_dir=data
    )
    assert code == 0, err

    # No discovery and no edge_url configured: a clear failure, records kept.
    code, doc, err = await phs_field("sync", data_dir=data)
    assert code == 1 and "no edge_url is configured" in doc["error"]
    assert doc["pending"] == {"transitions": 1, "encounters": 1}

    code, doc, err = await phs_field("sync", "--edge-url", url, data_dir=data)
    assert code == 0, err
    assert doc["edge"]["source"] == "flag"
    assert doc["pushed"]["results"] == {"applied": 2}
    assert doc["pending"] == {"transitions": 0, "encounters": 0}

    code, doc, err = await phs_field("status", data_dir=data)
    assert code == 0, err
    assert doc["deviceId"] == "tab-cli" and doc["paired"] is True
    assert doc["synced"] == {"push": 2, "gather": 0} and doc["results"] == {"applied": 2}
    assert doc["pending"] == {"transitions": 0, "encounters": 0}
    code, doc, err = await phs_field("items", data_dir=data)
    assert code == 0, err
    states = {i["id"]: i["state"] for i in doc["items"]}
    assert states == {"oi-1": "in_progress", "oi-2": "assigned", "oi-3": "assigned"}


async def test_command_line_draft_cohort_sync_and_server_data(
    tmp_path: Path, system: EdgeSystem
) -> None:
    cohort = {"cohortId": "c-1", "name": "Diabetics", "version": 1}
    await feed_change(system, "population_cohort", "c-1", cohort)
    entry = registry_entry("e-1")
    await feed_change(system, "disease_registry_entry", "e-1", entry, facility="f-001")
    await system.pull()
    data = tmp_path / "tab-data"
    url = edge_url(system)
    code, _, err = await phs_field("init", "--device-id", "tab-data", data_dir=data)
    assert code == 0, err
    pairing_code = await system.issue_pairing_code("tab-data")
    code, _, err = await phs_field("pair", "--code", pairing_code, "--edge-url", url, data_dir=data)
    assert code == 0, err
    code, doc, err = await phs_field("server-data", data_dir=data)
    assert code == 0, err
    assert doc == {"cursor": "0", "counts": {}, "records": []}  # nothing pulled yet

    # Invalid: refused here, every error's path printed, nothing queued.
    code, doc, err = await phs_field(
        "draft-cohort", "--cohort", "c-1", "--definition", json.dumps(BAD_DEFINITION),
        data_dir=data,
    )  # fmt: skip
    assert code == 2 and "cohort_invalid" in err
    assert [e["path"] for e in doc["errors"]] == BAD_PATHS
    assert all(f"  {path}: " in err for path in BAD_PATHS)
    code, _, err = await phs_field(
        "draft-cohort", "--cohort", "c-1", "--definition", str(tmp_path / "none.json"),
        data_dir=data,
    )  # fmt: skip
    assert code == 2 and "neither inline JSON nor a readable file" in err
    definition = tmp_path / "definition.json"
    definition.write_text(json.dumps(GOOD_DEFINITION))
    code, doc, err = await phs_field(
        "draft-cohort", "--cohort", "c-1", "--definition", str(definition), "--id", "d-cli",
        data_dir=data,
    )  # fmt: skip
    assert code == 0, err
    assert doc["drafted"]["id"] == "d-cli" and doc["drafted"]["definition"] == GOOD_DEFINITION
    assert doc["pendingDrafts"] == 1

    code, doc, err = await phs_field("sync", "--edge-url", url, data_dir=data)
    assert code == 0, err
    assert doc["drafts"]["results"] == {"accepted": 1}
    assert doc["pulledServerRecords"] == 2
    assert (await system.edge_status())["unsentCohortDrafts"] == 1

    code, doc, err = await phs_field("server-data", data_dir=data)
    assert code == 0, err
    assert doc["counts"] == {"disease_registry_entry": 1, "population_cohort": 1}
    assert doc["cursor"] == str(max(r["seq"] for r in doc["records"]))
    assert [(r["aggregate"], r["id"], r["data"]) for r in doc["records"]] == [
        ("disease_registry_entry", "e-1", entry),
        ("population_cohort", "c-1", cohort),
    ]
    code, doc, err = await phs_field(
        "server-data", "--aggregate", "population_cohort", data_dir=data
    )
    assert code == 0, err
    assert doc["counts"] == {"population_cohort": 1}
    assert [r["id"] for r in doc["records"]] == ["c-1"]
    code, doc, err = await phs_field("status", data_dir=data)
    assert code == 0, err
    assert doc["drafts"] == {"recorded": 1, "pending": 0, "results": {"accepted": 1}}


async def test_the_configured_edge_url_is_a_stated_fallback(
    tmp_path: Path, system: EdgeSystem
) -> None:
    data = tmp_path / "tab-conf"
    url = edge_url(system)
    await phs_field("init", "--device-id", "tab-conf", "--edge-url", url, data_dir=data)
    pairing_code = await system.issue_pairing_code("tab-conf")
    code, doc, err = await phs_field("pair", "--code", pairing_code, data_dir=data)
    assert code == 0, err
    assert doc["notes"] == [f"pairing through the configured edge_url {url}"]
    await phs_field(
        "record", "--item", "oi-2", "--from", "assigned", "--to", "in_progress", data_dir=data
    )
    # An edge that is down: a clear failure, the record kept for the next sync.
    code, doc, _ = await phs_field("sync", "--edge-url", closed_url(), data_dir=data)
    assert code == 1 and "no answer from the edge" in doc["error"]
    assert doc["pending"] == {"transitions": 1, "encounters": 0}
    code, doc, err = await phs_field("sync", data_dir=data)
    assert code == 0, err
    assert doc["edge"]["source"] == "configured"
    assert any("falling back to the configured edge_url" in n for n in doc["edge"]["notes"])
    assert doc["pending"] == {"transitions": 0, "encounters": 0}


async def test_simulate_without_discovery_pushes_instead_of_waiting_to_be_gathered(
    tmp_path: Path,
) -> None:
    # A node made by `edgenode init`, so that `edgenode pair-device` mints the codes.
    edge_dir = tmp_path / "edge-node"
    init = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgenode.cli",
        "init",
        "--node-id",
        "edge-01",
        "--tenant",
        "t1",
        "--facility",
        "f-001",
        "--gateway-url",
        "http://127.0.0.1:9",
        "--data-dir",
        str(edge_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await init.communicate()
    scan_output(err, "edgenode init stderr")
    assert init.returncode == 0, err
    settings = load_edge_settings(None, str(edge_dir))
    async with edge_system(
        tmp_path, edge_settings=settings, node_key=load_key(settings.key_path)
    ) as running:
        await running.create_items([f"oi-{n}" for n in range(1, 8)], "assigned")
        await running.pull()
        code, doc, err = await phs_field(
            "simulate",
            "--devices",
            "3",
            "--transitions",
            "4",
            "--edge-data-dir",
            str(edge_dir),
            "--mode",
            "gather",
            "--edge-url",
            edge_url(running),
            "--timeout",
            "60",
            data_dir=tmp_path / "sims",
        )
        assert code == 0, err
        assert "gather mode is impossible without discovery" in err
        assert doc["effectiveMode"] == "push" and doc["complete"] is True
        # 7 items over 3 devices (oi-1, 4, 7 / oi-2, 5 / oi-3, 6), 4 moves each:
        # one item completed and the next one started; oi-7 is never reached.
        assert doc["recorded"] == 4 + 4 + 4
        assert doc["synced"] == {"push": 12, "gather": 0}
        assert doc["results"] == {"applied": 12}
        assert [d["deviceId"] for d in doc["perDevice"]] == ["sim-001", "sim-002", "sim-003"]
        view = await running.tablet_view(await running.pair_tablet("observer"))
        states = Counter(item["state"] for item in view.values())
        assert states == {"completed": 3, "in_progress": 3, "assigned": 1}

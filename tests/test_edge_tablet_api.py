"""The edge node's tablet API (CONTRACT sections 1, 2, 4, 5) and its command line.

Bad tablet input is answered with a 4xx problem document and stores nothing:
a snapshot of every edge table is taken before the request and compared
after. An invalid FSM transition is not bad input: it is answered per item
and forwarded, because the gateway's answer is final. The ``edgenode``
commands run as real subprocesses against a real gateway on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from canaries import patient_ref, scan_output
from edge_harness import EdgeSystem, Tablet, closed_url, edge_system, encode
from edgenode.keys import load_key
from edgenode.settings import load_edge_settings
from harness import PREFIX, assert_problem, document
from shared.signing import KeyPair, authorization_header, fingerprint

OUTREACH = f"{PREFIX}/sync/outreach"
ENCOUNTERS = f"{PREFIX}/sync/encounters"
ITEMS = f"{PREFIX}/outreach-items"
PAIR = f"{PREFIX}/devices/pair"
MAX_BODY = 64 * 1024
MAX_ITEMS = 50
LIMITS = {"max_body_bytes": MAX_BODY, "max_push_items": MAX_ITEMS}


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


def push(*transitions: dict[str, Any]) -> dict[str, Any]:
    return {"transitions": list(transitions)}


def good(tablet: Tablet, **extra: Any) -> dict[str, Any]:
    return tablet.transition("t-1", "oi-1", "assigned", "in_progress", **extra)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


class Ctx:
    """What a bad-input case may use: the system, two paired tablets, and
    whatever the case prepared before the snapshot."""

    def __init__(self, system: EdgeSystem, a: Tablet, b: Tablet, prepared: Any) -> None:
        self.system, self.a, self.b, self.prepared = system, a, b, prepared

    def post(self, path: str, doc: Any = None, **kw: Any) -> Awaitable[Any]:
        return self.system.tablet_request(self.a, "POST", path, doc, **kw)

    def get(self, path: str, **kw: Any) -> Awaitable[Any]:
        return self.system.tablet_request(self.a, "GET", path, **kw)

    def pair(self, doc: Any, fmt: str = "json") -> Awaitable[Any]:
        media = "application/json" if fmt == "json" else "application/msgpack"
        return self.system.edge.post(PAIR, data=encode(doc, fmt), headers={"Content-Type": media})


async def _no_preparation(_: EdgeSystem) -> Any:
    return None


async def _code_for(system: EdgeSystem, device: str) -> str:
    return await system.issue_pairing_code(device)


async def _used_code(system: EdgeSystem) -> str:
    code = await system.issue_pairing_code("tab-c")
    resp = await system.redeem(code, "tab-c", KeyPair.generate().public_key)
    assert resp.status == 201
    return code


def _pair_doc(code: Any, device: str = "tab-c", key: Any = None) -> dict[str, Any]:
    return {
        "pairingCode": code,
        "deviceId": device,
        "publicKey": key if key is not None else KeyPair.generate().public_key_b64,
    }


async def _expired(c: Ctx) -> Any:
    c.system.edge_clock.advance(c.system.edge_settings.pairing_code_ttl_seconds + 1)
    return await c.pair(_pair_doc(c.prepared))


Case = tuple[
    str,
    Callable[[EdgeSystem], Awaitable[Any]],
    Callable[[Ctx], Awaitable[Any]],
    int,
    str,
]
P = _no_preparation
BAD_INPUT: list[Case] = [
    # Authentication (CONTRACT section 2).
    ("unsigned push", P, lambda c: c.post(OUTREACH, push(good(c.a)), signed=False), 401,
     "unauthenticated"),
    ("unsigned read", P, lambda c: c.get(f"{ITEMS}?since=0", signed=False), 401,
     "unauthenticated"),
    ("bearer scheme", P, lambda c: c.post(OUTREACH, push(good(c.a)), signed=False,
     headers={"Authorization": "Bearer abc"}), 401, "unauthenticated"),
    ("signed with another key", P, lambda c: c.post(OUTREACH, push(good(c.a)),
     keypair=KeyPair.generate()), 401, "bad_signature"),
    ("signed as another paired device", P, lambda c: c.post(OUTREACH, push(good(c.a)),
     key_id="tab-b"), 401, "bad_signature"),
    ("unpaired device", P, lambda c: c.system.tablet_request(Tablet("tab-z"), "POST", OUTREACH,
     push(good(Tablet("tab-z")))), 401, "unknown_key"),
    ("stale timestamp", P, lambda c: c.post(OUTREACH, push(good(c.a)),
     ts=int(c.system.edge_clock().timestamp()) - 301), 401, "clock_skew"),
    ("transition deviceId is not the signer", P, lambda c: c.post(OUTREACH, push(good(c.b))),
     403, "out_of_scope"),
    ("encounter for a facility not served", P, lambda c: c.post(ENCOUNTERS,
     {"encounters": [encounter("e-1"), encounter("e-2", "f-999")]}), 403, "out_of_scope"),
    # Bodies (CONTRACT section 1).
    ("malformed JSON", P, lambda c: c.post(OUTREACH, body=b'{"transitions": ['), 400,
     "malformed_body"),
    ("malformed msgpack", P, lambda c: c.post(OUTREACH, body=b"\x81\xc1", fmt="msgpack"), 400,
     "malformed_body"),
    ("truncated msgpack", P, lambda c: c.post(OUTREACH, body=encode(push(good(c.a)),
     "msgpack")[:-3], fmt="msgpack"), 400, "malformed_body"),
    ("not an object", P, lambda c: c.post(OUTREACH, [good(c.a)]), 400, "malformed_body"),
    ("too deep", P, lambda c: c.post(OUTREACH, {"transitions": nested(40)}), 400,
     "malformed_body"),
    ("unsupported media type", P, lambda c: c.post(OUTREACH, body=b"transitions",
     headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
    ("unknown field in the push", P, lambda c: c.post(OUTREACH, {**push(good(c.a)), "x": 1}),
     422, "validation_failed"),
    ("unknown field in a transition", P, lambda c: c.post(OUTREACH, push(good(c.a, note="hi"))),
     422, "validation_failed"),
    ("missing field in a transition", P, lambda c: c.post(OUTREACH, push({
     k: v for k, v in good(c.a).items() if k != "actorId"})), 422, "validation_failed"),
    ("bad occurredAt", P, lambda c: c.post(OUTREACH, push(good(c.a) | {
     "occurredAt": "2026-11-25 11:00"})), 422, "validation_failed"),
    ("seq beyond 64 bits", P, lambda c: c.post(OUTREACH, push(good(c.a, seq=2**63))), 422,
     "validation_failed"),
    ("role server from a tablet", P, lambda c: c.post(OUTREACH, push(good(c.a, role="server"))),
     422, "validation_failed"),
    ("transitions not a list", P, lambda c: c.post(OUTREACH, {"transitions": {"a": 1}}), 422,
     "validation_failed"),
    ("unknown field in an encounter", P, lambda c: c.post(ENCOUNTERS,
     {"encounters": [encounter("e-1", name="x")]}), 422, "validation_failed"),
    ("bad encounter kind", P, lambda c: c.post(ENCOUNTERS,
     {"encounters": [encounter("e-1", kind="surgery")]}), 422, "validation_failed"),
    ("oversized body", P, lambda c: c.post(OUTREACH, body=b" " * (MAX_BODY + 1)), 413,
     "payload_too_large"),
    ("too many transitions", P, lambda c: c.post(OUTREACH, push(*[
     c.a.transition(f"t-{n}", "oi-1", "assigned", "in_progress") for n in range(MAX_ITEMS + 1)
     ])), 413, "batch_too_large"),
    ("too many encounters", P, lambda c: c.post(ENCOUNTERS, {"encounters": [
     encounter(f"e-{n}") for n in range(MAX_ITEMS + 1)]}), 413, "batch_too_large"),
    ("bad Idempotency-Key", P, lambda c: c.post(OUTREACH, push(good(c.a)),
     headers={"Idempotency-Key": "k" * 256}), 400, "bad_idempotency_key"),
    ("bad cursor", P, lambda c: c.get(f"{ITEMS}?since=abc"), 400, "bad_cursor"),
    ("bad limit", P, lambda c: c.get(f"{ITEMS}?since=0&limit=0"), 422, "validation_failed"),
    # Pairing (CONTRACT section 2).
    ("reused pairing code", _used_code, lambda c: c.pair(_pair_doc(c.prepared)), 401,
     "unauthenticated"),
    ("expired pairing code", lambda s: _code_for(s, "tab-c"), _expired, 401, "unauthenticated"),
    ("pairing code of another device", lambda s: _code_for(s, "tab-x"),
     lambda c: c.pair(_pair_doc(c.prepared, "tab-y")), 401, "unauthenticated"),
    ("unknown pairing code", P, lambda c: c.pair(_pair_doc("ABCDE-FGHJK")), 401,
     "unauthenticated"),
    ("pairing code not a string", P, lambda c: c.pair(_pair_doc(12345)), 422,
     "validation_failed"),
    ("pairing with an unknown field", lambda s: _code_for(s, "tab-c"),
     lambda c: c.pair({**_pair_doc(c.prepared), "name": "x"}), 422, "validation_failed"),
    ("pairing with a bad public key", lambda s: _code_for(s, "tab-c"),
     lambda c: c.pair(_pair_doc(c.prepared, key="AAAA")), 422, "validation_failed"),
    ("pairing a bad device id", lambda s: _code_for(s, "tab-c"),
     lambda c: c.pair(_pair_doc(c.prepared, device="tab c")), 422, "validation_failed"),
    ("malformed pairing body", P, lambda c: c.system.edge.post(PAIR, data=b"{",
     headers={"Content-Type": "application/json"}), 400, "malformed_body"),
]  # fmt: skip


@pytest.fixture
async def system(tmp_path: Path) -> Any:
    async with edge_system(tmp_path, edge_overrides=LIMITS) as running:
        await running.create_items(["oi-1"], "assigned")
        await running.pull()
        yield running


@pytest.mark.parametrize(
    ("name", "prepare", "send", "status", "code"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT]
)
async def test_bad_input_is_refused_and_stores_nothing(
    system: EdgeSystem,
    name: str,
    prepare: Callable[[EdgeSystem], Awaitable[Any]],
    send: Callable[[Ctx], Awaitable[Any]],
    status: int,
    code: str,
) -> None:
    a, b = await system.pair_tablet("tab-a"), await system.pair_tablet("tab-b")
    prepared = await prepare(system)
    before = await system.edge_snapshot()
    resp = await send(Ctx(system, a, b, prepared))
    await assert_problem(resp, status, code)
    assert await system.edge_snapshot() == before


async def test_problem_in_msgpack_when_asked(system: EdgeSystem) -> None:
    tablet = await system.pair_tablet("tab-a")
    resp = await system.tablet_request(
        tablet, "POST", OUTREACH, push(good(tablet, note="x")), fmt="msgpack"
    )
    doc = await assert_problem(resp, 422, "validation_failed")
    assert "note" in doc["detail"]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_pairing(system: EdgeSystem, fmt: str) -> None:
    code = await system.issue_pairing_code("tab-a")
    key = KeyPair.generate()
    resp = await system.redeem(code.lower().replace("-", ""), "tab-a", key.public_key, fmt=fmt)
    assert resp.status == 201, await resp.read()
    assert await document(resp) == {
        "nodeId": "edge-01",
        "tenantId": "t1",
        "facilityIds": ["f-001"],
        "fp": fingerprint(system.node_key.public_key),
        # docs/discovery.md; bytes are base64 in JSON, raw bin in msgpack
        "publicKey": system.node_key.public_key_b64
        if fmt == "json"
        else system.node_key.public_key,
    }
    tablet = Tablet("tab-a", key)
    assert set(await system.tablet_view(tablet)) == {"oi-1"}
    async with system.edge_db.read() as conn:
        cursor = await conn.execute("SELECT code_hash, used_at FROM pairing_codes")
        [(code_hash, used_at)] = await cursor.fetchall()
    assert code not in code_hash and used_at is not None  # only the hash is kept


async def test_invalid_transition_is_answered_per_item_and_forwarded(system: EdgeSystem) -> None:
    tablet = await system.pair_tablet("tab-a")
    bad = tablet.transition("bad-1", "oi-1", "assigned", "completed")
    ok = tablet.transition("ok-1", "oi-1", "assigned", "in_progress")
    results = await system.push_transitions(tablet, [bad, ok])
    assert [(r["id"], r["status"], r.get("code"), r["state"]) for r in results] == [
        ("bad-1", "rejected", "fsm_invalid_transition", "assigned"),
        ("ok-1", "applied", None, "in_progress"),
    ]
    async with system.edge_db.read() as conn:
        cursor = await conn.execute(
            "SELECT transition_id, local_disposition, local_code, forward FROM transitions"
        )
        logged = sorted(tuple(r) for r in await cursor.fetchall())
    assert logged == [
        ("bad-1", "rejected", "fsm_invalid_transition", 1),
        ("ok-1", "applied", None, 1),
    ]
    forwarded, _ = await system.sync()
    assert forwarded.statuses == {"rejected": 1, "applied": 1}
    history = (await system.gateway_item("oi-1"))["history"]
    assert [(h["id"], h["disposition"], h["code"]) for h in history] == [
        ("bad-1", "rejected", "fsm_invalid_transition"),
        ("ok-1", "applied", None),
    ]
    [problem] = await system.edge_problems()
    assert (problem["id"], problem["code"]) == ("bad-1", "fsm_invalid_transition")


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_idempotent_replay(system: EdgeSystem, fmt: str) -> None:
    a, b = await system.pair_tablet("tab-a"), await system.pair_tablet("tab-b")
    doc = push(good(a))
    first = await system.tablet_request(
        a, "POST", OUTREACH, doc, fmt=fmt, headers={"Idempotency-Key": "k-1"}
    )
    assert first.status == 200 and "Idempotent-Replayed" not in first.headers
    original = await document(first)
    before = await system.edge_snapshot()
    system.edge_clock.advance(60)
    again = await system.tablet_request(
        a, "POST", OUTREACH, doc, fmt=fmt, headers={"Idempotency-Key": "k-1"}
    )
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert await document(again) == original
    assert await system.edge_snapshot() == before
    other = push(a.transition("t-2", "oi-1", "in_progress", "contacted"))
    mismatch = await system.tablet_request(
        a, "POST", OUTREACH, other, fmt=fmt, headers={"Idempotency-Key": "k-1"}
    )
    await assert_problem(mismatch, 422, "idempotency_key_mismatch")
    assert await system.edge_snapshot() == before
    # Keys belong to their device: another tablet's k-1 is a request of its own.
    mine = await system.tablet_request(
        b,
        "POST",
        ENCOUNTERS,
        {"encounters": [encounter("e-1")]},
        headers={"Idempotency-Key": "k-1"},
    )
    assert mine.status == 200 and "Idempotent-Replayed" not in mine.headers
    status = await system.edge_status()
    assert status["unsentTransitions"] == 1 and status["encounters"] == 1


async def test_encounter_resend_and_change(system: EdgeSystem) -> None:
    tablet = await system.pair_tablet("tab-a")
    assert await system.push_encounters(tablet, [encounter("e-1")]) == [
        {"id": "e-1", "status": "applied"}
    ]
    before = await system.edge_snapshot()
    assert await system.push_encounters(tablet, [encounter("e-1")], fmt="msgpack") == [
        {"id": "e-1", "status": "duplicate"}
    ]
    [changed] = await system.push_encounters(tablet, [encounter("e-1", kind="visit")])
    assert (changed["status"], changed["code"]) == ("rejected", "already_exists")
    assert await system.edge_snapshot() == before  # neither copy changed the stored one


# -- the command line, as real processes -------------------------------------------

CLI_TIMEOUT = 60


async def edgenode(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``edgenode ARGS`` without blocking the loop (the gateway serves from it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgenode.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    scan_output(err, f"edgenode {args[0]} stderr")  # its log; stdout is its answer
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def init_args(data_dir: Path, url: str = "http://127.0.0.1:9") -> list[str]:
    return [
        "init",
        "--data-dir",
        str(data_dir),
        "--node-id",
        "edge-9",
        "--tenant",
        "t1",
        "--facility",
        "f-001",
        "--facility",
        "f-002",
        "--gateway-url",
        url,
        "--time-zone",
        "Africa/Nairobi",
    ]


async def test_cli_init(tmp_path: Path) -> None:
    data = tmp_path / "node"
    rc, out, err = await edgenode(*init_args(data))
    assert rc == 0, err
    key_file = data / "node.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keypair = load_key(key_file)
    settings = load_edge_settings(data_dir=str(data), environ={})
    assert (settings.node_id, settings.tenant_id, settings.facility_ids) == (
        "edge-9",
        "t1",
        ["f-001", "f-002"],
    )
    assert (settings.gateway_url, settings.time_zone) == ("http://127.0.0.1:9", "Africa/Nairobi")
    assert settings.database_path.is_file()
    enroll = (
        "phs-gateway enroll-node --node-id edge-9 --tenant t1 --facility f-001 "
        f"--facility f-002 --public-key {keypair.public_key_b64}"
    )
    assert enroll in out and out.count(keypair.public_key_b64) == 1
    seed = key_file.read_text().strip()
    assert seed == base64.b64encode(keypair.seed).decode()
    assert seed not in out + err and seed not in (data / "edgenode.toml").read_text()

    rc, out2, err2 = await edgenode(*init_args(data, "http://elsewhere"))
    assert rc != 0 and "already holds a node" in err2
    assert load_key(key_file) == keypair  # the identity is kept
    assert load_edge_settings(data_dir=str(data), environ={}).gateway_url == "http://127.0.0.1:9"
    assert seed not in out2 + err2


async def test_cli_pair_report_sync_status_problems(tmp_path: Path) -> None:
    data = tmp_path / "node"
    rc, out, err = await edgenode(*init_args(data))
    assert rc == 0, err
    seed = (data / "node.key").read_text().strip()
    outputs = [out, err]
    settings = load_edge_settings(data_dir=str(data), environ={})
    # The gateway at real time: the commands sign with the real clock.
    async with edge_system(
        tmp_path,
        start=datetime.now(UTC),
        edge_settings=settings,
        node_key=load_key(data / "node.key"),
    ) as system:
        env = {"PHS_EDGE_GATEWAY_URL": system.gateway_url}

        pair = ["pair-device", "--data-dir", str(data), "--device-id", "tab-a"]
        rc, code, err = await edgenode(*pair)
        outputs += [code, err]
        assert rc == 0 and "single use" in err
        key = KeyPair.generate()
        resp = await system.redeem(code.strip(), "tab-a", key.public_key)
        assert resp.status == 201, await resp.read()
        tablet = Tablet("tab-a", key)
        # Three encounters of Monday 2025-03-10 in Nairobi (UTC+3), one on Sunday.
        await system.push_encounters(
            tablet,
            [
                encounter("e-1", occurredAt="2025-03-09T21:30:00.000Z"),  # 00:30 Monday
                encounter("e-2", kind="visit", occurredAt="2025-03-10T12:00:00.000Z"),
                encounter("e-3", patientRef=patient_ref(2), occurredAt="2025-03-10T20:59:00.000Z"),
                encounter("e-4", occurredAt="2025-03-09T20:59:00.000Z"),  # 23:59 Sunday
            ],
        )
        ghost = tablet.transition("ghost-1", "no-such-item", "assigned", "in_progress")
        [local] = await system.push_transitions(tablet, [ghost])
        assert local["code"] == "unknown_item"

        report = ["report", "--data-dir", str(data), "--facility", "f-001"]
        rc, out, err = await edgenode(*report, "--period", "2025-03-10")
        outputs += [out, err]
        assert rc == 0, err
        body = json.loads(out[out.index("{") :])
        metrics = {
            "patientCount": 2,
            "encounterCount": 3,
            "screening": {"due": 2, "done": 2, "rate": 1.0},
            "immunization": {"due": 0, "given": 0, "rate": None},
        }
        assert body["metrics"] == metrics and body["periodKey"] == "2025-03-10"
        again, early = await asyncio.gather(
            edgenode(*report, "--period", "2025-03-10"),
            edgenode(*report, "--period", "2999-W01"),
        )
        outputs += [*again[1:], *early[1:]]
        assert again[0] == 0 and "never regenerated" in again[1]
        assert json.loads(again[1][again[1].index("{") :]) == body
        assert early[0] != 0 and "complete" in early[2]  # a period that has not ended

        rc, out, err = await edgenode("sync", "--data-dir", str(data), env=env)
        outputs += [out, err]
        assert rc == 0, out + err
        assert "2 items" in out
        [stored] = await system.gateway_reports(facilityId="f-001")
        assert stored["metrics"] == metrics

        status_run, problems_run = await asyncio.gather(
            edgenode("status", "--data-dir", str(data)),
            edgenode("problems", "--data-dir", str(data)),
        )
        for rc, out, err in (status_run, problems_run):
            outputs += [out, err]
            assert rc == 0, err
        status = json.loads(status_run[1])
        assert (status["nodeId"], status["outboxDepth"], status["problems"]) == ("edge-9", 0, 1)
        assert status["lastForwardOk"] is not None and status["lastPullOk"] is not None
        assert "ghost-1" in problems_run[1] and "unknown_item" in problems_run[1]

        # The WAN is down: a clear message and a non-zero exit, nothing lost.
        await system.push_transitions(
            tablet, [tablet.transition("ghost-2", "no-such-item", "assigned", "in_progress")]
        )
        down = closed_url()
        rc, out, err = await edgenode(
            "sync", "--data-dir", str(data), env={"PHS_EDGE_GATEWAY_URL": down}
        )
        outputs += [out, err]
        assert rc == 1
        assert f"gateway {down} is unreachable" in err and "1 record(s) wait" in err
        rc, out, err = await edgenode("status", "--data-dir", str(data))
        assert json.loads(out)["outboxDepth"] == 1
    assert all(seed not in text for text in outputs)  # the private key is never printed


async def test_concurrent_retries_with_one_key_write_once(system: EdgeSystem) -> None:
    """A tablet retrying a push while the first try still runs: every copy is
    answered 200 (the first, then replays) or 409 in flight, never a 500, and
    the records are stored once. Bounded stress: 80 keys, 6 copies each,
    started a fraction of a millisecond apart."""
    tablet = await system.pair_tablet("tab-a")
    items = [f"c-{n}" for n in range(80)]
    await system.create_items(items, "assigned", bulk=True)
    await system.pull()
    seen: Counter[tuple[int, str | None]] = Counter()
    for n, item in enumerate(items):
        doc = push(tablet.transition(f"t-{n}", item, "assigned", "in_progress"))

        async def send(delay: float, key: str = f"k-{n}", doc: Any = doc) -> tuple[int, str | None]:
            await asyncio.sleep(delay)
            resp = await system.tablet_request(
                tablet, "POST", OUTREACH, doc, headers={"Idempotency-Key": key}
            )
            return resp.status, resp.headers.get("Idempotent-Replayed")

        seen.update(await asyncio.gather(*(send(0.0005 * i) for i in range(6))))
    assert set(seen) <= {(200, None), (200, "true"), (409, None)}, seen
    assert seen[(200, None)] == len(items)
    async with system.edge_db.read() as conn:
        cursor = await conn.execute(
            "SELECT count(*), count(DISTINCT transition_id) FROM transitions"
        )
        assert tuple(await cursor.fetchone() or ()) == (len(items), len(items))


async def test_gateway_refuses_a_seq_beyond_64_bits_too(system: EdgeSystem) -> None:
    """The shared transition reader bounds ``seq`` for both services: a batch
    carrying one is a 422 naming the field, not a failed insert (500)."""
    batch = {
        "v": 1,
        "batchId": "b-1",
        "nodeId": "edge-01",
        "createdAt": "2026-11-25T12:00:00.000Z",
        "items": [
            {"kind": "outreach.transition", **good(Tablet("tab-a"), seq=2**64 - 1)},
        ],
    }
    body = encode(batch, "msgpack")
    path = f"{PREFIX}/sync/batches"
    ts = int(system.gateway_clock().timestamp())
    resp = await system.gateway.client.post(
        path,
        data=body,
        headers={
            "Authorization": authorization_header(
                system.node_key, "edge-01", "POST", path, body, ts
            ),
            "Content-Type": "application/msgpack",
            "Idempotency-Key": "b-1",
        },
    )
    doc = await assert_problem(resp, 422, "validation_failed")
    assert doc["path"] == "/items/0/seq"

"""Power loss: the edge outbox and the gateway store after simulated power cuts (issue 8).

The services run for real, as subprocesses (``edgenode run``, ``phs-gateway
serve``) with their own aiosqlite / SQLAlchemy code and PRAGMAs, under an
LD_PRELOAD shim (tests/powercut/powercut.c, built here with gcc) that logs
every write, truncate, sync, creation and removal of their SQLite files and
the moment each HTTP answer leaves the process. Simulated clients send real
signed requests, one at a time, and note which were acknowledged (the edge:
tablet pushes of transitions and encounters answered 200; the gateway:
outreach items answered 201, node batches answered 200, facility reports
answered 201). A separate connection checkpoints at random moments, so cuts
also land in checkpoints and WAL restarts.

After the run the log is replayed (tests/powercut/replay.py) and cut at
chosen moments: just after an answer left, just before and after a sync,
and at random. Each cut rebuilds the directory a disk would hold, as
SQLite's own crash tests do: a *clean* cut reverts every file to its last
synced image; a *torn* cut also lets each unsynced 512-byte sector land,
vanish or land as garbage; names not yet made durable by a directory sync
may be lost either way. The stock sqlite3 module opens each image (running
SQLite's recovery), and the test requires ``PRAGMA integrity_check`` = ok and
every record acknowledged before the cut present. Replaying the whole log
must rebuild the files the run left byte for byte, or the shim missed a write.

CI: 300 cuts (half over the edge, half over the gateway). A longer run:
``PHS_POWERCUT_CUTS=3000 .venv/bin/pytest -q -s tests/test_power_loss.py``
(the workload grows with it). The seed is printed; ``PHS_TEST_SEED`` reruns it
(timing still varies, so a rerun is similar, not equal).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from canaries import patient_ref
from chaos_support import (
    FACILITY,
    LOOPBACK,
    NODE_ID,
    PREFIX,
    TENANT,
    Plan,
    Service,
    Tablet,
    create_token,
    edge_service,
    free_port,
    gateway_history,
    gateway_service,
    import_items,
    init_edge,
    outreach_plan,
    run_cli,
    wait_for_items,
)
from edgenode.gateway_client import GatewayClient
from edgenode.keys import load_key
from powercut.cuts import Ack, CutSummary, Shim, followed_files, power_cuts, start_checkpointer
from shared.periods import parse_period
from shared.reports import FacilityReport, encode_report_payload
from shared.signing import KeyPair
from shared.values import format_timestamp
from shared.wire import TRANSITION_KIND

SHIM_SOURCE = Path(__file__).parent / "powercut" / "powercut.c"
CUTS = int(os.environ.get("PHS_POWERCUT_CUTS", "300"))  # in total, over both services
ITEMS = max(60, CUTS // 4)  # three transitions each
PUSH_SIZE = 5  # transitions per tablet push / node batch: many answers to cut after
RUN_LIMIT = 120.0 + CUTS / 10  # seconds for one service's run (bounded)

EDGE_ENV = {
    "PHS_EDGE_BATCH_MAX_ITEMS": "20",
    "PHS_EDGE_FORWARD_INTERVAL_SECONDS": "1",
    "PHS_EDGE_PULL_INTERVAL_SECONDS": "1",
    "PHS_EDGE_RETRY_BASE_SECONDS": "1",
    "PHS_EDGE_RETRY_MAX_SECONDS": "2",
    "PHS_EDGE_REPORT_SCHEDULE": "false",
}


@pytest.fixture(scope="session")
def powercut_library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shim, compiled for this machine."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("the power-cut shim is C and no gcc or cc is installed (apt-get install gcc)")
    out = tmp_path_factory.mktemp("powercut") / "powercut.so"
    flags = ["-shared", "-fPIC", "-O2", "-Wall", "-Werror"]
    built = subprocess.run(
        [compiler, *flags, "-o", str(out), str(SHIM_SOURCE), "-ldl", "-lpthread"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    yield out


def seeded() -> tuple[int, random.Random]:
    seed = int(os.environ.get("PHS_TEST_SEED", random.randrange(2**32)))
    print(f"power-loss seed {seed} (PHS_TEST_SEED={seed} to rerun it)")
    return seed, random.Random(seed)


def report(service: str, summary: CutSummary, acks: int, extra: str) -> None:
    print(f"{service}: {acks} acknowledged requests, {extra}; {summary.describe()}")
    for line in (summary.corrupt + summary.lost)[:20]:
        print(f"  {line}")


# --------------------------------------------------------------------------- the edge


async def pair(
    session: aiohttp.ClientSession, tablet: Tablet, edge_url: str, edge_dir: Path, shim: Shim
) -> None:
    """Pair through ``edgenode pair-device`` (under the shim: it writes the store) and the API."""
    code = await asyncio.to_thread(
        run_cli,
        "edgenode.cli",
        "pair-device",
        "--device-id",
        tablet.device_id,
        "--data-dir",
        str(edge_dir),
        env=shim.env(),
    )
    async with session.post(
        f"{edge_url}{PREFIX}/devices/pair",
        json={
            "pairingCode": code,
            "deviceId": tablet.device_id,
            "publicKey": tablet.keypair.public_key_b64,
        },
    ) as resp:
        assert resp.status == 201, await resp.text()


async def push_encounters(
    session: aiohttp.ClientSession, tablet: Tablet, edge_url: str, n: int
) -> list[str]:
    """Five encounters in one signed push; their ids once the edge answered 200."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    encounters: list[dict[str, Any]] = [
        {
            "id": f"enc-{n:04d}-{k}",
            "patientRef": patient_ref((n * 5 + k) % 97),
            "facilityId": FACILITY,
            "occurredAt": format_timestamp(at + timedelta(minutes=k)),
            "kind": ("visit", "screening", "immunization")[k % 3],
            "screeningDue": k % 2 == 0,
            "immunizationDue": k % 3 == 0,
        }
        for k in range(5)
    ]
    path = f"{PREFIX}/sync/encounters"
    body = json.dumps({"encounters": encounters}).encode()
    headers = {**tablet.headers("POST", path, body), "Idempotency-Key": f"enc-push-{n:05d}"}
    async with session.post(edge_url + path, data=body, headers=headers) as resp:
        doc = await resp.json(content_type=None)
        assert resp.status == 200, doc
    assert {r["status"] for r in doc["results"]} == {"applied"}, doc
    return [str(e["id"]) for e in encounters]


async def test_edge_outbox_survives_power_cuts(tmp_path: Path, powercut_library: Path) -> None:
    seed, rng = seeded()
    gateway_dir, edge_dir = tmp_path / "gateway", tmp_path / "edge"
    gateway_port, edge_port = free_port(), free_port()
    gateway_url = f"http://{LOOPBACK}:{gateway_port}"
    edge_url = f"http://{LOOPBACK}:{edge_port}"
    admin = create_token(gateway_dir)
    init_edge(edge_dir, gateway_dir, gateway_url)
    shim = Shim(powercut_library, tmp_path / "edge.powercut", edge_dir)
    baseline = followed_files(edge_dir)  # closed by `edgenode init`: the starting disk

    gateway = gateway_service(gateway_dir, gateway_port, tmp_path / "gateway.log")
    edge = edge_service(edge_dir, edge_port, tmp_path / "edge.log", {**EDGE_ENV, **shim.env()})
    tablets = {d: Tablet(d) for d in ("tab-1", "tab-2")}
    plan = outreach_plan(ITEMS, list(tablets), PUSH_SIZE, window=20, choose=rng.choice)
    acks: list[Ack] = []
    rejected = 0  # transitions the edge answered other than applied
    checkpointer: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            gateway.start()
            await gateway.wait_ready(session, f"{gateway_url}/readyz")
            await import_items(session, gateway_url, admin, plan.item_ids)
            edge.start()
            await edge.wait_ready(session, f"{edge_url}/healthz")
            for tablet in tablets.values():
                await pair(session, tablet, edge_url, edge_dir, shim)
            await wait_for_items(session, tablets["tab-1"], edge_url, ITEMS)
            checkpointer = start_checkpointer(edge_dir / "edgenode.db", shim, seed, RUN_LIMIT)
            for n, push in enumerate(plan.pushes):
                assert time.monotonic() - started < RUN_LIMIT, "the edge run is too slow"
                tablet = tablets[push.device_id]
                position = shim.position()
                status, doc = await tablet.push(session, edge_url, push.key, push.transitions)
                assert status == 200, doc
                # Every push is field work in order, so the edge applies all of it
                # (checked after the cuts are reported). A pull racing the forwarder
                # once made it answer fsm_gap here: docs/reliability.md, "Fixes
                # found by the harnesses", 1.
                rejected += sum(r["status"] != "applied" for r in doc["results"])
                ids = tuple(t["id"] for t in push.transitions)
                assert [r["id"] for r in doc["results"]] == list(ids), doc
                acks.append(Ack(position, 200, "transitions", "transition_id", ids))
                if n % 3 == 0:
                    position = shim.position()
                    ids = tuple(await push_encounters(session, tablet, edge_url, n))
                    acks.append(Ack(position, 200, "encounters", "id", ids))
                await asyncio.sleep(rng.uniform(0, 0.04))  # let the forwarder interleave
            await asyncio.sleep(2.5)  # the outbox forwards what is left
            await edge.kill()
            checkpointer.kill()
            checkpointer.wait(timeout=10)
            await gateway.stop()
    finally:
        if checkpointer is not None and checkpointer.poll() is None:
            checkpointer.kill()
            checkpointer.wait(timeout=10)
        edge.ensure_stopped()
        gateway.ensure_stopped()
    run_seconds = time.monotonic() - started

    forwarded = sum(len(rows) for rows in gateway_history(gateway_dir / "gateway.db").values())
    summary = power_cuts(
        shim.log,
        baseline,
        followed_files(edge_dir),
        acks,
        "edgenode.db",
        CUTS // 2,
        rng,
        tmp_path / "cuts",
    )
    report(
        "edge",
        summary,
        len(acks),
        f"{forwarded} of {plan.transition_count} transitions forwarded ({rejected} answered "
        f"rejected by the edge), a {run_seconds:.1f} s run",
    )
    assert forwarded > 0, "the outbox never forwarded: the cuts did not exercise it"
    assert summary.cuts == CUTS // 2
    assert not summary.corrupt, summary.corrupt[:10]
    assert not summary.lost, summary.lost[:10]
    assert rejected == 0, f"the edge answered {rejected} valid transitions other than applied"


# --------------------------------------------------------------------------- the gateway


def signed_report(day: date, patients: int) -> tuple[bytes, str]:
    """A daily facility report of the node (payload bytes) and its period key."""
    period = parse_period("daily", day.isoformat())
    metrics = {
        "patientCount": patients,
        "encounterCount": patients + 3,
        "screening": {"due": 4, "done": 3, "rate": 0.75},
        "immunization": {"due": 2, "given": 1, "rate": 0.5},
    }
    report = FacilityReport(TENANT, FACILITY, NODE_ID, period, datetime.now(UTC), metrics)
    return encode_report_payload(report), period.key


async def create_items(
    session: aiohttp.ClientSession,
    gateway_url: str,
    token: str,
    item_ids: Sequence[str],
    shim: Shim,
) -> list[Ack]:
    acks: list[Ack] = []
    for item in item_ids:
        position = shim.position()
        async with session.post(
            f"{gateway_url}{PREFIX}/outreach-items",
            json={
                "id": item,
                "facilityId": FACILITY,
                "state": "assigned",
                "patientRef": patient_ref(item),
            },
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 201, await resp.text()
        acks.append(Ack(position, 201, "outreach_items", "id", (item,)))
    return acks


async def send_batches(
    client: GatewayClient,
    node_key: KeyPair,
    plan: Plan,
    shim: Shim,
    rng: random.Random,
    deadline: float,
) -> list[Ack]:
    """Each push as a node batch (200), and every fourth batch a daily report (201)."""
    acks: list[Ack] = []
    first_day = date.today() - timedelta(days=len(plan.pushes) + 2)
    for n, push in enumerate(plan.pushes):
        assert time.monotonic() < deadline, "the gateway run is too slow"
        items: list[dict[str, Any]] = [{"kind": TRANSITION_KIND, **t} for t in push.transitions]
        position = shim.position()
        created = format_timestamp(datetime.now(UTC))
        answer = await client.post_batch(f"batch-{n:05d}", created, items)
        assert answer.status == 200, answer.document
        assert {r["status"] for r in answer.document["results"]} == {"applied"}, answer.document
        ids = tuple(t["id"] for t in push.transitions)
        acks.append(Ack(position, 200, "outreach_transitions", "transition_id", ids))
        if n % 4 == 0:
            payload, key = signed_report(first_day + timedelta(days=n), 10 + n)
            position = shim.position()
            answer = await client.post_report(payload, node_key.sign(payload), f"rep-{key}")
            assert answer.status == 201, answer.document
            acks.append(Ack(position, 201, "facility_reports", "period_key", (key,)))
        await asyncio.sleep(rng.uniform(0, 0.02))
    return acks


@dataclass(frozen=True)
class GatewayRun:
    shim: Shim
    baseline: dict[str, bytes]  # the store before the run
    final: dict[str, bytes]  # the store as the run left it
    acks: list[Ack]
    seconds: float


async def run_gateway(
    tmp_path: Path,
    library: Path,
    seed: int,
    rng: random.Random,
    items: int,
    skip_syncs: bool = False,
) -> GatewayRun:
    """``phs-gateway serve`` under the shim, fed items, node batches and reports."""
    gateway_dir, edge_dir = tmp_path / "gateway", tmp_path / "edge"
    gateway_port = free_port()
    gateway_url = f"http://{LOOPBACK}:{gateway_port}"
    admin = create_token(gateway_dir)
    init_edge(edge_dir, gateway_dir, gateway_url)  # an enrolled node whose key signs below
    node_key = load_key(edge_dir / "node.key")
    shim = Shim(library, tmp_path / "gateway.powercut", gateway_dir, skip_syncs)
    baseline = followed_files(gateway_dir)  # closed by the CLI: the starting disk
    env = {"PHS_GATEWAY_LOG_LEVEL": "INFO", **shim.env()}  # the default: scanned for canaries
    gateway = Service(
        "gateway",
        ["gateway.cli", "serve", "--data-dir", str(gateway_dir), "--port", str(gateway_port)],
        tmp_path / "gateway.log",
        env,
    )
    plan = outreach_plan(items, ["tab-1", "tab-2"], PUSH_SIZE, window=20, choose=rng.choice)
    checkpointer: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            gateway.start()
            await gateway.wait_ready(session, f"{gateway_url}/readyz")
            checkpointer = start_checkpointer(gateway_dir / "gateway.db", shim, seed, RUN_LIMIT)
            acks = await create_items(session, gateway_url, admin, plan.item_ids, shim)
            client = GatewayClient(session, gateway_url, NODE_ID, node_key)
            acks += await send_batches(client, node_key, plan, shim, rng, started + RUN_LIMIT)
            await gateway.kill()
            checkpointer.kill()
            checkpointer.wait(timeout=10)
    finally:
        if checkpointer is not None and checkpointer.poll() is None:
            checkpointer.kill()
            checkpointer.wait(timeout=10)
        gateway.ensure_stopped()
    seconds = time.monotonic() - started
    return GatewayRun(shim, baseline, followed_files(gateway_dir), acks, seconds)


async def test_gateway_store_survives_power_cuts(tmp_path: Path, powercut_library: Path) -> None:
    seed, rng = seeded()
    run = await run_gateway(tmp_path, powercut_library, seed, rng, ITEMS)
    summary = power_cuts(
        run.shim.log,
        run.baseline,
        run.final,
        run.acks,
        "gateway.db",
        CUTS - CUTS // 2,
        rng,
        tmp_path / "cuts",
    )
    report("gateway", summary, len(run.acks), f"a {run.seconds:.1f} s run")
    assert summary.cuts == CUTS - CUTS // 2
    assert not summary.corrupt, summary.corrupt[:10]
    assert not summary.lost, summary.lost[:10]


async def test_a_store_that_never_syncs_is_caught(tmp_path: Path, powercut_library: Path) -> None:
    """The negative control: the same gateway with its syncs turned into no-ops
    (as ``synchronous=OFF`` or a disk that lies would) must lose acknowledged
    records at the cuts, or the simulator proves nothing."""
    seed, rng = seeded()
    run = await run_gateway(tmp_path, powercut_library, seed, rng, 20, skip_syncs=True)
    summary = power_cuts(
        run.shim.log, run.baseline, run.final, run.acks, "gateway.db", 20, rng, tmp_path / "cuts"
    )
    report("gateway without syncs", summary, len(run.acks), f"a {run.seconds:.1f} s run")
    # Every clean cut after an answer left is the store before the run: all lost.
    assert summary.clean_losing == summary.clean_after_answers > 0, summary.describe()

"""Edge node benchmark: memory, weekly report time, and store-and-forward throughput.

Three figures, measured in one run on this machine, each against its goal:

* **(a) memory** — a real ``edgenode run`` subprocess (SQLite on disk, its
  default settings but a 1 s forward interval) next to a real ``phs-gateway
  serve``; the edge is enrolled with the command ``edgenode init`` prints,
  pulls the imported items, and 50 tablets are paired (each its own Ed25519
  key, one-time codes redeemed over HTTP). VmRSS and VmHWM are read from
  ``/proc/<pid>/status`` after the edge has been idle a few seconds, and VmRSS
  is sampled every 50 ms while the tablets push (part c). Goal: idle RSS
  under 60 MB.
* **(b) weekly report** — a fresh ``EdgeDatabase`` filled with 1,000,000
  encounters of one facility in one ISO week (bulk ``executemany``, not
  timed), then ``generate_report`` timed as ``edgenode report`` runs it (one
  write transaction: reduce, sign, store, commit). Every metric is checked
  against totals counted while the rows were made. Goal: under 2 s.
* **(c) throughput** — rounds on each side, each on items of its own. First
  the gateway alone (no edge running): a node posts signed msgpack batches of
  500 straight to ``POST …/sync/batches`` (``bench/gateway_ingest.py``'s
  senders), three worker steps per item. Then through the edge: the 50
  tablets push the same number of transitions of the same shape, 50 per push,
  concurrently to ``POST …/sync/outreach`` (pre-built, pre-signed, each with
  an Idempotency-Key); the clock runs from the first push until the gateway
  holds every transition and the edge's outbox is empty. After every round
  the gateway's SQLite is checked: each transition logged once and applied,
  every item in its final state. Goal: the edge's median rate at least half
  the gateway's median rate.

Setup is not timed: tokens, enrollment, items (an item row and a change-feed
entry each, as ``create_item`` writes them, in bulk), pairing codes (issued
by the edge's own ``issue_code``, as ``edgenode pair-device`` does).

    .venv/bin/python bench/edge_node.py [--transitions 30000] [--rounds 5]
        [--tablets 50] [--push-size 50] [--senders 1] [--encounters 1000000]
        [--patients 200000] [--dir /var/tmp] [--keep] [--profile OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import gateway_ingest as gw  # bench/gateway_ingest.py: the gateway's own ingest, reused
import msgpack

from edgenode.pairing import issue_code
from edgenode.reports import generate_report, period_totals
from edgenode.store.database import EdgeDatabase
from gateway.db.database import Database
from gateway.db.schema import changes, outreach_items
from gateway.outreach import item_to_wire
from shared.periods import period_from_key, utc_bounds, zone
from shared.reports import MetricTotals, metrics_from_totals
from shared.signing import KeyPair, authorization_header
from shared.values import format_timestamp

PREFIX = gw.PREFIX
PUSH_PATH = f"{PREFIX}/sync/outreach"
TENANT = gw.TENANT
DIRECT_NODE, DIRECT_FACILITY = gw.NODE_ID, gw.FACILITY  # posts batches straight to the gateway
EDGE_NODE, EDGE_FACILITY = "edge-bench-01", "f-edge"
TIME_ZONE = "Africa/Nairobi"
# Every item walks these three field steps, one per phase, from "assigned".
STEPS = (("assigned", "in_progress"), ("in_progress", "contacted"), ("contacted", "completed"))
FIRST, FINAL = STEPS[0][0], STEPS[-1][1]

GOAL_IDLE_MB = 60.0
GOAL_REPORT_S = 2.0
GOAL_RATIO = 0.5

RSS_SAMPLE_S = 0.05
WAIT_S = 60.0  # any one wait for a service
DRAIN_DEADLINE_S = 150.0  # the tablet pushes plus the edge's forwarding


def say(message: str) -> None:
    print(message, flush=True)


# --- the machine and the processes -------------------------------------------


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (None: this one), in seconds."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: dict[str, int | None]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{name} {after[name] - before[name]:.1f} s" for name in before)


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a live process, in MB (from /proc/<pid>/status)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) / 1024
    return out


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
    with open("/proc/meminfo") as info:
        mem_gb = int(info.readline().split()[1]) / 1024 / 1024
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def module_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PHS_GATEWAY_LOG_LEVEL": "WARNING"},
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def edge_process(data_dir: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``edgenode run`` on loopback with its defaults, but a 1 s forward interval."""
    command = [sys.executable, "-m", "edgenode.cli", "run", "--data-dir", str(data_dir)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PHS_EDGE_FORWARD_INTERVAL_SECONDS": "1"},
        )
    try:
        yield proc
    finally:
        gw.stop(proc)


async def wait_http(
    session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {WAIT_S:.0f} s")


def query_one(db_path: Path, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
    """One row from a service's SQLite file, read-only beside the running service."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(sql, params).fetchone()
    finally:
        conn.close()
    return tuple(row)


# --- (b) the weekly report ----------------------------------------------------


@dataclass
class ReportResult:
    seconds: float
    warm_seconds: list[float]
    metrics: dict[str, Any]
    db_mb: float


def fill_encounters(
    path: Path, count: int, patients: int, facility: str, period_key: str
) -> MetricTotals:
    """Bulk-insert ``count`` encounters of one facility in one week; their totals."""
    tz = zone(TIME_ZONE)
    start, end = utc_bounds(period_from_key(period_key), tz)
    step = 10  # seconds between the timestamps encounters may take
    stamps = [
        format_timestamp(start + timedelta(seconds=s))
        for s in range(0, int((end - start).total_seconds()), step)
    ]
    rng = random.Random(2026)
    kinds = ("visit", "screening", "immunization")
    received = format_timestamp(end)
    flags: dict[int, list[int]] = {}  # patient -> [screening due, screened, imm. due, immunized]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    chunk = 100_000
    for first in range(0, count, chunk):
        rows = []
        for n in range(first, min(count, first + chunk)):
            patient = rng.randrange(patients)
            kind = kinds[rng.randrange(3)]
            s_due, i_due = rng.random() < 0.4, rng.random() < 0.3
            f = flags.setdefault(patient, [0, 0, 0, 0])
            f[0] |= s_due
            f[1] |= kind == "screening"
            f[2] |= i_due
            f[3] |= kind == "immunization"
            rows.append(
                (
                    f"enc-{n:07d}",
                    f"p-{patient:07d}",
                    facility,
                    stamps[rng.randrange(len(stamps))],
                    kind,
                    int(s_due),
                    int(i_due),
                    "tab-1",
                    received,
                )
            )
        conn.executemany(
            "INSERT INTO encounters (id, patient_ref, facility_id, occurred_at, kind, "
            "screening_due, immunization_due, device_id, received_at) VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return MetricTotals(
        patients=len(flags),
        encounters=count,
        screening_due=sum(f[0] for f in flags.values()),
        screening_done=sum(f[0] & f[1] for f in flags.values()),
        immunization_due=sum(f[2] for f in flags.values()),
        immunization_given=sum(f[2] & f[3] for f in flags.values()),
    )


async def time_report(path: Path, facility: str, period_key: str) -> tuple[float, Any, list[float]]:
    tz = zone(TIME_ZONE)
    period = period_from_key(period_key)
    db = await EdgeDatabase(path).open()
    try:
        began = time.perf_counter()
        async with db.write() as conn:  # as ``edgenode report`` does
            stored = await generate_report(
                conn,
                tenant_id=TENANT,
                node_id=EDGE_NODE,
                keypair=KeyPair.generate(),
                facility_id=facility,
                period=period,
                tz=tz,
                now=datetime.now(UTC),
            )
        seconds = time.perf_counter() - began
        warm = []
        for _ in range(2):  # the reduction alone again, SQLite's cache now warm
            began = time.perf_counter()
            async with db.read() as conn:
                await period_totals(conn, facility, period, tz)
            warm.append(time.perf_counter() - began)
    finally:
        await db.close()
    if not stored.created:
        raise RuntimeError("the report existed already; the timing is not of a generation")
    return seconds, json.loads(stored.payload), warm


def run_report(work_dir: Path, count: int, patients: int) -> ReportResult:
    path = work_dir / "report" / "edgenode.db"
    facility, period_key = "f-busy", "2026-W10"

    async def create() -> None:
        await (await EdgeDatabase(path).open()).close()  # the schema, by the migrations

    asyncio.run(create())
    began = time.perf_counter()
    expected = fill_encounters(path, count, patients, facility, period_key)
    size = sum(p.stat().st_size for p in path.parent.iterdir()) / 1e6
    say(
        f"(b) setup: {count:,} encounters of {expected.patients:,} patients in week "
        f"{period_key} bulk-inserted in {time.perf_counter() - began:.1f} s ({size:.0f} MB)"
    )
    seconds, payload, warm = asyncio.run(time_report(path, facility, period_key))
    metrics = payload["metrics"]
    if metrics != metrics_from_totals(expected):
        raise RuntimeError(f"report metrics {metrics} != expected {metrics_from_totals(expected)}")
    if metrics["encounterCount"] != count:
        raise RuntimeError(f"encounterCount {metrics['encounterCount']} != {count}")
    return ReportResult(seconds, warm, metrics, size)


# --- (a) and (c): gateway, edge node, tablets ---------------------------------


@dataclass(frozen=True)
class Tablet:
    device_id: str
    keypair: KeyPair

    def items(self, round_no: int, count: int) -> list[str]:
        return [f"ei{round_no}-{self.device_id}-{i:05d}" for i in range(count)]


@dataclass
class Round:
    """One measurement of each side, on items of its own."""

    direct_s: float = 0.0
    direct_cpu: str = ""
    direct_latencies: list[float] = field(default_factory=list)
    edge_s: float = 0.0
    pushed_s: float = 0.0  # until the edge had answered every push
    forwarded_by_then: int = 0  # edge transitions at the gateway when the pushes ended
    edge_cpu: str = ""
    push_latencies: list[float] = field(default_factory=list)
    peak_rss: float = 0.0
    rss_samples: int = 0


@dataclass
class FlowResult:
    transitions: int  # per round, each side
    items: int  # per round, each side
    pushes: int  # per round
    senders: int
    rounds: list[Round]
    idle: dict[str, float]
    load_hwm: float
    samples: int
    edge_batches: int


def make_tablets(count: int) -> list[Tablet]:
    return [Tablet(f"tab-{t:02d}", KeyPair.generate()) for t in range(count)]


def sign_pushes(
    tablet: Tablet, items: list[str], push_size: int, start: datetime
) -> list[tuple[bytes, dict[str, str]]]:
    """A tablet's pushes, phase by phase (every item's first step, then the
    second...), ``push_size`` transitions each, signed now (setup, not timed)."""
    ts = int(time.time())
    steps = []
    for phase, (frm, to) in enumerate(STEPS):
        at = format_timestamp(start + timedelta(seconds=phase + 1))
        steps += [
            {
                "id": f"tr-{item}-{phase}",
                "itemId": item,
                "from": frm,
                "to": to,
                "occurredAt": at,
                "deviceId": tablet.device_id,
                "actorId": f"chw-{tablet.device_id}",
                "seq": phase,
            }
            for item in items
        ]
    pushes = []
    for first in range(0, len(steps), push_size):
        body = json.dumps({"transitions": steps[first : first + push_size]}).encode()
        headers = {
            "Authorization": authorization_header(
                tablet.keypair, tablet.device_id, "POST", PUSH_PATH, body, ts
            ),
            "Content-Type": "application/json",
            "Idempotency-Key": uuid.uuid4().hex,
        }
        pushes.append((body, headers))
    return pushes


def direct_plan(round_no: int, items: int, senders: int, start: datetime) -> gw.Plan:
    """The same work as the tablets', for a node posting batches itself: items in
    one lane per sender, each lane sending every item's first step, then the
    second, then the third (gateway_ingest's shape, with our three steps)."""
    item_ids = [f"di{round_no}-{i:06d}" for i in range(items)]
    lanes: list[list[list[gw.Step]]] = []
    for lane in range(senders):
        mine = item_ids[lane::senders]
        batches: list[list[gw.Step]] = []
        for phase, (frm, to) in enumerate(STEPS):
            at = format_timestamp(start + timedelta(seconds=phase + 1))
            steps = [
                gw.Step(f"tr-{item}-{phase}", item, frm, to, at, f"tab-d{lane}", "worker", phase)
                for item in mine
            ]
            batches += [steps[i : i + 500] for i in range(0, len(steps), 500)]
        lanes.append(batches)
    return gw.Plan(item_ids, lanes)


async def import_items(gateway_dir: Path, facility_items: dict[str, list[str]]) -> None:
    """Items in state ``assigned``, written as ``create_item`` (what ``POST
    …/outreach-items`` calls) writes them, an item row and its change-feed
    entry each, but in bulk: setup, not timed (item by item took ~2 ms each)."""
    db = Database(f"sqlite+aiosqlite:///{(gateway_dir / 'gateway.db').resolve()}")
    stamp = format_timestamp(datetime.now(UTC))
    rows = [
        {
            "id": item_id,
            "tenant_id": TENANT,
            "facility_id": facility,
            "state": FIRST,
            "assignee_id": None,
            "patient_ref": None,
            "cohort_id": None,
            "due_date": None,
            "version": 1,
            "created_at": stamp,
            "updated_at": stamp,
        }
        for facility, ids in facility_items.items()
        for item_id in ids
    ]
    feed = [
        {
            "tenant_id": TENANT,
            "facility_id": row["facility_id"],
            "aggregate": "outreach_item",
            "entity_id": row["id"],
            "op": "upsert",
            "data": item_to_wire(row),
            "committed_at": stamp,
        }
        for row in rows
    ]
    try:
        async with db.write() as conn:
            await conn.execute(outreach_items.insert(), rows)
            await conn.execute(changes.insert(), feed)
    finally:
        await db.close()


def set_up_gateway(gateway_dir: Path, edge_dir: Path, gateway_url: str, direct: KeyPair) -> str:
    """Tokens, ``edgenode init`` and the enrollment it prints, the direct node."""
    token = module_cli(
        "gateway.cli", "create-token", "--tenant", TENANT, "--role", "admin",
        "--data-dir", str(gateway_dir),
    ).splitlines()[0]  # fmt: skip
    printed = module_cli(
        "edgenode.cli", "init", "--node-id", EDGE_NODE, "--tenant", TENANT,
        "--facility", EDGE_FACILITY, "--gateway-url", gateway_url,
        "--time-zone", TIME_ZONE, "--data-dir", str(edge_dir),
    )  # fmt: skip
    enroll = next(line for line in printed.splitlines() if "enroll-node" in line)
    module_cli("gateway.cli", *shlex.split(enroll)[1:], "--data-dir", str(gateway_dir))
    module_cli(
        "gateway.cli", "enroll-node", "--node-id", DIRECT_NODE, "--tenant", TENANT,
        "--facility", DIRECT_FACILITY, "--public-key", direct.public_key_b64,
        "--data-dir", str(gateway_dir),
    )  # fmt: skip
    return token


async def pair_tablets(
    session: aiohttp.ClientSession, edge_url: str, edge_db: Path, tablets: list[Tablet]
) -> None:
    """One-time codes issued as ``edgenode pair-device`` does (the edge's own
    store code, beside the running edge), each redeemed over HTTP."""
    db = await EdgeDatabase(edge_db).open()
    try:
        async with db.write() as conn:
            codes = [
                (await issue_code(conn, t.device_id, datetime.now(UTC), 900))[0] for t in tablets
            ]
    finally:
        await db.close()
    for tablet, code in zip(tablets, codes, strict=True):
        doc = {
            "pairingCode": code,
            "deviceId": tablet.device_id,
            "publicKey": tablet.keypair.public_key_b64,
        }
        async with session.post(f"{edge_url}{PREFIX}/devices/pair", json=doc) as resp:
            if resp.status != 201:
                raise RuntimeError(f"pairing {tablet.device_id}: {await resp.text()}")


class RssSampler:
    """Samples a process's VmRSS every 50 ms while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        for _ in range(int(DRAIN_DEADLINE_S * 2 / RSS_SAMPLE_S)):  # bounded; cancelled sooner
            self.peak = max(self.peak, proc_memory(self.pid)["VmRSS"])
            self.samples += 1
            await asyncio.sleep(RSS_SAMPLE_S)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, proc_memory(self.pid)["VmRSS"])


async def push_all(
    session: aiohttp.ClientSession,
    edge_url: str,
    pushes: dict[str, list[tuple[bytes, dict[str, str]]]],
) -> list[float]:
    """Every tablet sends its pushes in order, all tablets at once; every
    transition must be answered ``applied`` by the edge."""
    latencies: list[float] = []

    async def tablet_run(device_id: str, mine: list[tuple[bytes, dict[str, str]]]) -> None:
        for body, headers in mine:
            began = time.perf_counter()
            async with session.post(edge_url + PUSH_PATH, data=body, headers=headers) as resp:
                answer = await resp.json(content_type=None)
            latencies.append(time.perf_counter() - began)
            if resp.status != 200:
                raise RuntimeError(f"{device_id}: {resp.status} {answer}")
            refused = [r for r in answer["results"] if r["status"] != "applied"]
            if refused:
                raise RuntimeError(f"{device_id}: edge did not apply {refused[:1]}")

    await asyncio.gather(*(tablet_run(d, mine) for d, mine in pushes.items()))
    return latencies


async def at_gateway(gateway_db: Path, source: str) -> int:
    (count,) = await asyncio.to_thread(
        query_one,
        gateway_db,
        "SELECT count(*) FROM outreach_transitions WHERE source = ?",
        (source,),
    )
    return int(count)


async def wait_drained(gateway_db: Path, edge_db: Path, transitions: int) -> None:
    """Until the gateway holds ``transitions`` from the edge and its outbox is empty."""
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    while time.monotonic() < deadline:
        if await at_gateway(gateway_db, f"node:{EDGE_NODE}") >= transitions:
            (unsent,) = await asyncio.to_thread(
                query_one,
                edge_db,
                "SELECT count(*) FROM transitions WHERE forward = 1 AND gateway_status IS NULL",
            )
            if unsent == 0:
                return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the edge did not drain {transitions} transitions in {DRAIN_DEADLINE_S} s")


def verify_gateway(
    gateway_db: Path, source: str, facility: str, transitions: int, items: int
) -> None:
    """Each transition logged once and applied; each item completed, version 4."""
    logged, applied, distinct = query_one(
        gateway_db,
        "SELECT count(*), sum(disposition = 'applied'), count(DISTINCT transition_id) "
        "FROM outreach_transitions WHERE source = ?",
        (source,),
    )
    (done,) = query_one(
        gateway_db,
        "SELECT count(*) FROM outreach_items WHERE facility_id = ? AND state = ? AND version = ?",
        (facility, FINAL, 1 + len(STEPS)),
    )
    got = (logged, applied, distinct, done)
    if got != (transitions, transitions, transitions, items):
        raise RuntimeError(
            f"gateway holds for {source}: logged {logged}, applied {applied}, distinct "
            f"{distinct}, items {FINAL} {done}; expected {transitions} transitions, {items} items"
        )


def verify_edge(edge_db: Path, transitions: int) -> int:
    """Every transition applied locally and answered applied by the gateway; batches sent."""
    logged, applied = query_one(
        edge_db,
        "SELECT count(*), sum(local_disposition = 'applied' AND gateway_status = 'applied') "
        "FROM transitions",
    )
    (batches,) = query_one(
        edge_db, "SELECT count(*) FROM outbox_batches WHERE stage = 'done' AND item_count > 0"
    )
    if (logged, applied) != (transitions, transitions):
        raise RuntimeError(f"edge holds {logged} transitions, {applied} applied at both ends")
    return int(batches)


@dataclass(frozen=True)
class Setup:
    work_dir: Path
    tablets: list[Tablet]
    items_each: int  # per tablet and round
    plans: list[gw.Plan]  # the gateway-alone rounds
    direct: KeyPair
    push_size: int
    idle_seconds: float
    gateway_url: str
    edge_url: str
    profile: str | None

    @property
    def items(self) -> int:
        return self.items_each * len(self.tablets)

    @property
    def transitions(self) -> int:
        return self.items * len(STEPS)


def sign_direct(plan: gw.Plan, keypair: KeyPair, round_no: int) -> list[list[gw.Request]]:
    """gateway_ingest's signed batches, with batch ids (Idempotency-Keys) of this round."""
    ts, created = int(time.time()), format_timestamp(datetime.now(UTC))
    lanes: list[list[gw.Request]] = []
    for lane_no, lane in enumerate(plan.lanes):
        requests = []
        for batch_no, batch in enumerate(lane):
            key = f"r{round_no}-{gw.batch_id(lane_no, batch_no)}"
            doc = {
                "v": 1,
                "batchId": key,
                "nodeId": DIRECT_NODE,
                "createdAt": created,
                "items": [step.to_wire() for step in batch],
            }
            body = msgpack.packb(doc, use_bin_type=True)
            headers = {
                "Authorization": authorization_header(
                    keypair, DIRECT_NODE, "POST", gw.BATCH_PATH, body, ts
                ),
                "Content-Type": "application/msgpack",
                "Accept": "application/msgpack",
                "Idempotency-Key": key,
            }
            requests.append(gw.Request(key, body, headers, len(batch)))
        lanes.append(requests)
    return lanes


async def gateway_alone(
    session: aiohttp.ClientSession, setup: Setup, pid: int, round_no: int, result: Round
) -> None:
    gateway_db = setup.work_dir / "gateway" / "gateway.db"
    plan = setup.plans[round_no]
    lanes = sign_direct(plan, setup.direct, round_no)
    cpu = cpu_of({"gateway": pid, "bench": None})
    result.direct_s, result.direct_latencies = await gw.send_lanes(
        session, setup.gateway_url, lanes
    )
    result.direct_cpu = cpu_delta(cpu, cpu_of({"gateway": pid, "bench": None}))
    done = round_no + 1
    await asyncio.to_thread(
        verify_gateway,
        gateway_db,
        f"node:{DIRECT_NODE}",
        DIRECT_FACILITY,
        done * plan.transitions,
        done * len(plan.item_ids),
    )
    say(
        f"(c) round {done} gateway alone: {plan.transitions:,} transitions in "
        f"{len(plan.batches)} batches by {len(lanes)} sender(s): {result.direct_s:.2f} s "
        f"(verified applied); CPU {result.direct_cpu}"
    )


async def through_edge(
    session: aiohttp.ClientSession,
    setup: Setup,
    pids: dict[str, int | None],
    round_no: int,
    result: Round,
) -> None:
    gateway_db = setup.work_dir / "gateway" / "gateway.db"
    edge_db = setup.work_dir / "edge" / "edgenode.db"
    start = datetime.now(UTC) - timedelta(minutes=1)
    pushes = {
        t.device_id: sign_pushes(t, t.items(round_no, setup.items_each), setup.push_size, start)
        for t in setup.tablets
    }
    edge_pid = pids["edge"]
    assert edge_pid is not None
    with RssSampler(edge_pid) as sampler, gw.profiled(edge_pid, setup.profile):
        cpu = cpu_of(pids)
        began = time.perf_counter()
        result.push_latencies = await push_all(session, setup.edge_url, pushes)
        result.pushed_s = time.perf_counter() - began
        before = round_no * setup.transitions
        result.forwarded_by_then = await at_gateway(gateway_db, f"node:{EDGE_NODE}") - before
        done = round_no + 1
        await wait_drained(gateway_db, edge_db, done * setup.transitions)
        result.edge_s = time.perf_counter() - began
        result.edge_cpu = cpu_delta(cpu, cpu_of(pids))
    result.peak_rss, result.rss_samples = sampler.peak, sampler.samples
    await asyncio.to_thread(
        verify_gateway,
        gateway_db,
        f"node:{EDGE_NODE}",
        EDGE_FACILITY,
        done * setup.transitions,
        done * setup.items,
    )
    say(
        f"(c) round {done} through the edge: {setup.transitions:,} transitions in "
        f"{sum(len(p) for p in pushes.values())} pushes by {len(setup.tablets)} tablets: "
        f"all answered after {result.pushed_s:.2f} s ({result.forwarded_by_then:,} at the "
        f"gateway by then), drained after {result.edge_s:.2f} s (verified applied); "
        f"CPU {result.edge_cpu}; peak RSS {result.peak_rss:.1f} MB"
    )


async def drive(setup: Setup, gateway_proc: subprocess.Popen[bytes]) -> FlowResult:
    edge_dir = setup.work_dir / "edge"
    edge_db = edge_dir / "edgenode.db"
    rounds = [Round() for _ in setup.plans]
    connector = aiohttp.TCPConnector(limit=len(setup.tablets) + 8)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await wait_http(session, f"{setup.gateway_url}/readyz", gateway_proc)

        # The gateway's own ingest first, with no edge running beside it.
        for n, result in enumerate(rounds):
            await gateway_alone(session, setup, gateway_proc.pid, n, result)

        port = int(setup.edge_url.rsplit(":", 1)[1])
        with edge_process(edge_dir, port, setup.work_dir / "edge.log") as edge:
            await wait_http(session, f"{setup.edge_url}/healthz", edge)
            items = setup.items * len(rounds)
            deadline = time.monotonic() + WAIT_S
            while True:  # the edge pulls the imported items at start
                (pulled,) = await asyncio.to_thread(
                    query_one, edge_db, "SELECT count(*) FROM items WHERE state = ?", (FIRST,)
                )
                if pulled >= items:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the edge pulled {pulled} of {items} items")
                await asyncio.sleep(0.2)
            await pair_tablets(session, setup.edge_url, edge_db, setup.tablets)
            say(
                f"(a) edge pid {edge.pid}: pulled {items:,} items, "
                f"{len(setup.tablets)} tablets paired"
            )

            # (a) idle: nothing but the edge's own loops for a few seconds.
            await asyncio.sleep(setup.idle_seconds)
            idle = proc_memory(edge.pid)
            say(
                f"(a) idle {setup.idle_seconds:.0f} s: VmRSS {idle['VmRSS']:.1f} MB, "
                f"VmHWM {idle['VmHWM']:.1f} MB"
            )

            # (c) through the edge, while (a) samples its memory.
            pids: dict[str, int | None] = {
                "edge": edge.pid,
                "gateway": gateway_proc.pid,
                "bench": None,
            }
            for n, result in enumerate(rounds):
                await through_edge(session, setup, pids, n, result)
            hwm = proc_memory(edge.pid)["VmHWM"]
        batches = await asyncio.to_thread(verify_edge, edge_db, setup.transitions * len(rounds))
    return FlowResult(
        transitions=setup.transitions,
        items=setup.items,
        pushes=math.ceil(setup.items_each * len(STEPS) / setup.push_size) * len(setup.tablets),
        senders=len(setup.plans[0].lanes),
        rounds=rounds,
        idle=idle,
        load_hwm=hwm,
        samples=sum(r.rss_samples for r in rounds),
        edge_batches=batches,
    )


def run_flow(
    work_dir: Path,
    transitions: int,
    tablet_count: int,
    push_size: int,
    senders: int,
    rounds: int,
    idle_seconds: float,
    profile: str | None,
) -> FlowResult:
    items_each = max(1, math.ceil(transitions / len(STEPS) / tablet_count))
    tablets = make_tablets(tablet_count)
    start = datetime.now(UTC) - timedelta(minutes=1)
    plans = [direct_plan(n, items_each * tablet_count, senders, start) for n in range(rounds)]
    gateway_dir, edge_dir = work_dir / "gateway", work_dir / "edge"
    gateway_port, edge_port = gw.free_port(), gw.free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    direct = KeyPair.generate()
    setup = Setup(
        work_dir,
        tablets,
        items_each,
        plans,
        direct,
        push_size,
        idle_seconds,
        gateway_url,
        f"http://127.0.0.1:{edge_port}",
        profile,
    )
    began = time.perf_counter()
    set_up_gateway(gateway_dir, edge_dir, gateway_url, direct)
    edge_items = [i for n in range(rounds) for t in tablets for i in t.items(n, items_each)]
    direct_items = [i for plan in plans for i in plan.item_ids]
    asyncio.run(
        import_items(gateway_dir, {EDGE_FACILITY: edge_items, DIRECT_FACILITY: direct_items})
    )
    say(
        f"setup: tokens, edgenode init + enrollment, {len(edge_items) + len(direct_items):,} "
        f"items imported in {time.perf_counter() - began:.1f} s"
    )
    with gw.gateway_process(gateway_dir, gateway_port) as gateway_proc:
        return asyncio.run(drive(setup, gateway_proc))


# --- main ---------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--transitions",
        type=int,
        default=30_000,
        help="transitions per round through the edge, and as many straight to the gateway "
        "(rounded up to whole items of 3 steps per tablet; default 30000)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of (c) on each side; medians (default 5)"
    )
    parser.add_argument("--tablets", type=int, default=50, help="concurrent tablets (default 50)")
    parser.add_argument(
        "--push-size", type=int, default=50, help="transitions per tablet push (default 50)"
    )
    parser.add_argument(
        "--senders",
        type=int,
        default=1,
        help="concurrent senders of the gateway-alone figure (default 1, as gateway_ingest)",
    )
    parser.add_argument("--encounters", type=int, default=1_000_000, help="encounters in the week")
    parser.add_argument("--patients", type=int, default=200_000, help="distinct patients")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle time before (a)")
    parser.add_argument(
        "--dir", default="/var/tmp", help="where the SQLite files go; must be a real disk"
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    parser.add_argument(
        "--profile",
        metavar="OUT",
        help="sample the edge with py-spy during each edge round of (c) into OUT (the last "
        "round's is kept; .svg flamegraph, .json speedscope, else collapsed stacks); "
        "slows it down",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.transitions <= 300_000:
        parser.error("--transitions must be in 1..300000")
    if not 1 <= args.rounds <= 9:
        parser.error("--rounds must be in 1..9")
    if not 1 <= args.tablets <= 200:
        parser.error("--tablets must be in 1..200")
    if not 1 <= args.push_size <= 5000:
        parser.error("--push-size must be in 1..5000 (the edge's push limit)")
    if not 1 <= args.senders <= 16:
        parser.error("--senders must be in 1..16")
    if not 1 <= args.patients <= args.encounters <= 5_000_000:
        parser.error("need 1 <= --patients <= --encounters <= 5000000")
    if not 1 <= args.idle_seconds <= 60:
        parser.error("--idle-seconds must be in 1..60")
    fs_type = gw.filesystem_of(Path(args.dir))
    if fs_type in {"tmpfs", "ramfs"}:
        parser.error(f"--dir {args.dir} is on {fs_type}; the benchmark needs a real disk")

    work_dir = Path(tempfile.mkdtemp(prefix="phs-edge-bench-", dir=args.dir))
    say(f"machine: {machine()}")
    say(f"files in {work_dir} ({fs_type})")
    run_began = time.perf_counter()
    try:
        report = run_report(work_dir, args.encounters, args.patients)
        say(f"(b) generate_report: {report.seconds:.2f} s, metrics {json.dumps(report.metrics)}")
        flow = run_flow(
            work_dir,
            args.transitions,
            args.tablets,
            args.push_size,
            args.senders,
            args.rounds,
            args.idle_seconds,
            args.profile,
        )
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    total = time.perf_counter() - run_began

    n = flow.transitions
    edge_rates = [n / r.edge_s for r in flow.rounds]
    direct_rates = [n / r.direct_s for r in flow.rounds]
    edge_rate, direct_rate = statistics.median(edge_rates), statistics.median(direct_rates)
    ratio = edge_rate / direct_rate
    idle_ok = flow.idle["VmRSS"] < GOAL_IDLE_MB
    report_ok = report.seconds < GOAL_REPORT_S
    ratio_ok = ratio >= GOAL_RATIO
    p = gw.percentile
    pushes = [x for r in flow.rounds for x in r.push_latencies]
    batches = [x for r in flow.rounds for x in r.direct_latencies]

    def rates(values: list[float]) -> str:
        return ", ".join(f"{v:,.0f}" for v in values)

    say("")
    say("=== edge node benchmark ===")
    say(
        f"(a) idle RSS          {flow.idle['VmRSS']:8.1f} MB   goal < {GOAL_IDLE_MB:.0f} MB  "
        f"{verdict(idle_ok)}   (VmHWM since start {flow.idle['VmHWM']:.1f} MB)"
    )
    say(
        f"    RSS under load    {max(r.peak_rss for r in flow.rounds):8.1f} MB   peak of "
        f"{flow.samples} samples while {args.tablets} tablets pushed and the edge forwarded "
        f"(VmHWM {flow.load_hwm:.1f} MB)"
    )
    say(
        f"(b) weekly report     {report.seconds:8.2f} s    goal < {GOAL_REPORT_S:.0f} s    "
        f"{verdict(report_ok)}   ({report.metrics['encounterCount']:,} encounters, "
        f"{report.metrics['patientCount']:,} patients, metrics verified; reduction again "
        f"with a warm cache {', '.join(f'{s:.2f}' for s in report.warm_seconds)} s)"
    )
    say(
        f"(c) through the edge  {edge_rate:8,.0f} transitions/s  median of {len(flow.rounds)} "
        f"rounds ({rates(edge_rates)}) of {n:,} transitions in {flow.pushes} pushes"
    )
    say(
        f"    gateway alone     {direct_rate:8,.0f} transitions/s  median of {len(flow.rounds)} "
        f"rounds ({rates(direct_rates)}), {flow.senders} sender(s), batches of 500"
    )
    say(f"    ratio             {ratio:8.3f}        goal >= {GOAL_RATIO}     {verdict(ratio_ok)}")
    say(
        f"    tablet pushes     {statistics.median(n / r.pushed_s for r in flow.rounds):8,.0f} "
        "transitions/s  median, until the edge had answered every push (the rest is forwarding)"
    )
    say(
        f"    push latency p50 {p(pushes, 0.5) * 1000:.0f} ms, "
        f"p95 {p(pushes, 0.95) * 1000:.0f} ms; gateway-alone batch latency "
        f"p50 {p(batches, 0.5) * 1000:.0f} ms; {flow.edge_batches} batches forwarded by the edge"
    )
    say(f"whole run: {total:.0f} s")
    return 0 if idle_ok and report_ok and ratio_ok else 1


if __name__ == "__main__":
    sys.exit(main())

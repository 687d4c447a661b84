"""Gateway ingest benchmark: transitions per second through ``POST …/sync/batches``.

Two figures from the same run, on the same disk, with the same SQLite pragmas
(WAL, ``synchronous=FULL``):

* **gateway** — a real ``phs-gateway serve`` subprocess on a SQLite file,
  driven over loopback by signed msgpack batches (default 500 transitions
  each). Every transition is a valid FSM step on a distinct item of its
  batch, so each one is really applied: one log row, one item update and one
  change-feed row, plus the batch's idempotency record.
* **raw** — Python's ``sqlite3`` ``executemany`` of exactly those rows into a
  fresh database of the gateway's schema, one ``BEGIN IMMEDIATE`` transaction
  per batch, rows built before the clock starts: what the disk and SQLite
  allow, with no HTTP, parsing, signatures, FSM or idempotency. Median of
  three runs.

Setup (tokens, enrollment, creating the items through the admin API, building
and signing the batches) is not timed. Every answer must say ``applied`` for
every transition, and at the end the gateway's database and a few items read
over HTTP must show every transition applied and every item at its end.
Besides throughput and batch latency it prints the CPU time per batch of the
gateway process and of the raw run, which a busy machine disturbs far less.

    .venv/bin/python bench/gateway_ingest.py [--transitions N] [--batch-size 500]
        [--senders S] [--dir DIR] [--keep] [--profile OUT.svg]

docs/performance.md has the method, the figures and what the profile shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import sqlalchemy as sa

from gateway.db.schema import metadata
from shared.signing import KeyPair, authorization_header
from shared.values import format_timestamp

PREFIX = "/api/v1/population-health"
BATCH_PATH = f"{PREFIX}/sync/batches"
TENANT = "t-bench"
FACILITY = "f-bench"
NODE_ID = "edge-bench"
# Each item walks this path, one step per phase; a phase sends every item once.
# (from, to, role): the edge supervisor assigns, the field worker does the rest.
PHASES = (
    ("pending", "assigned", "supervisor"),
    ("assigned", "in_progress", "worker"),
    ("in_progress", "contacted", "worker"),
    ("contacted", "completed", "worker"),
)
INITIAL_STATE = PHASES[0][0]
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON")
SETUP_CONCURRENCY = 8
RAW_RUNS = 3  # the raw figure is the median of these (it takes well under a second)
DEADLINE_SECONDS = 110  # the whole run must stay under two minutes


# --- the workload ------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    transition_id: str
    item_id: str
    from_state: str
    to_state: str
    occurred_at: str
    device_id: str
    role: str
    seq: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": "outreach.transition",
            "id": self.transition_id,
            "itemId": self.item_id,
            "from": self.from_state,
            "to": self.to_state,
            "occurredAt": self.occurred_at,
            "deviceId": self.device_id,
            "actorId": "worker-1",
            "role": self.role,
            "seq": self.seq,
        }


@dataclass(frozen=True)
class Plan:
    item_ids: list[str]
    # lanes[s]: sender s's batches, in the order it must send them.
    lanes: list[list[list[Step]]]

    @property
    def batches(self) -> list[tuple[str, list[Step]]]:
        """(batch id, steps) of every batch."""
        return [
            (batch_id(lane_no, batch_no), batch)
            for lane_no, lane in enumerate(self.lanes)
            for batch_no, batch in enumerate(lane)
        ]

    @property
    def transitions(self) -> int:
        return sum(len(batch) for lane in self.lanes for batch in lane)


def batch_id(lane_no: int, batch_no: int) -> str:
    return f"batch-{lane_no}-{batch_no}"


def make_plan(transitions: int, batch_size: int, senders: int, start: datetime) -> Plan:
    """Items split into one disjoint lane per sender; each lane sends all its
    items' first steps, then their second, then their third, so a step never
    overtakes the one before it and no batch touches an item twice."""
    per_lane = max(1, math.ceil(transitions / len(PHASES) / senders))
    item_ids = [f"item-{i:06d}" for i in range(per_lane * senders)]
    lanes: list[list[list[Step]]] = []
    for lane in range(senders):
        items = item_ids[lane * per_lane : (lane + 1) * per_lane]
        batches: list[list[Step]] = []
        for phase, (frm, to, role) in enumerate(PHASES):
            at = format_timestamp(start + timedelta(seconds=phase + 1))
            steps = [
                Step(f"tr-{item}-{phase}", item, frm, to, at, f"tab-{lane}", role, phase)
                for item in items
            ]
            batches += [steps[i : i + batch_size] for i in range(0, len(steps), batch_size)]
        lanes.append(batches)
    return Plan(item_ids, lanes)


# --- the gateway process -----------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_env() -> dict[str, str]:
    # WARNING: no access log line per request (aiohttp logs them at INFO).
    return {**os.environ, "PHS_GATEWAY_LOG_LEVEL": "WARNING"}


def cli(data_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        env=gateway_env(),
        timeout=60,
    )
    return done.stdout.strip()


async def wait_ready(
    session: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]
) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            async with session.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("gateway did not become ready in 10 s")


async def create_items(
    session: aiohttp.ClientSession, base: str, token: str, item_ids: Sequence[str]
) -> None:
    queue = list(reversed(item_ids))

    async def worker() -> None:
        while queue:
            item_id = queue.pop()
            doc = {"id": item_id, "facilityId": FACILITY, "state": INITIAL_STATE}
            async with session.post(
                f"{base}{PREFIX}/outreach-items",
                json=doc,
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"creating {item_id}: {resp.status} {await resp.text()}")

    await asyncio.gather(*(worker() for _ in range(SETUP_CONCURRENCY)))


@dataclass(frozen=True)
class Request:
    batch_id: str
    body: bytes
    headers: dict[str, str]
    size: int


def sign_batches(plan: Plan, keypair: KeyPair, created_at: str) -> list[list[Request]]:
    ts = int(time.time())
    lanes: list[list[Request]] = []
    for lane_no, lane in enumerate(plan.lanes):
        requests = []
        for batch_no, batch in enumerate(lane):
            key = batch_id(lane_no, batch_no)
            doc = {
                "v": 1,
                "batchId": key,
                "nodeId": NODE_ID,
                "createdAt": created_at,
                "items": [step.to_wire() for step in batch],
            }
            body = msgpack.packb(doc, use_bin_type=True)
            headers = {
                "Authorization": authorization_header(
                    keypair, NODE_ID, "POST", BATCH_PATH, body, ts
                ),
                "Content-Type": "application/msgpack",
                "Accept": "application/msgpack",
                "Idempotency-Key": key,
            }
            requests.append(Request(key, body, headers, len(batch)))
        lanes.append(requests)
    return lanes


async def send_lanes(
    session: aiohttp.ClientSession, base: str, lanes: list[list[Request]]
) -> tuple[float, list[float]]:
    """Post every lane's batches in order, lanes concurrently; (seconds, latencies)."""
    latencies: list[float] = []

    async def sender(requests: list[Request]) -> None:
        for req in requests:
            began = time.perf_counter()
            async with session.post(f"{base}{BATCH_PATH}", data=req.body, headers=req.headers) as r:
                answer = await r.read()
            latencies.append(time.perf_counter() - began)
            if r.status != 200:
                raise RuntimeError(f"{req.batch_id}: {r.status} {answer[:500]!r}")
            results = msgpack.unpackb(answer, raw=False)["results"]
            refused = [x for x in results if x["status"] != "applied"]
            if len(results) != req.size or refused:
                raise RuntimeError(f"{req.batch_id}: not all applied, e.g. {refused[:1]}")

    began = time.perf_counter()
    await asyncio.gather(*(sender(lane) for lane in lanes))
    return time.perf_counter() - began, latencies


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class GatewayRun:
    seconds: float
    latencies: list[float]
    cpu_seconds: float  # the gateway process's, during the timed part


def verify_gateway_store(db_path: Path, plan: Plan) -> None:
    """Every transition really recorded as applied; every item at the end of its path."""
    final = PHASES[-1][1]
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        applied = conn.execute(
            "SELECT count(*) FROM outreach_transitions "
            "WHERE tenant_id = ? AND disposition = 'applied'",
            (TENANT,),
        ).fetchone()[0]
        done = conn.execute(
            "SELECT count(*) FROM outreach_items WHERE tenant_id = ? AND state = ? AND version = ?",
            (TENANT, final, 1 + len(PHASES)),
        ).fetchone()[0]
        feed = conn.execute(
            "SELECT count(*) FROM changes WHERE tenant_id = ?", (TENANT,)
        ).fetchone()[0]
        batches = conn.execute(
            "SELECT count(*) FROM idempotency_keys WHERE principal = ? AND state = 'done'",
            (f"node:{NODE_ID}",),
        ).fetchone()[0]
    expected = {
        "applied transitions": (applied, plan.transitions),
        f"items {final}": (done, len(plan.item_ids)),
        "change-feed rows": (feed, len(plan.item_ids) + plan.transitions),
        "stored batch answers": (batches, len(plan.batches)),
    }
    wrong = {name: got for name, got in expected.items() if got[0] != got[1]}
    if wrong:
        raise RuntimeError(f"gateway store does not hold the work: {wrong} (got, expected)")


async def verify_over_http(
    session: aiohttp.ClientSession, base: str, token: str, plan: Plan
) -> None:
    """Spot-check a few items through the API: final state, full applied history."""
    headers = {"Authorization": f"Bearer {token}"}
    for item_id in plan.item_ids[:: max(1, len(plan.item_ids) // 5)]:
        async with session.get(f"{base}{PREFIX}/outreach-items/{item_id}", headers=headers) as r:
            doc = await r.json()
        history = [(h["from"], h["to"], h["disposition"]) for h in doc["history"]]
        if doc["state"] != PHASES[-1][1] or history != [(f, t, "applied") for f, t, _ in PHASES]:
            raise RuntimeError(f"{item_id} over HTTP: state {doc['state']}, history {history}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a child we started: ``sig``, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def gateway_process(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``phs-gateway serve`` on loopback, stopped on exit."""
    command = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data_dir)]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=gateway_env(),
        stdout=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def profiled(pid: int, output: str | None) -> Iterator[None]:
    """Sample the gateway with py-spy (all threads) while the block runs."""
    if output is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    formats = {".svg": "flamegraph", ".json": "speedscope"}
    fmt = formats.get(Path(output).suffix, "raw")
    command = [py_spy, "record", "--pid", str(pid), "--threads", "--rate", "200"]
    proc = subprocess.Popen(
        [*command, "--format", fmt, "--output", output], stdout=subprocess.DEVNULL
    )
    time.sleep(1.0)  # let it attach before the clock starts
    try:
        yield
    finally:
        stop(proc, signal.SIGINT)  # SIGINT: py-spy writes its output and exits


async def drive_gateway(
    base: str,
    proc: subprocess.Popen[bytes],
    token: str,
    keypair: KeyPair,
    plan: Plan,
    start: datetime,
    profile: str | None,
) -> GatewayRun:
    """Set up the items, then time the batches."""
    connector = aiohttp.TCPConnector(limit=max(SETUP_CONCURRENCY, len(plan.lanes)))
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_ready(session, base, proc)
        began = time.perf_counter()
        await create_items(session, base, token, plan.item_ids)
        print(
            f"setup: {len(plan.item_ids)} items created through the admin API "
            f"in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        lanes = sign_batches(plan, keypair, format_timestamp(start))
        with profiled(proc.pid, profile):
            cpu_before = process_cpu_seconds(proc.pid)
            elapsed, latencies = await send_lanes(session, base, lanes)
            cpu = process_cpu_seconds(proc.pid) - cpu_before
        await verify_over_http(session, base, token, plan)
    return GatewayRun(elapsed, latencies, cpu)


def run_gateway(work_dir: Path, plan: Plan, start: datetime, profile: str | None) -> GatewayRun:
    data_dir = work_dir / "gateway"
    token = cli(data_dir, "create-token", "--tenant", TENANT, "--role", "admin").splitlines()[0]
    keypair = KeyPair.generate()
    enroll = ["--node-id", NODE_ID, "--tenant", TENANT, "--facility", FACILITY]
    cli(data_dir, "enroll-node", *enroll, "--public-key", keypair.public_key_b64)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with gateway_process(data_dir, port) as proc:
        run = asyncio.run(
            asyncio.wait_for(
                drive_gateway(base, proc, token, keypair, plan, start, profile),
                DEADLINE_SECONDS,
            )
        )
    verify_gateway_store(data_dir / "gateway.db", plan)
    return run


# --- the raw reference -------------------------------------------------------

_INSERT_LOG = (
    "INSERT INTO outreach_transitions (tenant_id, item_id, transition_id, from_state, to_state, "
    "occurred_at, received_at, device_id, actor_id, role, device_seq, source, batch_id, "
    "disposition, code, clock_adjusted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_ITEM = (
    "UPDATE outreach_items SET state = ?, version = ?, updated_at = ?, last_transition_id = ?, "
    "last_from_state = ?, last_to_state = ?, last_occurred_at = ?, last_device_id = ?, "
    "last_role = ? WHERE id = ?"
)
_INSERT_CHANGE = (
    "INSERT INTO changes (tenant_id, facility_id, aggregate, entity_id, op, data, committed_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _raw_rows(
    plan: Plan, stamp: str
) -> list[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Per batch: the log rows, item updates and change rows the gateway writes."""
    out = []
    for key, batch in plan.batches:
        logs, updates, feed = [], [], []
        for step in batch:
            version = step.seq + 2
            logs.append(
                (
                    *(TENANT, step.item_id, step.transition_id, step.from_state, step.to_state),
                    *(step.occurred_at, stamp, step.device_id, "worker-1", step.role, step.seq),
                    *(f"node:{NODE_ID}", key, "applied", None, False),
                )
            )
            updates.append(
                (
                    *(step.to_state, version, stamp, step.transition_id, step.from_state),
                    *(step.to_state, step.occurred_at, step.device_id, step.role, step.item_id),
                )
            )
            data = {
                "id": step.item_id,
                "facilityId": FACILITY,
                "state": step.to_state,
                "assigneeId": None,
                "patientRef": None,
                "cohortId": None,
                "dueDate": None,
                "version": version,
                "updatedAt": stamp,
            }
            feed.append(
                (TENANT, FACILITY, "outreach_item", step.item_id, "upsert", json.dumps(data), stamp)
            )
        out.append((logs, updates, feed))
    return out


def run_raw(path: Path, plan: Plan, start: datetime) -> tuple[float, float]:
    """Seconds (wall, CPU) for sqlite3 to write the gateway's rows, a transaction a batch."""
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)  # the gateway's tables and indexes
    engine.dispose()
    stamp = format_timestamp(start)
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO outreach_items (id, tenant_id, facility_id, state, version, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, 1, ?, ?)",
        [(item, TENANT, FACILITY, INITIAL_STATE, stamp, stamp) for item in plan.item_ids],
    )
    conn.execute("COMMIT")
    batches = _raw_rows(plan, stamp)
    began, cpu_began = time.perf_counter(), time.process_time()
    for logs, updates, feed in batches:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT_LOG, logs)
        conn.executemany(_UPDATE_ITEM, updates)
        conn.executemany(_INSERT_CHANGE, feed)
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    final = conn.execute(
        "SELECT count(*) FROM outreach_items WHERE state = ? AND version = ?",
        (PHASES[-1][1], 1 + len(PHASES)),
    ).fetchone()[0]
    conn.close()
    if final != len(plan.item_ids):
        raise RuntimeError(f"raw reference: {final} of {len(plan.item_ids)} items finished")
    return elapsed, cpu


# --- main --------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def machine() -> str:
    """nproc, CPU model, Python and SQLite versions, for the record."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = sys.version.split()[0]
    return f"{os.cpu_count()} CPUs, {model}, Python {python}, SQLite {sqlite3.sqlite_version}"


def filesystem_of(path: Path) -> str:
    """The mount type under ``path`` (from /proc/mounts), to refuse a RAM disk."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _dev, mount_point, fs_type, *_ = line.split()
                if resolved.startswith(mount_point) and len(mount_point) > len(best):
                    best, kind = mount_point, fs_type
    except OSError:
        pass
    return kind


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--transitions",
        type=int,
        default=20_000,
        help="transitions to send (rounded up to whole items of 4 steps; default 20000)",
    )
    parser.add_argument("--batch-size", type=int, default=500, help="transitions per batch")
    parser.add_argument(
        "--senders",
        type=int,
        default=1,
        help="concurrent HTTP senders, each with its own items (default 1: the gateway "
        "applies one batch at a time, so more only queue; see docs/performance.md)",
    )
    parser.add_argument(
        "--dir", default="/var/tmp", help="where the SQLite files go; must be a real disk"
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    parser.add_argument(
        "--profile",
        metavar="OUT",
        help="sample the gateway with py-spy during the timed part into OUT "
        "(.svg flamegraph, .json speedscope, else collapsed stacks); slows it down",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.transitions <= 300_000:
        parser.error("--transitions must be in 1..300000")
    if not 1 <= args.batch_size <= 5000:
        parser.error("--batch-size must be in 1..5000 (the gateway's batch limit)")
    if not 1 <= args.senders <= 16:
        parser.error("--senders must be in 1..16")
    fs_type = filesystem_of(Path(args.dir))
    if fs_type in {"tmpfs", "ramfs"}:
        parser.error(f"--dir {args.dir} is on {fs_type}; the benchmark needs a real disk")

    work_dir = Path(tempfile.mkdtemp(prefix="phs-bench-", dir=args.dir))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    plan = make_plan(args.transitions, args.batch_size, args.senders, start)
    print(
        f"{plan.transitions} transitions on {len(plan.item_ids)} items, "
        f"{len(plan.batches)} batches of <= {args.batch_size}, {args.senders} sender(s); "
        f"SQLite files in {work_dir} ({fs_type})",
        flush=True,
    )
    try:
        run_began = time.perf_counter()
        gateway = run_gateway(work_dir, plan, start, args.profile)
        raw_runs = [run_raw(work_dir / f"raw-{n}.db", plan, start) for n in range(RAW_RUNS)]
        total = time.perf_counter() - run_began
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    n = plan.transitions
    raw_s = statistics.median(wall for wall, _ in raw_runs)
    raw_cpu = statistics.median(cpu for _, cpu in raw_runs)
    gateway_rate, raw_rate = n / gateway.seconds, n / raw_s
    lat = gateway.latencies
    print(f"gateway: {gateway_rate:10,.0f} transitions/s  ({gateway.seconds:.2f} s, all applied)")
    print(
        f"raw:     {raw_rate:10,.0f} transitions/s  ({raw_s:.2f} s, median of "
        f"{', '.join(f'{n / wall:,.0f}' for wall, _ in raw_runs)})"
    )
    print(f"ratio:   {gateway_rate / raw_rate:10.3f}  (goal >= 0.25)")
    print(
        f"batch latency: p50 {percentile(lat, 0.50) * 1000:.1f} ms, "
        f"p95 {percentile(lat, 0.95) * 1000:.1f} ms, "
        f"mean {statistics.fmean(lat) * 1000:.1f} ms over {len(lat)} batches"
    )
    # CPU time hardly depends on what else the machine runs: a steadier view.
    print(
        f"CPU per batch: gateway process {gateway.cpu_seconds / len(lat) * 1000:.1f} ms, "
        f"raw {raw_cpu / len(lat) * 1000:.1f} ms"
    )
    print(f"whole run: {total:.1f} s; {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

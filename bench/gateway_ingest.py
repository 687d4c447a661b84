"""Gateway ingest benchmark: transitions per second through ``POST …/sync/batches``.

Two figures from the same run, on the same store:

* **gateway** — a real ``phs-gateway serve`` subprocess (``--workers N``
  processes on PostgreSQL) driven over loopback by signed msgpack batches
  (default 500 transitions each). Every transition is a valid FSM step on a
  distinct item of its batch, so each one is really applied: one log row, one
  item update and one change-feed row, plus the batch's idempotency record.
* **raw** — the same rows written by a bare driver into a fresh database of
  the gateway's schema, one transaction per batch, rows built before the
  clock starts: what the disk and the database allow, with no HTTP, parsing,
  signatures, FSM or idempotency. Median of three runs. On SQLite (the
  default, a file under ``--dir``): Python's ``sqlite3`` ``executemany``
  under ``BEGIN IMMEDIATE``, with the gateway's pragmas (WAL,
  ``synchronous=FULL``). On PostgreSQL (``--database-url``): asyncpg
  ``executemany``, one connection per sender, concurrently.

``--database-url postgresql+asyncpg://user@host/db`` names a server (and a
database to connect to there): each run makes its own databases on it and
drops them afterwards (``--keep`` keeps them).

Setup (tokens, enrollment, creating the items through the admin API, building
and signing the batches) is not timed. Every answer must say ``applied`` for
every transition, and at the end the gateway's database and a few items read
over HTTP must show every transition applied and every item at its end.
Besides throughput and batch latency it prints the CPU time per batch of the
gateway process and of the raw run, which a busy machine disturbs far less.

    .venv/bin/python bench/gateway_ingest.py [--transitions N] [--batch-size 500]
        [--senders S] [--dir DIR] [--keep] [--profile OUT.svg]
        [--database-url postgresql+asyncpg://… [--workers N]] [--feed-readers R]

``--feed-readers R`` has R tasks follow ``GET …/sync/changes`` as the node
while the batches are sent (on PostgreSQL each read first waits for the write
transactions under way), and prints how much they read and how fast.

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
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgpack
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db.database import Database
from gateway.db.schema import changes, idempotency_keys, metadata, outreach_items
from gateway.db.schema import outreach_transitions as transitions_table
from shared.signing import KeyPair, authorization_header
from shared.values import format_timestamp

PREFIX = "/api/v1/population-health"
BATCH_PATH = f"{PREFIX}/sync/batches"
CHANGES_PATH = f"{PREFIX}/sync/changes"
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


# --- the store ---------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """Where a gateway keeps its data in this run: SQLite in ``data_dir``, or
    the PostgreSQL database ``url`` made for the run."""

    data_dir: Path
    url: str = ""  # empty: SQLite at DATA_DIR/gateway.db

    def args(self) -> list[str]:
        """The CLI's store flags."""
        url = ["--database-url", self.url] if self.url else []
        return ["--data-dir", str(self.data_dir), *url]

    def sqlalchemy_url(self) -> str:
        return self.url or f"sqlite+aiosqlite:///{self.data_dir / 'gateway.db'}"


def asyncpg_dsn(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_postgres_database(server_url: str, purpose: str) -> str:
    """A new database on the server of ``server_url``; its SQLAlchemy URL."""
    name = f"phs_bench_{purpose}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(server_url: str, url: str) -> None:
    name = sa.make_url(url).database
    assert name and name.startswith("phs_bench_"), name
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def postgres_backend_cpu(url: str) -> dict[int, float]:
    """CPU seconds used so far by each server process on the database of ``url``
    (read from /proc: the server must run on this machine; else nothing)."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    found = {}
    for row in rows:
        with contextlib.suppress(OSError):
            found[row["pid"]] = process_cpu_seconds(row["pid"])
    return found


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the processes of ``after`` used since ``before`` (new ones: all)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


# --- the gateway process -----------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_env() -> dict[str, str]:
    # WARNING: no access log line per request (aiohttp logs them at INFO).
    return {**os.environ, "PHS_GATEWAY_LOG_LEVEL": "WARNING"}


def cli(store: Store, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, *store.args()],
        check=True,
        capture_output=True,
        text=True,
        env=gateway_env(),
        timeout=60,
    )
    return done.stdout.strip()


class Served:
    """A running ``phs-gateway serve`` and how many of its processes listen
    (each prints "Running on" once it does)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.listening = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if b"Running on" in line:
                self.listening += 1


async def wait_ready(
    session: aiohttp.ClientSession, base: str, served: Served, workers: int
) -> None:
    """Until every worker listens and the gateway answers /readyz."""
    for _ in range(600):
        if served.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {served.proc.returncode}")
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with session.get(f"{base}/readyz") as resp:
                if resp.status == 200 and served.listening >= workers:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError("gateway did not become ready in 30 s")


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


@dataclass
class FeedReading:
    """What the change-feed readers did while the batches were sent."""

    pages: int = 0
    changes: int = 0
    latencies: list[float] = field(default_factory=list)


async def read_feed_until(
    session: aiohttp.ClientSession,
    base: str,
    keypair: KeyPair,
    done: asyncio.Event,
    reading: FeedReading,
) -> None:
    """Follow ``GET …/sync/changes`` as the node does, page after page, until
    ``done``: each read of the feed waits on PostgreSQL for the write
    transactions under way (gateway.db.database), which is the cost measured."""
    since = "0"
    while not done.is_set():
        path = f"{CHANGES_PATH}?since={since}&limit=500"
        headers = {
            "Authorization": authorization_header(
                keypair, NODE_ID, "GET", path, b"", int(time.time())
            ),
            "Accept": "application/msgpack",
        }
        began = time.perf_counter()
        async with session.get(f"{base}{path}", headers=headers) as r:
            answer = await r.read()
        if r.status != 200:
            raise RuntimeError(f"feed read: {r.status} {answer[:500]!r}")
        reading.latencies.append(time.perf_counter() - began)
        page = msgpack.unpackb(answer, raw=False)
        reading.pages += 1
        reading.changes += len(page["changes"])
        since = page["cursor"]
        if not page["more"]:
            await asyncio.sleep(0.01)  # caught up: poll again soon, as a busy node would


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


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds so far of the gateway process ``pid`` and of its children
    (the workers of ``serve --workers``), by pid."""
    found = {pid: process_cpu_seconds(pid)}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat(int(entry))[1]) == pid:
                    found[int(entry)] = process_cpu_seconds(int(entry))
    return found


@dataclass(frozen=True)
class GatewayRun:
    seconds: float
    latencies: list[float]
    cpu_seconds: float  # the gateway's processes', during the timed part
    database_cpu_seconds: float | None  # PostgreSQL's server processes' (None: SQLite)
    feed: FeedReading  # the change-feed readers' work meanwhile (--feed-readers)


async def verify_gateway_store(store: Store, plan: Plan) -> None:
    """Every transition really recorded as applied; every item at the end of its path."""
    final = PHASES[-1][1]
    count = sa.select(sa.func.count())
    database = Database(store.sqlalchemy_url())
    try:
        async with database.read() as conn:
            applied = await conn.scalar(
                count.select_from(transitions_table).where(
                    transitions_table.c.tenant_id == TENANT,
                    transitions_table.c.disposition == "applied",
                )
            )
            done = await conn.scalar(
                count.select_from(outreach_items).where(
                    outreach_items.c.tenant_id == TENANT,
                    outreach_items.c.state == final,
                    outreach_items.c.version == 1 + len(PHASES),
                )
            )
            feed = await conn.scalar(
                count.select_from(changes).where(changes.c.tenant_id == TENANT)
            )
            batches = await conn.scalar(
                count.select_from(idempotency_keys).where(
                    idempotency_keys.c.principal == f"node:{NODE_ID}",
                    idempotency_keys.c.state == "done",
                )
            )
    finally:
        await database.close()
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


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop a child we started: ``sig``, then SIGKILL after ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def gateway_process(store: Store, port: int, workers: int) -> Iterator[Served]:
    """``phs-gateway serve`` (``--workers``) on loopback, stopped on exit."""
    command = [sys.executable, "-m", "gateway.cli", "serve", *store.args()]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)]
        + (["--workers", str(workers)] if workers > 1 else []),
        env=gateway_env(),
        stdout=subprocess.PIPE,
    )
    try:
        yield Served(proc)
    finally:
        stop(proc, timeout=40)  # the workers finish their requests first


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
    served: Served,
    store: Store,
    workers: int,
    token: str,
    keypair: KeyPair,
    plan: Plan,
    start: datetime,
    profile: str | None,
    feed_readers: int,
) -> GatewayRun:
    """Set up the items, then time the batches (with ``feed_readers`` following
    the change feed meanwhile)."""
    proc = served.proc
    connector = aiohttp.TCPConnector(limit=max(SETUP_CONCURRENCY, len(plan.lanes)))
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_ready(session, base, served, workers)
        began = time.perf_counter()
        await create_items(session, base, token, plan.item_ids)
        print(
            f"setup: {len(plan.item_ids)} items created through the admin API "
            f"in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        lanes = sign_batches(plan, keypair, format_timestamp(start))
        done, reading = asyncio.Event(), FeedReading()
        readers = [
            asyncio.create_task(read_feed_until(session, base, keypair, done, reading))
            for _ in range(feed_readers)
        ]
        with profiled(proc.pid, profile):
            cpu_before = gateway_cpu_seconds(proc.pid)
            db_before = await postgres_backend_cpu(store.url) if store.url else {}
            try:
                elapsed, latencies = await send_lanes(session, base, lanes)
            finally:
                done.set()
                await asyncio.gather(*readers)
            cpu = cpu_used(cpu_before, gateway_cpu_seconds(proc.pid))
            db_cpu = None
            if store.url:
                db_cpu = cpu_used(db_before, await postgres_backend_cpu(store.url))
        await verify_over_http(session, base, token, plan)
    return GatewayRun(elapsed, latencies, cpu, db_cpu, reading)


def run_gateway(
    store: Store,
    workers: int,
    plan: Plan,
    start: datetime,
    profile: str | None,
    feed_readers: int = 0,
) -> GatewayRun:
    token = cli(store, "create-token", "--tenant", TENANT, "--role", "admin").splitlines()[0]
    keypair = KeyPair.generate()
    enroll = ["--node-id", NODE_ID, "--tenant", TENANT, "--facility", FACILITY]
    cli(store, "enroll-node", *enroll, "--public-key", keypair.public_key_b64)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with gateway_process(store, port, workers) as served:
        run = asyncio.run(
            asyncio.wait_for(
                drive_gateway(
                    base,
                    served,
                    store,
                    workers,
                    token,
                    keypair,
                    plan,
                    start,
                    profile,
                    feed_readers,
                ),
                DEADLINE_SECONDS,
            )
        )
    asyncio.run(verify_gateway_store(store, plan))
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


RawBatch = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]


def _raw_rows(batches: Sequence[tuple[str, list[Step]]], stamp: str) -> list[RawBatch]:
    """Per batch: the log rows, item updates and change rows the gateway writes."""
    out = []
    for key, batch in batches:
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
    batches = _raw_rows(plan.batches, stamp)
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


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …``."""
    parts = sql.split("?")
    return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]


async def run_raw_postgres(
    server_url: str, plan: Plan, start: datetime, keep: bool
) -> tuple[float, float, float | None]:
    """Seconds (wall, client CPU, server CPU) for asyncpg to write the gateway's rows
    into a new database: one connection per sender, concurrently, a transaction a batch."""
    url = await create_postgres_database(server_url, "raw")
    try:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)  # the gateway's tables and indexes
        await engine.dispose()
        stamp = format_timestamp(start)
        conns = [await asyncpg.connect(asyncpg_dsn(url)) for _ in plan.lanes]
        try:
            await conns[0].executemany(
                "INSERT INTO outreach_items (id, tenant_id, facility_id, state, version, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $6)",
                [(item, TENANT, FACILITY, INITIAL_STATE, stamp, stamp) for item in plan.item_ids],
            )
            lanes = [
                _raw_rows([(batch_id(n, b), batch) for b, batch in enumerate(lane)], stamp)
                for n, lane in enumerate(plan.lanes)
            ]
            sql = [_numbered(q) for q in (_INSERT_LOG, _UPDATE_ITEM, _INSERT_CHANGE)]

            async def lane(conn: asyncpg.Connection, batches: list[RawBatch]) -> None:
                for rows in batches:
                    async with conn.transaction():
                        for statement, values in zip(sql, rows, strict=True):
                            await conn.executemany(statement, values)

            server_pids = [await conn.fetchval("SELECT pg_backend_pid()") for conn in conns]

            def server_cpu_now() -> dict[int, float] | None:
                try:
                    return {pid: process_cpu_seconds(pid) for pid in server_pids}
                except OSError:  # a server on another machine: no CPU figure
                    return None

            server_before = server_cpu_now()
            began, cpu_began = time.perf_counter(), time.process_time()
            await asyncio.gather(*(lane(c, b) for c, b in zip(conns, lanes, strict=True)))
            elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
            server_after = server_cpu_now()
            server_cpu = (
                None
                if server_before is None or server_after is None
                else cpu_used(server_before, server_after)
            )
            final = await conns[0].fetchval(
                "SELECT count(*) FROM outreach_items WHERE state = $1 AND version = $2",
                PHASES[-1][1],
                1 + len(PHASES),
            )
        finally:
            for conn in conns:
                await conn.close()
    finally:
        if not keep:
            await drop_postgres_database(server_url, url)
    if final != len(plan.item_ids):
        raise RuntimeError(f"raw reference: {final} of {len(plan.item_ids)} items finished")
    return elapsed, cpu, server_cpu


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
        help="concurrent HTTP senders, each with its own items (default 1 for one worker: "
        "it applies one batch at a time, so more only queue; see docs/performance.md; "
        "with several workers, 2 per worker)",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server (postgresql+asyncpg://user@host/db, db being one to "
        "connect to): the gateway and the raw reference each get a new database there; "
        "default: SQLite files under --dir",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="gateway processes (serve --workers; PostgreSQL)"
    )
    parser.add_argument(
        "--dir", default="/var/tmp", help="where the SQLite files go; must be a real disk"
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    parser.add_argument(
        "--feed-readers",
        type=int,
        default=0,
        help="nodes following GET …/sync/changes while the batches are sent (0..16)",
    )
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
    if not 0 <= args.feed_readers <= 16:
        parser.error("--feed-readers must be in 0..16")
    if not 1 <= args.workers <= 16:
        parser.error("--workers must be in 1..16")
    if args.workers > 1 and not args.database_url:
        parser.error("--workers above 1 needs --database-url (a SQLite store has one writer)")
    if args.database_url and sa.make_url(args.database_url).get_backend_name() != "postgresql":
        parser.error("--database-url must name a PostgreSQL server")
    if args.senders is None:
        args.senders = 1 if args.workers == 1 else 2 * args.workers
    if not 1 <= args.senders <= 32:
        parser.error("--senders must be in 1..32")
    fs_type = filesystem_of(Path(args.dir))
    if fs_type in {"tmpfs", "ramfs"} and not args.database_url:
        parser.error(f"--dir {args.dir} is on {fs_type}; the benchmark needs a real disk")

    work_dir = Path(tempfile.mkdtemp(prefix="phs-bench-", dir=args.dir))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    plan = make_plan(args.transitions, args.batch_size, args.senders, start)
    if args.database_url:
        shown = sa.make_url(args.database_url).render_as_string(hide_password=True)
        where = f"PostgreSQL databases on {shown}, {args.workers} gateway worker(s)"
    else:
        where = f"SQLite files in {work_dir} ({fs_type})"
    print(
        f"{plan.transitions} transitions on {len(plan.item_ids)} items, "
        f"{len(plan.batches)} batches of <= {args.batch_size}, {args.senders} sender(s); "
        f"{where}",
        flush=True,
    )
    gateway_url = ""
    try:
        run_began = time.perf_counter()
        if args.database_url:
            gateway_url = asyncio.run(create_postgres_database(args.database_url, "gateway"))
        store = Store(work_dir / "gateway", gateway_url)
        gateway = run_gateway(store, args.workers, plan, start, args.profile, args.feed_readers)
        raw_runs: list[tuple[float, float, float | None]] = []
        for n in range(RAW_RUNS):
            if args.database_url:
                raw = run_raw_postgres(args.database_url, plan, start, args.keep)
                raw_runs.append(asyncio.run(raw))
            else:
                raw_runs.append((*run_raw(work_dir / f"raw-{n}.db", plan, start), None))
        total = time.perf_counter() - run_began
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
            if gateway_url:
                asyncio.run(drop_postgres_database(args.database_url, gateway_url))

    n = plan.transitions
    raw_s = statistics.median(wall for wall, _, _ in raw_runs)
    raw_cpu = statistics.median(cpu for _, cpu, _ in raw_runs)
    raw_db = [db for _, _, db in raw_runs if db is not None]
    gateway_rate, raw_rate = n / gateway.seconds, n / raw_s
    lat = gateway.latencies
    print(f"gateway: {gateway_rate:10,.0f} transitions/s  ({gateway.seconds:.2f} s, all applied)")
    print(
        f"raw:     {raw_rate:10,.0f} transitions/s  ({raw_s:.2f} s, median of "
        f"{', '.join(f'{n / wall:,.0f}' for wall, _, _ in raw_runs)})"
    )
    print(f"ratio:   {gateway_rate / raw_rate:10.3f}  (goal >= 0.25)")
    print(
        f"batch latency: p50 {percentile(lat, 0.50) * 1000:.1f} ms, "
        f"p95 {percentile(lat, 0.95) * 1000:.1f} ms, "
        f"mean {statistics.fmean(lat) * 1000:.1f} ms over {len(lat)} batches"
    )
    # CPU time hardly depends on what else the machine runs: a steadier view.
    per_batch, per_step = 1000 / len(lat), 1e6 / n

    def cpu(seconds: float) -> str:
        return f"{seconds * per_batch:.1f} ms ({seconds * per_step:.0f} µs a transition)"

    print(f"CPU per batch: gateway process(es) {cpu(gateway.cpu_seconds)}, raw {cpu(raw_cpu)}")
    if gateway.database_cpu_seconds is not None and raw_db:  # PostgreSQL on this machine
        print(
            f"PostgreSQL CPU per batch: under the gateway {cpu(gateway.database_cpu_seconds)}, "
            f"under raw {cpu(statistics.median(raw_db))}"
        )
    feed = gateway.feed
    if args.feed_readers:
        print(
            f"change feed: {args.feed_readers} reader(s) read {feed.pages} pages "
            f"({feed.changes:,} changes) meanwhile; page latency p50 "
            f"{percentile(feed.latencies, 0.50) * 1000:.1f} ms, "
            f"p95 {percentile(feed.latencies, 0.95) * 1000:.1f} ms"
        )
    print(f"whole run: {total:.1f} s; {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

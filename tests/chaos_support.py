"""Shared parts of the crash and flaky-WAN tests (issue 3).

Real services on loopback: the gateway and the edge node as subprocesses
(``phs-gateway serve``, ``edgenode run``) or the gateway in-process; simulated
tablets that pair with a one-time code and push signed outreach transitions;
a fault-free expectation of every item's history and final state, computed
with the shared ``resolve``; and checks read straight from the SQLite files.

Every wait here is bounded in time; every loop in count.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import aiohttp

from canaries import patient_ref, scan_output
from shared.fsm import Disposition, ItemState, State, Transition, resolve
from shared.signing import KeyPair, authorization_header
from shared.values import format_timestamp, parse_timestamp

LOOPBACK = "127.0.0.1"
PREFIX = "/api/v1/population-health"
TENANT = "t1"
FACILITY = "f-001"
NODE_ID = "edge-01"
REPORT_EVENT = "population_health.facility_report.synced.v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> str:
    """Run ``python -m <module> ...`` to completion; its stdout, or a failed test."""
    done = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )
    scan_output(done.stderr, f"{' '.join(args[:2])} stderr")  # its log; stdout is its answer
    assert done.returncode == 0, f"{' '.join(args[:2])} failed:\n{done.stderr}"
    return done.stdout.strip()


def create_token(gateway_dir: Path, role: str = "admin") -> str:
    return run_cli(
        "gateway.cli",
        "create-token",
        "--tenant",
        TENANT,
        "--role",
        role,
        "--data-dir",
        str(gateway_dir),
    )


def init_edge(edge_dir: Path, gateway_dir: Path, gateway_url: str) -> None:
    """``edgenode init``, then the ``enroll-node`` command it prints, run at the gateway."""
    printed = run_cli(
        "edgenode.cli",
        "init",
        "--node-id",
        NODE_ID,
        "--tenant",
        TENANT,
        "--facility",
        FACILITY,
        "--gateway-url",
        gateway_url,
        "--data-dir",
        str(edge_dir),
    )
    enroll = next(line for line in printed.splitlines() if "enroll-node" in line)
    run_cli("gateway.cli", *shlex.split(enroll.strip())[1:], "--data-dir", str(gateway_dir))


# --------------------------------------------------------------------------- processes


class Service:
    """A service run as a subprocess, its output appended to one log across restarts."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        wrapper: Sequence[str] = (),
    ):
        self.name = name
        self.args = list(args)
        self.wrapper = list(wrapper)  # e.g. ``ip netns exec NS``: it execs, so the pid is ours
        self.log_path = log_path
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, f"{self.name} is already running"
        self._log = open(self.log_path, "ab")  # closed when the process is reaped
        self.process = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(
        self, session: aiohttp.ClientSession, url: str, within: float = 20
    ) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, (
                f"{self.name} exited:\n{self.log_tail()}"
            )
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
        raise AssertionError(f"{self.name} did not answer {url} within {within} s")

    async def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the process."""
        await self._signal(signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM, as systemd stops a service; the process shuts down in order."""
        await self._signal(signal.SIGTERM)

    async def _signal(self, signum: int, within: float = 15) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
        deadline = time.monotonic() + within
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait(timeout=5)
                raise AssertionError(f"{self.name} did not exit within {within} s of {signum}")
            await asyncio.sleep(0.01)
        self._reaped()

    def _reaped(self) -> None:
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def ensure_stopped(self) -> None:
        """Teardown after a failure: kill whatever still runs (only our own child)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
            self._reaped()


def gateway_service(gateway_dir: Path, port: int, log_path: Path) -> Service:
    return Service(
        "gateway",
        ["gateway.cli", "serve", "--data-dir", str(gateway_dir), "--port", str(port)],
        log_path,
        # The services' default level: the lines they write then are the ones
        # scanned for canaries (tests/canaries.py).
        {"PHS_GATEWAY_LOG_LEVEL": "INFO"},
    )


def edge_service(edge_dir: Path, port: int, log_path: Path, env: Mapping[str, str]) -> Service:
    return Service(
        "edge",
        [
            "edgenode.cli",
            "run",
            "--data-dir",
            str(edge_dir),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
        ],
        log_path,
        env,
    )


def edge_status(edge_dir: Path) -> dict[str, Any]:
    """What ``edgenode status`` prints, as the operator would read it."""
    doc: dict[str, Any] = json.loads(run_cli("edgenode.cli", "status", "--data-dir", str(edge_dir)))
    return doc


async def wait_drained(edge_dir: Path, within: float = 30) -> dict[str, Any]:
    """Poll ``edgenode status`` until the outbox is empty (bounded)."""
    deadline = time.monotonic() + within
    while True:
        status = await asyncio.to_thread(edge_status, edge_dir)
        if status["outboxDepth"] == 0 and status["openBatches"] == 0:
            return status
        assert time.monotonic() < deadline, f"outbox not drained within {within} s: {status}"
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- the gateway over HTTP


async def import_items(
    session: aiohttp.ClientSession, gateway_url: str, token: str, item_ids: Sequence[str]
) -> None:
    """Create the outreach items at the gateway (state ``assigned``, a canary
    patientRef), a few at a time."""

    async def create(item_id: str) -> None:
        async with session.post(
            f"{gateway_url}{PREFIX}/outreach-items",
            json={
                "id": item_id,
                "facilityId": FACILITY,
                "state": "assigned",
                "patientRef": patient_ref(item_id),
            },
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 201, await resp.text()

    for start in range(0, len(item_ids), 16):
        await asyncio.gather(*(create(i) for i in item_ids[start : start + 16]))


# --------------------------------------------------------------------------- tablets


@dataclass
class Tablet:
    device_id: str
    keypair: KeyPair = field(default_factory=KeyPair.generate)

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return {
            "Authorization": authorization_header(
                self.keypair, self.device_id, method, path, body, int(time.time())
            ),
            "Content-Type": "application/json",
        }

    async def pair(self, session: aiohttp.ClientSession, edge_url: str, edge_dir: Path) -> None:
        code = await asyncio.to_thread(
            run_cli,
            "edgenode.cli",
            "pair-device",
            "--device-id",
            self.device_id,
            "--data-dir",
            str(edge_dir),
        )
        async with session.post(
            f"{edge_url}{PREFIX}/devices/pair",
            json={
                "pairingCode": code,
                "deviceId": self.device_id,
                "publicKey": self.keypair.public_key_b64,
            },
        ) as resp:
            assert resp.status == 201, await resp.text()

    async def item_count(self, session: aiohttp.ClientSession, edge_url: str) -> int:
        path = f"{PREFIX}/outreach-items?limit=5000"
        async with session.get(edge_url + path, headers=self.headers("GET", path, b"")) as resp:
            assert resp.status == 200, await resp.text()
            return len((await resp.json())["items"])

    async def push(
        self,
        session: aiohttp.ClientSession,
        edge_url: str,
        key: str,
        transitions: Sequence[Mapping[str, Any]],
    ) -> tuple[int, Any]:
        """One signed push; raises ``aiohttp.ClientError`` when the edge is not there."""
        path = f"{PREFIX}/sync/outreach"
        body = json.dumps({"transitions": list(transitions)}).encode()
        headers = {**self.headers("POST", path, body), "Idempotency-Key": key}
        async with session.post(edge_url + path, data=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


async def wait_for_items(
    session: aiohttp.ClientSession, tablet: Tablet, edge_url: str, count: int, within: float = 30
) -> None:
    """Until the edge has pulled every item from the gateway's change feed."""
    deadline = time.monotonic() + within
    while (seen := await tablet.item_count(session, edge_url)) < count:
        assert time.monotonic() < deadline, f"the edge pulled {seen} of {count} items"
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- work, expectation


@dataclass(frozen=True)
class Push:
    key: str  # Idempotency-Key: the same on every retry of this push
    device_id: str
    transitions: list[dict[str, Any]]


@dataclass
class Plan:
    """Numbered transitions grouped into tablet pushes, and what a fault-free
    run leaves at the gateway: each item's history in order, and its state."""

    item_ids: list[str]
    pushes: list[Push]
    history: dict[str, list[str]]  # item -> transition ids in arrival order
    states: dict[str, str]

    @property
    def transition_count(self) -> int:
        return sum(len(p.transitions) for p in self.pushes)


# Each item's path from ``assigned``: three field-worker moves, two endings.
Path3 = tuple[str, str, str]
PATHS: tuple[Path3, ...] = (
    ("in_progress", "contacted", "completed"),
    ("in_progress", "contacted", "declined"),
)


def outreach_plan(
    items: int,
    devices: Sequence[str],
    push_size: int,
    window: int,
    choose: Callable[[Sequence[Path3]], Path3],
) -> Plan:
    """``items`` items, three transitions each. Items are worked in windows (one
    device per window); within a window, step k of every item is pushed before
    step k+1, so one push and one batch mix many items and steps.

    ``choose`` picks each item's path (a seeded ``random.Random().choice``).
    """
    item_ids = [f"oi-{n:04d}" for n in range(items)]
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    ordered: list[tuple[str, dict[str, Any]]] = []  # (device, transition)
    for w, start in enumerate(range(0, items, window)):
        device = devices[w % len(devices)]
        members = item_ids[start : start + window]
        paths = {item: choose(PATHS) for item in members}
        for step in range(3):
            for item in members:
                frm = "assigned" if step == 0 else paths[item][step - 1]
                ordered.append(
                    (
                        device,
                        {
                            "id": f"{item}-t{step}",
                            "itemId": item,
                            "from": frm,
                            "to": paths[item][step],
                            "occurredAt": format_timestamp(base + timedelta(seconds=len(ordered))),
                            "deviceId": device,
                            "actorId": f"chw-{device}",
                        },
                    )
                )
    pushes: list[Push] = []
    run: list[dict[str, Any]] = []
    for n, (device, t) in enumerate(ordered):
        run.append(t)
        last = n + 1 == len(ordered) or ordered[n + 1][0] != device
        if len(run) == push_size or last:
            pushes.append(Push(f"push-{len(pushes):05d}", device, run))
            run = []
    history, states = expected_outcome(item_ids, [t for _, t in ordered])
    return Plan(item_ids, pushes, history, states)


def expected_outcome(
    item_ids: Sequence[str], transitions: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Fold the shared ``resolve`` over the transitions, in order, with no faults."""
    now = datetime.now(UTC)
    current = {item: ItemState(State.ASSIGNED, None) for item in item_ids}
    history: dict[str, list[str]] = {item: [] for item in item_ids}
    for doc in transitions:
        t = Transition(
            doc["id"],
            doc["itemId"],
            doc["from"],
            doc["to"],
            parse_timestamp(doc["occurredAt"], "occurredAt"),
            doc["deviceId"],
            doc["actorId"],
        )
        r = resolve(current[t.item_id], t, now)
        assert r.disposition is Disposition.APPLIED and r.state is not None, (doc, r)
        current[t.item_id] = ItemState(r.state, r.transition)
        history[t.item_id].append(t.id)
    return history, {item: s.state.value for item, s in current.items()}


@dataclass
class Pusher:
    """A tablet-side sender: pushes in order, each until the edge acknowledges it
    (HTTP 200). A push the edge never answered is retried with the same
    Idempotency-Key once the edge is back."""

    plan: Plan
    tablets: Mapping[str, Tablet]
    next_push: int = 0
    attempts: int = 0
    unanswered: int = 0  # attempts cut off by a crash
    replayed: int = 0  # acknowledgements of a retry the edge had already committed
    acknowledged: set[str] = field(default_factory=set)  # transition ids

    @property
    def done(self) -> bool:
        return self.next_push >= len(self.plan.pushes)

    async def run(self, session: aiohttp.ClientSession, edge_url: str, quota: int) -> None:
        """Send up to ``quota`` pushes; stop quietly when the edge goes away."""
        for _ in range(quota):
            if self.done:
                return
            push = self.plan.pushes[self.next_push]
            self.attempts += 1
            try:
                status, doc = await self.tablets[push.device_id].push(
                    session, edge_url, push.key, push.transitions
                )
            except (TimeoutError, aiohttp.ClientError):
                self.unanswered += 1
                return
            assert status == 200, (push.key, status, doc)
            statuses = {r["status"] for r in doc["results"]}
            assert statuses == {"applied"}, (push.key, doc)
            self.acknowledged.update(t["id"] for t in push.transitions)
            self.next_push += 1


# --------------------------------------------------------------------------- reading the stores


def _connect(path: Path) -> sqlite3.Connection:
    """Read-only: after a crash the service itself, not the test, recovers its file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def integrity(path: Path) -> str:
    conn = _connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def gateway_history(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Each item's recorded transitions at the gateway: (id, disposition), in order."""
    conn = _connect(path)
    try:
        rows = conn.execute(
            "SELECT item_id, transition_id, disposition FROM outreach_transitions ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        out[row["item_id"]].append((row["transition_id"], row["disposition"]))
    return dict(out)


def gateway_states(path: Path) -> dict[str, str]:
    conn = _connect(path)
    try:
        return {r["id"]: r["state"] for r in conn.execute("SELECT id, state FROM outreach_items")}
    finally:
        conn.close()


def gateway_report_events(path: Path) -> list[dict[str, Any]]:
    conn = _connect(path)
    try:
        rows = conn.execute("SELECT type, data FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [
        {"type": r["type"], **(json.loads(r["data"]) if isinstance(r["data"], str) else {})}
        for r in rows
        if r["type"] == REPORT_EVENT
    ]


def gateway_batch_keys(path: Path, node_id: str = NODE_ID) -> dict[str, str]:
    """The node's stored Idempotency-Keys (batch ids) and their state."""
    conn = _connect(path)
    try:
        rows = conn.execute(
            "SELECT key, state FROM idempotency_keys WHERE principal = ?", (f"node:{node_id}",)
        ).fetchall()
    finally:
        conn.close()
    return {r["key"]: r["state"] for r in rows}


@dataclass(frozen=True)
class EdgeOutbox:
    unsent: int  # transitions not yet answered by the gateway
    open_batches: int  # persisted batches not yet answered
    done_batches: int


def edge_outbox(path: Path) -> EdgeOutbox:
    """The outbox as the SQLite file holds it (read with the edge stopped or running)."""
    conn = _connect(path)
    try:
        unsent = conn.execute(
            "SELECT count(*) FROM transitions WHERE forward = 1 AND gateway_status IS NULL"
        ).fetchone()[0]
        stages = dict(
            conn.execute("SELECT stage, count(*) FROM outbox_batches GROUP BY stage").fetchall()
        )
    finally:
        conn.close()
    return EdgeOutbox(int(unsent), int(stages.get("pending", 0)), int(stages.get("done", 0)))


def edge_states(path: Path) -> dict[str, str]:
    """The edge's projection: what its tablets read."""
    conn = _connect(path)
    try:
        return {r["id"]: r["state"] for r in conn.execute("SELECT id, state FROM items")}
    finally:
        conn.close()


def edge_transitions(path: Path) -> list[sqlite3.Row]:
    conn = _connect(path)
    try:
        return conn.execute(
            "SELECT transition_id, local_disposition, gateway_status, forward, batch_id "
            "FROM transitions ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def assert_gateway_holds_exactly(
    history: Mapping[str, list[tuple[str, str]]],
    states: Mapping[str, str],
    plan: Plan,
    acknowledged: set[str],
) -> None:
    """Every acknowledged transition is in its item's history exactly once, in
    the fault-free order and with the fault-free disposition (applied), nothing
    else is there, and every item ends in its fault-free state."""
    recorded = Counter(tid for rows in history.values() for tid, _ in rows)
    repeated = sorted(tid for tid, n in recorded.items() if n > 1)
    assert not repeated, f"transitions recorded more than once at the gateway: {repeated[:10]}"
    assert set(recorded) == acknowledged, (
        f"missing: {sorted(acknowledged - set(recorded))[:10]}, "
        f"unexpected: {sorted(set(recorded) - acknowledged)[:10]}"
    )
    for item in plan.item_ids:
        rows = history.get(item, [])
        assert [tid for tid, _ in rows] == plan.history[item], (item, rows)
        assert {d for _, d in rows} <= {"applied"}, (item, rows)
        assert states[item] == plan.states[item], (item, states[item], plan.states[item])

"""The chaos run (issue 8): both services SIGKILLed again and again under a flaky WAN.

``phs-gateway serve`` (SQLite) and ``edgenode run --no-discovery`` run as
subprocesses on loopback; the edge reaches the gateway only through a
:class:`~faultproxy.FaultProxy` that adds latency, resets requests midway and
resets connections after the gateway answered. Simulated tablets push
numbered outreach transitions and encounters; the edge makes signed daily and
weekly facility reports from the encounters (``edgenode report``, the
operator's command, run as a process against the live node's store). Two
killers, one per service on its own random timer, SIGKILL and restart their
service: many lives are killed a moment after they answer their readiness
URL, many while they are still starting (``/proc/PID/fd`` tells whether the
life had its store open yet). The tablets' work is paced by the kill count,
so it is spread over the whole chaos.

Then the run heals (a faithful proxy, both services up), finishes whatever
work the tablets had left, waits (bounded) for the edge's outbox to drain,
stops both services with SIGTERM and checks the stores like a Jepsen set
checker (:func:`check_stores`): every acknowledged record exactly once, no
duplicate events, ``PRAGMA integrity_check`` clean, the audit chain intact,
and the final state equal to a fault-free run of the same input, computed
with the same pure code the services use (``shared.fsm.resolve`` for the
items, ``shared.reports.compute_metrics`` for the reports).

Every wait is bounded in time and every loop in count. The random source is
seeded and the seed printed; kill moments also depend on timing, so a rerun
with the same seed is similar, not equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from canaries import patient_ref, scan_output
from chaos_check import audit_verify, check_stores, log_errors, query
from chaos_support import (
    FACILITY,
    LOOPBACK,
    PREFIX,
    Plan,
    Service,
    Tablet,
    create_token,
    edge_outbox,
    edge_status,
    free_port,
    import_items,
    init_edge,
    outreach_plan,
    wait_for_items,
)
from faultproxy import FaultPlan, FaultProxy
from shared.periods import Period, PeriodType, period_from_key, previous_period, zone
from shared.reports import Encounter, EncounterKind, compute_metrics
from shared.values import format_timestamp, parse_timestamp

DEVICES = ("tab-1", "tab-2")
TRANSITION_PUSH = 20  # transitions per tablet push
ENCOUNTER_PUSH = 8  # encounters per tablet push
REPORT_DAYS = 6  # daily reports for the last six days, then the last ISO week's
ENCOUNTERS_PER_DAY = 40
PATIENTS = 25  # per day: patients come back, so counts of patients and encounters differ

EDGE_ENV = {
    "PHS_EDGE_BATCH_MAX_ITEMS": "10",  # small batches: kills land between and inside them
    "PHS_EDGE_FORWARD_INTERVAL_SECONDS": "1",
    "PHS_EDGE_PULL_INTERVAL_SECONDS": "1",
    "PHS_EDGE_RETRY_BASE_SECONDS": "1",
    "PHS_EDGE_RETRY_MAX_SECONDS": "2",
    "PHS_EDGE_REQUEST_TIMEOUT_SECONDS": "10",
    "PHS_EDGE_REPORT_SCHEDULE": "false",  # reports come from `edgenode report`, at known times
    "PHS_EDGE_LOG_LEVEL": "INFO",  # the default: the lines scanned for canaries
}
GATEWAY_ENV = {"PHS_GATEWAY_LOG_LEVEL": "INFO"}
WAN_FAULTS = {  # FaultPlan fields for the chaos; the seed is the run's
    "latency_probability": 0.2,
    "latency": (0.001, 0.05),
    "reset_mid_request": 0.15,
    "reset_after_response": 0.15,
}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LifeShape:
    """How one service's lives end."""

    early: float  # share of lives killed before they are ready
    startup_window: float  # such a kill comes this soon after the life opened its store
    serve_window: float  # a ready life is killed within this many seconds


@dataclass(frozen=True)
class ChaosSettings:
    """How long the run is. CI: 120 edge and 80 gateway kills (200 in all).

    ``PHS_CHAOS_KILLS=N`` kills each service N times (the full run:
    ``PHS_CHAOS_KILLS=1000``); ``PHS_CHAOS_EDGE_KILLS`` and
    ``PHS_CHAOS_GATEWAY_KILLS`` set one each. ``PHS_TEST_SEED`` reruns a seed.
    """

    seed: int
    edge_kills: int = 120
    gateway_kills: int = 80
    # share of lives killed before they answer their readiness URL
    edge: LifeShape = LifeShape(early=0.3, startup_window=0.05, serve_window=0.8)
    # Ready lives of the gateway last longer: it takes twice the edge's time to
    # start, and the edge must find it up now and then to forward at all.
    gateway: LifeShape = LifeShape(early=0.4, startup_window=0.3, serve_window=2.0)
    down_window: float = 0.3  # a killed service stays down up to this long

    @property
    def total_kills(self) -> int:
        return self.edge_kills + self.gateway_kills

    @property
    def items(self) -> int:
        """Outreach items (three transitions each): more for a longer run."""
        return min(3000, max(600, 6 * self.total_kills))

    @property
    def time_limit(self) -> float:
        """Seconds the chaos may take: generous, for a loaded 2-core machine."""
        return 120.0 + 3.0 * self.total_kills

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ChaosSettings:
        seed = int(environ.get("PHS_TEST_SEED", random.randrange(2**32)))
        each = environ.get("PHS_CHAOS_KILLS")
        edge = int(environ.get("PHS_CHAOS_EDGE_KILLS", each or cls.edge_kills))
        gateway = int(environ.get("PHS_CHAOS_GATEWAY_KILLS", each or cls.gateway_kills))
        return cls(seed=seed, edge_kills=edge, gateway_kills=gateway)


# --------------------------------------------------------------------------- the tablets' work


@dataclass(frozen=True)
class TransitionPush:
    key: str
    device_id: str
    transitions: list[dict[str, Any]]


@dataclass(frozen=True)
class EncounterPush:
    key: str
    device_id: str
    encounters: list[dict[str, Any]]


@dataclass(frozen=True)
class MakeReport:
    """``edgenode report`` for a period whose encounters were all acknowledged."""

    period: Period


Step = TransitionPush | EncounterPush | MakeReport


@dataclass
class FieldWork:
    """What the tablets and the operator do, in order, and what a fault-free run
    of it leaves behind: the transition plan's histories and states, and each
    report's metrics over the encounters of its period."""

    plan: Plan
    encounters: dict[str, dict[str, Any]]  # id -> wire form
    reports: dict[str, dict[str, Any]]  # period key -> expected metrics
    steps: list[Step]

    @property
    def transition_ids(self) -> set[str]:
        return {t["id"] for p in self.plan.pushes for t in p.transitions}


def field_work(items: int, rng: random.Random, today: date) -> FieldWork:
    plan = outreach_plan(items, list(DEVICES), TRANSITION_PUSH, window=40, choose=rng.choice)
    transition_steps: list[Step] = [
        TransitionPush(p.key, p.device_id, p.transitions) for p in plan.pushes
    ]
    encounter_steps: list[Step] = []
    encounters: dict[str, dict[str, Any]] = {}
    days = [today - timedelta(days=n) for n in range(REPORT_DAYS, 0, -1)]
    for day in days:
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        todays: list[dict[str, Any]] = []
        for n in range(ENCOUNTERS_PER_DAY):
            enc_id = f"enc-{day.isoformat()}-{n:03d}"
            doc: dict[str, Any] = {
                "id": enc_id,
                "patientRef": patient_ref(f"{rng.randrange(PATIENTS):03d}"),
                "facilityId": FACILITY,
                "occurredAt": format_timestamp(midnight + timedelta(seconds=rng.randrange(86400))),
                "kind": rng.choice([k.value for k in EncounterKind]),
                "screeningDue": rng.random() < 0.5,
                "immunizationDue": rng.random() < 0.4,
            }
            encounters[enc_id] = doc
            todays.append(doc)
        for start in range(0, len(todays), ENCOUNTER_PUSH):
            device = DEVICES[(start // ENCOUNTER_PUSH) % len(DEVICES)]
            batch = todays[start : start + ENCOUNTER_PUSH]
            encounter_steps.append(EncounterPush(f"enc-push-{batch[0]['id']}", device, batch))
        encounter_steps.append(MakeReport(period_from_key(day.isoformat())))
    week = previous_period(today, PeriodType.WEEKLY)
    encounter_steps.append(MakeReport(week))

    # Interleave the two streams evenly, each in its own order.
    placed = [((n + 0.5) / len(transition_steps), s) for n, s in enumerate(transition_steps)]
    placed += [((n + 0.5) / len(encounter_steps), s) for n, s in enumerate(encounter_steps)]
    steps = [s for _, s in sorted(placed, key=lambda pair: pair[0])]
    typed = [_encounter(doc) for doc in encounters.values()]
    reports = {
        s.period.key: compute_metrics(typed, s.period, zone("UTC"))
        for s in steps
        if isinstance(s, MakeReport)
    }
    return FieldWork(plan, encounters, reports, steps)


def _encounter(doc: Mapping[str, Any]) -> Encounter:
    return Encounter(
        doc["id"],
        doc["patientRef"],
        doc["facilityId"],
        parse_timestamp(doc["occurredAt"], "occurredAt"),
        EncounterKind(doc["kind"]),
        doc["screeningDue"],
        doc["immunizationDue"],
    )


@dataclass
class FieldDriver:
    """Runs the steps in order, each until it is acknowledged: a push until the
    edge answers 200 (a push the edge never answered is retried with the same
    Idempotency-Key), a report until ``edgenode report`` exits 0. Step ``i``
    waits until ``progress()`` (the share of the kills done) reaches
    ``i / len(steps)``, which spreads the work over the chaos."""

    work: FieldWork
    tablets: Mapping[str, Tablet]
    edge_dir: Path
    progress: Callable[[], float]
    next_step: int = 0
    steps_during_chaos: int = 0
    attempts: int = 0
    unanswered: int = 0  # attempts cut off (the edge killed or not up)
    acknowledged_transitions: set[str] = field(default_factory=set)
    acknowledged_encounters: set[str] = field(default_factory=set)
    reports_made: set[str] = field(default_factory=set)
    report_runs: int = 0
    anomalies: list[str] = field(default_factory=list)  # answers no fault explains

    @property
    def done(self) -> bool:
        return self.next_step >= len(self.work.steps)

    async def run(self, session: aiohttp.ClientSession, edge_url: str, deadline: float) -> None:
        steps = self.work.steps
        while not self.done:
            while self.progress() < self.next_step / len(steps):
                assert time.monotonic() < deadline, "the field work fell behind the deadline"
                await asyncio.sleep(0.05)
            step = steps[self.next_step]
            if isinstance(step, MakeReport):
                await self._report(step, deadline)
            else:
                await self._push(session, edge_url, step, deadline)
            self.next_step += 1
            if self.progress() < 1.0:
                self.steps_during_chaos += 1

    async def _push(
        self,
        session: aiohttp.ClientSession,
        edge_url: str,
        step: TransitionPush | EncounterPush,
        deadline: float,
    ) -> None:
        tablet = self.tablets[step.device_id]
        if isinstance(step, TransitionPush):
            path, name, records = "sync/outreach", "transitions", step.transitions
        else:
            path, name, records = "sync/encounters", "encounters", step.encounters
        body = json.dumps({name: records}).encode()
        while True:
            assert time.monotonic() < deadline, f"push {step.key} never acknowledged"
            self.attempts += 1
            headers = {
                **tablet.headers("POST", f"{PREFIX}/{path}", body),
                "Idempotency-Key": step.key,
            }
            try:
                async with session.post(
                    f"{edge_url}{PREFIX}/{path}", data=body, headers=headers
                ) as resp:
                    status, doc = resp.status, await resp.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError):
                self.unanswered += 1
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                break
            # A resend that overtook the first send of its key (the edge was slow
            # to answer, the tablet timed out): retry. Anything else is a finding.
            if not (status == 409 and isinstance(doc, dict) and "in_flight" in str(doc)):
                self.anomalies.append(f"push {step.key}: HTTP {status} {doc}")
            await asyncio.sleep(0.1)
        results = {r["id"]: r["status"] for r in doc["results"]}
        expected = {"applied"} if isinstance(step, TransitionPush) else {"applied", "duplicate"}
        if set(results) != {r["id"] for r in records} or not set(results.values()) <= expected:
            self.anomalies.append(f"push {step.key}: results {doc['results']}")
        if isinstance(step, TransitionPush):
            self.acknowledged_transitions.update(results)
        else:
            self.acknowledged_encounters.update(results)

    async def _report(self, step: MakeReport, deadline: float) -> None:
        for _ in range(20):
            assert time.monotonic() < deadline, f"report {step.period.key} never made"
            self.report_runs += 1
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edgenode.cli",
                "report",
                "--facility",
                FACILITY,
                "--period",
                step.period.key,
                "--data-dir",
                str(self.edge_dir),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            scan_output(err, "edgenode report stderr")  # its log (tests/canaries.py)
            if proc.returncode == 0:
                self.reports_made.add(step.period.key)
                return
            self.anomalies.append(
                f"edgenode report {step.period.key} exited {proc.returncode}: "
                f"{err.decode(errors='replace')[-400:]}"
            )
            await asyncio.sleep(0.2)
        raise AssertionError(f"edgenode report {step.period.key} failed 20 times")


# --------------------------------------------------------------------------- the killers


@dataclass(frozen=True)
class Kill:
    service: str
    phase: str  # starting | store open | serving
    after: float  # seconds into the life


def holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` (or its -wal/-journal) open, from /proc."""
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(target):
                    return True
    return False


@dataclass
class Killer:
    """SIGKILLs and restarts one service until ``quota`` kills, then leaves it up."""

    service: Service
    ready_url: str
    store: Path
    quota: int
    shape: LifeShape
    settings: ChaosSettings
    rng: random.Random
    kills: list[Kill] = field(default_factory=list)
    ready_times: list[float] = field(default_factory=list)

    async def run(self, session: aiohttp.ClientSession, deadline: float) -> None:
        for _ in range(self.quota * 3):
            if len(self.kills) >= self.quota:
                break
            assert time.monotonic() < deadline, (
                f"{self.service.name}: {len(self.kills)} of {self.quota} kills by the deadline"
            )
            self.service.start()
            started = time.monotonic()
            if self.ready_times and self.rng.random() < self.shape.early:
                # Aim at the end of start-up, once the store is open: migrating
                # it, releasing stale claims, resending the batch the last life
                # left, starting to listen (or, now and then, just after).
                await self._until_store_open(started + 2 * max(self.ready_times[-9:]))
                await asyncio.sleep(self.rng.uniform(0.0, self.shape.startup_window))
            else:
                await self.service.wait_ready(session, self.ready_url, within=90)
                self.ready_times.append(time.monotonic() - started)
                await asyncio.sleep(self.rng.uniform(0.0, self.shape.serve_window))
            phase = await self._phase(session)
            await self.service.kill()
            self.kills.append(Kill(self.service.name, phase, time.monotonic() - started))
            await asyncio.sleep(self.rng.uniform(0.0, self.settings.down_window))
        assert len(self.kills) >= self.quota, f"{self.service.name}: too many lives"
        self.service.start()
        await self.service.wait_ready(session, self.ready_url, within=90)

    async def _until_store_open(self, deadline: float) -> None:
        """Poll ``/proc`` until the life opens its store (bounded by ``deadline``)."""
        process = self.service.process
        assert process is not None
        while not holds_open(process.pid, self.store) and time.monotonic() < deadline:
            assert process.poll() is None, (
                f"{self.service.name} exited while starting:\n{self.service.log_tail()}"
            )
            await asyncio.sleep(0.01)

    async def _phase(self, session: aiohttp.ClientSession) -> str:
        process = self.service.process
        assert process is not None
        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
            async with session.get(
                self.ready_url, timeout=aiohttp.ClientTimeout(total=0.25)
            ) as resp:
                if resp.status == 200:
                    return "serving"
        return "store open" if holds_open(process.pid, self.store) else "starting"


# --------------------------------------------------------------------------- the run


@dataclass
class ChaosResult:
    settings: ChaosSettings
    kills: list[Kill]
    proxy: FaultProxy
    driver: FieldDriver
    work: FieldWork
    anomalies: list[str]
    audit: tuple[int, str]
    log_errors: dict[str, list[str]]
    seconds: dict[str, float]
    final_status: dict[str, Any]

    def summary(self) -> str:
        by_phase = Counter((k.service, k.phase) for k in self.kills)
        per_service = Counter(k.service for k in self.kills)
        kills = "; ".join(
            f"{svc} {per_service[svc]} ("
            + ", ".join(
                f"{by_phase[(svc, ph)]} {ph}" for ph in ("starting", "store open", "serving")
            )
            + ")"
            for svc in ("edge", "gateway")
        )
        p, d = self.proxy, self.driver
        return (
            f"chaos seed {self.settings.seed} (PHS_TEST_SEED={self.settings.seed} to rerun it)\n"
            f"kills: {len(self.kills)} SIGKILLs: {kills}\n"
            f"WAN faults over {p.requests} requests on {p.connections} connections: "
            f"{p.resets_mid_request} resets mid-request, {p.resets_after_response} resets "
            f"after the response, {p.delays} delayed chunks, {p.upstream_failures} "
            f"connections to a dead gateway\n"
            f"records: {len(d.acknowledged_transitions)} transitions over "
            f"{len(self.work.plan.item_ids)} items, {len(d.acknowledged_encounters)} "
            f"encounters, {len(d.reports_made)} reports ({d.report_runs} edgenode report runs); "
            f"{d.steps_during_chaos} of {len(self.work.steps)} steps acknowledged during the "
            f"chaos; {d.attempts} tablet requests, {d.unanswered} cut off\n"
            f"final edge status: {self.final_status.get('gatewayDispositions')}, outbox "
            f"{self.final_status.get('outboxDepth')}\n"
            f"audit verify: exit {self.audit[0]}\n"
            f"time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        )


async def run_chaos(tmp_path: Path, settings: ChaosSettings) -> ChaosResult:
    began = time.monotonic()
    rng = random.Random(settings.seed)
    gateway_dir, edge_dir = tmp_path / "gateway", tmp_path / "edge"
    gateway_port, edge_port = free_port(), free_port()
    gateway_url = f"http://{LOOPBACK}:{gateway_port}"
    edge_url = f"http://{LOOPBACK}:{edge_port}"
    proxy = FaultProxy()
    proxy_port = await proxy.start(LOOPBACK, gateway_port)
    proxy_url = f"http://{LOOPBACK}:{proxy_port}"

    admin = await asyncio.to_thread(create_token, gateway_dir)
    await asyncio.to_thread(init_edge, edge_dir, gateway_dir, proxy_url)
    gateway = Service(
        "gateway",
        ["gateway.cli", "serve", "--data-dir", str(gateway_dir), "--port", str(gateway_port)],
        tmp_path / "gateway.log",
        GATEWAY_ENV,
    )
    edge = Service(
        "edge",
        [
            "edgenode.cli",
            "run",
            "--no-discovery",
            "--data-dir",
            str(edge_dir),
            "--host",
            LOOPBACK,
            "--port",
            str(edge_port),
        ],
        tmp_path / "edge.log",
        EDGE_ENV,
    )
    tablets = {d: Tablet(d) for d in DEVICES}
    work = field_work(settings.items, rng, datetime.now(UTC).date())
    killers: dict[str, Killer] = {}

    def progress() -> float:
        done = sum(len(k.kills) for k in killers.values())
        return min(1.0, done / settings.total_kills) if killers else 0.0

    driver = FieldDriver(work, tablets, edge_dir, progress)
    seconds: dict[str, float] = {}
    timeout = aiohttp.ClientTimeout(total=15)
    tasks: list[asyncio.Task[None]] = []
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            gateway.start()
            await gateway.wait_ready(session, f"{gateway_url}/readyz", within=90)
            await import_items(session, gateway_url, admin, work.plan.item_ids)
            edge.start()
            await edge.wait_ready(session, f"{edge_url}/healthz", within=90)
            for tablet in tablets.values():
                await tablet.pair(session, edge_url, edge_dir)
            await wait_for_items(session, tablets[DEVICES[0]], edge_url, settings.items, 60)
            await gateway.kill()
            await edge.kill()
            seconds["setup"] = time.monotonic() - began

            started = time.monotonic()
            deadline = started + settings.time_limit
            proxy.set_plan(FaultPlan(**WAN_FAULTS, seed=settings.seed))  # type: ignore[arg-type]
            killers["edge"] = Killer(
                edge,
                f"{edge_url}/healthz",
                edge_dir / "edgenode.db",
                settings.edge_kills,
                settings.edge,
                settings,
                random.Random(rng.getrandbits(64)),
            )
            killers["gateway"] = Killer(
                gateway,
                f"{gateway_url}/readyz",
                gateway_dir / "gateway.db",
                settings.gateway_kills,
                settings.gateway,
                settings,
                random.Random(rng.getrandbits(64)),
            )
            tasks = [asyncio.create_task(k.run(session, deadline)) for k in killers.values()]
            tasks.append(asyncio.create_task(driver.run(session, edge_url, deadline + 120)))
            await asyncio.gather(*tasks[:2])
            seconds["chaos"] = time.monotonic() - started

            # Heal: a faithful WAN, both services up (the killers left them up).
            healed = time.monotonic()
            proxy.set_plan(FaultPlan())
            await tasks[2]
            await drain(edge_dir / "edgenode.db", set(work.reports), within=120)
            final_status = await asyncio.to_thread(edge_status, edge_dir)
            seconds["heal and drain"] = time.monotonic() - healed
            await edge.stop()
            await gateway.stop()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        edge.ensure_stopped()
        gateway.ensure_stopped()
        await proxy.stop()

    checking = time.monotonic()
    anomalies = driver.anomalies + [f"proxy error: {e!r}" for e in proxy.errors]
    anomalies += check_stores(work, driver, gateway_dir / "gateway.db", edge_dir / "edgenode.db")
    if final_status.get("outboxDepth") != 0 or final_status.get("problems") != 0:
        anomalies.append(f"edgenode status after the drain: {final_status}")
    audit = await asyncio.to_thread(audit_verify, gateway_dir)
    if audit[0] != 0:
        anomalies.append(f"phs-gateway audit verify: {audit[1][-600:]}")
    errors = {n: log_errors(tmp_path / f"{n}.log") for n in ("edge", "gateway")}
    seconds["checks"] = time.monotonic() - checking
    seconds["total"] = time.monotonic() - began
    return ChaosResult(
        settings,
        [k for killer in killers.values() for k in killer.kills],
        proxy,
        driver,
        work,
        anomalies,
        audit,
        errors,
        seconds,
        final_status,
    )


async def drain(edge_db: Path, reports: set[str], within: float) -> None:
    """Until every transition and report has the gateway's answer (bounded)."""
    deadline = time.monotonic() + within
    while True:
        outbox = edge_outbox(edge_db)
        unsent = query(edge_db, "SELECT period_key FROM reports WHERE gateway_status IS NULL")
        made = {r["period_key"] for r in query(edge_db, "SELECT period_key FROM reports")}
        if outbox.unsent == 0 and outbox.open_batches == 0 and not unsent and made == reports:
            return
        assert time.monotonic() < deadline, (
            f"outbox not drained within {within} s: {outbox}, reports unanswered "
            f"{[r['period_key'] for r in unsent]}"
        )
        await asyncio.sleep(0.2)

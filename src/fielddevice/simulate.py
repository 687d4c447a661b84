"""``phs-field simulate``: many tablets in one process, for demos and load.

Each simulated device is a real ``FieldDevice`` with its own directory
(``DATA_DIR/<device id>``: key, config, store), its own gather server on
its own port and its own advert on one shared ``AsyncZeroconf``. Each is
paired (codes from a file, or minted by ``edgenode pair-device``), pulls the
edge's items and records transitions walking its share of them
(assigned → in_progress → contacted → completed). Push-mode devices then
find the edge and push; gather-mode devices only advertise and wait for
the edge to gather. It ends when every record of this run is synced, or at
the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from zeroconf.asyncio import AsyncZeroconf

from fielddevice.client import EdgeRefused, EdgeUnreachable
from fielddevice.device import FieldDevice
from fielddevice.finder import (
    DiscoveryUnavailable,
    EdgeNotFound,
    EdgeWatch,
    Plan,
    choose_for_pairing,
    plan,
    reach,
    start_zeroconf,
)
from fielddevice.service import DeviceRuntime
from fielddevice.settings import CONFIG_NAME, CONFIG_TABLE, FieldSettings
from shared.errors import ValidationFailed
from shared.values import identifier

MODES = ("push", "gather", "mixed")
#: The field worker's walk of an item, one transition per step.
WALK: Mapping[str, str] = {
    "assigned": "in_progress",
    "in_progress": "contacted",
    "contacted": "completed",
}
MINT_CONCURRENCY = 4
PAIR_CONCURRENCY = 8


@dataclass(frozen=True)
class SimOptions:
    devices: int
    transitions: int
    mode: str = "push"
    codes_file: str | None = None
    edge_data_dir: str | None = None
    edge_url: str | None = None
    node: str | None = None
    timeout: float = 120.0
    prefix: str = "sim"


@dataclass(frozen=True)
class Step:
    item_id: str
    from_state: str
    to_state: str
    at: datetime


class SimulationFailed(Exception):
    """The simulation cannot start (no edge, no codes, pairing refused)."""


def read_codes(path: str, count: int) -> list[tuple[str, str]]:
    """The first ``count`` lines ``deviceId code`` of a codes file."""
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2:
            raise ValidationFailed(f"{path}:{number}: expected 'deviceId code'")
        pairs.append((identifier(parts[0], f"{path}:{number} deviceId"), parts[1]))
    if len(pairs) < count:
        raise ValidationFailed(f"{path} has {len(pairs)} codes, fewer than --devices {count}")
    return pairs[:count]


def device_mode(mode: str, index: int) -> str:
    if mode == "mixed":
        return "push" if index % 2 == 0 else "gather"
    return mode


def plan_walk(
    items: Sequence[Mapping[str, Any]],
    index: int,
    devices: int,
    transitions: int,
    now: datetime,
    rng: random.Random,
) -> list[Step]:
    """Device ``index``'s share (items index, index + devices, ... of the walkable
    items by id), walked up to ``transitions`` steps, at increasing past times."""
    walkable = sorted((i for i in items if i.get("state") in WALK), key=lambda i: str(i["id"]))
    mine = walkable[index::devices]
    moves: list[tuple[str, str, str]] = []
    for item in mine:
        state = str(item["state"])
        while state in WALK and len(moves) < transitions:
            moves.append((str(item["id"]), state, WALK[state]))
            state = WALK[state]
        if len(moves) >= transitions:
            break
    # A field day: one move every minute or two, ending a little before now.
    at = now - timedelta(seconds=90 * (len(moves) + 1))
    steps: list[Step] = []
    for item_id, frm, to in moves:
        at = min(at + timedelta(seconds=rng.uniform(30, 120)), now - timedelta(seconds=1))
        steps.append(Step(item_id, frm, to, at))
    return steps


async def mint_code(edge_data_dir: str, device_id: str) -> str:
    """A pairing code from ``edgenode pair-device`` (a subprocess, as an operator would)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgenode.cli",
        "pair-device",
        "--device-id",
        device_id,
        "--data-dir",
        edge_data_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    lines = out.decode().split()
    if proc.returncode != 0 or not lines:
        raise SimulationFailed(
            f"edgenode pair-device --device-id {device_id} failed: {err.decode().strip()}"
        )
    return lines[0]


def write_config(settings: FieldSettings) -> None:
    path = settings.data_path / CONFIG_NAME
    if not path.exists():
        settings.data_path.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"[{CONFIG_TABLE}]\ndevice_id = {json.dumps(settings.device_id)}\n", encoding="utf-8"
        )


class Simulation:
    def __init__(self, base: FieldSettings, options: SimOptions, progress: TextIO) -> None:
        if options.mode not in MODES:
            raise ValidationFailed(f"--mode must be one of {', '.join(MODES)}")
        if options.devices < 1 or options.transitions < 0:
            raise ValidationFailed("--devices must be at least 1, --transitions at least 0")
        self.base = base
        self.options = options
        self.mode = options.mode
        self.progress = progress
        self.notes: list[str] = []
        self.devices: list[FieldDevice] = []
        self.runtimes: list[DeviceRuntime] = []
        self.recorded: dict[str, set[str]] = {}  # device id -> record ids of this run
        self.zc: AsyncZeroconf | None = None
        self.addresses: list[str] = []
        self.watch: EdgeWatch | None = None
        self.why_no_discovery: str | None = None
        self.plan: Plan | None = None
        self.edge_url: str | None = None

    def say(self, message: str) -> None:
        print(f"simulate: {message}", file=self.progress, flush=True)

    async def run(self) -> tuple[dict[str, Any], int]:
        started = time.monotonic()
        deadline = started + self.options.timeout
        self._start_discovery()
        timeout = aiohttp.ClientTimeout(total=self.base.request_timeout_seconds)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await self._open_devices()
                await self._pair(session)
                await self._find_edge(session)
                await self._record(session)
                # Push-mode devices push at once; every device advertises meanwhile.
                pushers = [
                    asyncio.create_task(self._push_until_synced(device, session, deadline))
                    for k, device in enumerate(self.devices)
                    if device_mode(self.mode, k) == "push"
                ]
                try:
                    await self._serve()
                    complete = await self._wait(started, deadline)
                finally:
                    for task in pushers:
                        task.cancel()
                    for task in pushers:
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                summary = await self._summary(started, complete)
        finally:
            await self._close()
        return summary, 0 if complete else 1

    # -- steps -------------------------------------------------------------------

    def _start_discovery(self) -> None:
        if not self.base.discovery:
            self.why_no_discovery = "discovery is off (setting discovery)"
        else:
            try:
                self.zc, self.addresses = start_zeroconf(self.base.interfaces, self.base.host)
                self.watch = EdgeWatch(self.zc)
            except DiscoveryUnavailable as err:
                self.why_no_discovery = str(err)
        if self.zc is None and self.mode != "push":
            self.notes.append(
                f"gather mode is impossible without discovery ({self.why_no_discovery}): "
                "every device pushes instead"
            )
            self.say(self.notes[-1])
            self.mode = "push"

    async def _open_devices(self) -> None:
        if self.watch is not None:
            await self.watch.start()
        if self.options.codes_file:
            self.codes = dict(read_codes(self.options.codes_file, self.options.devices))
            ids = list(self.codes)
        else:
            self.codes = {}
            ids = [f"{self.options.prefix}-{k + 1:03d}" for k in range(self.options.devices)]
        root = Path(self.base.data_dir)
        for device_id in ids:
            settings = replace(
                self.base, device_id=device_id, data_dir=str(root / device_id), port=0
            )
            write_config(settings)
            self.devices.append(await FieldDevice.open(settings, create=True))

    async def _pair(self, session: aiohttp.ClientSession) -> None:
        unpaired = [d for d in self.devices if await d.store.pairing() is None]
        if not unpaired:
            return
        advert = None
        if self.options.edge_url:
            base_url: str | None = self.options.edge_url
        elif self.watch is not None:
            adverts = await self.watch.settled(self.base.discovery_seconds)
            advert, _ = choose_for_pairing(adverts, self.options.node, None)
            base_url = await reach(session, advert.base_urls())
        else:
            base_url = self.base.edge_url or None
        if not base_url:
            raise SimulationFailed(
                f"no edge to pair with: {self.why_no_discovery}; give --edge-url"
            )
        self.say(f"pairing {len(unpaired)} device(s) at {base_url}")
        minting = asyncio.Semaphore(MINT_CONCURRENCY)
        pairing = asyncio.Semaphore(PAIR_CONCURRENCY)

        async def pair_one(device: FieldDevice) -> None:
            code = self.codes.get(device.device_id)
            if code is None:
                if not self.options.edge_data_dir:
                    raise SimulationFailed("give --codes FILE or --edge-data-dir DIR")
                async with minting:
                    code = await mint_code(self.options.edge_data_dir, device.device_id)
            async with pairing:
                await device.pair(
                    session,
                    str(base_url),
                    code,
                    advert_fp=None if advert is None else advert.fingerprint,
                    advert_node=self.options.node if advert is None else advert.node_id,
                )

        await asyncio.gather(*(pair_one(d) for d in unpaired))

    async def _find_edge(self, session: aiohttp.ClientSession) -> None:
        pairings = [await d.store.pairing() for d in self.devices]
        nodes = {(p.node_id, p.fingerprint) for p in pairings if p is not None}
        if len(nodes) != 1 or None in pairings:
            raise SimulationFailed(f"the devices are not all paired with one node: {nodes}")
        pairing = pairings[0]
        assert pairing is not None
        adverts = (
            None
            if self.watch is None or self.options.edge_url
            else await self.watch.settled(self.base.discovery_seconds)
        )
        self.plan = plan(
            adverts, pairing, self.base.edge_url, self.options.edge_url, self.why_no_discovery
        )
        for note in self.plan.notes:
            self.say(note)
        for refusal in self.plan.refused:
            self.say(f"refused edge advert {refusal.advert.name}: {refusal.reason}")
        self.edge_url = await reach(session, self.plan.candidates)
        if self.edge_url is None:
            raise SimulationFailed(f"the edge does not answer at {', '.join(self.plan.candidates)}")
        self.say(f"edge {pairing.node_id} at {self.edge_url} ({self.plan.source})")

    async def _record(self, session: aiohttp.ClientSession) -> None:
        assert self.edge_url is not None
        count = len(self.devices)
        for k, device in enumerate(self.devices):
            await device.pull(device.client(session, self.edge_url))
            items = await device.store.items()
            steps = plan_walk(
                items, k, count, self.options.transitions, device.clock(), random.Random(k)
            )
            ids = self.recorded.setdefault(device.device_id, set())
            for step in steps:
                record = await device.record_transition(
                    step.item_id, step.from_state, step.to_state, step.at
                )
                ids.add(record.record_id)
            if len(steps) < self.options.transitions:
                self.notes.append(
                    f"{device.device_id}: its share of the edge's items allows only "
                    f"{len(steps)} of {self.options.transitions} transitions"
                )
        self.say(f"recorded {sum(len(v) for v in self.recorded.values())} transitions")

    async def _serve(self) -> None:
        self.runtimes = [
            DeviceRuntime(device, self.base.host, 0, self.zc, self.addresses)
            for device in self.devices
        ]
        # Concurrently: registering an advert waits out its probes (a second or two).
        await asyncio.gather(*(runtime.start() for runtime in self.runtimes))
        if self.zc is not None:
            self.say(f"{len(self.runtimes)} devices advertised on {', '.join(self.addresses)}")

    async def _push_until_synced(
        self, device: FieldDevice, session: aiohttp.ClientSession, deadline: float
    ) -> None:
        assert self.plan is not None
        while time.monotonic() < deadline and await device.store.pending_total():
            try:
                await device.sync(session, self.plan)
            except (EdgeUnreachable, EdgeRefused, EdgeNotFound) as err:
                self.say(f"{device.device_id}: push failed, retrying: {err}")
                await asyncio.sleep(1.0)

    async def _wait(self, started: float, deadline: float) -> bool:
        total = sum(len(v) for v in self.recorded.values())
        while True:
            synced = await self._synced_counts()
            done = synced["push"] + synced["gather"]
            self.say(
                f"{done}/{total} synced (push {synced['push']}, gather {synced['gather']}), "
                f"{time.monotonic() - started:.1f} s"
            )
            if done >= total:
                return True
            if time.monotonic() >= deadline:
                self.say(f"timed out with {total - done} record(s) unsynced")
                return False
            await asyncio.sleep(1.0)

    async def _records_of_run(self, device: FieldDevice) -> list[Any]:
        ids = self.recorded.get(device.device_id, set())
        return [r for r in await device.store.records("transition") if r.record_id in ids]

    async def _synced_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter(push=0, gather=0)
        for device in self.devices:
            for record in await self._records_of_run(device):
                if record.synced_via is not None:
                    counts[record.synced_via] += 1
        return counts

    async def _summary(self, started: float, complete: bool) -> dict[str, Any]:
        results: Counter[str] = Counter()
        synced: Counter[str] = Counter(push=0, gather=0)
        per_device = []
        for k, device in enumerate(self.devices):
            mine = await self._records_of_run(device)
            for record in mine:
                if record.synced_via is not None:
                    synced[record.synced_via] += 1
                    results[record.result_status or "unknown"] += 1
            per_device.append(
                {
                    "deviceId": device.device_id,
                    "mode": device_mode(self.mode, k),
                    "port": self.runtimes[k].port if k < len(self.runtimes) else None,
                    "recorded": len(mine),
                    "pending": sum(1 for r in mine if r.synced_at is None),
                }
            )
        recorded = sum(len(v) for v in self.recorded.values())
        return {
            "devices": len(self.devices),
            "mode": self.options.mode,
            "effectiveMode": self.mode,
            "edgeUrl": self.edge_url,
            "edge": None if self.plan is None else self.plan.describe(),
            "recorded": recorded,
            "synced": {"push": synced["push"], "gather": synced["gather"]},
            "pending": recorded - synced["push"] - synced["gather"],
            "results": dict(sorted(results.items())),
            "complete": complete,
            "seconds": round(time.monotonic() - started, 2),
            "notes": self.notes,
            "perDevice": per_device,
        }

    async def _close(self) -> None:
        for runtime in self.runtimes:
            await runtime.stop()
        if self.watch is not None:
            await self.watch.stop()
        if self.zc is not None:
            await self.zc.async_close()
        for device in self.devices:
            await device.close()

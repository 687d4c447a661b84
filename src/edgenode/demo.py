"""The main job on embedded defaults (``make demo``): gateway, edge node, tablets.

Starts a real gateway (SQLite) and a real edge node as subprocesses, enrolls
the node with the command ``edgenode init`` prints, pairs field devices
(``fielddevice``, each with its own key and queue) with one-time codes, lets
them work offline-style (outreach transitions with real conflicts,
encounters), has the edge sign a weekly facility report, and waits until the
edge has forwarded everything. All figures printed are read back from the
services.

LAN discovery needs multicast. When it can (root and ``ip``), the demo runs
inside a private network namespace standing in for the office LAN, so no
mDNS packet touches a real network: the tablets find the edge by its advert
and the last one is gathered by the edge. Otherwise it says so and the
tablets use the edge's configured address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from edgenode.demo_tablets import LAN_INTERFACE, DemoTablets
from fielddevice.device import FieldDevice
from gateway.http import PREFIX
from lan import namespace
from shared.periods import PeriodType, previous_period, utc_bounds, zone
from shared.values import format_timestamp

TENANT = "district-1"
FACILITY = "f-001"
NODE_ID = "edge-01"
TIME_ZONE = "Africa/Nairobi"
FOUND = {
    "discovery": "it found over mDNS (fp checked)",
    "configured": "at its configured address",
    "flag": "at the address given",
}


def say(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout.strip()


async def wait_until(session: aiohttp.ClientSession, url: str, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} within 30 s")


class Demo:
    def __init__(self, data_dir: Path, items: int, tablets: int, discovery: bool) -> None:
        self.data_dir = data_dir
        self.discovery = discovery
        self.items = items
        self.tablet_count = tablets
        self.gw_dir = data_dir / "gateway"
        self.edge_dir = data_dir / "edge"
        self.gateway = f"http://127.0.0.1:{free_port()}"
        self.edge = f"http://127.0.0.1:{free_port()}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.rng = random.Random(47)
        self.admin = ""
        self.service = ""

    def start(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        log = open(self.data_dir / f"{name}.log", "wb")
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
        )

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=15)

    def set_up(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        gw_port = self.gateway.rsplit(":", 1)[1]
        say(f"[1/8] gateway on SQLite ({self.gw_dir}/gateway.db) at {self.gateway}")
        self.admin = cli(
            "gateway.cli",
            "create-token",
            "--tenant",
            TENANT,
            "--role",
            "admin",
            "--data-dir",
            str(self.gw_dir),
        )
        self.service = cli(
            "gateway.cli",
            "create-token",
            "--tenant",
            TENANT,
            "--role",
            "service",
            "--data-dir",
            str(self.gw_dir),
        )
        self.start(
            "gateway",
            ["gateway.cli", "serve", "--data-dir", str(self.gw_dir), "--port", gw_port],
            {},
        )
        say(f"[2/8] edge node {NODE_ID}: edgenode init, then the enrollment it prints")
        printed = cli(
            "edgenode.cli",
            "init",
            "--node-id",
            NODE_ID,
            "--tenant",
            TENANT,
            "--facility",
            FACILITY,
            "--gateway-url",
            self.gateway,
            "--time-zone",
            TIME_ZONE,
            "--data-dir",
            str(self.edge_dir),
        )
        enroll = next(line for line in printed.splitlines() if "enroll-node" in line)
        cli("gateway.cli", *shlex.split(enroll.strip())[1:], "--data-dir", str(self.gw_dir))
        say(f"      {printed.splitlines()[1]}; enrolled at the gateway")

    def start_edge(self) -> None:
        self.start(
            "edge",
            [
                "edgenode.cli",
                "run",
                "--data-dir",
                str(self.edge_dir),
                "--host",
                "127.0.0.1",
                "--port",
                self.edge.rsplit(":", 1)[1],
                *(["--interface", LAN_INTERFACE] if self.discovery else ["--no-discovery"]),
            ],
            {
                "PHS_EDGE_PULL_INTERVAL_SECONDS": "1",
                "PHS_EDGE_FORWARD_INTERVAL_SECONDS": "1",
                # Reports are made on demand below, after last week's encounters
                # arrive; a real node generates them on schedule (the default).
                "PHS_EDGE_REPORT_SCHEDULE": "false",
            },
        )

    async def run(self) -> None:
        tablets = DemoTablets(self.data_dir, self.edge, NODE_ID, self.discovery, say)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_until(session, f"{self.gateway}/readyz", "the gateway")
                await self.import_items(session)
                self.start_edge()
                await wait_until(session, f"{self.edge}/healthz", "the edge node")
                devices = await tablets.open(self.tablet_count)
                await self.pair_tablets(session, tablets, devices)
                await self.wait_for_items(session, tablets, devices[0])
                await self.field_work(session, tablets, devices)
                self.sign_report()
                await self.wait_for_drain(session)
                await self.summary(session)
        finally:
            await tablets.close()

    async def import_items(self, session: aiohttp.ClientSession) -> None:
        say(f"[3/8] importing {self.items} outreach items at the gateway (state assigned)")
        headers = {"Authorization": f"Bearer {self.admin}"}
        for n in range(self.items):
            async with session.post(
                f"{self.gateway}{PREFIX}/outreach-items",
                headers=headers,
                json={
                    "id": f"oi-{n:04d}",
                    "facilityId": FACILITY,
                    "state": "assigned",
                    "assigneeId": "chw-7",
                    "patientRef": f"p-{n}",
                },
            ) as resp:
                if resp.status != 201:
                    raise SystemExit(f"gateway refused an item: {await resp.text()}")

    async def pair_tablets(
        self, session: aiohttp.ClientSession, tablets: DemoTablets, devices: list[FieldDevice]
    ) -> None:
        how = "found over mDNS" if self.discovery else "at the configured edge address"
        say(f"[4/8] pairing {len(devices)} field devices with one-time codes ({how})")
        for device in devices:
            code = cli(
                "edgenode.cli",
                "pair-device",
                "--device-id",
                device.device_id,
                "--data-dir",
                str(self.edge_dir),
            )
            line = await tablets.pair(session, device, code)
            say(f"      {device.device_id}: code {code}: {line}")

    async def wait_for_items(
        self, session: aiohttp.ClientSession, tablets: DemoTablets, device: FieldDevice
    ) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await tablets.sync(session, device)
            items = await device.store.items()
            if len(items) >= self.items:
                say(f"      the edge pulled {len(items)} items from the gateway; tablets read them")
                return
            await asyncio.sleep(0.3)
        raise SystemExit("the edge did not pull the items within 30 s")

    async def field_work(
        self, session: aiohttp.ClientSession, tablets: DemoTablets, devices: list[FieldDevice]
    ) -> None:
        say("[5/8] tablets record outreach work and encounters offline, then sync")
        now = datetime.now(UTC)
        steps_all = [
            ("assigned", "in_progress"),
            ("in_progress", "contacted"),
            ("contacted", "completed"),
        ]
        for n in range(self.items):
            device = devices[n % len(devices)]
            item = f"oi-{n:04d}"
            # oi-0000 stops at contacted: a second tablet's report then races it (below).
            steps = steps_all[:2] if n == 0 else steps_all[: self.rng.choice([1, 2, 3, 3])]
            for k, (frm, to) in enumerate(steps):
                await device.record_transition(
                    item, frm, to, now - timedelta(hours=3 - k), "chw-7", f"{item}-{k}"
                )
        # Two tablets visited one patient while offline: the later report wins (LWW).
        other = devices[1 % len(devices)]
        await other.record_transition(
            "oi-0000",
            "in_progress",
            "unreachable",
            now - timedelta(minutes=5),
            "chw-7",
            "late-visit",
        )
        encounters = self.encounters(now)
        for encounter in encounters:
            await devices[0].record_encounter(encounter)
        say(f"      {len(encounters)} encounters recorded on {devices[0].device_id}")
        gathered = devices[-1] if self.discovery and len(devices) > 1 else None
        counts: Counter[str] = Counter()
        for device in devices:
            if device is gathered:
                continue
            summary = await tablets.sync(session, device)
            counts.update(summary["pushed"]["results"])
            sent = summary["pushed"]["sent"]
            say(
                f"      {device.device_id} pushed {sent['transitions']} transitions and "
                f"{sent['encounters']} encounters to the edge {FOUND[summary['found']]}"
            )
        say(f"      edge answers (local): {dict(counts)}")
        if gathered is not None:
            count = await tablets.wait_to_be_gathered(gathered)
            say(f"      the edge gathered {count} records from {gathered.device_id}")

    def encounters(self, now: datetime) -> list[dict[str, Any]]:
        tz = zone(TIME_ZONE)
        self.period = previous_period(now.astimezone(tz).date(), PeriodType.WEEKLY)
        start, end = utc_bounds(self.period, tz)
        minutes = int((end - start).total_seconds() // 60)
        out = []
        for n in range(300):
            kind = self.rng.choice(["visit", "screening", "immunization"])
            out.append(
                {
                    "id": f"enc-{n}",
                    "patientRef": f"p-{self.rng.randrange(120)}",
                    "facilityId": FACILITY,
                    "occurredAt": format_timestamp(
                        start + timedelta(minutes=self.rng.randrange(minutes))
                    ),
                    "kind": kind,
                    "screeningDue": self.rng.random() < 0.4,
                    "immunizationDue": self.rng.random() < 0.3,
                }
            )
        return out

    def sign_report(self) -> None:
        say(f"[6/8] edgenode report --facility {FACILITY} --period {self.period.key}")
        printed = cli(
            "edgenode.cli",
            "report",
            "--facility",
            FACILITY,
            "--period",
            self.period.key,
            "--data-dir",
            str(self.edge_dir),
        )
        metrics = json.loads(printed.split("\n", 1)[1])["metrics"]
        say(f"      signed and queued: {json.dumps(metrics)}")

    async def wait_for_drain(self, session: aiohttp.ClientSession) -> None:
        say("[7/8] waiting for the edge to forward everything to the gateway")
        deadline = time.monotonic() + 60
        last = -1
        while time.monotonic() < deadline:
            status = json.loads(cli("edgenode.cli", "status", "--data-dir", str(self.edge_dir)))
            if status["outboxDepth"] != last:
                say(
                    f"      outbox depth {status['outboxDepth']}, open batches "
                    f"{status['openBatches']}, last forward {status['lastForwardOk']}"
                )
                last = status["outboxDepth"]
            if status["outboxDepth"] == 0:
                return
            await asyncio.sleep(0.5)
        raise SystemExit(
            f"the edge did not drain its outbox within 60 s; see {self.data_dir}/edge.log"
        )

    async def summary(self, session: aiohttp.ClientSession) -> None:
        say("[8/8] what the gateway holds now")
        headers = {"Authorization": f"Bearer {self.admin}"}
        states: Counter[str] = Counter()
        for n in range(self.items):
            async with session.get(
                f"{self.gateway}{PREFIX}/outreach-items/oi-{n:04d}", headers=headers
            ) as resp:
                item = await resp.json()
            states[item["state"]] += 1
            if n == 0:
                history = ", ".join(f"{h['id']} {h['disposition']}" for h in item["history"])
        say(f"      item states: {dict(states)}")
        say(f"      oi-0000 history: {history}")
        async with session.get(
            f"{self.gateway}{PREFIX}/analytics/facility-reports", headers=headers
        ) as resp:
            for report in (await resp.json())["reports"]:
                say(
                    f"      report {report['facilityId']} {report['periodKey']} from "
                    f"{report['deviceId']}: {json.dumps(report['metrics'])}"
                )
        async with session.get(
            f"{self.gateway}{PREFIX}/events", headers={"Authorization": f"Bearer {self.service}"}
        ) as resp:
            events = (await resp.json())["events"]
        say(f"      events: {dict(Counter(e['type'] for e in events))}")
        status = json.loads(cli("edgenode.cli", "status", "--data-dir", str(self.edge_dir)))
        for seen in status["devicesSeen"]:
            say(
                f"      the edge saw {seen['deviceId']} on the LAN at "
                f"{', '.join(seen['addresses'])}:{seen['port']} (paired: {seen['paired']}, "
                f"gathered {seen['gatheredRecords']} records)"
            )
        say(f"done: edge status page was {self.edge}/ ; logs and databases stay in {self.data_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="demo-data", type=Path)
    parser.add_argument("--items", default=200, type=int)
    parser.add_argument("--tablets", default=3, type=int)
    parser.add_argument(
        "--no-discovery", action="store_true", help="tablets use the configured edge address"
    )
    parser.add_argument("--inside-namespace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside_namespace is None and not args.no_discovery:
        reason = namespace.unavailable_reason()
        if reason is None:
            raise SystemExit(_run_in_namespace())
        say(
            f"LAN discovery is not available here ({reason}): the tablets fall back to "
            "the edge's configured address, and none is gathered"
        )
    elif args.no_discovery:
        say("LAN discovery is off (--no-discovery): the tablets use the edge's configured address")
    demo = Demo(args.data_dir, args.items, args.tablets, args.inside_namespace is not None)
    demo.set_up()
    try:
        asyncio.run(demo.run())
    finally:
        demo.stop()


def _run_in_namespace() -> int:
    """Run this demo again inside a private network namespace: the office LAN."""
    name = f"phs-demo-{os.getpid()}"
    try:
        namespace.create(name)
    except namespace.NamespaceUnavailable as err:
        say(f"LAN discovery is not available here ({err}): rerun with --no-discovery")
        return 1
    say(
        f"LAN discovery: the office LAN is a private network namespace ({name}); mDNS "
        "stays inside it, and the tablets find the edge by its advert"
    )
    try:
        return subprocess.call(
            [
                *namespace.exec_prefix(name),
                sys.executable,
                "-m",
                "edgenode.demo",
                "--inside-namespace",
                name,
                *sys.argv[1:],
            ]
        )
    finally:
        namespace.delete(name)


if __name__ == "__main__":
    main()

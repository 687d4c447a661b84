"""The main job on embedded defaults (``make demo``): gateway, edge node, tablets.

Starts a real gateway (SQLite) and a real edge node as subprocesses, enrolls
the node with the command ``edgenode init`` prints, pairs simulated tablets
with one-time codes, lets them work offline-style against the edge (outreach
transitions with real conflicts, encounters), has the edge sign a weekly
facility report, and waits until the edge has forwarded everything. All
figures printed are read back from the services.
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from gateway.http import PREFIX
from shared.periods import PeriodType, previous_period, utc_bounds, zone
from shared.signing import KeyPair, authorization_header
from shared.values import format_timestamp

TENANT = "district-1"
FACILITY = "f-001"
NODE_ID = "edge-01"
TIME_ZONE = "Africa/Nairobi"


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


@dataclass
class Tablet:
    device_id: str
    keypair: KeyPair
    edge: str

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, document: Any = None
    ) -> Any:
        body = b"" if document is None else json.dumps(document).encode()
        headers = {
            "Authorization": authorization_header(
                self.keypair, self.device_id, method, path, body, int(time.time())
            ),
            "Content-Type": "application/json",
        }
        async with session.request(method, self.edge + path, data=body, headers=headers) as resp:
            doc = await resp.json(content_type=None)
            if resp.status >= 400:
                raise SystemExit(f"edge refused {method} {path}: {doc}")
            return doc


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
    def __init__(self, data_dir: Path, items: int, tablets: int) -> None:
        self.data_dir = data_dir
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
        async with aiohttp.ClientSession() as session:
            await wait_until(session, f"{self.gateway}/readyz", "the gateway")
            await self.import_items(session)
            self.start_edge()
            await wait_until(session, f"{self.edge}/healthz", "the edge node")
            tablets = await self.pair_tablets(session)
            await self.wait_for_items(session, tablets[0])
            await self.field_work(session, tablets)
            self.sign_report()
            await self.wait_for_drain(session)
            await self.summary(session)

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

    async def pair_tablets(self, session: aiohttp.ClientSession) -> list[Tablet]:
        say(f"[4/8] pairing {self.tablet_count} tablets with one-time codes")
        tablets = []
        for n in range(self.tablet_count):
            tablet = Tablet(f"tab-{n + 1}", KeyPair.generate(), self.edge)
            code = cli(
                "edgenode.cli",
                "pair-device",
                "--device-id",
                tablet.device_id,
                "--data-dir",
                str(self.edge_dir),
            )
            async with session.post(
                f"{self.edge}{PREFIX}/devices/pair",
                json={
                    "pairingCode": code,
                    "deviceId": tablet.device_id,
                    "publicKey": tablet.keypair.public_key_b64,
                },
            ) as resp:
                answer = await resp.json()
                if resp.status != 201:
                    raise SystemExit(f"pairing refused: {answer}")
            say(
                f"      {tablet.device_id}: code {code} → paired with node "
                f"{answer['nodeId']} (fp {answer['fp']})"
            )
            tablets.append(tablet)
        return tablets

    async def wait_for_items(self, session: aiohttp.ClientSession, tablet: Tablet) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            doc = await tablet.call(session, "GET", f"{PREFIX}/outreach-items?limit=5000")
            if len(doc["items"]) >= self.items:
                say(f"      the edge pulled {len(doc['items'])} items from the gateway")
                return
            await asyncio.sleep(0.3)
        raise SystemExit("the edge did not pull the items within 30 s")

    async def field_work(self, session: aiohttp.ClientSession, tablets: list[Tablet]) -> None:
        say("[5/8] tablets push outreach work and encounters to the edge")
        now = datetime.now(UTC)
        counts: Counter[str] = Counter()
        for n in range(self.items):
            tablet = tablets[n % len(tablets)]
            item = f"oi-{n:04d}"
            steps = [
                ("assigned", "in_progress"),
                ("in_progress", "contacted"),
                ("contacted", "completed"),
            ]
            # oi-0000 stops at contacted: a second tablet's report then races it (below).
            steps = steps[:2] if n == 0 else steps[: self.rng.choice([1, 2, 3, 3])]
            transitions = [
                self.transition(
                    f"{item}-{k}", item, frm, to, tablet.device_id, now - timedelta(hours=3 - k)
                )
                for k, (frm, to) in enumerate(steps)
            ]
            doc = await tablet.call(
                session, "POST", f"{PREFIX}/sync/outreach", {"transitions": transitions}
            )
            counts.update(r["status"] for r in doc["results"])
        # Two tablets visited one patient while offline: the later report wins (LWW).
        other = tablets[1 % len(tablets)]
        doc = await other.call(
            session,
            "POST",
            f"{PREFIX}/sync/outreach",
            {
                "transitions": [
                    self.transition(
                        "late-visit",
                        "oi-0000",
                        "in_progress",
                        "unreachable",
                        other.device_id,
                        now - timedelta(minutes=5),
                    )
                ]
            },
        )
        counts.update(r["status"] for r in doc["results"])
        say(f"      edge answers (local): {dict(counts)}")
        encounters = self.encounters(now)
        for start in range(0, len(encounters), 100):
            await tablets[0].call(
                session,
                "POST",
                f"{PREFIX}/sync/encounters",
                {"encounters": encounters[start : start + 100]},
            )
        say(f"      {len(encounters)} encounters recorded (kept on the edge, never forwarded)")

    def transition(
        self, tid: str, item: str, frm: str, to: str, device: str, at: datetime
    ) -> dict[str, Any]:
        return {
            "id": tid,
            "itemId": item,
            "from": frm,
            "to": to,
            "occurredAt": format_timestamp(at),
            "deviceId": device,
            "actorId": "chw-7",
        }

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
        say(f"done: edge status page was {self.edge}/ ; logs and databases stay in {self.data_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="demo-data", type=Path)
    parser.add_argument("--items", default=200, type=int)
    parser.add_argument("--tablets", default=3, type=int)
    args = parser.parse_args()
    demo = Demo(args.data_dir, args.items, args.tablets)
    demo.set_up()
    try:
        asyncio.run(demo.run())
    finally:
        demo.stop()


if __name__ == "__main__":
    main()

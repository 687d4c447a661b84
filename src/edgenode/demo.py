"""The main job on embedded defaults (``make demo``): gateway, edge node, tablets.

Starts a real gateway (SQLite) and a real edge node as subprocesses, enrolls
the node with the command ``edgenode init`` prints, pairs field devices
(``fielddevice``, each with its own key and queue) with one-time codes, lets
them work offline-style (outreach transitions with real conflicts,
encounters), has the edge sign a weekly facility report, and waits until the
edge has forwarded everything. It ends with a summary whose every figure is
read back from the services, and the edge's status page URL, checked to
answer from this host; then it keeps the services up until Ctrl-C when run
from a terminal (``--exit``, or no terminal, stops at once).

The services' logs go to files under the data directory (paths printed); the
console shows numbered steps and progress.

LAN discovery needs multicast. When it can (root and ``ip``), the demo runs
inside a private network namespace standing in for the office LAN, so no
mDNS packet touches a real network: the tablets find the edge by its advert
and the last one is gathered by the edge. The host reaches the edge's status
page through a port on its own loopback (``demo_host.HostWindow``).
Otherwise it says so and the tablets use the edge's configured address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp

from edgenode.demo_host import HostWindow
from edgenode.demo_output import Console, Figures
from edgenode.demo_tablets import LAN_INTERFACE, DemoTablets, record_offline_work
from edgenode.settings import EdgeSettings
from edgenode.status import collect_status
from edgenode.store.database import EdgeDatabase
from fielddevice.device import FieldDevice
from gateway.http import PREFIX
from lan import namespace
from shared.periods import zone

TENANT = "district-1"
FACILITY = "f-001"
NODE_ID = "edge-01"
TIME_ZONE = "Africa/Nairobi"
STEPS = 8
FOUND = {
    "discovery": "it found over mDNS (fp checked)",
    "configured": "at its configured address",
    "flag": "at the address given",
}
PAIRING_CODE = re.compile(r"^[0-9A-Z]{5}-[0-9A-Z]{5}$")
LOG_TAIL_LINES = 20
# The one-shot commands' own logs stay quiet: their stdout is read by the demo.
QUIET = {"PHS_EDGE_LOG_LEVEL": "WARNING", "PHS_GATEWAY_LOG_LEVEL": "WARNING"}

console = Console(STEPS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("NOTIFY_SOCKET", None)  # the demo's services are not systemd's
    return env


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=child_env(QUIET)
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def flags(**values: str) -> list[str]:
    """``--node-id X --data-dir Y`` from ``node_id=X, data_dir=Y``."""
    return [arg for name, value in values.items() for arg in (f"--{name.replace('_', '-')}", value)]


def json_document(printed: str) -> Any:
    """The indented JSON document in a command's output (from a line ``{``
    to the next line ``}``)."""
    lines = printed.splitlines()
    start = lines.index("{")
    return json.loads("\n".join(lines[start : lines.index("}", start) + 1]))


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
    def __init__(
        self,
        data_dir: Path,
        items: int,
        tablets: int,
        discovery: bool,
        window: HostWindow,
        patient_prefix: str = "p-",
    ) -> None:
        self.data_dir = data_dir
        self.patient_prefix = patient_prefix
        self.discovery = discovery
        self.items = items
        self.tablet_count = tablets
        self.window = window
        self.gw_dir = data_dir / "gateway"
        self.edge_dir = data_dir / "edge"
        self.gateway = f"http://127.0.0.1:{free_port()}"
        self.edge = f"http://127.0.0.1:{free_port()}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.rng = random.Random(47)
        self.admin = ""

    # -- processes -------------------------------------------------------------

    def start(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        path = self.data_dir / f"{name}.log"
        self.logs.append(path)
        with open(path, "wb") as log:
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env(env),
                    # Ctrl-C in the terminal reaches the demo only; it stops these.
                    start_new_session=True,
                )
            )

    def stop(self) -> None:
        for process in reversed(self.processes):  # the edge before its gateway
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def show_logs(self, out: IO[str] = sys.stderr) -> None:
        """On failure: the end of each service's log, and where the rest is."""
        for path in self.logs:
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            print(f"--- last {len(lines)} lines of {path}", file=out)
            print("\n".join(lines), file=out)

    # -- the steps ---------------------------------------------------------------

    def set_up(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        console.step(f"starting the gateway (the WAN side) on SQLite at {self.gateway}")
        self.admin = self.create_token("admin")
        token_file = self.data_dir / "admin-token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.admin + "\n")  # for the gateway's admin page
        self.start(
            "gateway",
            ["gateway.cli", "serve", *flags(data_dir=str(self.gw_dir), port=_port(self.gateway))],
            {},
        )
        console.info(f"database {self.gw_dir}/gateway.db; an admin token made (create-token)")
        console.step(f"setting up edge node {NODE_ID}: edgenode init, then the enrollment")
        printed = cli(
            "edgenode.cli",
            "init",
            *flags(
                node_id=NODE_ID,
                tenant=TENANT,
                facility=FACILITY,
                gateway_url=self.gateway,
                time_zone=TIME_ZONE,
                data_dir=str(self.edge_dir),
            ),
        )
        lines = printed.splitlines()
        enroll = next(line for line in lines if "enroll-node" in line)
        cli("gateway.cli", *shlex.split(enroll.strip())[1:], "--data-dir", str(self.gw_dir))
        key = next(line for line in lines if line.startswith("fingerprint"))
        console.info(f"key {key}; enrolled at the gateway for {TENANT}/{FACILITY}")

    def create_token(self, role: str) -> str:
        printed = cli(
            "gateway.cli",
            "create-token",
            *flags(tenant=TENANT, role=role, data_dir=str(self.gw_dir)),
        )
        return next(line for line in printed.splitlines() if line.startswith("phs_"))

    def start_edge(self) -> None:
        self.start(
            "edge",
            [
                "edgenode.cli",
                "run",
                *flags(data_dir=str(self.edge_dir), host="127.0.0.1", port=_port(self.edge)),
                *(flags(interface=LAN_INTERFACE) if self.discovery else ["--no-discovery"]),
            ],
            {
                "PHS_EDGE_PULL_INTERVAL_SECONDS": "1",
                "PHS_EDGE_FORWARD_INTERVAL_SECONDS": "1",
                # Reports are made on demand below, after last week's encounters
                # arrive; a real node generates them on schedule (the default).
                "PHS_EDGE_REPORT_SCHEDULE": "false",
            },
        )

    async def run(self, hold: bool, hold_seconds: float | None) -> None:
        tablets = DemoTablets(self.data_dir, self.edge, NODE_ID, self.discovery, console.info)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_until(session, f"{self.gateway}/readyz", "the gateway")
                await self.import_items(session)
                console.step(f"starting edge {NODE_ID}, pairing {_tablets(self.tablet_count)}")
                self.start_edge()
                await wait_until(session, f"{self.edge}/healthz", "the edge node")
                console.info(f"edgenode run: tablet API and status page at {self.edge}")
                devices = await tablets.open(self.tablet_count)
                await self.pair_tablets(session, tablets, devices)
                await self.wait_for_items(session, tablets, devices[0])
                await self.field_work(session, tablets, devices)
                self.sign_report()
                await self.wait_for_drain()
                figures = await self.read_back(session, devices)
                await self.finish(figures, hold, hold_seconds)
        finally:
            await tablets.close()
            await self.window.close()

    async def import_items(self, session: aiohttp.ClientSession) -> None:
        console.step(f"importing {self.items} outreach items at the gateway (state assigned)")
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
                    "patientRef": f"{self.patient_prefix}{n}",
                },
            ) as resp:
                if resp.status != 201:
                    raise SystemExit(f"gateway refused an item: {await resp.text()}")
            console.progress(f"imported {n + 1}/{self.items} items")
        console.info(f"imported {self.items}/{self.items} items (POST …/outreach-items)")

    async def pair_tablets(
        self, session: aiohttp.ClientSession, tablets: DemoTablets, devices: list[FieldDevice]
    ) -> None:
        for n, device in enumerate(devices, 1):
            code = next(
                line
                for line in cli(
                    "edgenode.cli",
                    "pair-device",
                    *flags(device_id=device.device_id, data_dir=str(self.edge_dir)),
                ).splitlines()
                if PAIRING_CODE.match(line)
            )
            line = await tablets.pair(session, device, code)
            console.info(f"{n}/{len(devices)} {device.device_id} with code {code}: {line}")

    async def wait_for_items(
        self, session: aiohttp.ClientSession, tablets: DemoTablets, device: FieldDevice
    ) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await tablets.sync(session, device)
            items = await device.store.items()
            console.progress(f"{device.device_id} has read {len(items)}/{self.items} items")
            if len(items) >= self.items:
                console.info(
                    f"the edge pulled the {len(items)} items from the gateway; "
                    f"{device.device_id} read them from the edge"
                )
                return
            await asyncio.sleep(0.3)
        raise SystemExit("the edge did not pull the items within 30 s")

    async def field_work(
        self, session: aiohttp.ClientSession, tablets: DemoTablets, devices: list[FieldDevice]
    ) -> None:
        console.step("tablets record outreach work and encounters offline, then sync")
        self.period = await record_offline_work(
            devices,
            self.items,
            FACILITY,
            zone(TIME_ZONE),
            self.rng,
            datetime.now(UTC),
            self.patient_prefix,
        )
        for device in devices:
            pending = await device.store.pending_counts()
            console.info(
                f"{device.device_id} made {sum(pending.values())} records offline "
                f"({_plain(pending)})"
            )
        gathered = devices[-1] if self.discovery and len(devices) > 1 else None
        for n, device in enumerate(devices, 1):
            if device is gathered:
                continue
            summary = await tablets.sync(session, device)
            sent, answers = summary["pushed"]["sent"], summary["pushed"]["results"]
            console.info(
                f"{n}/{len(devices)} tablets: {device.device_id} pushed "
                f"{sent['transitions'] + sent['encounters']} records ({sent['transitions']} "
                f"transitions, {sent['encounters']} encounters) to the edge "
                f"{FOUND[summary['found']]}; the edge answered {_plain(answers)}"
            )
        if gathered is not None:
            count = await tablets.wait_to_be_gathered(gathered)
            console.info(
                f"{len(devices)}/{len(devices)} tablets: the edge gathered {count} records "
                f"from {gathered.device_id}"
            )

    def sign_report(self) -> None:
        console.step(
            f"the edge signs last week's facility report: edgenode report --facility "
            f"{FACILITY} --period {self.period.key}"
        )
        printed = cli(
            "edgenode.cli",
            "report",
            *flags(facility=FACILITY, period=self.period.key, data_dir=str(self.edge_dir)),
        )
        metrics = json_document(printed)["metrics"]
        console.info(f"signed and queued: {json.dumps(metrics)}")

    async def edge_status(self) -> dict[str, Any]:
        """What ``edgenode status`` prints, read the same way: from the edge's
        own store (in this process, sparing a command's start-up per look)."""
        db = await EdgeDatabase(EdgeSettings(data_dir=str(self.edge_dir)).database_path).open()
        try:
            async with db.read() as conn:
                return await collect_status(conn, datetime.now(UTC))
        finally:
            await db.close()

    async def wait_for_drain(self) -> None:
        console.step("the edge forwards everything to the gateway (msgpack batches)")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = await self.edge_status()
            answered = sum(n for k, n in status["gatewayDispositions"].items() if k != "unanswered")
            console.progress(
                f"outbox: {status['outboxDepth']} records waiting, {status['openBatches']} "
                f"batches open; {answered} transitions answered by the gateway"
            )
            if status["outboxDepth"] == 0:
                console.info(
                    f"outbox empty: {answered} transitions and the report forwarded "
                    f"(last forward {status['lastForwardOk']})"
                )
                return
            await asyncio.sleep(0.5)
        raise SystemExit(f"the edge did not drain its outbox within 60 s; see {self.logs[-1]}")

    async def read_back(
        self, session: aiohttp.ClientSession, devices: list[FieldDevice]
    ) -> Figures:
        console.step("reading back what the tablets, the edge and the gateway hold")
        headers = {"Authorization": f"Bearer {self.admin}"}
        states: Counter[str] = Counter()
        dispositions: Counter[str] = Counter()
        history = ""
        for n in range(self.items):
            async with session.get(
                f"{self.gateway}{PREFIX}/outreach-items/oi-{n:04d}", headers=headers
            ) as resp:
                item = await resp.json()
            states[item["state"]] += 1
            dispositions.update(h["disposition"] for h in item["history"])
            if n == 0:
                history = ", ".join(f"{h['id']} {h['disposition']}" for h in item["history"])
            console.progress(f"read {n + 1}/{self.items} items from the gateway")
        console.info(f"two tablets raced on oi-0000; its history at the gateway: {history}")
        async with session.get(
            f"{self.gateway}{PREFIX}/analytics/facility-reports", headers=headers
        ) as resp:
            reports = (await resp.json())["reports"]
        async with session.get(f"{self.gateway}{PREFIX}/events", headers=headers) as resp:
            events = (await resp.json())["events"]
        edge = await self.edge_status()
        problems = edge["problems"] + edge["refusedWrites"]
        return Figures(
            tablets=[await device.status() for device in devices],
            edge=edge,
            edge_problems=cli("edgenode.cli", "problems", *flags(data_dir=str(self.edge_dir)))
            if problems
            else "",
            gateway_dispositions=dispositions,
            gateway_states=states,
            gateway_reports=reports,
            gateway_events=Counter(e["type"] for e in events),
        )

    async def finish(self, figures: Figures, hold: bool, hold_seconds: float | None) -> None:
        """The summary, then the URLs (each checked from the host), then serve or stop."""
        edge_url = f"{await self.window.open(self.edge)}/"
        gateway = await self.window.open(self.gateway)
        edge_check = await self.window.check_page(edge_url)
        gateway_check = await self.window.check_page(f"{gateway}/readyz")
        admin_check = await self.window.check_page(
            f"{gateway}/admin", {"Authorization": f"Bearer {self.admin}"}
        )
        console.say("")
        for line in figures.lines():
            console.say(line)
        console.say("")
        console.say(f"Edge status page:   {edge_url}  ({edge_check.describe()})")
        console.say(f"Gateway:            {gateway}/readyz  ({gateway_check.describe()})")
        if admin_check.ok:
            token_file = self.data_dir / "admin-token"
            console.say(f"Gateway admin page: {admin_check.url}  ({admin_check.describe()})")
            console.say(f"                    log in with the admin token in {token_file}")
        if self.window.host_netns is not None:
            console.say(
                "                    (the services listen inside the office-LAN namespace; "
                "the demo forwards these host ports to them)"
            )
        console.say(
            f"Logs and databases: {self.data_dir}/ ({', '.join(p.name for p in self.logs)})"
        )
        if not (edge_check.ok and gateway_check.ok):
            raise SystemExit(
                f"a page did not load from this host: {edge_check.describe()}, "
                f"{gateway_check.describe()}"
            )
        if not hold:
            console.say("stopping the gateway and the edge (--exit, or not run from a terminal)")
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        limit = "" if hold_seconds is None else f" (stopping by itself in {hold_seconds:g} s)"
        console.say(f"Open {edge_url} — press Ctrl-C to stop{limit}")
        try:
            await asyncio.wait_for(stop.wait(), hold_seconds)
        except TimeoutError:
            pass
        console.say("stopping the gateway and the edge")


def _tablets(count: int) -> str:
    return f"{count} tablet{'' if count == 1 else 's'}"


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


def _plain(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items()) or "nothing"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edgenode.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", default="demo-data", type=Path)
    parser.add_argument("--items", default=200, type=int, help="outreach items (default 200)")
    parser.add_argument("--tablets", default=3, type=int, help="field devices (default 3)")
    parser.add_argument(
        "--no-discovery", action="store_true", help="tablets use the configured edge address"
    )
    parser.add_argument(
        "--exit",
        action="store_true",
        help="stop after the summary (the default when stdin is not a terminal)",
    )
    parser.add_argument(
        "--serve-for",
        type=float,
        metavar="SECONDS",
        help="after the summary keep serving at most SECONDS, then stop (even without a "
        "terminal; Ctrl-C or SIGTERM stops earlier)",
    )
    parser.add_argument(
        "--patient-prefix",
        default="p-",
        help="what the made-up patient references start with (default p-; the tests use a "
        "canary, to look for it where patient data must never be)",
    )
    parser.add_argument("--inside-namespace", help=argparse.SUPPRESS)
    parser.add_argument("--host-netns", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.inside_namespace is None and not args.no_discovery:
        reason = namespace.unavailable_reason()
        if reason is None:
            raise SystemExit(_run_in_namespace())
        console.say(
            f"LAN discovery is not available here ({reason}): the tablets fall back to "
            "the edge's configured address, and none is gathered"
        )
    elif args.no_discovery:
        console.say(
            "LAN discovery is off (--no-discovery): the tablets use the edge's configured address"
        )
    if args.exit:
        hold, hold_seconds = False, None
    elif args.serve_for is not None:
        hold, hold_seconds = True, args.serve_for
    else:
        hold, hold_seconds = sys.stdin.isatty(), None
    demo = Demo(
        args.data_dir,
        args.items,
        args.tablets,
        args.inside_namespace is not None,
        HostWindow(args.host_netns),
        args.patient_prefix,
    )
    # SIGTERM before the summary stops the services too (they run in their own
    # sessions, so nothing else would); while serving, finish() handles it.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        demo.set_up()
        asyncio.run(demo.run(hold, hold_seconds))
    except KeyboardInterrupt:
        console.say("interrupted: stopping the gateway and the edge")
        raise SystemExit(130) from None
    except Terminated:
        console.say("terminated: stopping the gateway and the edge")
        raise SystemExit(143) from None
    except BaseException:
        demo.show_logs()
        raise
    finally:
        demo.stop()


class Terminated(Exception):
    """SIGTERM arrived while the demo was still working."""


def _terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def _run_in_namespace() -> int:
    """Run this demo again inside a private network namespace: the office LAN.

    The inner demo stops its services itself, so this process ignores
    Ctrl-C (the terminal sends it to both) and passes SIGTERM on, then waits
    for it before removing the namespace."""
    name = f"phs-demo-{os.getpid()}"
    try:
        namespace.create(name)
    except namespace.NamespaceUnavailable as err:
        console.say(f"LAN discovery is not available here ({err}): rerun with --no-discovery")
        return 1
    console.say(
        f"LAN discovery: the office LAN is a private network namespace ({name}); mDNS "
        "stays inside it, and the tablets find the edge by its advert"
    )
    try:
        inner = subprocess.Popen(
            [
                *namespace.exec_prefix(name),
                sys.executable,
                "-m",
                "edgenode.demo",
                "--inside-namespace",
                name,
                "--host-netns",
                f"/proc/{os.getpid()}/ns/net",
                *sys.argv[1:],
            ]
        )
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, _frame: inner.send_signal(signum))
        return inner.wait()
    finally:
        namespace.delete(name)


if __name__ == "__main__":
    main()

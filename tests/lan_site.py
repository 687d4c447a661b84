"""A district office inside a private network namespace (issue 4 tests).

A real gateway, real edge nodes (``edgenode run --interface 127.0.0.1``) and
real field devices (``phs-field``) as subprocesses in the namespace; they
find each other over multicast on the namespace's loopback only. The test
reads the edge's and the devices' state with their own ``status`` commands
(which read the SQLite files) and talks HTTP from a thread that joined the
namespace. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from chaos_support import FACILITY, TENANT, Service, create_token, import_items, run_cli
from edgenode.keys import load_key
from netns import NetworkNamespace
from shared.signing import fingerprint

INTERFACE = "127.0.0.1"  # the namespace's loopback: multicast never leaves it


async def eventually(
    probe: Callable[[], Awaitable[Any]], what: str, within: float = 30, every: float = 0.2
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``within`` s."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"{what} not within {within} s; last seen: {last!r}")


class LanSite:
    def __init__(self, netns: NetworkNamespace, root: Path) -> None:
        self.netns = netns
        self.root = root
        self.gateway_dir = root / "gateway"
        self.gateway_url = ""
        self.admin = ""
        self.services: list[Service] = []

    # ------------------------------------------------------------------ processes

    def service(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Service:
        svc = Service(name, args, self.root / f"{name}.log", env or {}, wrapper=self.netns.wrapper)
        self.services.append(svc)
        return svc

    def stop_all(self) -> None:
        for svc in self.services:
            svc.ensure_stopped()

    async def wait_http(self, svc: Service, url: str, within: float = 20) -> None:
        async def probe() -> bool:
            assert svc.process is not None and svc.process.poll() is None, (
                f"{svc.name} exited:\n{svc.log_tail()}"
            )
            return await self.netns.acall(lambda: _answers(url))

        await eventually(probe, f"{svc.name} answering {url}", within, 0.1)

    # ------------------------------------------------------------------ gateway

    async def start_gateway(self, item_ids: Sequence[str] = ()) -> None:
        port = self.netns.port()
        self.gateway_url = f"http://127.0.0.1:{port}"
        self.admin = create_token(self.gateway_dir)
        gateway = self.service(
            "gateway",
            ["gateway.cli", "serve", "--data-dir", str(self.gateway_dir), "--port", str(port)],
            {"PHS_GATEWAY_LOG_LEVEL": "INFO"},  # the default: scanned for canaries
        )
        gateway.start()
        await self.wait_http(gateway, f"{self.gateway_url}/readyz")
        if item_ids:

            async def create() -> None:
                async with aiohttp.ClientSession() as session:
                    await import_items(session, self.gateway_url, self.admin, item_ids)

            await self.netns.acall(create)

    # ------------------------------------------------------------------ edge nodes

    def init_edge(self, name: str, node_id: str, enroll: bool = True) -> Path:
        edge_dir = self.root / name
        printed = run_cli(
            "edgenode.cli",
            "init",
            "--node-id",
            node_id,
            "--tenant",
            TENANT,
            "--facility",
            FACILITY,
            "--gateway-url",
            self.gateway_url or "http://127.0.0.1:9",
            "--data-dir",
            str(edge_dir),
        )
        if enroll:
            line = next(line for line in printed.splitlines() if "enroll-node" in line)
            run_cli(
                "gateway.cli", *shlex.split(line.strip())[1:], "--data-dir", str(self.gateway_dir)
            )
        return edge_dir

    def edge(self, name: str, edge_dir: Path, port: int) -> Service:
        return self.service(
            name,
            [
                "edgenode.cli",
                "run",
                "--data-dir",
                str(edge_dir),
                "--port",
                str(port),
                "--interface",
                INTERFACE,
            ],
            {
                "PHS_EDGE_PULL_INTERVAL_SECONDS": "1",
                "PHS_EDGE_FORWARD_INTERVAL_SECONDS": "1",
                "PHS_EDGE_GATHER_INTERVAL_SECONDS": "2",
                "PHS_EDGE_REPORT_SCHEDULE": "false",
            },
        )

    async def start_edge(self, svc: Service, port: int) -> None:
        svc.start()
        await self.wait_http(svc, f"http://127.0.0.1:{port}/healthz")

    @staticmethod
    def edge_status(edge_dir: Path) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(
            run_cli("edgenode.cli", "status", "--data-dir", str(edge_dir))
        )
        return doc

    @staticmethod
    def pairing_code(edge_dir: Path, device_id: str) -> str:
        return run_cli(
            "edgenode.cli", "pair-device", "--device-id", device_id, "--data-dir", str(edge_dir)
        )

    @staticmethod
    def fingerprint(edge_dir: Path) -> str:
        return fingerprint(load_key(edge_dir / "node.key").public_key)

    # ------------------------------------------------------------------ field devices

    def field(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """A ``phs-field`` command inside the namespace; its JSON output."""
        done = self.netns.run(sys.executable, "-m", "fielddevice.cli", *args, timeout=timeout)
        assert done.returncode == 0, f"phs-field {' '.join(args[:1])} failed:\n{done.stderr}"
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def field_fails(self, *args: str, timeout: float = 60) -> tuple[dict[str, Any], str]:
        """A ``phs-field`` command that must fail: its JSON output (if any) and stderr."""
        done = self.netns.run(sys.executable, "-m", "fielddevice.cli", *args, timeout=timeout)
        assert done.returncode != 0, f"phs-field {args[0]} succeeded:\n{done.stdout}"
        return (json.loads(done.stdout) if done.stdout.strip() else {}), done.stderr

    def field_service(self, name: str, device_dir: Path, *extra: str) -> Service:
        return self.service(
            name,
            [
                "fielddevice.cli",
                "serve",
                "--data-dir",
                str(device_dir),
                "--interface",
                INTERFACE,
                *extra,
            ],
        )


async def _answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False

"""``phs-gateway serve --workers N`` (gateway.workers): N processes on one port.

Real processes throughout: the parent, its workers (each with its own event
loop and database pool) on one PostgreSQL database, signals, a worker killed
and started again, and workers that outlive a killed parent stopping
themselves. SQLite refuses more than one worker.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from canaries import scan_output
from gateway.cli import main
from gateway.settings import Settings
from gateway.workers import Supervisor
from gateway_processes import RUNNING, alive, start_serve, wait_gone
from stores import postgres_database


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "2"], "workers = 2 needs PostgreSQL (database_url)"),
        (["--workers", "0"], "workers must be 1 or more, not 0"),
    ],
)
def test_refused_numbers_of_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # On SQLite: one writer (docs/deployment.md). Refused before anything starts.
    assert main(["serve", "--data-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phs-gateway: validation_failed: ") and message in err
    assert not (tmp_path / "gateway.db").exists()


def _crash(settings: Settings, worker: str) -> None:
    """A worker that dies at once, having noted its start in the data dir."""
    with open(Path(settings.data_dir) / "starts", "a") as starts:
        starts.write(worker + "\n")
    sys.exit(3)


def test_restarts_are_bounded(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), workers=1, database_url="postgresql://unused/")
    supervisor = Supervisor(_crash, settings, max_restarts=2, restart_delay_seconds=0.05)
    started = time.monotonic()
    assert supervisor.run() == 1  # given up: systemd restarts the unit
    assert time.monotonic() - started < 60
    assert len((tmp_path / "starts").read_text().splitlines()) == 3  # the first and 2 restarts


# An access log line of a worker (JSON, docs/logging.md): which worker answered.
ACCESS = re.compile(r'"logger":"aiohttp\.access","message":"GET /readyz 200".*"worker":(\d+)')


async def readyz(port: int) -> int:
    # A connection of its own each time, so the kernel may pick any worker.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
            return resp.status


@pytest.mark.postgres
async def test_workers_share_a_port_and_are_supervised(tmp_path: Path) -> None:
    async with postgres_database() as url:
        gateway = await start_serve(url, tmp_path, 3)
        try:
            assert len(gateway.workers) == 3
            assert [await readyz(gateway.port) for _ in range(30)] == [200] * 30
            served = {int(m[1]) for m in map(ACCESS.search, gateway.lines) if m}
            assert len(served) >= 2, gateway.output()  # SO_REUSEPORT spreads connections

            # A worker killed outright is started again; the others serve meanwhile.
            victim = gateway.workers[2]
            os.kill(victim, signal.SIGKILL)
            await gateway.wait_for(re.compile(r"starting worker 2 again"))
            await gateway.wait_for(RUNNING, count=4)
            assert gateway.workers[2] != victim and not alive(victim)
            assert [await readyz(gateway.port) for _ in range(10)] == [200] * 10

            # SIGTERM to every process at once, as systemd stops the unit: each
            # worker also gets the parent's, and stops gracefully all the same.
            pids = list(gateway.workers.values())
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            assert await gateway.stop(signal.SIGTERM) == 0
            assert not any(alive(pid) for pid in pids)
            assert not [line for line in gateway.lines if "Traceback" in line], gateway.output()
        except BaseException:
            await gateway.kill_all()
            raise


@pytest.mark.postgres
async def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    async with postgres_database() as url:
        gateway = await start_serve(url, tmp_path, 2)
        pids = list(gateway.workers.values())
        try:
            assert await gateway.stop(signal.SIGKILL) == -signal.SIGKILL
            assert await asyncio.to_thread(wait_gone, pids, 15)  # each checks every second
        except BaseException:
            await gateway.kill_all()
            raise


@pytest.mark.postgres
async def test_processes_migrating_a_new_database_at_once(tmp_path: Path) -> None:
    # Without the migration lock three of the four failed on each other's CREATE TABLE.
    async with postgres_database() as url:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.cli",
                "migrate",
                "--database-url",
                url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(4)
        ]
        outputs = [await proc.communicate() for proc in procs]
        for _, err in outputs:
            scan_output(err, "phs-gateway migrate stderr")
        assert [proc.returncode for proc in procs] == [0] * 4, outputs
        assert {out.decode().strip() for out, _ in outputs} == {"schema at head (postgresql)"}

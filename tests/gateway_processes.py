"""``phs-gateway serve`` as a real process, for the worker and concurrency tests.

Its stdout and stderr are read into one list of lines as they come; tests
wait for a line matching a pattern (the workers' "Running on", a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

from canaries import scan_output

SERVING = re.compile(r"serving http://[^:]+:(\d+) with (\d+) workers")
RUNNING = re.compile(r"worker (\d+) \(pid (\d+)\): ======== Running on")


class ServeProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._seen = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self.port = 0
        self.workers: dict[int, int] = {}  # worker number -> pid of its latest process

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            scan_output(raw, "phs-gateway serve output")  # a service's output is its log
            line = raw.decode(errors="replace").rstrip("\n")
            running = RUNNING.search(line)
            if running:
                self.workers[int(running[1])] = int(running[2])
            async with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    async def wait_for(self, pattern: re.Pattern[str], count: int = 1, within: float = 60) -> None:
        """Until ``count`` output lines match ``pattern`` (AssertionError after ``within`` s)."""

        def enough() -> bool:
            return sum(1 for line in self.lines if pattern.search(line)) >= count

        try:
            async with asyncio.timeout(within), self._seen:
                await self._seen.wait_for(lambda: enough() or self._reader.done())
        except TimeoutError:
            pass
        assert enough(), f"no {count} lines /{pattern.pattern}/ in:\n" + self.output()

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def count(self, pattern: re.Pattern[str]) -> int:
        return sum(1 for line in self.lines if pattern.search(line))

    async def stop(self, signum: int = signal.SIGTERM, within: float = 40) -> int:
        """Send ``signum`` and wait for the exit status (killed after ``within`` s)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        try:
            async with asyncio.timeout(within):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"the gateway did not stop:\n{self.output()}") from None
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        return code

    async def kill_all(self) -> None:
        """Cleanup after a failed test: the parent and every worker, by pid."""
        for pid in [*self.workers.values(), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def start_serve(database_url: str, data_dir: Path, workers: int, *extra: str) -> ServeProcess:
    """``phs-gateway serve --workers N`` on a free port, once every worker listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--port",
        "0",
        "--workers",
        str(workers),
        "--database-url",
        database_url,
        "--data-dir",
        str(data_dir),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    gateway = ServeProcess(proc)
    try:
        await gateway.wait_for(SERVING)
        match = next(m for m in map(SERVING.search, gateway.lines) if m)
        gateway.port = int(match[1])
        await gateway.wait_for(RUNNING, count=workers)
    except BaseException:
        await gateway.kill_all()
        raise
    return gateway


def wait_gone(pids: list[int], seconds: float) -> bool:
    """Whether every process of ``pids`` has ended within ``seconds`` (blocking)."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"

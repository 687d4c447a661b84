"""``phs-gateway serve --workers N``: N gateway processes serving one port.

The parent process serves nothing itself. It migrates the store once, binds
the port with ``SO_REUSEPORT`` (without listening: it only reserves the port,
the one it learns when asked for port 0), then starts N workers with the
``spawn`` method, each a fresh interpreter with its own event loop, its own
database pool and its own listening socket on that port (``SO_REUSEPORT``:
the kernel spreads new connections over the workers that listen; a worker
listens only once its app has started).

Supervision. A worker that exits while the gateway is not stopping is
started again after ``RESTART_DELAY_SECONDS``; more than ``MAX_RESTARTS``
restarts within ``RESTART_WINDOW_SECONDS`` mean something is wrong beyond
one request (the database is gone, say): the parent then stops every worker
and exits with status 1, for systemd to restart the whole unit
(``Restart=on-failure``). SIGTERM or SIGINT to the parent sends SIGTERM to
every worker, which finishes its requests and writes (aiohttp's graceful
shutdown; a worker heeds only its first signal, ``stop_once_on_signal``);
the parent waits ``STOP_GRACE_SECONDS``, kills what is left and exits with
status 0. A worker whose parent is gone (killed with SIGKILL) stops itself
within a second.

Several writers need PostgreSQL (row locks serialise them); on SQLite the
store has one writer, and ``check_workers`` refuses more than one worker.

systemd. The parent is the unit's main process (``NotifyAccess=main``). It
gives the workers a notify socket of its own (``observability.sdnotify.
ChildNotifications``): each worker says READY=1 when it listens and WATCHDOG=1
while its store answers, exactly as a single gateway process tells systemd.
The parent says READY=1 once all N workers are ready, and WATCHDOG=1 only
while every worker keeps pinging (one starting again gets a grace period): a
wedged worker stops the pings and systemd restarts the whole unit.

Metrics. A scrape of ``/metrics`` reaches one worker at random, so the
workers count in prometheus_client's multiprocess mode: the parent makes a
directory for this run (``observability.metrics.multiprocess_directory``)
and passes it in ``PROMETHEUS_MULTIPROC_DIR`` to the workers, which sum the
files of all of them when scraped (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType

from aiohttp import web
from sqlalchemy import make_url

from gateway.settings import Settings
from observability.metrics import multiprocess_directory
from observability.sdnotify import ChildNotifications, Notifier
from shared.errors import ValidationFailed

log = logging.getLogger("gateway.workers")

MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
RESTART_DELAY_SECONDS = 0.5
STOP_GRACE_SECONDS = 30.0

Serve = Callable[[Settings, str], None]  # runs one gateway process; the str prefixes its output


def check_workers(settings: Settings) -> None:
    """Refuse a number of workers the store cannot take."""
    if settings.workers < 1:
        raise ValidationFailed(f"workers must be 1 or more, not {settings.workers}")
    if settings.workers > 1 and make_url(settings.sqlalchemy_url()).get_backend_name() == "sqlite":
        raise ValidationFailed(
            f"workers = {settings.workers} needs PostgreSQL (database_url): a SQLite store "
            "has one writer, which one process already keeps busy; run one worker on SQLite"
        )


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` that does not listen:
    it holds the port (the one chosen, for port 0) for the workers to share."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ValidationFailed(f"cannot bind {host}:{port}: {err.strerror or err}") from err
    return sock


async def stop_once_on_signal(_app: web.Application) -> None:
    """A worker's startup hook: its first SIGTERM or SIGINT starts the graceful
    shutdown, later ones are ignored. It gets two (systemd signals every process
    of the unit and the parent passes its own on; Ctrl-C reaches the whole
    process group), and a second one raised again inside aiohttp's shutdown
    would cut short the writes still finishing."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
        raise web.GracefulExit()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)


def _worker_main(serve: Serve, settings: Settings, number: int, parent: int) -> None:
    """A worker process: serve until SIGTERM, or until the parent is gone."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    serve(settings, f"worker {number} (pid {os.getpid()}): ")


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)  # aiohttp's graceful shutdown


class Supervisor:
    """Starts, restarts (boundedly) and stops the worker processes."""

    def __init__(
        self,
        serve: Serve,
        settings: Settings,
        *,
        max_restarts: int = MAX_RESTARTS,
        restart_window_seconds: float = RESTART_WINDOW_SECONDS,
        restart_delay_seconds: float = RESTART_DELAY_SECONDS,
        stop_grace_seconds: float = STOP_GRACE_SECONDS,
    ) -> None:
        self._serve = serve
        self._settings = settings
        self._max_restarts = max_restarts
        self._restart_window = restart_window_seconds
        self._restart_delay = restart_delay_seconds
        self._stop_grace = stop_grace_seconds
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}  # worker number -> process
        self._due: dict[int, float] = {}  # worker number -> when to start it again
        self._restarts: collections.deque[float] = collections.deque()
        self._stopping = False
        # systemd notifies us; the workers notify us (module docstring, "systemd")
        self._notifier = Notifier.from_environ()
        self._notifications = ChildNotifications(self._notifier)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0) or until workers die too often (1)."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        self._notifications.open(os.environ)  # before the workers start: they inherit it
        try:
            for number in range(1, self._settings.workers + 1):
                self._start(number)
            status = self._supervise()
        finally:
            self._notifier.stopping(f"stopping {len(self._workers)} workers")
            self._stop_all()
            self._notifications.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return status

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self._workers))
        self._stopping = True

    def _start(self, number: int) -> None:
        process = self._context.Process(
            target=_worker_main,
            args=(self._serve, self._settings, number, os.getpid()),
            name=f"phs-gateway worker {number}",
        )
        process.start()
        self._workers[number] = process
        assert process.pid is not None
        self._notifications.add(process.pid)

    def _supervise(self) -> int:
        while not self._stopping:
            sentinels = [p.sentinel for p in self._workers.values()]
            notifications = self._notifications.fileno()
            waits = sentinels if notifications is None else [*sentinels, notifications]
            multiprocessing.connection.wait(waits, timeout=0.2)
            if self._stopping:
                break
            self._notifications.receive()
            now = time.monotonic()
            for number, process in list(self._workers.items()):
                if process.is_alive():
                    continue
                del self._workers[number]
                process.join()
                if process.pid is not None:
                    self._notifications.remove(process.pid)
                log.warning("worker %d (pid %s) exited: %s", number, process.pid, process.exitcode)
                while self._restarts and self._restarts[0] < now - self._restart_window:
                    self._restarts.popleft()
                if len(self._restarts) >= self._max_restarts:
                    log.error(
                        "worker %d died after %d restarts within %.0f s: stopping the gateway",
                        number,
                        len(self._restarts),
                        self._restart_window,
                    )
                    return 1
                self._restarts.append(now)
                self._due[number] = now + self._restart_delay
            for number, due in list(self._due.items()):
                if due <= now:
                    del self._due[number]
                    log.info("starting worker %d again", number)
                    self._start(number)
            self._notifications.report(
                self._settings.workers,
                f"{self._settings.workers} workers serving "
                f"http://{self._settings.host}:{self._settings.port}",
            )
        return 0

    def _stop_all(self) -> None:
        for process in self._workers.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: aiohttp's graceful shutdown
        deadline = time.monotonic() + self._stop_grace
        for process in self._workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker pid %s did not stop in time: killed", process.pid)
                process.kill()
                process.join()
        self._workers.clear()


def serve_workers(serve: Serve, settings: Settings) -> int:
    """Run ``settings.workers`` processes of ``serve`` on one port (module docstring);
    the store must already be migrated. Returns the exit status."""
    reservation = reserve_port(settings.host, settings.port)
    try:
        port = reservation.getsockname()[1]
        log.info("serving http://%s:%d with %d workers", settings.host, port, settings.workers)
        with multiprocess_directory() as metrics_dir:  # before the workers start
            log.info("workers' metrics in %s", metrics_dir)
            return Supervisor(serve, replace(settings, port=port)).run()
    finally:
        reservation.close()

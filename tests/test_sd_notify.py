"""systemd's notify protocol (observability.sdnotify) from the real services.

Each service runs as a real subprocess (``edgenode run``, ``phs-gateway
serve``, ``serve --workers 2``, ``phs-gateway relay``) with ``NOTIFY_SOCKET``
pointing at a datagram socket this test binds, as systemd would for a
``Type=notify`` unit with ``WatchdogSec=``. The test checks what systemd
relies on: READY=1 only once the HTTP port answers, WATCHDOG=1 about every
``WATCHDOG_USEC / 2`` and never a gap systemd would kill for, STOPPING=1 on
SIGTERM, then a clean exit. The notifier's pure parts get literal tables.

Every wait is bounded (``within`` seconds); the watchdog runs at 1 s so a
test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from chaos_support import FACILITY, LOOPBACK, NODE_ID, TENANT, free_port, run_cli
from gateway_processes import RUNNING
from observability.sdnotify import (
    Notifier,
    parse_message,
    socket_address,
    watchdog_running,
    watchdog_seconds,
)
from stores import postgres_database

WATCHDOG_USEC = 1_000_000  # systemd kills after 1 s without WATCHDOG=1
TIMEOUT = WATCHDOG_USEC / 1_000_000
INTERVAL = TIMEOUT / 2  # how often the services ping


@dataclass
class Message:
    at: float  # time.monotonic() when received
    fields: dict[str, str]


@dataclass
class NotifySocket:
    """The socket systemd would listen on, and every message received on it."""

    sock: socket.socket
    value: str  # $NOTIFY_SOCKET: a path, or @name for the abstract namespace
    messages: list[Message] = field(default_factory=list)

    def receive(self, within: float) -> None:
        """Take in what arrives within ``within`` seconds (at least what waits)."""
        deadline = time.monotonic() + within
        while True:
            left = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.sock], [], [], left)
            if not readable:
                return
            data = self.sock.recv(4096)
            self.messages.append(Message(time.monotonic(), parse_message(data)))

    def wait_for(
        self, key: str, within: float, proc: subprocess.Popen[bytes] | None = None
    ) -> Message:
        """The first message with ``key=1`` (AssertionError after ``within`` s,
        or as soon as ``proc``, when given, has exited without sending it)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = self.with_key(key)
            if found:
                return found[0]
            if proc is not None:
                assert proc.poll() is None, f"exited ({proc.returncode}) before {key}=1"
            self.receive(0.05)
        raise AssertionError(f"no {key}=1 within {within} s; got {self.messages}")

    def with_key(self, key: str) -> list[Message]:
        return [m for m in self.messages if m.fields.get(key) == "1"]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID",)}
        return {**env, "NOTIFY_SOCKET": self.value, "WATCHDOG_USEC": str(WATCHDOG_USEC)}


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # a short directory of its own: AF_UNIX paths are limited to 107 bytes
    with (
        tempfile.TemporaryDirectory(prefix="sdn-") as directory,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        path = f"{directory}/notify"
        sock.bind(path)
        yield NotifySocket(sock, path)


@pytest.fixture
def abstract_notify_socket() -> Iterator[NotifySocket]:
    name = f"phs-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield NotifySocket(sock, "@" + name)


def answers(url: str) -> bool:
    """Whether ``GET url`` answers 200 (one try, no retry)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def start(notify: NotifySocket, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m <args>`` with ``notify``'s environment, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**notify.environment(), "PYTHONUNBUFFERED": "1"},
        )


def ready_after_port_answers(
    notify: NotifySocket, proc: subprocess.Popen[bytes], url: str, within: float = 60
) -> Message:
    """Wait for READY=1 while probing ``url``: READY=1 must not come before
    the port answers, and once it came the port must answer at the first try."""
    deadline = time.monotonic() + within
    while not notify.with_key("READY"):
        assert time.monotonic() < deadline, f"no READY=1 within {within} s: {notify.messages}"
        assert proc.poll() is None, f"the service exited ({proc.returncode}) before READY=1"
        refused_at = None if answers(url) else time.monotonic()
        notify.receive(0.05)
        if refused_at is not None:  # READY=1 received before the refusal: too early
            early = [m for m in notify.with_key("READY") if m.at < refused_at]
            assert not early, "READY=1 came while the port did not answer yet"
    assert answers(url), "READY=1 came, yet the port does not answer"
    return notify.with_key("READY")[0]


def assert_watchdog_rate(notify: NotifySocket, seconds: float = 2.0) -> None:
    """WATCHDOG=1 about every INTERVAL over ``seconds``; no gap systemd kills for."""
    since = time.monotonic()
    notify.receive(seconds)
    pings = [m.at for m in notify.with_key("WATCHDOG") if m.at >= since]
    expected = seconds / INTERVAL
    assert expected * 0.6 <= len(pings) <= expected * 1.4 + 1, (len(pings), expected)
    gaps = [b - a for a, b in zip([since, *pings], [*pings, time.monotonic()], strict=True)]
    assert max(gaps) < TIMEOUT, f"a gap of {max(gaps):.2f} s: systemd would kill the service"


def stop_with_sigterm(notify: NotifySocket, proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING", within=30)  # sent before the exit, maybe read after it
    try:
        code = proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("did not stop:\n" + log.read_text(errors="replace")) from None
    assert code == 0, log.read_text(errors="replace")


def cleanup(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


# ------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),  # a path as it is
        ("@phs/notify", "\0phs/notify"),  # abstract: a leading NUL instead of @
        ("@", None),  # no name at all
        ("vsock:2:1234", None),  # systemd's VSOCK form: not spoken here
        ("relative/notify", None),  # systemd only ever gives absolute paths
    ],
)
def test_socket_address(value: str, address: str | None) -> None:
    assert socket_address(value) == address


@pytest.mark.parametrize(
    ("environ", "seconds"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),  # ours
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),  # no watchdog
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_seconds(environ: dict[str, str], seconds: float | None) -> None:
    assert watchdog_seconds(environ, pid=4242) == seconds


def test_no_notify_socket_means_no_notifications() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"}, pid=1)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None  # no socket: nobody to ping
    assert notifier.ready("serving") is False


def test_one_datagram_of_fields_and_no_field_smuggled_in_a_value(
    abstract_notify_socket: NotifySocket,
) -> None:
    notifier = Notifier.from_environ(abstract_notify_socket.environment(), pid=1)
    assert notifier.watchdog_interval == INTERVAL
    assert notifier.ready("serving\nREADY=0")
    abstract_notify_socket.wait_for("READY", within=5)
    [message] = abstract_notify_socket.messages
    assert message.fields == {"READY": "1", "STATUS": "serving READY=0"}


async def test_watchdog_pings_only_while_the_check_passes(
    abstract_notify_socket: NotifySocket,
) -> None:
    """A check that hangs (a wedged store) or fails stops the pings; once it
    passes again they resume. The real task, over a real socket."""
    notify = abstract_notify_socket
    notifier = Notifier.from_environ(notify.environment(), pid=1)
    healthy = asyncio.Event()
    healthy.set()
    failing = False

    async def check() -> None:
        await healthy.wait()
        if failing:
            raise OSError("disk I/O error")

    async def pings_within(seconds: float) -> int:
        notify.receive(0)  # what came before, stamped before ``since``
        since = time.monotonic()
        await asyncio.sleep(seconds)  # the socket is read after: the messages queue
        notify.receive(0.05)
        return len([m for m in notify.with_key("WATCHDOG") if m.at >= since])

    async with watchdog_running(notifier, check):
        assert await pings_within(1.2) >= 2
        healthy.clear()  # hangs: every check times out
        await asyncio.sleep(INTERVAL)  # a ping already on its way
        assert await pings_within(1.2) == 0
        failing = True
        healthy.set()
        assert await pings_within(1.2) == 0
        failing = False
        assert await pings_within(1.2) >= 2


# ------------------------------------------------------------------ the services


def test_edge_node_ready_watchdog_and_stopping(tmp_path: Path, notify_socket: NotifySocket) -> None:
    edge_dir = tmp_path / "edge"
    run_cli(
        *("edgenode.cli", "init", "--node-id", NODE_ID, "--tenant", TENANT),
        *("--facility", FACILITY, "--gateway-url", f"http://{LOOPBACK}:9"),
        *("--data-dir", str(edge_dir)),
    )
    port = free_port()
    log = tmp_path / "edge.log"
    proc = start(
        notify_socket,
        log,
        *("edgenode.cli", "run", "--data-dir", str(edge_dir), "--host", LOOPBACK),
        *("--port", str(port), "--no-discovery"),
    )
    try:
        ready = ready_after_port_answers(notify_socket, proc, f"http://{LOOPBACK}:{port}/healthz")
        assert ready.fields["STATUS"] == f"serving tablets on port {port}"
        assert_watchdog_rate(notify_socket)
        stop_with_sigterm(notify_socket, proc, log)
    finally:
        cleanup(proc)


def test_gateway_ready_watchdog_and_stopping(tmp_path: Path, notify_socket: NotifySocket) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = start(
        notify_socket,
        log,
        *("gateway.cli", "serve", "--data-dir", str(tmp_path / "gw")),
        *("--host", LOOPBACK, "--port", str(port)),
    )
    try:
        ready_after_port_answers(notify_socket, proc, f"http://{LOOPBACK}:{port}/readyz")
        assert_watchdog_rate(notify_socket)
        stop_with_sigterm(notify_socket, proc, log)
    finally:
        cleanup(proc)


async def test_gateway_workers_report_through_their_supervisor(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """``serve --workers 2`` (PostgreSQL): the parent says READY=1 once both
    workers listen, and stops feeding the watchdog while a worker is stuck."""
    async with postgres_database() as url:
        port = free_port()
        log = tmp_path / "gateway.log"
        proc = start(
            notify_socket,
            log,
            *("gateway.cli", "serve", "--workers", "2", "--database-url", url),
            *("--data-dir", str(tmp_path / "gw"), "--host", LOOPBACK, "--port", str(port)),
        )
        try:
            ready = ready_after_port_answers(
                notify_socket, proc, f"http://{LOOPBACK}:{port}/readyz"
            )
            assert ready.fields["STATUS"] == f"2 workers serving http://{LOOPBACK}:{port}"
            running = [line for line in log.read_text().splitlines() if "Running on" in line]
            assert len(running) == 2, "READY=1 before both workers listened"
            assert_watchdog_rate(notify_socket)

            # A stuck worker (stopped, as a wedged event loop would be): within
            # the timeout the parent stops pinging, and systemd would restart all.
            [worker, *_] = (int(m[2]) for m in map(RUNNING.search, running) if m)
            os.kill(worker, signal.SIGSTOP)
            try:
                notify_socket.receive(TIMEOUT + INTERVAL)  # the last pings on their way
                stuck_since = time.monotonic()
                notify_socket.receive(TIMEOUT + INTERVAL)
                late = [m for m in notify_socket.with_key("WATCHDOG") if m.at > stuck_since]
                assert late == [], "the parent kept pinging while a worker was stuck"
            finally:
                os.kill(worker, signal.SIGCONT)
            resumed = time.monotonic()
            for _ in range(30):  # the worker pings again, so does the parent
                notify_socket.receive(0.1)
                if any(m.at > resumed for m in notify_socket.with_key("WATCHDOG")):
                    break
            else:
                raise AssertionError("no WATCHDOG=1 within 3 s of the worker going on")
            stop_with_sigterm(notify_socket, proc, log)
        finally:
            cleanup(proc)
            for match in map(RUNNING.search, log.read_text().splitlines()):
                if match:  # a worker the parent could not stop (when the test failed)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(match[2]), signal.SIGKILL)


def test_relay_ready_and_stopping_while_nats_is_down(
    tmp_path: Path, abstract_notify_socket: NotifySocket
) -> None:
    """The relay waits out a NATS outage: it is ready (saying so in STATUS) and
    keeps its watchdog fed. The abstract socket form (@name) throughout."""
    notify = abstract_notify_socket
    log = tmp_path / "relay.log"
    proc = start(
        notify,
        log,
        *("gateway.cli", "relay", "--data-dir", str(tmp_path / "gw")),
        *("--nats", f"nats://{LOOPBACK}:{free_port()}"),
    )
    try:
        ready = notify.wait_for("READY", within=60, proc=proc)
        assert ready.fields["STATUS"].startswith("waiting: NATS unreachable")
        assert_watchdog_rate(notify)
        stop_with_sigterm(notify, proc, log)
    finally:
        cleanup(proc)


NATS_URL = os.environ.get("PHS_TEST_NATS_URL", "")


@pytest.mark.skipif(not NATS_URL, reason="PHS_TEST_NATS_URL is not set: no NATS server")
def test_relay_ready_when_publishing(tmp_path: Path, notify_socket: NotifySocket) -> None:
    log = tmp_path / "relay.log"
    stream = f"PHS_SDN_{os.getpid()}_{time.monotonic_ns()}"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nrelay_stream = "{stream}"\nrelay_subject_prefix = "sdn{os.getpid()}"\n'
    )
    proc = start(
        notify_socket,
        log,
        *("gateway.cli", "relay", "--config", str(config)),
        *("--data-dir", str(tmp_path / "gw"), "--nats", NATS_URL),
    )
    try:
        ready = notify_socket.wait_for("READY", within=60, proc=proc)
        assert ready.fields["STATUS"] == f"publishing to stream {stream}"
        stop_with_sigterm(notify_socket, proc, log)
    finally:
        cleanup(proc)
        _delete_stream(stream)


def _delete_stream(stream: str) -> None:
    async def delete() -> None:
        nc = NatsClient()
        await nc.connect(servers=[NATS_URL], connect_timeout=5)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(delete())

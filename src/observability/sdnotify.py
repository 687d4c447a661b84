"""systemd's readiness and watchdog protocol (``sd_notify``), written directly.

A unit with ``Type=notify`` starts a service with ``$NOTIFY_SOCKET`` set to an
``AF_UNIX`` datagram socket (a path, or ``@name`` for the abstract namespace);
the service sends newline-separated ``KEY=value`` lines to it::

    READY=1        the service really serves (socket bound, store migrated)
    STATUS=…       one line shown by ``systemctl status``
    WATCHDOG=1     "still healthy": with WatchdogSec=, systemd kills and
                   restarts the service when none arrives for that long
    STOPPING=1     shutting down, on purpose

With ``WatchdogSec=`` systemd also sets ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``: the watchdog belongs to that process only). Without
``$NOTIFY_SOCKET`` (a terminal, a test, another supervisor) every call here
does nothing.

``watchdog_pings`` feeds the watchdog every ``WATCHDOG_USEC / 2`` from an
asyncio task, and only after a check the caller gives has passed (the store
answers a trivial query): a blocked event loop or a wedged store stops the
pings, and systemd restarts the service.

``ChildNotifications`` is the receiving side, for a supervisor whose workers
notify it as systemd would be notified (``phs-gateway serve --workers N``): it
forwards READY=1 once every worker is ready and WATCHDOG=1 while every worker
keeps pinging.

Failures to notify are logged and swallowed: they must never stop a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field

from aiohttp import web

log = logging.getLogger("observability.sdnotify")

#: The variables systemd sets for the protocol; a child must not inherit ours.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

Check = Callable[[], Awaitable[object]]


def socket_address(value: str) -> str | None:
    """The ``AF_UNIX`` address of a ``$NOTIFY_SOCKET`` value: a path as it is,
    ``@name`` as the abstract name (a leading NUL byte). None for anything
    else (e.g. systemd's ``vsock:`` form, which we do not speak)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd set for process ``pid``, or None: no
    ``$WATCHDOG_USEC`` (or not a positive number), or ``$WATCHDOG_PID`` names
    another process (the watchdog is the main process's, not a child's)."""
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


@dataclass(frozen=True)
class Notifier:
    """Sends notifications to systemd (or to whoever set ``$NOTIFY_SOCKET``).

    ``address`` None: not under a notify-aware supervisor, every call is a
    no-op. ``watchdog_timeout``: this process's ``WATCHDOG_USEC`` in seconds.
    """

    address: str | None = None
    watchdog_timeout: float | None = None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        address = socket_address(value) if value else None
        if value and address is None:
            log.warning("NOTIFY_SOCKET %r is not a path or @name: not notifying", value)
        timeout = watchdog_seconds(env, os.getpid() if pid is None else pid)
        return cls(address, timeout if address else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """How often to ping: half the timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_timeout is None else self.watchdog_timeout / 2

    def send(self, **fields: str) -> bool:
        """One datagram of ``KEY=value`` lines; whether it was sent. Never blocks
        (a full queue drops it) and never raises."""
        if self.address is None:
            return False
        # one line per field: a newline inside a value would start a bogus field
        lines = (f"{key}={' '.join(value.splitlines())}\n" for key, value in fields.items())
        message = "".join(lines)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode("utf-8"), self.address)
        except OSError as err:
            log.warning("could not notify systemd (%s): %s", ", ".join(fields), err)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING="1", STATUS=status)


async def watchdog_pings(notifier: Notifier, check: Check) -> None:
    """Forever: every ``notifier.watchdog_interval``, run ``check`` and send
    WATCHDOG=1 when it passed. Returns at once when there is no watchdog.

    ``check`` gets half an interval: it succeeds or its ping is skipped (two
    missed pings in a row and systemd restarts the service). Being a task on
    the service's event loop, a blocked loop stops the pings too.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        try:
            async with asyncio.timeout(interval / 2):
                await check()
        except Exception as err:  # any failure of the check means "not healthy"
            reason = "timed out" if isinstance(err, TimeoutError) else type(err).__name__
            log.warning("health check failed (%s): no watchdog ping", reason)
        else:
            notifier.watchdog()
        due += interval
        now = loop.time()
        if due < now:  # the loop was held up beyond a whole interval: do not burst
            due = now
        await asyncio.sleep(due - now)


@contextlib.asynccontextmanager
async def watchdog_running(notifier: Notifier, check: Check) -> AsyncIterator[None]:
    """``watchdog_pings`` as a task for the duration of the ``with`` block."""
    task = asyncio.create_task(watchdog_pings(notifier, check), name="systemd watchdog")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------- receiving

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def parse_message(data: bytes) -> dict[str, str]:
    """The ``KEY=value`` lines of one datagram (other lines ignored)."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


@dataclass
class _Child:
    started: float
    ready: bool = False
    last_ping: float | None = None


@dataclass
class ChildNotifications:
    """A notify socket of our own that child processes report to, and what it
    tells the real one (``upstream``).

    Children are known by pid (the kernel's credentials on each datagram, so
    no other process can pose as one). A child is healthy when it is ready and
    pinged within ``upstream``'s watchdog timeout, or still starting within
    ``start_grace_seconds``. ``report`` sends upstream READY=1 once ``expected``
    children are ready, and WATCHDOG=1 every interval while all are healthy.
    """

    upstream: Notifier
    start_grace_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _children: dict[int, _Child] = field(default_factory=dict)
    _socket: socket.socket | None = None
    _environ: MutableMapping[str, str] | None = None
    _saved: dict[str, str] = field(default_factory=dict)
    _ready_sent: bool = False
    _next_ping: float = 0.0

    def open(self, environ: MutableMapping[str, str]) -> None:
        """Bind our socket and point ``environ`` (the one children inherit) at
        it, with upstream's watchdog timeout for each child's own pings;
        ``close`` puts ``environ`` back. Nothing to do when upstream is off.

        The socket has an abstract name nobody else knows, and its datagrams
        carry their sender's credentials (``SO_PASSCRED``)."""
        if not self.upstream.enabled:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        name = f"phs-notify-{os.getpid()}-{secrets.token_hex(8)}"
        sock.bind("\0" + name)
        sock.setblocking(False)
        self._socket = sock
        self._environ = environ
        self._saved = {key: environ[key] for key in NOTIFY_VARIABLES if key in environ}
        for key in NOTIFY_VARIABLES:
            environ.pop(key, None)
        environ["NOTIFY_SOCKET"] = "@" + name
        if self.upstream.watchdog_timeout is not None:
            environ["WATCHDOG_USEC"] = str(round(self.upstream.watchdog_timeout * 1_000_000))

    def close(self) -> None:
        if self._socket is None:
            return
        self._socket.close()
        self._socket = None
        if self._environ is not None:
            for key in NOTIFY_VARIABLES:
                self._environ.pop(key, None)
            self._environ.update(self._saved)

    def fileno(self) -> int | None:
        """For ``multiprocessing.connection.wait`` (None: not open)."""
        return None if self._socket is None else self._socket.fileno()

    def add(self, pid: int) -> None:
        self._children[pid] = _Child(started=self.clock())

    def remove(self, pid: int) -> None:
        self._children.pop(pid, None)

    def receive(self) -> None:
        """Take in every datagram waiting (never blocks)."""
        while self._socket is not None:
            try:
                data, ancillary, _flags, _address = self._socket.recvmsg(
                    4096, socket.CMSG_SPACE(_CREDENTIALS.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            child = self._children.get(_sender(ancillary))
            if child is None:
                continue  # not one of ours (or gone already)
            fields = parse_message(data)
            now = self.clock()
            if fields.get("READY") == "1":
                child.ready = True
                child.last_ping = now  # ready counts as alive from here
            if fields.get("WATCHDOG") == "1":
                child.last_ping = now

    def ready_count(self) -> int:
        return sum(1 for child in self._children.values() if child.ready)

    def healthy(self) -> bool:
        now = self.clock()
        timeout = self.upstream.watchdog_timeout
        for child in self._children.values():
            if not child.ready:
                if now - child.started > self.start_grace_seconds:
                    return False
                continue
            if timeout is not None and (child.last_ping is None or now - child.last_ping > timeout):
                return False
        return True

    def report(self, expected: int, status: str) -> None:
        """Upstream READY=1 (once, with ``status``) when ``expected`` children
        are ready; WATCHDOG=1 when due and every child is healthy."""
        if self._socket is None:
            return
        if not self._ready_sent and self.ready_count() >= expected:
            self.upstream.ready(status)
            self._ready_sent = True
        interval = self.upstream.watchdog_interval
        now = self.clock()
        if interval is None or now < self._next_ping:
            return
        if self.healthy():
            self.upstream.watchdog()
            self._next_ping = now + interval


def _sender(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = _CREDENTIALS.unpack(data[: _CREDENTIALS.size])
            return int(pid)
    return 0


# ---------------------------------------------------------------- aiohttp


def notify_while_running(
    app: web.Application,
    notifier: Notifier,
    check: Callable[[web.Application], Awaitable[object]],
) -> None:
    """Feed the watchdog while ``app`` runs (``check(app)`` must pass each
    time) and say STOPPING=1 when it starts shutting down. Call it after the
    cleanup contexts that open what ``check`` uses: contexts start in order.
    READY=1 is the caller's, once its sites listen."""

    async def pings(app: web.Application) -> AsyncIterator[None]:
        async with watchdog_running(notifier, lambda: check(app)):
            yield

    async def stopping(_app: web.Application) -> None:
        notifier.stopping()

    app.cleanup_ctx.append(pings)
    app.on_shutdown.append(stopping)

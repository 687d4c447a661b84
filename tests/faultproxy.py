"""A fault-injecting TCP proxy for HTTP/1.1 on loopback, for tests of a flaky WAN.

Put it between a client (the edge node) and a server (the gateway)::

    proxy = FaultProxy()
    port = await proxy.start("127.0.0.1", gateway_port)   # the edge talks to `port`
    proxy.set_plan(FaultPlan(reset_after_response=0.2, seed=7))
    ...
    proxy.down = True     # WAN outage: every new connection is reset at once
    ...
    await proxy.stop()    # every task cancelled and awaited, every socket closed

Faults are decided once per HTTP request (keep-alive connections carry many):

- **latency** — each forwarded chunk, in either direction, is delayed by a time
  drawn from ``FaultPlan.latency`` with probability ``latency_probability``;
- **reset mid-request** — the proxy holds the client's request, forwards only a
  prefix of it to the upstream (possibly nothing at all), then resets both
  connections: the server never sees the whole request;
- **reset after response** — the request is forwarded whole, the upstream's
  complete response is read and held, then both connections are reset instead
  of delivering it: the server did the work, the client never heard the answer
  (the case an idempotent retry exists for).

"Reset" means a TCP RST (``SO_LINGER`` 0), as a broken WAN link or a middlebox
would produce; the client sees a connection error (with aiohttp,
``ClientOSError`` or ``ServerDisconnectedError``).

To find request and response boundaries the proxy frames HTTP/1.1 messages
with :class:`HttpMessageFramer` (``Content-Length``, ``chunked``, bodiless
statuses, ``HEAD``, and close-delimited responses). Requests are not
pipelined by the clients we test (aiohttp never pipelines); ``Expect:
100-continue`` works when faithful but a request held for a mid-request reset
waits for its whole body. Bytes that are not HTTP are forwarded untouched as
one endless message.

Decisions come from a ``random.Random(plan.seed)``: each accepted connection
takes its own generator seeded from it, so the faults of a run are the same
whenever the connections arrive in the same order with the same requests
(latency draws depend also on how the kernel splits the bytes into chunks).
A plan whose probabilities are all zero forwards every byte faithfully.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import deque
from dataclasses import dataclass, field

__all__ = ["FaultPlan", "FaultProxy", "HttpHead", "HttpMessageFramer", "Segment"]

LOOPBACK = "127.0.0.1"
CHUNK_SIZE = 65536
MAX_HEAD_BYTES = 65536
_BODILESS_STATUSES = frozenset({204, 304})


@dataclass(frozen=True)
class FaultPlan:
    """What the proxy does to each request; immutable, swap it with ``set_plan``.

    Probabilities are in ``[0, 1]``; ``latency`` is a ``(low, high)`` range in
    seconds with ``0 <= low <= high``. ``reset_mid_request`` is drawn first
    and ``reset_after_response`` only applies to requests it spared.
    """

    latency_probability: float = 0.0
    latency: tuple[float, float] = (0.0, 0.0)
    reset_mid_request: float = 0.0
    reset_after_response: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("latency_probability", "reset_mid_request", "reset_after_response"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultPlan.{name} must be within [0, 1], got {value!r}")
        low, high = self.latency
        if not 0.0 <= low <= high:
            raise ValueError(
                f"FaultPlan.latency must be (low, high), 0 <= low <= high: {low, high}"
            )


# --------------------------------------------------------------------------- framing (no I/O)


@dataclass(frozen=True)
class HttpHead:
    """The start line and headers of one HTTP/1.1 message (header names lower-cased)."""

    start_line: str
    headers: dict[str, str]

    @property
    def method(self) -> str:
        """A request's method: the first word of the start line, upper-cased."""
        return self.start_line.split(" ", 1)[0].upper()

    @property
    def status(self) -> int | None:
        """A response's status code, ``None`` when the start line is not a status line."""
        parts = self.start_line.split(" ", 2)
        if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
            return int(parts[1])
        return None

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None:
            return None
        value = value.split(",")[0].strip()  # repeated identical values are allowed
        if not value.isdigit():
            raise ValueError(f"bad Content-Length: {value!r}")
        return int(value)


@dataclass(frozen=True)
class Segment:
    """A run of bytes that belongs to one message.

    ``head`` is set on the first segment of a message (which starts with the
    message's head bytes); ``end`` is true on its last segment. A message that
    is only a head gives one segment with both.
    """

    data: bytes
    head: HttpHead | None = None
    end: bool = False


class HttpMessageFramer:
    """Splits one direction of an HTTP/1.1 byte stream into messages, without I/O.

    ``feed`` returns the bytes it was given, in order, cut into segments at
    message boundaries; only an incomplete head is held back until it is whole.
    A response framer needs the method of each request it answers (``HEAD``
    responses have no body): push them in order with ``expect_response_to``.
    When the stream turns out not to be HTTP the framer becomes *opaque*: the
    rest of the stream is passed through as segments of no message.
    """

    def __init__(self, *, requests: bool) -> None:
        self._requests = requests
        self._methods: deque[str] = deque()
        # head | length | chunk-size | chunk-data | chunk-crlf | trailer | close | opaque
        self._state = "head"
        self._remaining = 0
        self._held = bytearray()  # an incomplete head, or a chunk-size / trailer line
        self._out: list[Segment] = []
        self._current = bytearray()
        self._current_head: HttpHead | None = None
        self._in_message = False

    @property
    def in_message(self) -> bool:
        """True between the first byte of a message and its last."""
        return self._in_message or (self._state == "head" and bool(self._held))

    @property
    def opaque(self) -> bool:
        return self._state == "opaque"

    def expect_response_to(self, method: str) -> None:
        """Record the method of a request whose response will come through this framer."""
        self._methods.append(method)

    def feed(self, data: bytes) -> list[Segment]:
        """Cut ``data`` into segments at message boundaries.

        Joined, the segments of all calls give back the stream, except the bytes
        of a head that is not complete yet (they come out once it is).
        """
        pos = 0
        while pos < len(data):
            state = self._state
            if state in ("close", "opaque"):
                self._current += data[pos:]
                pos = len(data)
            elif state == "head":
                pos = self._feed_head(data, pos)
            elif state in ("length", "chunk-data"):
                take = min(self._remaining, len(data) - pos)
                self._current += data[pos : pos + take]
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    if state == "length":
                        self._emit(end=True)
                    else:
                        self._state = "chunk-crlf"
            else:  # chunk-size, chunk-crlf, trailer: line by line
                newline = data.find(b"\n", pos)
                stop = len(data) if newline < 0 else newline + 1
                self._current += data[pos:stop]
                self._held += data[pos:stop]
                pos = stop
                if newline >= 0:
                    line = bytes(self._held).rstrip(b"\r\n")
                    self._held.clear()
                    self._chunk_line(line)
        if self._current or self._current_head is not None:
            self._emit(end=False)
        out, self._out = self._out, []
        return out

    def feed_eof(self) -> bool:
        """The stream ended; True when that cleanly ends a close-delimited message."""
        clean = self._state == "close" or (not self.in_message and self._state != "opaque")
        self._state = "head"
        self._held.clear()
        self._in_message = False
        return clean

    def _feed_head(self, data: bytes, pos: int) -> int:
        old = len(self._held)
        self._held += data[pos:]
        end = self._held.find(b"\r\n\r\n", max(0, old - 3))
        if end < 0:
            if len(self._held) > MAX_HEAD_BYTES:
                self._go_opaque()
            return len(data)
        raw = bytes(self._held[: end + 4])
        consumed = end + 4 - old
        self._held.clear()
        try:
            head = _parse_head(raw)
            self._start_body(head)
        except ValueError:
            self._held += raw
            self._go_opaque()
            return pos + consumed
        self._in_message = True
        self._current += raw
        self._current_head = head
        if self._state == "head":  # no body: the message ends with its head
            self._emit(end=True)
        return pos + consumed

    def _chunk_line(self, line: bytes) -> None:
        if self._state == "chunk-crlf":
            if line:
                self._go_opaque()
            else:
                self._state = "chunk-size"
        elif self._state == "chunk-size":
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._go_opaque()
                return
            if size == 0:
                self._state = "trailer"
            else:
                self._state, self._remaining = "chunk-data", size
        elif not line:  # the empty line that ends the trailer section
            self._emit(end=True)

    def _emit(self, *, end: bool) -> None:
        self._out.append(Segment(bytes(self._current), self._current_head, end))
        self._current.clear()
        self._current_head = None
        if end:
            self._state = "head"
            self._in_message = False

    def _go_opaque(self) -> None:
        if self._current or self._current_head is not None:
            self._emit(end=False)
        self._state = "opaque"
        self._in_message = False
        self._current += self._held
        self._held.clear()

    def _start_body(self, head: HttpHead) -> None:
        if self._requests:
            if head.status is not None or not head.method.isalpha():
                raise ValueError("not a request line")
            length = head.content_length
            if head.chunked:
                self._state = "chunk-size"
            elif length:
                self._state, self._remaining = "length", length
            else:
                self._state = "head"
            return
        status = head.status
        if status is None:
            raise ValueError("not a status line")
        if 100 <= status < 200:  # interim: the final response is still to come
            self._state = "head"
            return
        method = self._methods.popleft() if self._methods else ""
        length = head.content_length
        if method == "HEAD" or status in _BODILESS_STATUSES:
            self._state = "head"
        elif head.chunked:
            self._state = "chunk-size"
        elif length is not None:
            self._state, self._remaining = ("length", length) if length else ("head", 0)
        else:
            self._state = "close"


def _parse_head(raw: bytes) -> HttpHead:
    lines = raw.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"bad header line: {line!r}")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return HttpHead(lines[0], headers)


# --------------------------------------------------------------------------- the proxy


@dataclass(frozen=True)
class _Exchange:
    """The faults drawn for one request and its response."""

    reset_mid_request: bool = False
    reset_after_response: bool = False


_FAITHFUL = _Exchange()


class _PlannedReset(Exception):
    """A fault of the plan fired: reset the connection on both sides."""


@dataclass(eq=False)  # hashed by identity: kept in a set of live connections
class _Link:
    """One proxied connection: the client's writer and, once connected, the upstream's."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop a connection with a TCP RST (``SO_LINGER`` 0), discarding unsent bytes."""
    sock = writer.get_extra_info("socket")
    if sock is not None and not writer.transport.is_closing():
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection in order (FIN after the bytes already written)."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@dataclass
class _Counters:
    connections: int = 0
    refused: int = 0
    upstream_failures: int = 0
    requests: int = 0
    resets_mid_request: int = 0
    resets_after_response: int = 0
    delays: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class _Relay:
    """State shared by the two pumps of one connection."""

    link: _Link
    upstream: asyncio.StreamWriter
    decisions: random.Random
    latency_up: random.Random
    latency_down: random.Random
    requests: HttpMessageFramer = field(default_factory=lambda: HttpMessageFramer(requests=True))
    responses: HttpMessageFramer = field(default_factory=lambda: HttpMessageFramer(requests=False))
    exchanges: deque[_Exchange] = field(default_factory=deque)
    delivering: bool = False  # the down pump is passing bytes to the client
    client_done: bool = False  # the client sent EOF: stop once its answers are delivered

    def answer_pending(self) -> bool:
        """True while a request has been seen whose response is not fully delivered."""
        return bool(self.exchanges) or self.responses.in_message or self.delivering


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that injects the faults of a :class:`FaultPlan`.

    Counters, for assertions (they only grow):

    - ``connections`` — client connections accepted and proxied;
    - ``refused`` — connections reset at once because the proxy was ``down``;
    - ``upstream_failures`` — connections reset because the upstream refused them;
    - ``requests`` — HTTP requests seen from clients;
    - ``resets_mid_request`` / ``resets_after_response`` — faults that fired;
    - ``bytes_up`` / ``bytes_down`` — bytes delivered to the upstream / to clients.

    ``errors`` lists unexpected exceptions from connection handlers (a bug in
    the proxy, not a network error); tests should assert it is empty.
    """

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self._plan = plan if plan is not None else FaultPlan()
        self._rng = random.Random(self._plan.seed)
        self._server: asyncio.Server | None = None
        self._upstream: tuple[str, int] = ("", 0)
        self._port = 0
        self._down = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._counters = _Counters()
        self.errors: list[BaseException] = []

    # ----------------------------------------------------------------- lifecycle

    async def start(self, upstream_host: str, upstream_port: int) -> int:
        """Listen on a free port of 127.0.0.1 and return it; forward to the upstream."""
        if self._server is not None:
            raise RuntimeError("FaultProxy already started")
        self._upstream = (upstream_host, upstream_port)
        self._server = await asyncio.start_server(self._accepted, LOOPBACK, 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def stop(self) -> None:
        """Stop listening, reset every live connection, cancel and await every task."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for link in list(self._links):
            link.reset()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        await asyncio.sleep(0)  # let aborted transports close their sockets

    @property
    def port(self) -> int:
        """The port the proxy listens on (0 before ``start``)."""
        return self._port

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    def set_plan(self, plan: FaultPlan) -> None:
        """Use ``plan`` for every later decision, with a generator reseeded from ``plan.seed``."""
        self._plan = plan
        self._rng = random.Random(plan.seed)

    @property
    def down(self) -> bool:
        """While true the WAN is out: live connections are reset and new ones reset on accept."""
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        self._down = value
        if value:
            for link in list(self._links):
                link.reset()

    # ----------------------------------------------------------------- counters

    @property
    def connections(self) -> int:
        return self._counters.connections

    @property
    def refused(self) -> int:
        return self._counters.refused

    @property
    def upstream_failures(self) -> int:
        return self._counters.upstream_failures

    @property
    def requests(self) -> int:
        return self._counters.requests

    @property
    def resets_mid_request(self) -> int:
        return self._counters.resets_mid_request

    @property
    def resets_after_response(self) -> int:
        return self._counters.resets_after_response

    @property
    def delays(self) -> int:
        """Chunks held back by the plan's latency."""
        return self._counters.delays

    @property
    def bytes_up(self) -> int:
        return self._counters.bytes_up

    @property
    def bytes_down(self) -> int:
        return self._counters.bytes_down

    # ----------------------------------------------------------------- connections

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down or self._server is None:
            self._counters.refused += 1
            _reset(writer)
            return
        self._counters.connections += 1
        # drawn here, in accept order, so a run's faults do not depend on scheduling
        decisions = random.Random(self._rng.getrandbits(64))
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, decisions))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decisions: random.Random,
    ) -> None:
        link = _Link(writer)
        self._links.add(link)
        graceful = False
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
            except OSError:
                self._counters.upstream_failures += 1
                return
            link.upstream = upstream_writer
            if self._down:
                return
            relay = _Relay(
                link,
                upstream_writer,
                decisions,
                latency_up=random.Random(decisions.getrandbits(64)),
                latency_down=random.Random(decisions.getrandbits(64)),
            )
            graceful = await self._supervise(relay, reader, upstream_reader)
        except Exception as err:  # a bug in the proxy: keep it for the test to see
            self.errors.append(err)
        finally:
            self._links.discard(link)
            if graceful:
                await _close(writer)
                if link.upstream is not None:
                    await _close(link.upstream)
            else:
                link.reset()

    async def _supervise(
        self,
        relay: _Relay,
        client_reader: asyncio.StreamReader,
        upstream_reader: asyncio.StreamReader,
    ) -> bool:
        """Run both pumps; True when the connection ended in order, False to reset it."""
        up = asyncio.create_task(self._pump_up(relay, client_reader))
        down = asyncio.create_task(self._pump_down(relay, upstream_reader))
        pending: set[asyncio.Task[None]] = {up, down}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    err = task.exception()
                    if isinstance(err, _PlannedReset | OSError):
                        return False
                    if err is not None:
                        raise err
                    if task is down:  # the upstream closed after its last byte reached us
                        return True
                    # the client finished sending: nothing owed to it, or an answer is
                    # still on its way (pass the half-close on and deliver the answer)
                    if not relay.answer_pending():
                        return True
                    relay.client_done = True
                    if relay.upstream.can_write_eof():
                        with contextlib.suppress(OSError):
                            relay.upstream.write_eof()
            return True
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _forward(
        self, writer: asyncio.StreamWriter, data: bytes, latency: random.Random, *, up: bool
    ) -> None:
        plan = self._plan
        if plan.latency_probability > 0 and latency.random() < plan.latency_probability:
            self._counters.delays += 1
            await asyncio.sleep(latency.uniform(*plan.latency))
        if not data:
            return
        writer.write(data)
        await writer.drain()
        if up:
            self._counters.bytes_up += len(data)
        else:
            self._counters.bytes_down += len(data)

    def _decide(self, decisions: random.Random) -> _Exchange:
        plan = self._plan
        mid = decisions.random() < plan.reset_mid_request
        after = decisions.random() < plan.reset_after_response  # drawn always: stable sequence
        return _Exchange(reset_mid_request=mid, reset_after_response=after and not mid)

    async def _pump_up(self, relay: _Relay, reader: asyncio.StreamReader) -> None:
        """Client → upstream, request by request."""
        current = _FAITHFUL
        held = bytearray()
        while True:
            data = await reader.read(CHUNK_SIZE)
            if not data:
                relay.requests.feed_eof()
                return
            for segment in relay.requests.feed(data):
                if segment.head is not None:
                    current = self._decide(relay.decisions)
                    self._counters.requests += 1
                    relay.responses.expect_response_to(segment.head.method)
                    relay.exchanges.append(current)
                if relay.requests.opaque:
                    current = _FAITHFUL
                if current.reset_mid_request:
                    held += segment.data
                    if segment.end:
                        await self._cut_request(relay, bytes(held))
                    continue
                await self._forward(relay.upstream, segment.data, relay.latency_up, up=True)

    async def _cut_request(self, relay: _Relay, request: bytes) -> None:
        """Deliver a prefix of a whole request (maybe nothing), then end the connection.

        The upstream gets an orderly close after the prefix, so the partial bytes
        surely reach it (an RST would let its kernel discard them unread); the
        client gets the RST.
        """
        rng = relay.decisions
        cut = 0 if len(request) <= 1 or rng.random() < 0.25 else rng.randrange(1, len(request))
        await self._forward(relay.upstream, request[:cut], relay.latency_up, up=True)
        self._counters.resets_mid_request += 1
        upstream, relay.link.upstream = relay.link.upstream, None
        if upstream is not None:
            await _close(upstream)
        raise _PlannedReset

    async def _pump_down(self, relay: _Relay, reader: asyncio.StreamReader) -> None:
        """Upstream → client, response by response."""
        current = _FAITHFUL
        held = bytearray()
        while True:
            data = await reader.read(CHUNK_SIZE)
            if not data:
                complete = relay.responses.feed_eof()
                if current.reset_after_response and held:
                    if complete:  # a close-delimited response, held whole
                        self._counters.resets_after_response += 1
                    raise _PlannedReset
                return
            for segment in relay.responses.feed(data):
                head = segment.head
                if head is not None:
                    status = head.status
                    if status is not None and 100 <= status < 200:  # interim, pass it on
                        relay.delivering = True
                        await self._forward(
                            relay.link.client, segment.data, relay.latency_down, up=False
                        )
                        relay.delivering = False
                        continue
                    current = relay.exchanges.popleft() if relay.exchanges else _FAITHFUL
                    held.clear()
                if relay.responses.opaque:
                    current = _FAITHFUL
                if current.reset_after_response:
                    held += segment.data  # the answer the client will never read
                    if segment.end:
                        self._counters.resets_after_response += 1
                        raise _PlannedReset
                    continue
                relay.delivering = True
                await self._forward(relay.link.client, segment.data, relay.latency_down, up=False)
                relay.delivering = False
                if segment.end:
                    current = _FAITHFUL
                    if relay.client_done and not relay.answer_pending():
                        return

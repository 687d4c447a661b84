"""The fault-injecting proxy, against a real aiohttp server on loopback.

The server counts requests whose handler started, completed (body read in
full) and failed (the body never arrived whole). Faulted requests are POSTs:
aiohttp retries an idempotent request once on a dropped keep-alive
connection, which would blur the counts (the edge's batches are POSTs too).
Every test is bounded in requests and in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from faultproxy import FaultPlan, FaultProxy, HttpMessageFramer, Segment

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


@dataclass
class Upstream:
    """What the server saw."""

    server: TestServer
    started: int = 0
    completed: int = 0
    incomplete: int = 0
    running: int = 0
    bodies: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def open_connections(self) -> int:
        runner = self.server.runner
        assert runner is not None and runner.server is not None
        return len(runner.server.connections)


def _app(state: dict[str, Upstream]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        upstream = state["upstream"]
        upstream.started += 1
        upstream.running += 1
        try:
            body = await request.read()
        except BaseException:  # the connection ended before the body was complete
            upstream.incomplete += 1
            raise
        finally:
            upstream.running -= 1
        upstream.completed += 1
        upstream.bodies.append(len(body))
        return web.json_response(
            {"n": upstream.completed, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        )

    async def document(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "items": list(range(50))})

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(5):
            await response.write(f"part {i};".encode())
        await response.write_eof()
        return response

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/echo", echo)
    app.router.add_get("/document", document)
    app.router.add_get("/empty", empty)
    app.router.add_get("/chunked", chunked)
    return app


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> Upstream:
    state: dict[str, Upstream] = {}
    server = await aiohttp_server(_app(state))
    state["upstream"] = Upstream(server)
    return state["upstream"]


@pytest.fixture
async def proxy(upstream: Upstream) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy()
    await proxy.start("127.0.0.1", upstream.port)
    yield proxy
    await proxy.stop()
    assert proxy.errors == []


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


def url(proxy: FaultProxy, path: str) -> str:
    return f"http://127.0.0.1:{proxy.port}{path}"


async def eventually(check: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def settled(upstream: Upstream) -> None:
    """Wait until the server has closed every connection and finished every handler."""
    await eventually(lambda: upstream.open_connections() == 0 and upstream.running == 0)


async def post(session: aiohttp.ClientSession, proxy: FaultProxy, body: bytes) -> Any:
    async with session.post(url(proxy, "/echo"), data=body) as response:
        assert response.status == 200
        return await response.json()


# --------------------------------------------------------------------------- framing, no I/O

REQUESTS = (
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
    b"PUT /d HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
)
RESPONSES = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"  # answers HEAD: no body
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n"
    b"HTTP/1.1 200 OK\r\n\r\nuntil the connection closes"
)


def _frame(framer: HttpMessageFramer, stream: bytes, step: int) -> list[Segment]:
    segments: list[Segment] = []
    for i in range(0, len(stream), step):
        segments += framer.feed(stream[i : i + step])
    return segments


@pytest.mark.parametrize("step", [len(REQUESTS), 1, 7])
def test_framer_cuts_requests_at_their_ends(step: int) -> None:
    segments = _frame(HttpMessageFramer(requests=True), REQUESTS, step)
    assert b"".join(s.data for s in segments) == REQUESTS  # every byte, in order
    heads = [s.head.start_line for s in segments if s.head is not None]
    assert heads == ["POST /a HTTP/1.1", "GET /b HTTP/1.1", "POST /c HTTP/1.1", "PUT /d HTTP/1.1"]
    assert sum(s.end for s in segments) == 4  # four complete messages
    assert segments[-1].end


@pytest.mark.parametrize("step", [len(RESPONSES), 1, 5])
def test_framer_cuts_responses_using_the_request_methods(step: int) -> None:
    framer = HttpMessageFramer(requests=False)
    for method in ("POST", "HEAD", "GET", "GET", "GET"):
        framer.expect_response_to(method)
    segments = _frame(framer, RESPONSES, step)
    assert b"".join(s.data for s in segments) == RESPONSES
    statuses = [s.head.status for s in segments if s.head is not None]
    assert statuses == [100, 200, 200, 204, 200, 200]
    # 100, 200 "ok", the HEAD answer, 204, the chunked one end; the last reads to EOF
    assert sum(s.end for s in segments) == 5
    assert framer.in_message
    assert framer.feed_eof() is True  # EOF completes a close-delimited body


def test_framer_passes_a_stream_that_is_not_http_through() -> None:
    framer = HttpMessageFramer(requests=True)
    stream = b"\x16\x03\x01 not http\r\n\r\nmore bytes"
    segments = framer.feed(stream)
    assert framer.opaque
    assert b"".join(s.data for s in segments) == stream
    assert not any(s.end for s in segments)


def test_fault_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="reset_mid_request"):
        FaultPlan(reset_mid_request=1.5)
    with pytest.raises(ValueError, match="latency"):
        FaultPlan(latency=(0.2, 0.1))


# --------------------------------------------------------------------------- the proxy, live


async def test_zero_plan_forwards_faithfully_over_one_keepalive_connection(
    upstream: Upstream, proxy: FaultProxy
) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: many reads and writes on each side
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=5)
    ) as session:
        answer = await post(session, proxy, body)
        assert answer == {"n": 1, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        async with session.get(url(proxy, "/document")) as response:
            assert await response.json() == {"ok": True, "items": list(range(50))}
        async with session.head(url(proxy, "/document")) as response:
            assert response.status == 200
            assert await response.read() == b""
        async with session.get(url(proxy, "/empty")) as response:
            assert response.status == 204
        async with session.get(url(proxy, "/chunked")) as response:
            assert await response.text() == "part 0;part 1;part 2;part 3;part 4;"
        answer = await post(session, proxy, b"small")
        assert answer["n"] == 2

    assert proxy.connections == 1  # every request rode the same connection
    assert proxy.requests == 6
    assert proxy.resets_mid_request == proxy.resets_after_response == 0
    assert proxy.bytes_up > len(body) + len(b"small")
    assert proxy.bytes_down > 0
    assert upstream.bodies == [len(body), 5]


async def test_latency_delays_each_chunk(
    upstream: Upstream, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    await post(session, proxy, b"x")
    baseline = time.monotonic() - started
    assert proxy.delays == 0

    proxy.set_plan(FaultPlan(latency_probability=1.0, latency=(0.1, 0.1)))
    started = time.monotonic()
    await post(session, proxy, b"x")
    delayed = time.monotonic() - started

    # at least one chunk up and one down, each held 0.1 s
    assert proxy.delays >= 2
    assert delayed >= 0.2
    assert delayed - baseline >= 0.15
    assert delayed < 2.0
    assert upstream.completed == 2


async def test_reset_mid_request_never_delivers_a_whole_request(
    upstream: Upstream, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    proxy.set_plan(FaultPlan(reset_mid_request=1.0, seed=3))
    body = b"b" * 20_000
    for _ in range(12):
        with pytest.raises(aiohttp.ClientError):
            await post(session, proxy, body)
    await settled(upstream)

    assert proxy.resets_mid_request == 12
    assert upstream.completed == 0  # no request ever arrived whole
    assert upstream.started == upstream.incomplete  # some saw a head and a partial body
    assert proxy.bytes_up < 12 * len(body)  # only prefixes went up
    assert proxy.bytes_down == 0


async def test_reset_after_response_loses_the_answer_of_a_request_the_server_handled(
    upstream: Upstream, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    proxy.set_plan(FaultPlan(reset_after_response=1.0))
    for attempt in range(1, 6):
        with pytest.raises(aiohttp.ClientError):
            await post(session, proxy, b"batch-1")
        # the server handled it before the client heard anything: the retry case
        assert upstream.completed == attempt

    assert proxy.resets_after_response == 5
    assert proxy.bytes_down == 0  # not one byte of any answer reached the client
    assert upstream.bodies == [7] * 5

    proxy.set_plan(FaultPlan())
    assert (await post(session, proxy, b"batch-1"))["n"] == 6


async def test_down_refuses_connections_and_drops_live_ones(
    upstream: Upstream, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    await post(session, proxy, b"before")  # leaves a keep-alive connection in the pool
    proxy.down = True
    assert proxy.down
    for _ in range(3):
        with pytest.raises(aiohttp.ClientError):
            await post(session, proxy, b"during")
    # the first attempt may die on the pooled connection the outage dropped
    assert proxy.refused >= 2
    assert upstream.bodies == [6]  # nothing got through during the outage

    proxy.down = False
    assert (await post(session, proxy, b"after"))["n"] == 2


async def test_an_unreachable_upstream_is_a_connection_error(
    unused_tcp_port: int, session: aiohttp.ClientSession
) -> None:
    proxy = FaultProxy()
    await proxy.start("127.0.0.1", unused_tcp_port)
    try:
        with pytest.raises(aiohttp.ClientError):
            await post(session, proxy, b"x")
        assert proxy.upstream_failures == 1
    finally:
        await proxy.stop()
    assert proxy.errors == []


async def _mixed_run(proxy: FaultProxy, session: aiohttp.ClientSession) -> list[str]:
    outcomes = []
    for i in range(60):
        try:
            await post(session, proxy, f"item {i}".encode() * 50)
            outcomes.append("ok")
        except aiohttp.ClientError:
            outcomes.append("error")
    return outcomes


async def test_counters_add_up_and_a_seed_reproduces_the_run(
    upstream: Upstream, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    plan = FaultPlan(reset_mid_request=0.2, reset_after_response=0.2, seed=42)
    proxy.set_plan(plan)
    first = await _mixed_run(proxy, session)
    await settled(upstream)

    ok = first.count("ok")
    assert proxy.requests == 60
    assert proxy.resets_mid_request + proxy.resets_after_response + ok == 60
    assert 0 < proxy.resets_mid_request < 30
    assert 0 < proxy.resets_after_response < 30
    # the server handled every delivered request and every one whose answer was dropped
    assert upstream.completed == ok + proxy.resets_after_response
    assert proxy.bytes_down > 0

    # set_plan reseeds: the same plan gives the same faults on the same requests
    counts = (proxy.resets_mid_request, proxy.resets_after_response)
    proxy.set_plan(plan)
    second = await _mixed_run(proxy, session)
    assert second == first
    assert (proxy.resets_mid_request, proxy.resets_after_response) == tuple(2 * c for c in counts)


async def test_stop_cancels_every_task_and_closes_live_connections(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    proxy = FaultProxy(FaultPlan(latency_probability=1.0, latency=(5.0, 5.0)))
    await proxy.start("127.0.0.1", upstream.port)
    slow = asyncio.create_task(post(session, proxy, b"stuck"))
    await eventually(lambda: proxy.connections == 1)

    started = time.monotonic()
    await proxy.stop()
    assert time.monotonic() - started < 1.0
    with pytest.raises(aiohttp.ClientError):
        await slow
    leftovers = [
        task
        for task in asyncio.all_tasks()
        if "FaultProxy" in getattr(task.get_coro(), "__qualname__", "")
    ]
    assert leftovers == []
    assert proxy.errors == []
    await proxy.stop()  # a second stop is harmless

"""The host's window into the demo's office LAN (``make demo``).

With LAN discovery the demo runs inside a private network namespace, so the
edge node and the gateway listen on that namespace's loopback, which the
host cannot reach. :class:`HostWindow` opens listening sockets on the
host's own loopback (made on a thread that has joined the host's network
namespace: a socket belongs to the namespace it was created in) and copies
bytes both ways to the service inside. Nothing is rewritten: the page a
browser on the host gets is the edge's own answer.

Without a namespace the services already listen on the host's loopback and
the window is the identity (their own URLs).

:func:`check_page` fetches a URL the way a browser on the host would (from
the host's namespace), so the demo prints only URLs that have answered.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
COPY_CHUNK = 64 * 1024
# A browser on this host goes straight to 127.0.0.1; so does the check, whatever
# http_proxy says.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class PageCheck:
    """What a GET of a URL answered from the host."""

    url: str
    status: int
    size: int
    content_type: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200

    def describe(self) -> str:
        if self.error is not None:
            return f"did not answer: {self.error}"
        return f"answered {self.status} ({self.content_type}, {self.size} bytes)"


def _on_thread_in(netns: str | None, work: Callable[[], T]) -> T:
    """Run ``work`` on a new thread, inside network namespace ``netns`` (a
    path such as /proc/PID/ns/net) when given. ``setns`` moves only the
    calling thread, so the demo's own event loop stays where it is."""
    outcome: dict[str, T | BaseException] = {}

    def run() -> None:
        try:
            if netns is not None:
                _join(netns)
            outcome["value"] = work()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="demo-host-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _join(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _listen_on_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class HostWindow:
    """Host-loopback URLs for services listening inside the demo's namespace.

    ``host_netns`` is the host's network namespace (``/proc/PID/ns/net`` of
    a process outside), or None when the demo runs in the host's namespace
    already."""

    def __init__(self, host_netns: str | None) -> None:
        self.host_netns = host_netns
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self, inner_base: str) -> str:
        """The base URL (``http://host:port``) at which the host reaches the
        service at ``inner_base``."""
        if self.host_netns is None:
            return inner_base
        target = urlsplit(inner_base)
        assert target.hostname is not None and target.port is not None
        host, port = target.hostname, target.port

        async def forward(
            client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
        ) -> None:
            self._writers.add(client_writer)
            try:
                inner_reader, inner_writer = await asyncio.open_connection(host, port)
            except OSError:
                client_writer.close()
                self._writers.discard(client_writer)
                return
            self._writers.add(inner_writer)
            await asyncio.gather(
                _copy(client_reader, inner_writer), _copy(inner_reader, client_writer)
            )
            for writer in (inner_writer, client_writer):
                writer.close()
                self._writers.discard(writer)

        listener = _on_thread_in(self.host_netns, _listen_on_loopback)
        server = await asyncio.start_server(forward, sock=listener)
        self._servers.append(server)
        bound = listener.getsockname()[1]
        return f"{target.scheme}://127.0.0.1:{bound}"

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        # A browser keeps its connections open; close them, or waiting for
        # the servers to close would wait for the browser.
        for writer in list(self._writers):
            writer.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def check_page(self, url: str, headers: dict[str, str] | None = None) -> PageCheck:
        """GET ``url`` from the host's namespace, as a browser there would."""

        def fetch() -> PageCheck:
            request = urllib.request.Request(url, headers=headers or {})
            try:
                with NO_PROXY.open(request, timeout=10) as resp:
                    body = resp.read()
                    return PageCheck(url, resp.status, len(body), resp.headers.get_content_type())
            except urllib.error.HTTPError as err:
                return PageCheck(url, err.code, 0, err.headers.get_content_type())
            except (urllib.error.URLError, OSError) as err:
                return PageCheck(url, 0, 0, "", error=str(err))

        return await asyncio.to_thread(_on_thread_in, self.host_netns, fetch)

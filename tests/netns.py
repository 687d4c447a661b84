"""A private network namespace per test, for real multicast (issue 4).

The namespace has only its own loopback: up, multicast on, and a route for
224.0.0.0/4 through it, so mDNS packets never leave it and never touch a
real interface. Services run inside it as subprocesses (``ip netns exec``
execs, so the pid we hold is the service's own). The test itself stays
outside; for HTTP it runs a coroutine on a thread that has joined the
namespace (``setns`` changes the calling thread only, and every socket the
thread opens belongs to the namespace).

Tests that need this skip, with the reason, when not root or when ``ip``
is missing; ``.ci/run`` runs as root with iproute2.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lan import namespace

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_names = itertools.count(1)


class NetworkNamespace:
    def __init__(self, name: str) -> None:
        self.name = name
        self._ports = itertools.count(18001)

    @property
    def wrapper(self) -> list[str]:
        """Prefix of a command run inside the namespace."""
        return namespace.exec_prefix(self.name)

    def port(self) -> int:
        """A TCP port nobody uses yet: the namespace is new and its ports are ours."""
        return next(self._ports)

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.wrapper, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def call(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` on a new event loop on a thread inside the namespace."""
        outcome: dict[str, Any] = {}

        def inside() -> None:
            try:
                _join(self.name)
                outcome["value"] = asyncio.run(work())  # type: ignore[arg-type]
            except BaseException as err:  # handed to the caller's thread
                outcome["error"] = err

        thread = threading.Thread(target=inside, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]  # type: ignore[no-any-return]

    async def acall(self, work: Callable[[], Awaitable[T]]) -> T:
        return await asyncio.to_thread(self.call, work)


def _join(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(Path("/run/netns") / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


@pytest.fixture
def netns() -> Iterator[NetworkNamespace]:
    name = f"phs-t{os.getpid()}-{next(_names)}"
    try:
        namespace.create(name)
    except namespace.NamespaceUnavailable as err:
        pytest.skip(f"real-multicast test: {err}")
    try:
        yield NetworkNamespace(name)
    finally:
        namespace.delete(name)

"""Browse one service type and hand each resolved advert to the caller.

zeroconf tells us names as they come and go; we resolve each added or
updated instance (SRV, TXT, addresses), map it with a pure function from
``shared.discovery`` and call ``on_seen``. An advert that does not follow
the contract is logged and ignored; a withdrawn one is reported by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from shared.discovery import AdvertInvalid, Properties

log = logging.getLogger("lan")

A = TypeVar("A")
ParseAdvert = Callable[[str, int | None, Sequence[str], Properties], A]


class Browser(Generic[A]):
    def __init__(
        self,
        zc: AsyncZeroconf,
        service_type: str,
        parse: ParseAdvert[A],
        on_seen: Callable[[A], Awaitable[None]],
        on_gone: Callable[[str], Awaitable[None]],
        resolve_timeout_seconds: float = 3.0,
    ) -> None:
        self._zc = zc
        self._type = service_type
        self._parse = parse
        self._on_seen = on_seen
        self._on_gone = on_gone
        self._timeout_ms = resolve_timeout_seconds * 1000
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.invalid: dict[str, str] = {}  # instance name -> why its advert was ignored

    async def start(self) -> None:
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, self._type, handlers=[self._on_change]
        )

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # Called by zeroconf on the event loop; the work goes to a task of ours.
        if state_change is ServiceStateChange.Removed:
            work = self._on_gone(name)
        else:
            work = self._resolve(name)
        task = asyncio.get_running_loop().create_task(self._guard(name, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, name: str, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handling advert %s failed", name)

    async def _resolve(self, name: str) -> None:
        info = AsyncServiceInfo(self._type, name)
        if not await info.async_request(self._zc.zeroconf, self._timeout_ms):
            log.warning("advert %s did not resolve within %.0f ms; ignored", name, self._timeout_ms)
            return
        try:
            advert = self._parse(name, info.port, info.parsed_scoped_addresses(), info.properties)
        except AdvertInvalid as err:
            self.invalid[name] = str(err)
            log.warning("ignoring advert %s: %s", name, err)
            return
        self.invalid.pop(name, None)
        await self._on_seen(advert)


async def collect(
    zc: AsyncZeroconf, service_type: str, parse: ParseAdvert[A], seconds: float
) -> list[A]:
    """Every valid advert of ``service_type`` seen within ``seconds``."""
    seen: dict[str, A] = {}

    async def on_seen(advert: A) -> None:
        seen[getattr(advert, "name")] = advert  # noqa: B009 - adverts are our dataclasses

    async def on_gone(name: str) -> None:
        seen.pop(name, None)

    browser = Browser(zc, service_type, parse, on_seen, on_gone)
    await browser.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await browser.stop()
    return list(seen.values())

"""A running device: its gather API, its advert, and (optionally) pushing.

``DeviceRuntime`` serves one device's gather API on its own port and
advertises ``_phs-field._tcp`` on a caller-owned ``AsyncZeroconf``,
re-announcing whenever its count of unsynced records changes; ``simulate``
runs many of them on one ``AsyncZeroconf``. ``serve`` is ``phs-field
serve``: one runtime, an ``AsyncZeroconf`` of its own, a push loop, and a
clean withdrawal on SIGTERM/SIGINT. The advert's ``pending`` counts only
what the edge can gather (transitions and encounters); unsent cohort drafts
also start a push, as they travel only in the device's own sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from zeroconf.asyncio import AsyncZeroconf

from fielddevice.client import EdgeRefused, EdgeUnreachable
from fielddevice.device import FieldDevice
from fielddevice.finder import (
    DiscoveryUnavailable,
    EdgeNotFound,
    EdgeWatch,
    advert_addresses,
    plan,
    start_zeroconf,
)
from fielddevice.gather_api import create_gather_app
from lan.advertiser import Advertiser
from observability.logs import lifecycle
from shared.discovery import FIELD_SERVICE, field_properties

log = logging.getLogger("fielddevice.service")
announce = lifecycle("fielddevice.serve")  # start and stop, written at any log_level
ANNOUNCE_POLL_SECONDS = 1.0


class DeviceRuntime:
    """One device's gather server, and its advert when ``zc`` is given."""

    def __init__(
        self,
        device: FieldDevice,
        host: str,
        port: int,
        zc: AsyncZeroconf | None = None,
        addresses: Sequence[str] = (),
    ) -> None:
        self.device = device
        self._host = host
        self._port = port
        self._zc = zc
        self._addresses = list(addresses)
        self._runner: web.AppRunner | None = None
        self.advertiser: Advertiser | None = None
        self._wake = asyncio.Event()
        self._announcer: asyncio.Task[None] | None = None
        self.port = 0
        self.advertised_on: list[str] = []
        self.announced: int | None = None  # the pending count last advertised

    async def start(self) -> None:
        runner = web.AppRunner(create_gather_app(self.device), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        if self._zc is None:
            return
        self.announced = await self.device.store.pending_total()
        self.advertised_on = advert_addresses(self._host, self._addresses)
        self.advertiser = Advertiser(
            self._zc,
            FIELD_SERVICE,
            self.device.device_id,
            self.port,
            field_properties(self.device.device_id, self.announced),
            self.advertised_on,
        )
        await self.advertiser.start()
        self.device.on_change(self._wake.set)
        self._announcer = asyncio.create_task(self._announce_changes())

    async def _announce_changes(self) -> None:
        # Woken by this process's changes; the poll catches other processes'
        # (a `phs-field record` beside a running `phs-field serve`).
        assert self.advertiser is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), ANNOUNCE_POLL_SECONDS)
            self._wake.clear()
            try:
                count = await self.device.store.pending_total()
                if count != self.announced:
                    await self.advertiser.update(field_properties(self.device.device_id, count))
                    self.announced = count
                    log.debug("%s re-announced pending=%d", self.device.device_id, count)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("re-announcing %s failed", self.device.device_id)

    async def stop(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
            self._announcer = None
        if self.advertiser is not None:
            await self.advertiser.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def push_when_found(
    device: FieldDevice,
    session: aiohttp.ClientSession,
    watch: EdgeWatch | None,
    why_no_discovery: str | None,
) -> dict[str, object] | None:
    """One attempt to find the paired edge and sync; None when it failed (logged)."""
    pairing = await device.store.pairing()
    if pairing is None:
        return None
    try:
        adverts = None if watch is None else await watch.settled(device.settings.discovery_seconds)
        chosen = plan(adverts, pairing, device.settings.edge_url, None, why_no_discovery)
        for refusal in chosen.refused:
            log.info("refused edge advert %s: %s", refusal.advert.name, refusal.reason)
        return await device.sync(session, chosen)
    except (EdgeNotFound, EdgeUnreachable, EdgeRefused) as err:
        log.warning("%s: no push this time: %s", device.device_id, err)
        return None


async def serve(device: FieldDevice, push: bool = True) -> int:
    """``phs-field serve``: until SIGTERM or SIGINT."""
    settings = device.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    zc: AsyncZeroconf | None = None
    addresses: list[str] = []
    why: str | None = "discovery is off (setting discovery)"
    if settings.discovery:
        try:
            zc, addresses = start_zeroconf(settings.interfaces, settings.host)
            why = None
        except DiscoveryUnavailable as err:
            why = str(err)
            log.warning("not advertising and not browsing: %s", err)
    if await device.store.pairing() is None:
        log.warning("not paired: gather requests are refused until phs-field pair")
    runtime = DeviceRuntime(device, settings.host, settings.port, zc, addresses)
    watch = EdgeWatch(zc) if zc is not None and push else None
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_seconds)
    try:
        await runtime.start()
        if watch is not None:
            await watch.start()
        advert = runtime.advertiser.name if runtime.advertiser else None
        announce.info(
            "device %s serving on %s:%d; %s",
            device.device_id,
            settings.host,
            runtime.port,
            f"advertised as {advert} on {', '.join(runtime.advertised_on)}"
            if advert
            else f"not advertised ({why})",
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                if push and (
                    await device.store.pending_total() or await device.store.pending_draft_count()
                ):
                    await push_when_found(device, session, watch, why)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.push_interval_seconds)
    finally:
        if watch is not None:
            await watch.stop()
        await runtime.stop()
        if zc is not None:
            await zc.async_close()
    announce.info("device %s stopped; advert withdrawn", device.device_id)
    return 0

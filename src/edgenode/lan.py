"""The edge node's LAN presence (CONTRACT section 10, docs/discovery.md).

With the setting ``discovery`` on, ``edgenode run`` (the app's cleanup
context ``lan_presence``):

- advertises ``_phs-edge._tcp.local.``, instance = node id, TXT from
  ``shared.discovery.edge_properties``, on the port the tablet API really
  listens on (``LISTEN_PORT``, set once the server is bound);
- browses ``_phs-field._tcp.local.`` into the devices-seen registry and asks
  the gatherer to gather from paired devices that advertise pending records,
  and sweeps every ``gather_interval_seconds`` for those still pending;
- re-reads its addresses every ``address_check_seconds`` and, when they
  changed, moves its zeroconf sockets and re-announces;
- on shutdown withdraws its advert, stops browsing and closes zeroconf.

Nothing here may stop the node serving tablets: without a usable interface,
or if multicast cannot be set up, it logs a warning and runs without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import aiohttp
import ifaddr
from aiohttp import web
from zeroconf.asyncio import AsyncZeroconf

from edgenode.devices_seen import mark_all_gone, mark_gone, record_seen
from edgenode.gather import Gatherer
from edgenode.http import EDGE_DB, EDGE_SETTINGS, NODE_KEY, OUTBOX_WAKE
from edgenode.intake import OUTREACH_INTAKE
from edgenode.settings import EdgeSettings
from edgenode.store.database import EdgeDatabase
from gateway.http import CLOCK, Clock
from lan.advertiser import Advertiser
from lan.browser import Browser
from lan.interfaces import NoUsableInterface, select_addresses, zeroconf_interfaces
from shared.discovery import (
    EDGE_SERVICE,
    FIELD_SERVICE,
    FieldAdvert,
    edge_properties,
    field_advert,
)
from shared.signing import KeyPair, fingerprint

log = logging.getLogger("edgenode.lan")

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class ListenPort:
    """The TCP port the tablet API is bound to, known once the server listens
    (``--port 0`` picks one). ``edgenode run`` sets it; the advert waits for it."""

    def __init__(self) -> None:
        self.port: int | None = None
        self._known = asyncio.Event()

    def set(self, port: int) -> None:
        self.port = port
        self._known.set()

    async def wait(self) -> int:
        await self._known.wait()
        assert self.port is not None
        return self.port


LISTEN_PORT = web.AppKey("listen_port", ListenPort)


def discovery_addresses(
    settings: EdgeSettings, adapters: Iterable[ifaddr.Adapter] | None = None
) -> list[str] | None:
    """The addresses to advertise and browse on; None when the tablet API
    listens on loopback only and no interface was named (nothing on the LAN
    could reach it: tests and local runs stay off the network).

    ``interfaces`` names them; else a specific ``host`` address is the one;
    else every non-loopback interface that is up. Only addresses the API
    answers on are kept: IPv4 ones for ``host = 0.0.0.0``, the host itself
    for a specific host address.
    Raises ``NoUsableInterface``.
    """
    host = settings.host.strip()
    try:
        host_ip = None if host in _WILDCARDS else ipaddress.ip_address(host)
    except ValueError:
        host_ip = None  # a host name: treated as every interface
    choices = list(settings.interfaces)
    if not choices and (host == "localhost" or (host_ip is not None and host_ip.is_loopback)):
        return None
    if not choices and host_ip is not None:
        choices = [host]
    addresses = select_addresses(choices, adapters)
    if host == "0.0.0.0":
        addresses = [a for a in addresses if ":" not in a]
        if not addresses:
            raise NoUsableInterface(
                "the tablet API listens on IPv4 (host 0.0.0.0) but the chosen "
                "interfaces have no IPv4 address"
            )
    elif host_ip is not None:
        addresses = [a for a in addresses if ipaddress.ip_address(a.split("%")[0]) == host_ip]
        if not addresses:
            raise NoUsableInterface(
                f"the tablet API listens on {host} only, which is not an address of "
                f"{', '.join(choices)}"
            )
    return addresses


class FieldDevices:
    """What the browser reports, kept in the registry and handed to the gatherer."""

    def __init__(self, db: EdgeDatabase, gatherer: Gatherer, clock: Clock) -> None:
        self._db = db
        self.gatherer = gatherer
        self._clock = clock

    async def on_seen(self, advert: FieldAdvert) -> None:
        """An advert added or updated: record it; gather if paired and pending."""
        async with self._db.write() as conn:
            device = await record_seen(conn, advert, self._clock())
        if device.paired and device.pending > 0:
            self.gatherer.request(device.device_id)

    async def on_gone(self, name: str) -> None:
        """An advert withdrawn (or expired)."""
        async with self._db.write() as conn:
            gone = await mark_gone(conn, name, self._clock())
        for device_id in gone:
            log.info("device %s withdrew its advert", device_id)


class LanPresence:
    """The advert, the browser and the gatherer on one ``AsyncZeroconf``."""

    def __init__(
        self,
        zc: AsyncZeroconf,
        settings: EdgeSettings,
        keypair: KeyPair,
        db: EdgeDatabase,
        gatherer: Gatherer,
        clock: Clock,
        listen_port: ListenPort,
        addresses: list[str],
    ) -> None:
        self._zc = zc
        self._settings = settings
        self._db = db
        self.gatherer = gatherer
        self._clock = clock
        self._listen_port = listen_port
        self.addresses = addresses
        properties = edge_properties(
            settings.node_id, settings.tenant_id, fingerprint(keypair.public_key)
        )
        self._properties = properties
        self.advertiser: Advertiser | None = None
        self.devices = FieldDevices(db, gatherer, clock)
        self.browser: Browser[FieldAdvert] = Browser(
            zc, FIELD_SERVICE, field_advert, self.devices.on_seen, self.devices.on_gone
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        async with self._db.write() as conn:
            await mark_all_gone(conn, self._clock())  # present again once re-announced
        await self.browser.start()
        s = self._settings
        self._tasks = [
            asyncio.create_task(self._advertise()),
            asyncio.create_task(_every("address check", s.address_check_seconds, self.recheck)),
            asyncio.create_task(_every("gather sweep", s.gather_interval_seconds, self.sweep)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for name, step in (
            ("withdrawing the advert", self.advertiser.stop if self.advertiser else None),
            ("stopping the browser", self.browser.stop),
            ("stopping the gatherer", self.gatherer.close),
        ):
            if step is None:
                continue
            try:
                await step()
            except Exception:
                log.exception("%s failed", name)

    async def _advertise(self) -> None:
        port = await self._listen_port.wait()
        advertiser = Advertiser(
            self._zc,
            EDGE_SERVICE,
            self._settings.node_id,
            port,
            self._properties,
            self.addresses,
        )
        try:
            await advertiser.start()
        except Exception:
            log.exception("advertising %s failed; tablets must be given the address", EDGE_SERVICE)
            return
        self.advertiser = advertiser

    async def sweep(self) -> None:
        await self.gatherer.sweep()

    async def recheck(self) -> None:
        """Follow address changes: move the sockets, re-announce the advert."""
        try:
            addresses = discovery_addresses(self._settings)
        except NoUsableInterface as err:
            log.warning("no usable address now (%s); keeping %s", err, ", ".join(self.addresses))
            return
        if addresses is None or set(addresses) == set(self.addresses):
            return
        log.info("addresses changed: %s -> %s", ", ".join(self.addresses), ", ".join(addresses))
        interfaces, version = zeroconf_interfaces(addresses)
        await self._zc.async_update_interfaces(interfaces, version)
        self.addresses = addresses
        if self.advertiser is not None:
            await self.advertiser.update(addresses=addresses)


async def _every(name: str, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await step()
        except Exception:
            log.exception("%s failed; trying again in %.0f s", name, seconds)


async def lan_presence(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context of the edge app when the setting ``discovery`` is on."""
    settings = app[EDGE_SETTINGS]
    try:
        addresses = discovery_addresses(settings)
    except NoUsableInterface as err:
        log.warning("LAN discovery is off: %s", err)
        yield
        return
    if addresses is None:
        log.info(
            "LAN discovery is off: the tablet API listens on %s only (name an interface "
            "with --interface to advertise anyway)",
            settings.host,
        )
        yield
        return
    interfaces, version = zeroconf_interfaces(addresses)
    try:
        zc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
    except Exception as err:  # OSError mostly; whatever it is, tablets are still served
        log.warning("LAN discovery is off: multicast on %s failed: %s", ", ".join(addresses), err)
        yield
        return
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_seconds, sock_connect=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            gatherer = Gatherer(
                app[EDGE_DB],
                app[OUTREACH_INTAKE],
                app[OUTBOX_WAKE],
                session,
                app[NODE_KEY],
                settings,
                app[CLOCK],
            )
            presence = LanPresence(
                zc,
                settings,
                app[NODE_KEY],
                app[EDGE_DB],
                gatherer,
                app[CLOCK],
                app[LISTEN_PORT],
                addresses,
            )
            try:
                await presence.start()
            except Exception:
                log.exception("LAN discovery failed to start; serving tablets without it")
            try:
                yield
            finally:
                await presence.stop()
    finally:
        with contextlib.suppress(Exception):
            await zc.async_close()

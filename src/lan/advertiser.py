"""Advertise one service instance; update its TXT or addresses; withdraw it."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

log = logging.getLogger("lan")

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


def host_label(instance: str) -> str:
    """A DNS host label for the instance's own A/AAAA records."""
    return (_LABEL_UNSAFE.sub("-", instance).strip("-") or "phs")[:63]


class Advertiser:
    """One registered instance of ``service_type`` on a caller-owned ``AsyncZeroconf``.

    On a name clash zeroconf picks a new instance name (``edge-01 (2)``):
    an impostor must not be able to take a real node off the LAN by
    advertising its name first, and the real one must still be found.
    """

    def __init__(
        self,
        zc: AsyncZeroconf,
        service_type: str,
        instance: str,
        port: int,
        properties: Mapping[str, str],
        addresses: Sequence[str],
    ) -> None:
        self._zc = zc
        self._type = service_type
        self._instance = instance
        self._port = port
        self._properties = dict(properties)
        self._addresses = list(addresses)
        self._info: ServiceInfo | None = None

    @property
    def name(self) -> str | None:
        """The registered instance name (after any clash renaming)."""
        return None if self._info is None else self._info.name

    def _build(self, name: str | None = None) -> ServiceInfo:
        return ServiceInfo(
            self._type,
            name or f"{self._instance}.{self._type}",
            port=self._port,
            properties=self._properties,
            server=f"{host_label(self._instance)}.local.",
            parsed_addresses=[a.split("%", 1)[0] for a in self._addresses],
        )

    async def start(self) -> None:
        info = self._build()
        waiter = await self._zc.async_register_service(info, allow_name_change=True)
        await waiter
        self._info = info
        log.info("advertising %s on %s port %d", info.name, ", ".join(self._addresses), self._port)

    async def update(
        self,
        properties: Mapping[str, str] | None = None,
        addresses: Sequence[str] | None = None,
    ) -> None:
        """Re-announce with new TXT properties and/or addresses."""
        if properties is not None:
            self._properties = dict(properties)
        if addresses is not None:
            self._addresses = list(addresses)
        if self._info is None:
            return
        info = self._build(self._info.name)
        await self._zc.async_update_service(info)
        self._info = info

    async def stop(self) -> None:
        """Withdraw the instance (goodbye packets with TTL 0)."""
        if self._info is None:
            return
        info, self._info = self._info, None
        waiter = await self._zc.async_unregister_service(info)
        await waiter
        log.info("withdrew %s", info.name)

"""Finding the paired edge node on the LAN (docs/discovery.md).

A device syncs only with an edge whose advert carries the ``node`` and
``fp`` it stored at pairing; every other advert is refused with its reason.
The choice is pure (``choose_edge``, ``choose_for_pairing``, ``plan``);
browsing and probing are thin shells around it. When no advert matches, the
configured ``edge_url`` is the fallback, and the plan says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from zeroconf.asyncio import AsyncZeroconf

from fielddevice.client import api_base, origin_of
from fielddevice.store import Pairing
from lan.browser import Browser, collect
from lan.interfaces import NoUsableInterface, select_addresses, zeroconf_interfaces
from shared.discovery import EDGE_SERVICE, EdgeAdvert, edge_advert

log = logging.getLogger("fielddevice.finder")
PROBE_SECONDS = 3.0


class EdgeNotFound(Exception):
    """No edge to sync with; the message lists what was seen and why refused."""

    def __init__(self, message: str, refused: Sequence[Refusal] = ()) -> None:
        super().__init__(message)
        self.refused = list(refused)


class DiscoveryUnavailable(Exception):
    """Zeroconf cannot run here (no usable interface, sockets refused)."""


@dataclass(frozen=True)
class Refusal:
    advert: EdgeAdvert
    reason: str

    def describe(self) -> dict[str, Any]:
        a = self.advert
        return {
            "name": a.name,
            "nodeId": a.node_id,
            "fp": a.fingerprint,
            "addresses": list(a.addresses),
            "port": a.port,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Plan:
    """Where to try to reach the edge, in order, and how they were chosen."""

    candidates: tuple[str, ...]  # API bases
    source: str  # "flag" | "discovery" | "configured"
    advert: EdgeAdvert | None = None
    refused: tuple[Refusal, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "candidates": list(self.candidates),
            "advert": None if self.advert is None else self.advert.name,
            "refused": [r.describe() for r in self.refused],
            "notes": list(self.notes),
        }


def choose_edge(
    adverts: Sequence[EdgeAdvert], pairing: Pairing
) -> tuple[EdgeAdvert | None, list[Refusal]]:
    """The advert of the paired node (same ``node`` and ``fp``); the rest refused."""
    chosen: EdgeAdvert | None = None
    refused: list[Refusal] = []
    for advert in sorted(adverts, key=lambda a: a.name):
        if advert.node_id != pairing.node_id:
            refused.append(
                Refusal(advert, f"another node ({advert.node_id}); paired with {pairing.node_id}")
            )
        elif advert.fingerprint != pairing.fingerprint:
            refused.append(
                Refusal(
                    advert,
                    f"node id {advert.node_id} but fp {advert.fingerprint}, not the paired "
                    f"fp {pairing.fingerprint}: not the node this device paired with",
                )
            )
        elif chosen is None:
            chosen = advert
    return chosen, refused


def choose_for_pairing(
    adverts: Sequence[EdgeAdvert], node: str | None, expect_fp: str | None
) -> tuple[EdgeAdvert, list[Refusal]]:
    """The one edge to pair with: the only one seen, or the one named by ``node``
    (and ``expect_fp``); ``EdgeNotFound`` otherwise."""
    fits: list[EdgeAdvert] = []
    refused: list[Refusal] = []
    for advert in sorted(adverts, key=lambda a: a.name):
        if node is not None and advert.node_id != node:
            refused.append(Refusal(advert, f"not node {node}"))
        elif expect_fp is not None and advert.fingerprint != expect_fp.lower():
            refused.append(
                Refusal(advert, f"fp {advert.fingerprint}, not the expected {expect_fp}")
            )
        else:
            fits.append(advert)
    if len(fits) == 1:
        return fits[0], refused
    seen = ", ".join(f"{a.node_id} (fp {a.fingerprint}, {a.name})" for a in adverts) or "none"
    if not fits:
        raise EdgeNotFound(f"no edge node to pair with; adverts seen: {seen}", refused)
    raise EdgeNotFound(
        f"{len(fits)} edge nodes fit ({seen}): name one with --node, pin its fp with "
        "--expect-fp, or give --edge-url",
        refused,
    )


def plan(
    adverts: Sequence[EdgeAdvert] | None,
    pairing: Pairing,
    configured_url: str,
    flag_url: str | None = None,
    why_no_discovery: str | None = None,
) -> Plan:
    """Where to reach the paired edge. ``adverts`` is None when discovery did not run."""
    if flag_url:
        return Plan((api_base(flag_url),), "flag")
    notes: list[str] = []
    refused: list[Refusal] = []
    if adverts is not None:
        chosen, refused = choose_edge(adverts, pairing)
        if chosen is not None:
            extra = (api_base(configured_url),) if configured_url else ()
            return Plan(
                tuple(dict.fromkeys((*chosen.base_urls(), *extra))),
                "discovery",
                chosen,
                tuple(refused),
            )
        notes.append(
            f"no advert of node {pairing.node_id} with fp {pairing.fingerprint} "
            f"among {len(adverts)} seen"
        )
    else:
        notes.append(f"discovery did not run: {why_no_discovery or 'it is off'}")
    if configured_url:
        notes.append(f"falling back to the configured edge_url {configured_url}")
        return Plan((api_base(configured_url),), "configured", None, tuple(refused), tuple(notes))
    listing = "; ".join(f"{r.advert.name}: {r.reason}" for r in refused) or "no adverts refused"
    raise EdgeNotFound(
        f"cannot find edge node {pairing.node_id} (fp {pairing.fingerprint}): "
        f"{'; '.join(notes)}; {listing}; and no edge_url is configured",
        refused,
    )


async def reach(session: aiohttp.ClientSession, candidates: Sequence[str]) -> str | None:
    """The first candidate API base whose node answers ``GET /healthz``."""
    for base in candidates:
        try:
            async with session.get(
                f"{origin_of(base)}/healthz", timeout=aiohttp.ClientTimeout(total=PROBE_SECONDS)
            ) as resp:
                if resp.status == 200:
                    return base
                log.info("edge candidate %s answered %d to /healthz", base, resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            log.info("edge candidate %s unreachable: %s", base, err or type(err).__name__)
    return None


def advert_addresses(host: str, addresses: Sequence[str]) -> list[str]:
    """The addresses to advertise for a server listening on ``host``."""
    if host in ("", "::"):
        return list(addresses)
    if host == "0.0.0.0":
        return [a for a in addresses if ":" not in a]
    bare = host.split("%", 1)[0]
    ipaddress.ip_address(bare)  # a host name is not an address to advertise
    return [a for a in addresses if a.split("%", 1)[0] == bare] or [host]


def start_zeroconf(choices: Sequence[str], host: str) -> tuple[AsyncZeroconf, list[str]]:
    """An ``AsyncZeroconf`` on the chosen interfaces' addresses that a server on
    ``host`` answers on (IPv4 only for 0.0.0.0), and those addresses."""
    try:
        addresses = advert_addresses(host, select_addresses(choices))
        if not addresses:
            raise DiscoveryUnavailable(
                f"the gather API listens on {host} but the chosen interfaces have no "
                "address of that family"
            )
        interfaces, version = zeroconf_interfaces(addresses)
        return AsyncZeroconf(interfaces=interfaces, ip_version=version), addresses
    except NoUsableInterface as err:
        raise DiscoveryUnavailable(str(err)) from err
    except (OSError, ValueError) as err:
        raise DiscoveryUnavailable(f"zeroconf cannot start: {err}") from err


async def browse_edges(
    zc: AsyncZeroconf | None, choices: Sequence[str], host: str, seconds: float
) -> list[EdgeAdvert]:
    """Every valid edge advert seen within ``seconds`` (on ``zc``, or on an
    ``AsyncZeroconf`` of our own for the duration)."""
    if zc is not None:
        return await collect(zc, EDGE_SERVICE, edge_advert, seconds)
    own, _ = start_zeroconf(choices, host)
    try:
        return await collect(own, EDGE_SERVICE, edge_advert, seconds)
    finally:
        await own.async_close()


class EdgeWatch:
    """A long-lived browse of edge adverts on a caller-owned ``AsyncZeroconf``."""

    def __init__(self, zc: AsyncZeroconf) -> None:
        self._seen: dict[str, EdgeAdvert] = {}
        self._browser = Browser(zc, EDGE_SERVICE, edge_advert, self._on_seen, self._on_gone)
        self.started_at = 0.0

    async def _on_seen(self, advert: EdgeAdvert) -> None:
        self._seen[advert.name] = advert

    async def _on_gone(self, name: str) -> None:
        self._seen.pop(name, None)

    async def start(self) -> None:
        self.started_at = asyncio.get_running_loop().time()
        await self._browser.start()

    async def stop(self) -> None:
        await self._browser.stop()

    def adverts(self) -> list[EdgeAdvert]:
        return list(self._seen.values())

    async def settled(self, seconds: float) -> list[EdgeAdvert]:
        """The adverts, after browsing for at least ``seconds`` since start."""
        waited = asyncio.get_running_loop().time() - self.started_at
        if waited < seconds:
            await asyncio.sleep(seconds - waited)
        return self.adverts()

"""The demo's tablets: real field devices (``fielddevice``), each with its own
key and SQLite queue under the demo's data directory.

With LAN discovery they find the edge by its ``_phs-edge._tcp`` advert and
check its fingerprint, and the last tablet only advertises
``_phs-field._tcp`` and waits for the edge to gather its work. Without
discovery every tablet uses the configured edge address and pushes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from zeroconf.asyncio import AsyncZeroconf

from fielddevice.device import FieldDevice
from fielddevice.finder import browse_edges, choose_for_pairing, plan, reach, start_zeroconf
from fielddevice.service import DeviceRuntime
from fielddevice.settings import FieldSettings
from gateway.http import PREFIX
from shared.periods import Period, PeriodType, previous_period, utc_bounds
from shared.values import format_timestamp

LAN_INTERFACE = "127.0.0.1"  # the demo's office LAN: a private namespace's loopback
BROWSE_SECONDS = 1.5
ENCOUNTERS = 300
STEPS = [("assigned", "in_progress"), ("in_progress", "contacted"), ("contacted", "completed")]


class DemoTablets:
    def __init__(
        self,
        root: Path,
        edge_url: str,
        node_id: str,
        discovery: bool,
        say: Callable[[str], None],
    ) -> None:
        self.root = root
        self.edge_api = f"{edge_url}{PREFIX}"
        self.node_id = node_id
        self.discovery = discovery
        self.say = say
        self.devices: list[FieldDevice] = []
        self.zc: AsyncZeroconf | None = None
        self.runtime: DeviceRuntime | None = None

    async def open(self, count: int) -> list[FieldDevice]:
        if self.discovery:
            self.zc, _ = start_zeroconf([LAN_INTERFACE], LAN_INTERFACE)
        for n in range(count):
            settings = FieldSettings(
                device_id=f"tab-{n + 1}",
                data_dir=str(self.root / f"tab-{n + 1}"),
                # Only without discovery: with it, the advert says where the edge is.
                edge_url="" if self.discovery else self.edge_api,
                discovery=self.discovery,
                interfaces=[LAN_INTERFACE],
                host=LAN_INTERFACE,
            )
            self.devices.append(await FieldDevice.open(settings, create=True))
        return self.devices

    async def close(self) -> None:
        if self.runtime is not None:
            await self.runtime.stop()
        for device in self.devices:
            await device.close()
        if self.zc is not None:
            await self.zc.async_close()

    async def pair(self, session: aiohttp.ClientSession, device: FieldDevice, code: str) -> str:
        """Redeem ``code``; a line saying how the edge was found."""
        if self.zc is None:
            pairing = await device.pair(session, self.edge_api, code)
            return f"paired through the configured address (fp {pairing.fingerprint})"
        adverts = await browse_edges(self.zc, [], LAN_INTERFACE, BROWSE_SECONDS)
        advert, _refused = choose_for_pairing(adverts, self.node_id, None)
        base = await reach(session, advert.base_urls())
        if base is None:
            raise SystemExit(f"the edge advertised as {advert.name} does not answer")
        pairing = await device.pair(
            session, base, code, advert_fp=advert.fingerprint, advert_node=advert.node_id
        )
        return (
            f"found {advert.node_id} over mDNS at {base.removesuffix(PREFIX)}; the advert's "
            f"fp {advert.fingerprint} is the key's that answered ({pairing.fingerprint}) → paired"
        )

    async def sync(self, session: aiohttp.ClientSession, device: FieldDevice) -> dict[str, Any]:
        """Find the paired edge (discovery, else the configured address) and push/pull."""
        pairing = await device.store.pairing()
        assert pairing is not None
        adverts = (
            None
            if self.zc is None
            else await browse_edges(self.zc, [], LAN_INTERFACE, BROWSE_SECONDS)
        )
        why = None if self.zc is not None else "LAN discovery is not available"
        chosen = plan(adverts, pairing, device.settings.edge_url, None, why)
        summary = await device.sync(session, chosen)
        summary["found"] = chosen.source
        return summary

    async def wait_to_be_gathered(self, device: FieldDevice, within: float = 60) -> int:
        """Advertise ``device`` and wait until the edge has gathered all its work."""
        assert self.zc is not None
        pending = await device.store.pending_total()
        self.say(
            f"{device.device_id} only advertises _phs-field._tcp with pending={pending} "
            "and waits for the edge to gather its records"
        )
        self.runtime = DeviceRuntime(device, LAN_INTERFACE, 0, self.zc, [LAN_INTERFACE])
        await self.runtime.start()
        deadline = time.monotonic() + within
        while await device.store.pending_total():
            if time.monotonic() > deadline:
                raise SystemExit(f"the edge did not gather {device.device_id} within {within} s")
            await asyncio.sleep(0.2)
        return pending


async def record_offline_work(
    devices: Sequence[FieldDevice],
    items: int,
    facility: str,
    tz: ZoneInfo,
    rng: random.Random,
    now: datetime,
    patient_prefix: str = "p-",
) -> Period:
    """What the tablets record while offline: outreach transitions on the
    items ``oi-0000``… (spread over the tablets, one to three steps each,
    with two tablets racing on ``oi-0000``) and last week's encounters on
    the first tablet, of patients ``<patient_prefix><n>``. Returns that week,
    the period of the report."""
    for n in range(items):
        device = devices[n % len(devices)]
        item = f"oi-{n:04d}"
        # oi-0000 stops at contacted: a second tablet's report then races it (below).
        steps = STEPS[:2] if n == 0 else STEPS[: rng.choice([1, 2, 3, 3])]
        for k, (frm, to) in enumerate(steps):
            await device.record_transition(
                item, frm, to, now - timedelta(hours=3 - k), "chw-7", f"{item}-{k}"
            )
    # Two tablets visited one patient while offline: the later report wins (LWW).
    await devices[1 % len(devices)].record_transition(
        "oi-0000", "in_progress", "unreachable", now - timedelta(minutes=5), "chw-7", "late-visit"
    )
    period = previous_period(now.astimezone(tz).date(), PeriodType.WEEKLY)
    start, end = utc_bounds(period, tz)
    minutes = int((end - start).total_seconds() // 60)
    for n in range(ENCOUNTERS):
        await devices[0].record_encounter(
            {
                "id": f"enc-{n}",
                "patientRef": f"{patient_prefix}{rng.randrange(120)}",
                "facilityId": facility,
                "occurredAt": format_timestamp(start + timedelta(minutes=rng.randrange(minutes))),
                "kind": rng.choice(["visit", "screening", "immunization"]),
                "screeningDue": rng.random() < 0.4,
                "immunizationDue": rng.random() < 0.3,
            }
        )
    return period

"""The zeroconf adapters (``lan``) over real multicast in a private namespace,
and interface selection over literal adapter lists."""

from __future__ import annotations

import asyncio
import time

import ifaddr
import pytest
from zeroconf.asyncio import AsyncZeroconf

from lan.advertiser import Advertiser
from lan.browser import Browser, collect
from lan.interfaces import NoUsableInterface, select_addresses, zeroconf_interfaces
from netns import NetworkNamespace
from shared.discovery import (
    EDGE_SERVICE,
    FIELD_SERVICE,
    FieldAdvert,
    edge_advert,
    edge_properties,
    field_advert,
    field_properties,
)

ADAPTERS = [
    ifaddr.Adapter(
        "lo", "lo", [ifaddr.IP("127.0.0.1", 8, "lo"), ifaddr.IP(("::1", 0, 0), 128, "lo")], 1
    ),
    ifaddr.Adapter(
        "eth0",
        "eth0",
        [ifaddr.IP("192.168.1.20", 24, "eth0"), ifaddr.IP(("fe80::5", 0, 2), 64, "eth0")],
        2,
    ),
]


def test_default_is_every_non_loopback_interface() -> None:
    # (eth0 is not in this machine's /sys/class/net, so it counts as up.)
    assert select_addresses([], ADAPTERS) == ["192.168.1.20", "fe80::5%eth0"]


def test_interfaces_by_name_or_address() -> None:
    assert select_addresses(["lo"], ADAPTERS) == ["127.0.0.1", "::1"]
    assert select_addresses(["192.168.1.20"], ADAPTERS) == ["192.168.1.20"]
    assert select_addresses(["127.0.0.1", "eth0"], ADAPTERS) == [
        "127.0.0.1",
        "192.168.1.20",
        "fe80::5%eth0",
    ]


def test_unknown_interface_or_none_up_is_a_clear_error() -> None:
    with pytest.raises(NoUsableInterface, match="wlan9"):
        select_addresses(["wlan9"], ADAPTERS)
    with pytest.raises(NoUsableInterface, match="--interface"):
        select_addresses([], ADAPTERS[:1])


def test_zeroconf_arguments_follow_the_address_families() -> None:
    assert zeroconf_interfaces(["127.0.0.1"])[1].name == "V4Only"
    assert zeroconf_interfaces(["fe80::5%eth0"]) == (["fe80::5"], zeroconf_interfaces(["::1"])[1])
    assert zeroconf_interfaces(["10.0.0.1", "::1"])[1].name == "All"


async def _wait_for(condition: object, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_advertise_update_and_withdraw_over_multicast(netns: NetworkNamespace) -> None:
    async def scenario() -> None:
        interfaces, version = zeroconf_interfaces(["127.0.0.1"])
        tablet_zc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
        edge_zc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
        seen: dict[str, FieldAdvert] = {}
        gone: list[str] = []

        async def on_seen(advert: FieldAdvert) -> None:
            seen[advert.name] = advert

        async def on_gone(name: str) -> None:
            gone.append(name)
            seen.pop(name, None)

        browser = Browser(edge_zc, FIELD_SERVICE, field_advert, on_seen, on_gone)
        await browser.start()
        tablet = Advertiser(
            tablet_zc, FIELD_SERVICE, "tab-1", 40001, field_properties("tab-1", 0), ["127.0.0.1"]
        )
        # An advert breaking the contract is ignored and its reason kept.
        rogue = Advertiser(
            tablet_zc, FIELD_SERVICE, "rogue", 40002, {"v": "2", "device": "x"}, ["127.0.0.1"]
        )
        try:
            await tablet.start()
            await rogue.start()
            await _wait_for(lambda: "tab-1._phs-field._tcp.local." in seen)
            advert = seen["tab-1._phs-field._tcp.local."]
            assert (advert.device_id, advert.pending, advert.port) == ("tab-1", 0, 40001)
            assert advert.addresses == ("127.0.0.1",)

            await tablet.update(properties=field_properties("tab-1", 7))
            await _wait_for(lambda: seen["tab-1._phs-field._tcp.local."].pending == 7)
            await _wait_for(lambda: "rogue._phs-field._tcp.local." in browser.invalid)
            assert "version" in browser.invalid["rogue._phs-field._tcp.local."]

            await tablet.stop()
            await _wait_for(lambda: "tab-1._phs-field._tcp.local." in gone)
        finally:
            await browser.stop()
            await rogue.stop()
            await tablet_zc.async_close()
            await edge_zc.async_close()

    netns.call(scenario)


def test_a_name_clash_renames_the_second_advert(netns: NetworkNamespace) -> None:
    async def scenario() -> None:
        interfaces, version = zeroconf_interfaces(["127.0.0.1"])
        zcs = [AsyncZeroconf(interfaces=interfaces, ip_version=version) for _ in range(3)]
        real = Advertiser(
            zcs[0],
            EDGE_SERVICE,
            "edge-01",
            8490,
            edge_properties("edge-01", "t1", "0123456789abcdef"),
            ["127.0.0.1"],
        )
        impostor = Advertiser(
            zcs[1],
            EDGE_SERVICE,
            "edge-01",
            8491,
            edge_properties("edge-01", "t1", "fedcba9876543210"),
            ["127.0.0.1"],
        )
        try:
            await real.start()
            await impostor.start()
            assert real.name == "edge-01._phs-edge._tcp.local."
            assert impostor.name is not None and impostor.name != real.name
            adverts = await collect(zcs[2], EDGE_SERVICE, edge_advert, 3)
            assert sorted((a.node_id, a.fingerprint, a.port) for a in adverts) == [
                ("edge-01", "0123456789abcdef", 8490),
                ("edge-01", "fedcba9876543210", 8491),
            ]
        finally:
            await real.stop()
            await impostor.stop()
            for zc in zcs:
                await zc.async_close()

    netns.call(scenario)

"""Which local addresses to advertise and listen on.

``--interface`` takes interface names (``eth0``) or addresses
(``192.168.1.20``); none means every non-loopback interface that is up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

import ifaddr
from zeroconf import IPVersion

_IFF_UP = 0x1


class NoUsableInterface(RuntimeError):
    """None of the chosen interfaces has an address to advertise on."""


def _is_up(name: str) -> bool:
    flags = Path("/sys/class/net") / name / "flags"
    try:
        return bool(int(flags.read_text().strip(), 16) & _IFF_UP)
    except (OSError, ValueError):
        return True  # no sysfs (not Linux): ifaddr listed it, so take it as up


def _address_of(ip: ifaddr.IP) -> str:
    if isinstance(ip.ip, tuple):  # IPv6: (address, flowinfo, scope_id)
        address = ip.ip[0]
        if ipaddress.IPv6Address(address).is_link_local:
            return f"{address}%{ip.nice_name}"
        return address
    return ip.ip


def select_addresses(
    choices: Sequence[str], adapters: Iterable[ifaddr.Adapter] | None = None
) -> list[str]:
    """The addresses of the chosen interfaces, IPv4 first, without duplicates."""
    adapters = list(ifaddr.get_adapters() if adapters is None else adapters)
    wanted = set(choices)
    found: list[str] = []
    for adapter in adapters:
        for ip in adapter.ips:
            address = _address_of(ip)
            bare = address.split("%", 1)[0]
            if wanted:
                if adapter.nice_name in wanted or adapter.name in wanted or bare in wanted:
                    found.append(address)
            elif not ipaddress.ip_address(bare).is_loopback and _is_up(adapter.nice_name):
                found.append(address)
    unknown = [c for c in wanted if not any(_matches(c, a) for a in adapters)]
    if unknown:
        raise NoUsableInterface(f"no interface or local address named {', '.join(sorted(unknown))}")
    if not found:
        raise NoUsableInterface("no non-loopback interface is up; name one with --interface")
    found.sort(key=lambda a: ":" in a)
    return list(dict.fromkeys(found))


def _matches(choice: str, adapter: ifaddr.Adapter) -> bool:
    if choice in (adapter.nice_name, adapter.name):
        return True
    return any(_address_of(ip).split("%", 1)[0] == choice for ip in adapter.ips)


def zeroconf_interfaces(addresses: Sequence[str]) -> tuple[list[str], IPVersion]:
    """The ``interfaces`` and ``ip_version`` arguments of ``AsyncZeroconf``."""
    bare = [a.split("%", 1)[0] for a in addresses]
    has_v4 = any(":" not in a for a in bare)
    has_v6 = any(":" in a for a in bare)
    if has_v4 and has_v6:
        return list(dict.fromkeys(bare)), IPVersion.All
    version = IPVersion.V6Only if has_v6 else IPVersion.V4Only
    return list(dict.fromkeys(bare)), version

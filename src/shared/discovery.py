"""LAN discovery adverts (CONTRACT section 10) as pure data.

An edge node advertises ``_phs-edge._tcp.local.`` and a field device
``_phs-field._tcp.local.``. What a zeroconf browser resolves (instance name,
port, addresses, TXT properties) is mapped here, with no I/O, to frozen
dataclasses of ours; an advert that does not follow the contract raises
``AdvertInvalid`` with the reason, and the caller logs and ignores it.
The zeroconf I/O lives in the ``lan`` package.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.values import is_identifier

EDGE_SERVICE = "_phs-edge._tcp.local."
FIELD_SERVICE = "_phs-field._tcp.local."
ADVERT_VERSION = "1"
DEFAULT_PATH = "/api/v1/population-health"

_FINGERPRINT_RE = re.compile(r"[0-9a-f]{16}")
_PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]{0,255}")
_MAX_PENDING = 10**9

Properties = Mapping[bytes, bytes | None]


class AdvertInvalid(ValueError):
    """An advert that does not follow CONTRACT section 10; ignored by browsers."""


@dataclass(frozen=True)
class EdgeAdvert:
    """An edge node seen on the LAN."""

    name: str  # the mDNS instance name, e.g. ``edge-01._phs-edge._tcp.local.``
    node_id: str
    tenant_id: str
    fingerprint: str  # first 16 hex of sha256(public key)
    path: str
    port: int
    addresses: tuple[str, ...]  # IPv4 first

    def base_urls(self) -> list[str]:
        """Where its API answers, in the order to try."""
        return [f"http://{host_of(a)}:{self.port}{self.path}" for a in self.addresses]


@dataclass(frozen=True)
class FieldAdvert:
    """A field device (tablet) seen on the LAN."""

    name: str
    device_id: str
    pending: int  # unsynced records the device holds
    port: int
    addresses: tuple[str, ...]

    def base_urls(self) -> list[str]:
        return [f"http://{host_of(a)}:{self.port}{DEFAULT_PATH}" for a in self.addresses]


def edge_properties(node_id: str, tenant_id: str, fingerprint: str) -> dict[str, str]:
    """The TXT record an edge node advertises."""
    return {
        "v": ADVERT_VERSION,
        "node": node_id,
        "tenant": tenant_id,
        "fp": fingerprint,
        "path": DEFAULT_PATH,
    }


def field_properties(device_id: str, pending: int) -> dict[str, str]:
    """The TXT record a field device advertises."""
    return {"v": ADVERT_VERSION, "device": device_id, "pending": str(pending)}


def edge_advert(
    name: str, port: int | None, addresses: Sequence[str], properties: Properties
) -> EdgeAdvert:
    txt = _text_properties(properties)
    node_id = _identifier(txt, "node")
    fingerprint = _required(txt, "fp")
    if _FINGERPRINT_RE.fullmatch(fingerprint) is None:
        raise AdvertInvalid("fp must be 16 lowercase hex digits")
    path = txt.get("path") or DEFAULT_PATH
    if _PATH_RE.fullmatch(path) is None:
        raise AdvertInvalid("path must be an absolute URL path")
    return EdgeAdvert(
        name=name,
        node_id=node_id,
        tenant_id=_identifier(txt, "tenant"),
        fingerprint=fingerprint,
        path=path.rstrip("/") or "/",
        port=_port(port),
        addresses=_addresses(addresses),
    )


def field_advert(
    name: str, port: int | None, addresses: Sequence[str], properties: Properties
) -> FieldAdvert:
    txt = _text_properties(properties)
    raw_pending = _required(txt, "pending")
    if not raw_pending.isascii() or not raw_pending.isdigit() or int(raw_pending) > _MAX_PENDING:
        raise AdvertInvalid("pending must be a non-negative integer")
    return FieldAdvert(
        name=name,
        device_id=_identifier(txt, "device"),
        pending=int(raw_pending),
        port=_port(port),
        addresses=_addresses(addresses),
    )


def host_of(address: str) -> str:
    """An address as the host part of a URL (IPv6 in brackets, zone escaped)."""
    return f"[{address.replace('%', '%25')}]" if ":" in address else address


def _text_properties(properties: Properties) -> dict[str, str]:
    # TXT keys are case-insensitive (RFC 6763 section 6.4); values are UTF-8 here.
    txt: dict[str, str] = {}
    for raw_key, raw_value in properties.items():
        try:
            key = raw_key.decode("ascii").lower()
            value = "" if raw_value is None else raw_value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise AdvertInvalid("TXT entries must be UTF-8 text") from err
        txt[key] = value
    version = txt.get("v")
    if version != ADVERT_VERSION:
        raise AdvertInvalid(f"unsupported advert version v={version!r}")
    return txt


def _required(txt: Mapping[str, str], key: str) -> str:
    value = txt.get(key)
    if not value:
        raise AdvertInvalid(f"TXT key {key} is missing")
    return value


def _identifier(txt: Mapping[str, str], key: str) -> str:
    value = _required(txt, key)
    if not is_identifier(value):
        raise AdvertInvalid(f"{key} must be 1-128 characters of [A-Za-z0-9._:-]")
    return value


def _port(port: int | None) -> int:
    if port is None or not 0 < port < 65536:
        raise AdvertInvalid(f"port {port!r} is not a TCP port")
    return port


def _addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    parsed: list[tuple[int, str]] = []
    for raw in addresses:
        try:
            ip = ipaddress.ip_address(raw.split("%", 1)[0])
        except ValueError as err:
            raise AdvertInvalid(f"address {raw!r} is not an IP address") from err
        parsed.append((ip.version, raw))
    if not parsed:
        raise AdvertInvalid("the advert has no address")
    # IPv4 first: on an office LAN it is the address most likely to route.
    return tuple(dict.fromkeys(raw for _, raw in sorted(parsed, key=lambda p: p[0])))

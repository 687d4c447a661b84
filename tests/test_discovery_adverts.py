"""Adverts (CONTRACT section 10) mapped to our dataclasses, or dropped with a reason."""

from __future__ import annotations

import pytest

from lan.advertiser import host_label
from shared.discovery import (
    DEFAULT_PATH,
    AdvertInvalid,
    EdgeAdvert,
    edge_advert,
    edge_properties,
    field_advert,
    field_properties,
    host_of,
)

EDGE_NAME = "edge-01._phs-edge._tcp.local."
FIELD_NAME = "tab-1._phs-field._tcp.local."


def txt(props: dict[str, str]) -> dict[bytes, bytes | None]:
    """What zeroconf hands a browser: bytes keys and values."""
    return {k.encode(): v.encode() for k, v in props.items()}


def valid_edge() -> dict[bytes, bytes | None]:
    return txt(edge_properties("edge-01", "district-1", "0123456789abcdef"))


def test_edge_advert_round_trips_what_the_edge_advertises() -> None:
    advert = edge_advert(EDGE_NAME, 8490, ["fe80::1%2", "192.168.1.20"], valid_edge())
    assert advert == EdgeAdvert(
        name=EDGE_NAME,
        node_id="edge-01",
        tenant_id="district-1",
        fingerprint="0123456789abcdef",
        path=DEFAULT_PATH,
        port=8490,
        addresses=("192.168.1.20", "fe80::1%2"),  # IPv4 first
    )
    assert advert.base_urls() == [
        "http://192.168.1.20:8490/api/v1/population-health",
        "http://[fe80::1%252]:8490/api/v1/population-health",  # zone id escaped in a URL
    ]


def test_field_advert_round_trips_what_a_tablet_advertises() -> None:
    advert = field_advert(FIELD_NAME, 40123, ["10.0.0.7"], txt(field_properties("tab-1", 12)))
    assert (advert.device_id, advert.pending, advert.port) == ("tab-1", 12, 40123)
    assert advert.base_urls() == ["http://10.0.0.7:40123/api/v1/population-health"]


def test_txt_keys_are_case_insensitive_and_path_defaults() -> None:
    props = {b"V": b"1", b"Node": b"edge-01", b"TENANT": b"t", b"fp": b"0123456789abcdef"}
    advert = edge_advert(EDGE_NAME, 1, ["127.0.0.1"], props)
    assert (advert.node_id, advert.path) == ("edge-01", DEFAULT_PATH)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"node": None}, "TXT key node is missing"),
        ({b"tenant": b""}, "TXT key tenant is missing"),
        ({b"fp": None}, "TXT key fp is missing"),
        ({b"v": b"2"}, "unsupported advert version"),
        ({b"v": None}, "unsupported advert version"),
        ({b"fp": b"0123456789ABCDEF"}, "fp must be 16 lowercase hex"),  # uppercase
        ({b"fp": b"0123456789abcde"}, "fp must be 16 lowercase hex"),  # 15 digits
        ({b"node": b"edge 01"}, "node must be"),  # a space is not an identifier
        ({b"node": b"\xff\xfe"}, "UTF-8"),  # garbage bytes
        ({b"\xff": b"1"}, "UTF-8"),  # garbage key
        ({b"path": b"api/v1"}, "path must be an absolute"),
        ({b"path": b"/a b"}, "path must be an absolute"),
    ],
)
def test_malformed_edge_adverts_are_dropped(change: dict[bytes, bytes | None], reason: str) -> None:
    # None in ``change`` removes the key.
    props = {k: v for k, v in {**valid_edge(), **change}.items() if v is not None}
    with pytest.raises(AdvertInvalid, match=reason):
        edge_advert(EDGE_NAME, 8490, ["127.0.0.1"], props)


@pytest.mark.parametrize(
    ("port", "addresses", "reason"),
    [
        (None, ["127.0.0.1"], "not a TCP port"),  # SRV never resolved
        (0, ["127.0.0.1"], "not a TCP port"),
        (70000, ["127.0.0.1"], "not a TCP port"),
        (8490, [], "no address"),
        (8490, ["not-an-ip"], "not an IP address"),
    ],
)
def test_adverts_without_a_reachable_endpoint_are_dropped(
    port: int | None, addresses: list[str], reason: str
) -> None:
    with pytest.raises(AdvertInvalid, match=reason):
        edge_advert(EDGE_NAME, port, addresses, valid_edge())


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({b"v": b"1", b"device": b"tab-1"}, "TXT key pending is missing"),
        ({b"v": b"1", b"device": b"tab-1", b"pending": b"-1"}, "non-negative integer"),
        ({b"v": b"1", b"device": b"tab-1", b"pending": b"many"}, "non-negative integer"),
        ({b"v": b"1", b"device": b"tab-1", b"pending": "٣".encode()}, "non-negative"),  # Arabic 3
        ({b"v": b"1", b"device": b"tab-1", b"pending": b"99999999999"}, "non-negative"),
        ({b"v": b"1", b"pending": b"3"}, "TXT key device is missing"),
        ({b"v": b"0", b"device": b"tab-1", b"pending": b"3"}, "unsupported advert version"),
        ({b"v": b"1", b"device": b"t/1", b"pending": b"3"}, "device must be"),
    ],
)
def test_malformed_field_adverts_are_dropped(props: dict[bytes, bytes | None], reason: str) -> None:
    with pytest.raises(AdvertInvalid, match=reason):
        field_advert(FIELD_NAME, 40000, ["10.0.0.7"], props)


def test_host_part_of_urls() -> None:
    assert host_of("10.0.0.1") == "10.0.0.1"
    assert host_of("::1") == "[::1]"
    assert host_of("fe80::1%eth0") == "[fe80::1%25eth0]"


def test_host_label_is_a_dns_label() -> None:
    assert host_label("edge-01") == "edge-01"
    assert host_label("site:edge.01") == "site-edge-01"
    assert host_label("...") == "phs"
    assert len(host_label("x" * 128)) == 63

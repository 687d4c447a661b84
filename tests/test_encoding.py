"""shared.encoding: body decoding, encoding and content negotiation."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.encoding import (
    JSON,
    MSGPACK,
    PROBLEM_JSON,
    Limits,
    decode_body,
    encode,
    max_depth_of,
    media_type_of,
    negotiate,
)
from shared.errors import (
    MalformedBody,
    NotAcceptable,
    PayloadTooLarge,
    PhsError,
    UnsupportedMediaType,
)

LIMITS = Limits()


def nested_list(depth: int) -> Any:
    """``depth`` lists inside each other, built without recursion."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# ---------------------------------------------------------------- round trips

ROUND_TRIP_VALUES: list[Any] = [
    {"batchId": "b-1", "items": [{"kind": "outreach.transition", "seq": 3}]},
    [1, -2, 3.5, True, False, None, "héllo"],  # every JSON scalar, non-ASCII text
    "just a string",  # a top-level scalar is a valid body
    {"nested": {"deeper": {"deepest": []}}},
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
@pytest.mark.parametrize("media_type", [JSON, MSGPACK])
def test_round_trip(value: Any, media_type: str) -> None:
    assert decode_body(encode(value, media_type), media_type, LIMITS) == value


def test_msgpack_bytes_stay_bytes() -> None:
    value = {"payload": b"\x00\xffraw", "signature": bytes(64)}
    body = encode(value, MSGPACK)
    assert decode_body(body, MSGPACK, LIMITS) == value  # bin in, bin out


def test_json_bytes_become_base64() -> None:
    body = encode({"payload": b"\x00\xff", "n": 1}, JSON)
    # compact separators, standard base64 ("AP8=" is 0x00 0xff)
    assert body == b'{"payload":"AP8=","n":1}'
    assert decode_body(body, JSON, LIMITS) == {"payload": "AP8=", "n": 1}


def test_problem_json_encodes_as_json() -> None:
    assert encode({"status": 400}, PROBLEM_JSON) == b'{"status":400}'


def test_json_is_utf8_not_escaped() -> None:
    assert encode({"name": "Zoë"}, JSON) == '{"name":"Zoë"}'.encode()  # ensure_ascii off


def test_encode_refuses_unknown_media_type() -> None:
    with pytest.raises(ValueError):
        encode({}, "text/plain")  # a programming error, not a caller's


# ---------------------------------------------------------------- malformed JSON

MALFORMED_JSON: list[tuple[bytes, str]] = [
    (b"", "empty"),  # an empty body is not a document
    (b"{", "invalid JSON"),  # truncated
    (b'{"a":1} x', "invalid JSON"),  # trailing garbage
    (b"\xff\xfe{}", "UTF-8"),  # not UTF-8 at all
    (b'{"a":"\xc3"}', "UTF-8"),  # truncated multi-byte sequence
    ('{"a":1}'.encode("utf-16"), "UTF-8"),  # json.loads(bytes) would accept UTF-16
    (b"\xef\xbb\xbf{}", "invalid JSON"),  # a BOM is not JSON
    (b"NaN", "non-finite"),  # JSON has no NaN
    (b'{"a":Infinity}', "non-finite"),  # nor Infinity
    (b"[-Infinity]", "non-finite"),  # nor -Infinity
    (b"[1e400]", "out of range"),  # overflows to inf
    (b'{"a":1,"a":2}', "duplicate object key 'a'"),  # readers would disagree
    (b'{"x":{"k":1,"k":1}}', "duplicate object key 'k'"),  # even nested, even equal
    (b'["\\ud800"]', "surrogate"),  # cannot be re-encoded as UTF-8
    (b'{"id":"a\\u0000b"}', "NUL"),  # PostgreSQL text cannot hold it
    (b'{"a\\u0000":1}', "NUL"),  # nor in a key
    (b"[" + b"1" * 5000 + b"]", "number"),  # beyond Python's int digit limit
]


@pytest.mark.parametrize(("body", "detail"), MALFORMED_JSON)
def test_malformed_json_refused(body: bytes, detail: str) -> None:
    with pytest.raises(MalformedBody, match=detail):
        decode_body(body, JSON, LIMITS)


# ---------------------------------------------------------------- malformed msgpack

MALFORMED_MSGPACK: list[tuple[bytes, str]] = [
    (b"", "empty"),  # an empty body is not a document
    (b"\x92\x01", "incomplete"),  # array of 2 with one element
    (b"\x01\x02", "trailing bytes"),  # two objects
    (b"\xc1", "reserved"),  # 0xc1 is never used
    (b"\xa1\xff", "UTF-8"),  # str with an invalid byte
    (b"\xa3\xed\xa0\x80", "UTF-8"),  # an encoded surrogate is not UTF-8 either
    (b"\x81\x01\x01", "map key"),  # int key: strict_map_key
    (b"\x81\xc4\x01k\x01", "map keys must be strings"),  # bytes key
    (b"\x82\xa1k\x01\xa1k\x02", "duplicate map key 'k'"),  # readers would disagree
    (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),  # 4G elements claimed in 5 bytes
    (b"\xdb\xff\xff\xff\xff", "incomplete"),  # 4 GiB string claimed, none sent
    (b"\xd4\x05\x00", "extension type 5"),  # fixext1
    (b"\xc7\x00\x05", "extension type 5"),  # ext8 of length 0
    (msgpack.packb(msgpack.Timestamp(1, 0)), "timestamps"),  # ext -1 bypasses ext_hook
    (msgpack.packb([float("nan")]), "non-finite"),  # msgpack can carry NaN
    (msgpack.packb({"a": float("inf")}), "non-finite"),  # and infinity
    (msgpack.packb({"id": "a\x00b"}), "NUL"),  # valid UTF-8, but no store's text
    (msgpack.packb({"a\x00": 1}), "NUL"),  # nor in a key
]


@pytest.mark.parametrize(("body", "detail"), MALFORMED_MSGPACK)
def test_malformed_msgpack_refused(body: bytes, detail: str) -> None:
    with pytest.raises(MalformedBody, match=detail):
        decode_body(body, MSGPACK, LIMITS)


def test_malformed_body_chains_the_cause() -> None:
    with pytest.raises(MalformedBody) as info:
        decode_body(b"{", JSON, LIMITS)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)  # raise ... from err


# ---------------------------------------------------------------- depth

DEPTH_CASES: list[tuple[int, bool]] = [
    (1, True),  # []
    (32, True),  # exactly the limit
    (33, False),  # one past the limit
    (100, False),  # well past, still below any parser limit
    (10_000, False),  # past the JSON parser's recursion and msgpack's stack
]


@pytest.mark.parametrize(("depth", "accepted"), DEPTH_CASES)
@pytest.mark.parametrize("media_type", [JSON, MSGPACK])
def test_depth_limit(depth: int, accepted: bool, media_type: str) -> None:
    if media_type == JSON:
        body = b"[" * depth + b"]" * depth
    else:
        # 0x91 = fixarray of one element; 0x90 = empty array. Built by hand
        # because packb itself refuses to nest this deep.
        body = b"\x91" * (depth - 1) + b"\x90"
    if accepted:
        assert max_depth_of(decode_body(body, media_type, LIMITS)) == depth
    else:
        with pytest.raises(MalformedBody, match="nested"):
            decode_body(body, media_type, LIMITS)


def test_depth_counts_maps_too() -> None:
    value: Any = {}
    for _ in range(32):
        value = {"k": value}  # 33 levels of maps
    for media_type in (JSON, MSGPACK):
        with pytest.raises(MalformedBody, match="nested deeper than 32"):
            decode_body(encode(value, media_type), media_type, LIMITS)


def test_depth_limit_is_configurable() -> None:
    body = b"[[[]]]"  # depth 3
    assert decode_body(body, JSON, Limits(max_depth=3)) == [[[]]]
    with pytest.raises(MalformedBody):
        decode_body(body, JSON, Limits(max_depth=2))


MAX_DEPTH_CASES: list[tuple[Any, int]] = [
    (1, 0),  # a scalar has no containers
    ("[[]]", 0),  # a string is a scalar whatever it says
    ([], 1),  # an empty list is one level
    ({"a": 1}, 1),  # a flat map is one level
    ([1, [2, [3]], {"k": []}], 3),  # the deepest branch counts
    ({"a": {"b": {"c": {}}}}, 4),  # maps nest like lists
    ((1, (2,)), 2),  # tuples count as lists (encode accepts them)
]


@pytest.mark.parametrize(("value", "expected"), MAX_DEPTH_CASES)
def test_max_depth_of(value: Any, expected: int) -> None:
    assert max_depth_of(value) == expected


def test_max_depth_of_is_iterative() -> None:
    assert max_depth_of(nested_list(100_000)) == 100_000  # no RecursionError


# ---------------------------------------------------------------- size


@pytest.mark.parametrize("media_type", [JSON, MSGPACK])
def test_oversize_refused(media_type: str) -> None:
    limits = Limits(max_body_bytes=16)
    assert decode_body(b'"' + b"a" * 14 + b'"', JSON, limits) == "a" * 14  # 16 bytes: ok
    with pytest.raises(PayloadTooLarge, match="17 bytes"):
        decode_body(b"x" * 17, media_type, limits)  # checked before parsing


def test_default_limit_is_4_mib() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_body(b" " * (4 * 1024 * 1024 + 1), JSON, LIMITS)


# ---------------------------------------------------------------- media_type_of

MEDIA_TYPES: list[tuple[str, str]] = [
    ("application/json", JSON),  # the canonical name
    ("application/json; charset=utf-8", JSON),  # parameters are allowed
    ("Application/JSON;Charset=UTF-8", JSON),  # case-insensitive
    ('application/json; charset="utf-8"', JSON),  # quoted parameter
    ("application/problem+json", JSON),  # our own error documents
    ("application/msgpack", MSGPACK),  # the registered name
    ("application/x-msgpack", MSGPACK),  # the older name clients still send
    ("  application/msgpack ; foo=bar", MSGPACK),  # whitespace and unknown params
]


@pytest.mark.parametrize(("header", "expected"), MEDIA_TYPES)
def test_media_type_of(header: str, expected: str) -> None:
    assert media_type_of(header) == expected


UNSUPPORTED: list[str | None] = [
    None,  # no Content-Type at all
    "",  # empty header
    "text/plain",  # not ours
    "application/xml",  # not ours
    "application/jsonx",  # prefix is not enough
    "application/json; charset=latin-1",  # we decode UTF-8 only; would be misread
    "multipart/form-data; boundary=x",  # not ours
]


@pytest.mark.parametrize("header", UNSUPPORTED)
def test_media_type_of_refuses(header: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        media_type_of(header)


# ---------------------------------------------------------------- negotiate

NEGOTIATE: list[tuple[str | None, str, str]] = [
    (None, JSON, JSON),  # no Accept: the default
    (None, MSGPACK, MSGPACK),  # ... whatever it is
    ("", MSGPACK, MSGPACK),  # empty is absent
    ("*/*", MSGPACK, MSGPACK),  # anything: the default
    ("application/*", JSON, JSON),  # any application type: the default
    ("application/msgpack", JSON, MSGPACK),  # asked by name
    ("application/x-msgpack", JSON, MSGPACK),  # the older name
    ("application/json", MSGPACK, JSON),  # asked by name
    ("application/problem+json", MSGPACK, JSON),  # problem documents are JSON
    ("APPLICATION/MSGPACK", JSON, MSGPACK),  # case-insensitive
    ("application/json;q=0.5, application/msgpack", JSON, MSGPACK),  # higher q wins
    ("application/msgpack;q=0.1, application/json;q=0.9", MSGPACK, JSON),  # higher q wins
    ("application/json, application/msgpack", MSGPACK, MSGPACK),  # a tie goes to the default
    ("application/json, application/msgpack", JSON, JSON),  # a tie goes to the default
    ("text/html, */*;q=0.1", MSGPACK, MSGPACK),  # the browser pattern
    ("text/html, application/json;q=0.2", MSGPACK, JSON),  # the only one we produce
    ("application/json;q=0, */*", JSON, MSGPACK),  # specific q=0 beats the wildcard
    ("application/*;q=0.3, application/msgpack;q=0.9", JSON, MSGPACK),  # specific q wins
    ("application/json ; q=0.8 , application/msgpack ; q=0.7", MSGPACK, JSON),  # spaces
    ("garbage", JSON, JSON),  # no well-formed range: treated as absent
    ("application/json;q=bogus", MSGPACK, MSGPACK),  # malformed range ignored
    ("*/*", PROBLEM_JSON, JSON),  # a problem+json default answers JSON
]


@pytest.mark.parametrize(("accept", "default", "expected"), NEGOTIATE)
def test_negotiate(accept: str | None, default: str, expected: str) -> None:
    assert negotiate(accept, default) == expected


NOT_ACCEPTABLE: list[str] = [
    "text/html",  # only a type we cannot produce
    "text/html, image/png;q=0.5",  # several, none ours
    "application/xml",  # an application type, but not ours
    "application/json;q=0",  # explicitly refused
    "application/json;q=0, application/msgpack;q=0",  # both refused
    "*/*;q=0",  # nothing at all
]


@pytest.mark.parametrize("accept", NOT_ACCEPTABLE)
def test_negotiate_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate(accept, JSON)


# ---------------------------------------------------------------- properties

# Arbitrary bytes plus near-valid bodies: real documents with a byte flipped or
# cut short reach deeper into the parsers than random noise does.
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


def _mutations(packed: bytes) -> st.SearchStrategy[bytes]:
    if not packed:
        return st.just(packed)
    return st.one_of(
        st.integers(0, len(packed)).map(lambda n: packed[:n]),
        st.tuples(st.integers(0, len(packed) - 1), st.integers(0, 255)).map(
            lambda t: packed[: t[0]] + bytes([t[1]]) + packed[t[0] + 1 :]
        ),
    )


_msgpack_bodies = st.binary(max_size=256) | _values.map(
    lambda v: msgpack.packb(v, use_bin_type=True)
).flatmap(_mutations)
_json_bodies = st.binary(max_size=256) | _values.map(
    lambda v: json.dumps(v, default=lambda b: b.hex()).encode()
).flatmap(_mutations)


@settings(max_examples=400, deadline=None)
@given(body=_msgpack_bodies)
def test_msgpack_decode_raises_only_our_errors(body: bytes) -> None:
    try:
        decode_body(body, MSGPACK, Limits(max_depth=8))
    except PhsError:
        pass  # any other exception type fails the property


@settings(max_examples=400, deadline=None)
@given(body=_json_bodies)
def test_json_decode_raises_only_our_errors(body: bytes) -> None:
    try:
        decode_body(body, JSON, Limits(max_depth=8))
    except PhsError:
        pass  # any other exception type fails the property

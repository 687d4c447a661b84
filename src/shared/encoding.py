"""Request and response bodies: JSON and msgpack, decoded defensively.

CONTRACT section 1: every endpoint accepts ``application/json`` and
``application/msgpack`` bodies and answers in the type named by ``Accept``.
Bytes travel as raw ``bin`` in msgpack and as standard base64 strings in JSON.

Pure functions, no I/O: the services read the body and headers, then call
:func:`media_type_of`, :func:`decode_body` and :func:`negotiate`; every way a
caller can get a body wrong ends as one of our errors (``MalformedBody``,
``PayloadTooLarge``, ``UnsupportedMediaType``, ``NotAcceptable``), never as a
``ValueError``, ``RecursionError`` or msgpack exception that would become a 500.

Nesting depth counts containers: a scalar has depth 0, ``[]`` and ``{}``
depth 1, ``[[1]]`` depth 2.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from shared.errors import MalformedBody, NotAcceptable, PayloadTooLarge, UnsupportedMediaType

JSON = "application/json"
MSGPACK = "application/msgpack"
PROBLEM_JSON = "application/problem+json"

# Every media type we read or write, mapped to the codec that handles it.
# application/x-msgpack is the pre-registration name many clients still send.
_CODEC_OF: dict[str, str] = {
    JSON: JSON,
    PROBLEM_JSON: JSON,
    MSGPACK: MSGPACK,
    "application/x-msgpack": MSGPACK,
}

# The only charsets a JSON body may declare: we always decode strict UTF-8, so
# a body that says latin-1 would be misread rather than refused.
_UTF8_NAMES = frozenset({"utf-8", "utf8"})

# A q-value per RFC 9110 section 12.4.2: 0 to 1 with at most three decimals.
_QVALUE_RE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")

# Text no store can hold. NUL: PostgreSQL text cannot, and SQLite's text
# functions stop at it. Lone surrogates: JSON "\ud800" escapes decode to them,
# but they cannot be encoded to UTF-8, for PostgreSQL or for an answer echoing
# them. (msgpack strings are strict UTF-8: they can carry NUL, never surrogates.)
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")


def unstorable_text(value: str) -> str | None:
    """What in ``value`` no text field can hold (for an error's detail), else None.

    Pure; the gateway's and the edge's middleware check path and query strings
    with it, :func:`decode_body` every string and key of a body."""
    found = _UNSTORABLE_RE.search(value)
    if found is None:
        return None
    return "a NUL character (U+0000)" if found.group() == "\x00" else "an unpaired surrogate"


@dataclass(frozen=True)
class Limits:
    """Body limits of CONTRACT section 1 (configurable per service).

    ``max_items`` is not enforced here: an over-long batch is a 413
    ``batch_too_large`` that the batch handlers raise after decoding, not a
    malformed body.
    """

    max_body_bytes: int = 4 * 1024 * 1024
    max_depth: int = 32
    max_items: int = 5000


def _parse_params(raw: str) -> dict[str, str]:
    """``; name=value; name="value"`` parameters, names lower-cased."""
    params: dict[str, str] = {}
    for part in raw.split(";"):
        name, sep, value = part.partition("=")
        if not sep:
            continue
        params[name.strip().lower()] = value.strip().strip('"')
    return params


def media_type_of(content_type: str | None) -> str:
    """The codec (``JSON`` or ``MSGPACK``) of a request's Content-Type header."""
    if content_type is None or not content_type.strip():
        raise UnsupportedMediaType(f"Content-Type is missing; send {JSON} or {MSGPACK}")
    main, _, raw_params = content_type.partition(";")
    codec = _CODEC_OF.get(main.strip().lower())
    if codec is None:
        raise UnsupportedMediaType(
            f"Content-Type {main.strip()[:100]!r} is not supported; send {JSON} or {MSGPACK}"
        )
    if codec == JSON:
        charset = _parse_params(raw_params).get("charset")
        if charset is not None and charset.lower() not in _UTF8_NAMES:
            raise UnsupportedMediaType(f"JSON bodies must be UTF-8, not charset={charset[:40]}")
    return codec


def _codec(media_type: str) -> str:
    """Our codec for a media type we produce; anything else is a programming error."""
    codec = _CODEC_OF.get(media_type.lower())
    if codec is None:
        raise ValueError(f"not a media type of ours: {media_type!r}")
    return codec


# --------------------------------------------------------------------------
# Decoding


def _refuse(detail: str) -> NoReturn:
    raise MalformedBody(detail)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last duplicate silently; two readers of the same
    # body could then disagree about what it says.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                _refuse(f"duplicate object key {key!r}")
            seen.add(key)
    return result


def _json_constant(name: str) -> NoReturn:
    # NaN / Infinity / -Infinity are not JSON (RFC 8259) and not storable.
    _refuse(f"non-finite number {name} is not allowed")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e400 overflows to inf
        _refuse(f"number {text[:32]} is out of range")
    return value


def _decode_json(body: bytes) -> Any:
    try:
        # Decode ourselves: json.loads(bytes) would also guess UTF-16/32.
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedBody(f"JSON body is not valid UTF-8 (byte {err.start})") from err
    try:
        return json.loads(
            text,
            object_pairs_hook=_json_pairs,
            parse_constant=_json_constant,
            parse_float=_json_float,
        )
    except json.JSONDecodeError as err:
        raise MalformedBody(
            f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from err
    except RecursionError as err:
        # The C scanner recurses per nesting level; far below this limit the
        # depth check refuses the body anyway.
        raise MalformedBody("JSON body is nested too deeply") from err
    except ValueError as err:
        # int() refuses numbers with more than sys.get_int_max_str_digits() digits.
        raise MalformedBody(f"invalid JSON number: {err}") from err


def _msgpack_ext(code: int, data: bytes) -> NoReturn:
    # The contract has no extension types; an ExtType object would reach
    # handlers that cannot validate it.
    _refuse(f"msgpack extension type {code} is not allowed")


def _msgpack_pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    # strict_map_key still lets bytes keys through; JSON has only str keys and
    # both encodings must decode to the same shapes.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if not isinstance(key, str):
            _refuse(f"msgpack map keys must be strings, not {type(key).__name__}")
        if key in result:
            _refuse(f"duplicate map key {key!r}")
        result[key] = value
    return result


def _decode_msgpack(body: bytes) -> Any:
    size = len(body)
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_msgpack_pairs,
            ext_hook=_msgpack_ext,
            # Timestamps (ext -1) bypass ext_hook; timestamp=0 leaves them as
            # msgpack.Timestamp, which the tree check refuses.
            timestamp=0,
            # A header may claim 2**32 elements in a 5-byte body; no element
            # takes less than one byte, so nothing longer than the body is real.
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=size,
        )
    except msgpack.ExtraData as err:
        raise MalformedBody("msgpack body has trailing bytes after the first object") from err
    except msgpack.StackError as err:
        raise MalformedBody("msgpack body is nested too deeply") from err
    except msgpack.FormatError as err:
        raise MalformedBody("msgpack body contains a reserved type byte") from err
    except UnicodeDecodeError as err:
        raise MalformedBody("msgpack string is not valid UTF-8") from err
    except ValueError as err:
        # Incomplete input, limits exceeded, non-str/bytes map keys.
        raise MalformedBody(f"invalid msgpack: {err}") from err
    except RecursionError as err:
        raise MalformedBody("msgpack body is nested too deeply") from err


# Leaves that need no check (exact types: a subclass goes to the full walk).
_PLAIN_LEAVES = frozenset({int, bool, type(None), bytes})


def _is_clean(obj: Any, max_depth: int, check_text: bool) -> bool:
    """True when ``_check_tree`` would find nothing to refuse: the usual case.

    One pass that looks at each container once and tests its children by exact
    type, without a stack entry per leaf. It may visit nodes in any order, so
    when it finds something it only answers False, and ``_check_tree`` (which
    visits in its own order) words the refusal.
    """
    if type(obj) is not dict and type(obj) is not list:
        return False  # a scalar body: rare, leave it to the full walk
    if max_depth < 1:
        return False
    search = _UNSTORABLE_RE.search
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            if check_text:
                for key in node:
                    if search(key):
                        return False
            children: Any = node.values()
        else:
            children = node
        for child in children:
            kind = type(child)
            if kind is str:
                if check_text and search(child):
                    return False
            elif kind in _PLAIN_LEAVES:
                continue
            elif kind is dict or kind is list:
                if depth >= max_depth:
                    return False
                stack.append((child, depth + 1))
            elif kind is float:
                if not math.isfinite(child):
                    return False
            else:
                return False  # Timestamp, subclasses, anything unexpected
    return True


def _refuse_text(value: str) -> None:
    fault = unstorable_text(value)
    if fault is not None:
        _refuse(f"a string contains {fault}, which no text field can hold")


def _check_tree(obj: Any, max_depth: int, check_text: bool) -> None:
    """Depth, key types, finite floats, storable text and no ext leftovers — iteratively.

    Iterative because the input is attacker-shaped: recursion would turn a
    deep body into a RecursionError (a 500) instead of a 400.
    """
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            items: Any = node.values()
            if check_text:
                for key in node:
                    _refuse_text(key)
        elif isinstance(node, list):
            items = node
        elif isinstance(node, float):
            if not math.isfinite(node):  # msgpack can carry NaN and inf
                _refuse("non-finite numbers are not allowed")
            continue
        elif isinstance(node, str):
            if check_text:
                _refuse_text(node)
            continue
        elif isinstance(node, msgpack.Timestamp):
            _refuse("msgpack timestamps are not allowed; send RFC 3339 strings")
        else:
            continue
        depth += 1
        if depth > max_depth:
            _refuse(f"body is nested deeper than {max_depth} levels")
        stack.extend((child, depth) for child in items)


_DECODERS: dict[str, Callable[[bytes], Any]] = {JSON: _decode_json, MSGPACK: _decode_msgpack}

# A JSON escape of a surrogate (\uD800-\uDFFF, any case).
_JSON_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _may_hold_unstorable_text(body: bytes, codec: str) -> bool:
    """Whether a decoded string of ``body`` can hold a NUL or a lone surrogate.

    Looking at the bytes once spares a search of every string of the usual
    body (a 5,000-item msgpack batch decoded in twice the time with it).
    msgpack: a NUL in a string is a zero byte in the body (surrogates are not
    UTF-8, so they never decode). JSON: a raw control character is invalid
    JSON, so a NUL can only be the escape ``\\u0000``, a surrogate only an
    escape too. A false alarm (a zero in an integer or in bytes, an escaped
    backslash before ``u0000``) only costs the search.
    """
    if codec == MSGPACK:
        return b"\x00" in body
    return b"\\u" in body and (
        b"\\u0000" in body or _JSON_SURROGATE_ESCAPE.search(body) is not None
    )


def decode_body(body: bytes, media_type: str, limits: Limits) -> Any:
    """The decoded body, or ``PayloadTooLarge`` / ``MalformedBody``.

    ``media_type`` is what :func:`media_type_of` returned.
    """
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is {limits.max_body_bytes}")
    if not body:
        raise MalformedBody("body is empty")
    codec = _codec(media_type)
    value = _DECODERS[codec](body)
    check_text = _may_hold_unstorable_text(body, codec)
    if not _is_clean(value, limits.max_depth, check_text):
        _check_tree(value, limits.max_depth, check_text)
    return value


def max_depth_of(obj: Any) -> int:
    """Nesting depth of lists and dicts (a scalar is 0), computed iteratively."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


# --------------------------------------------------------------------------
# Encoding


def _json_default(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(obj: Any, media_type: str) -> bytes:
    """``obj`` as a body of ``media_type`` (JSON, problem+json or msgpack)."""
    if _codec(media_type) == MSGPACK:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed
    # allow_nan=False: emitting NaN would produce a body our own decoder refuses.
    return json.dumps(
        obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
    ).encode("utf-8")


# --------------------------------------------------------------------------
# Content negotiation


def _parse_range(part: str) -> tuple[str, float] | None:
    """``type/subtype`` and its q-value, or None for a malformed range."""
    main, _, raw_params = part.partition(";")
    media_range = main.strip().lower()
    kind, slash, subtype = media_range.partition("/")
    if not slash or not kind or not subtype or (kind == "*" and subtype != "*"):
        return None
    q_text = _parse_params(raw_params).get("q", "1")
    if _QVALUE_RE.fullmatch(q_text) is None:
        return None
    return media_range, float(q_text)


def _specificity(media_range: str, codec: str) -> int:
    """How specifically a range names a codec (RFC 9110 precedence), -1 if not."""
    if _CODEC_OF.get(media_range) == codec:
        return 2
    if media_range == "application/*":
        return 1
    if media_range == "*/*":
        return 0
    return -1


def negotiate(accept: str | None, default: str) -> str:
    """The answer's codec (``JSON`` or ``MSGPACK``) for an Accept header.

    The most specific range naming a codec decides its q-value; the highest
    q wins and ties go to ``default``. Malformed ranges are ignored, and a
    header with no well-formed range counts as absent.
    """
    preferred = _codec(default)
    other = MSGPACK if preferred == JSON else JSON
    if accept is None or not accept.strip():
        return preferred
    ranges = [r for r in (_parse_range(p) for p in accept.split(",")) if r is not None]
    if not ranges:
        return preferred
    best: dict[str, tuple[int, float]] = {JSON: (-1, 0.0), MSGPACK: (-1, 0.0)}
    for media_range, q in ranges:
        for codec in (JSON, MSGPACK):
            specificity = _specificity(media_range, codec)
            if specificity < 0:
                continue
            current = best[codec]
            if specificity > current[0] or (specificity == current[0] and q > current[1]):
                best[codec] = (specificity, q)
    usable = [c for c in (preferred, other) if best[c][0] >= 0 and best[c][1] > 0]
    if not usable:
        raise NotAcceptable(
            f"cannot answer in any type named by Accept; available: {JSON}, {MSGPACK}"
        )
    # max() keeps the first of equal keys, so a tie goes to the default.
    return max(usable, key=lambda c: best[c][1])

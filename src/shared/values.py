"""Checked readers for the scalar values of the wire contract.

Each reader takes a decoded field (``Any``), returns a typed value or raises
``ValidationFailed`` naming the field, so handlers never touch raw input.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shared.errors import ValidationFailed

IDENTIFIER_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# RFC 3339, UTC only, "Z" suffix, optional fraction (CONTRACT section 1).
_TIMESTAMP_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z")


def is_identifier(value: object) -> bool:
    return isinstance(value, str) and IDENTIFIER_RE.fullmatch(value) is not None


def identifier(value: Any, field: str) -> str:
    if not is_identifier(value):
        raise ValidationFailed(f"{field} must be 1-128 characters of [A-Za-z0-9._:-]", field=field)
    assert isinstance(value, str)
    return value


def optional_identifier(value: Any, field: str) -> str | None:
    return None if value is None else identifier(value, field)


def text(value: Any, field: str, max_length: int = 1024) -> str:
    if not isinstance(value, str) or len(value) > max_length:
        raise ValidationFailed(
            f"{field} must be a string of at most {max_length} characters", field=field
        )
    return value


def integer(value: Any, field: str, minimum: int | None = None) -> int:
    # bool is an int subclass in Python; JSON true is not a number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationFailed(f"{field} must be an integer", field=field)
    if minimum is not None and value < minimum:
        raise ValidationFailed(f"{field} must be >= {minimum}", field=field)
    return value


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationFailed(f"{field} must be a boolean", field=field)
    return value


def parse_timestamp(value: Any, field: str) -> datetime:
    """An RFC 3339 UTC timestamp with ``Z`` as an aware datetime."""
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be an RFC 3339 UTC time string", field=field)
    if _TIMESTAMP_RE.fullmatch(value) is None:
        raise ValidationFailed(
            f"{field} must be an RFC 3339 UTC time like 2026-11-25T09:30:00.000Z", field=field
        )
    # The regex has fixed the shape, so the C parser reads the same fields the
    # slow path below would (it also truncates a fraction to microseconds and
    # reads "Z" as UTC) at a fifth of the cost. Hour 24 is left to the slow
    # path: newer Pythons read "24:00" as the next midnight.
    if value[11:13] != "24":
        try:
            return _fromisoformat(value)
        except ValueError:
            pass  # out-of-range fields, non-ASCII digits: the slow path words the error
    return _parse_timestamp_fields(value, field)


_fromisoformat = datetime.fromisoformat


def _parse_timestamp_fields(value: str, field: str) -> datetime:
    match = _TIMESTAMP_RE.fullmatch(value)
    assert match is not None
    year, month, day, hour, minute, second, fraction = match.groups()
    micro = int((fraction or "0").ljust(6, "0")[:6])
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=UTC
        )
    except ValueError as err:
        raise ValidationFailed(f"{field} is not a valid time: {err}", field=field) from err


def format_timestamp(moment: datetime) -> str:
    """The contract's time format: milliseconds, UTC, ``Z``."""
    utc = moment.astimezone(UTC)
    if utc.year >= 1000:
        # isoformat truncates to milliseconds like the strftime form below,
        # and ends in "+00:00" for UTC; it costs half as much.
        return utc.isoformat(timespec="milliseconds")[:-6] + "Z"
    # strftime does not pad years below 1000 on every platform; keep its output.
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def binary(value: Any, field: str, max_length: int = 4 * 1024 * 1024) -> bytes:
    """Bytes: raw ``bin`` from msgpack or a standard base64 string from JSON."""
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    elif isinstance(value, str):
        try:
            raw = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as err:
            raise ValidationFailed(f"{field} must be standard base64", field=field) from err
    else:
        raise ValidationFailed(f"{field} must be bytes (base64 in JSON)", field=field)
    if len(raw) > max_length:
        raise ValidationFailed(f"{field} is longer than {max_length} bytes", field=field)
    return raw


def mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationFailed(f"{field} must be an object", field=field)
    return value


def only_fields(body: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    """Refuse unknown fields: a typo must not be silently ignored."""
    if allowed.issuperset(body):  # the usual case, without building a set
        return
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationFailed(f"unknown field(s) in {where}: {', '.join(unknown)}", fields=unknown)


def required(body: Mapping[str, Any], name: str) -> Any:
    if name not in body:
        raise ValidationFailed(f"missing field: {name}", field=name)
    return body[name]

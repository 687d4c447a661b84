"""Timestamp reading and writing (shared.values): the fast paths give exactly
what the plain implementations below give, for accepted and refused input."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from shared.errors import ValidationFailed
from shared.values import format_timestamp, parse_timestamp

_REFERENCE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z")


def reference_parse(value: Any, field: str) -> datetime:
    """parse_timestamp as it was written first: regex groups into datetime()."""
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be an RFC 3339 UTC time string", field=field)
    match = _REFERENCE_RE.fullmatch(value)
    if match is None:
        raise ValidationFailed(
            f"{field} must be an RFC 3339 UTC time like 2026-11-25T09:30:00.000Z", field=field
        )
    year, month, day, hour, minute, second, fraction = match.groups()
    micro = int((fraction or "0").ljust(6, "0")[:6])
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=UTC
        )
    except ValueError as err:
        raise ValidationFailed(f"{field} is not a valid time: {err}", field=field) from err


def reference_format(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def outcome(parse: Any, value: Any) -> tuple[str, Any]:
    try:
        moment = parse(value, "at")
    except ValidationFailed as err:
        return "refused", (err.detail, err.extra)
    assert moment.tzinfo is UTC
    return "read", moment


PARSE_CASES = [
    ("2026-11-25T09:30:00.000Z", datetime(2026, 11, 25, 9, 30, tzinfo=UTC)),
    ("2026-11-25T09:30:00Z", datetime(2026, 11, 25, 9, 30, tzinfo=UTC)),
    ("2026-11-25T09:30:00.1Z", datetime(2026, 11, 25, 9, 30, 0, 100000, tzinfo=UTC)),
    ("2026-11-25T09:30:00.12Z", datetime(2026, 11, 25, 9, 30, 0, 120000, tzinfo=UTC)),
    ("2026-11-25T09:30:00.1234Z", datetime(2026, 11, 25, 9, 30, 0, 123400, tzinfo=UTC)),
    ("2026-11-25T09:30:00.12345Z", datetime(2026, 11, 25, 9, 30, 0, 123450, tzinfo=UTC)),
    ("2026-11-25T09:30:00.123456Z", datetime(2026, 11, 25, 9, 30, 0, 123456, tzinfo=UTC)),
    ("2026-11-25T09:30:00.1234567Z", datetime(2026, 11, 25, 9, 30, 0, 123456, tzinfo=UTC)),
    ("2026-11-25T09:30:00.123456789Z", datetime(2026, 11, 25, 9, 30, 0, 123456, tzinfo=UTC)),
    ("2024-02-29T23:59:59.999Z", datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ("9999-12-31T23:59:59.999999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
]

REFUSED = [
    "2026-11-25T09:30:00.1234567890Z",  # ten fraction digits
    "2026-11-25T09:30:00.Z",
    "2026-11-25T09:30:00",
    "2026-11-25T09:30:00z",
    "2026-11-25t09:30:00Z",
    "2026-11-25 09:30:00Z",
    "2026-11-25T09:30:00+00:00",
    "2026-11-25T09:30:00.000Z\n",
    " 2026-11-25T09:30:00Z",
    "2026-11-25T09:30Z",
    "20261125T093000Z",
    "2026-11-25",
    "2026-02-30T00:00:00Z",  # no such day
    "2025-02-29T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-00-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "2026-11-25T24:00:00Z",  # newer Pythons' fromisoformat would read this
    "2026-11-25T24:00:00.000Z",
    "2026-11-25T23:60:00Z",
    "2026-11-25T23:59:60Z",  # leap seconds are not representable
    "\u0662\u0660\u0662\u0666-11-25T09:30:00Z",  # Arabic-Indic digits match \d
    "2026-11-25T09:30:00.\uff11Z",  # a fullwidth digit in the fraction
    "",
    "Z",
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_reads(text: str, expected: datetime) -> None:
    assert parse_timestamp(text, "at") == expected
    assert outcome(parse_timestamp, text) == outcome(reference_parse, text)


@pytest.mark.parametrize("text", REFUSED)
def test_parse_refuses_like_the_reference(text: str) -> None:
    assert outcome(parse_timestamp, text) == outcome(reference_parse, text)


@pytest.mark.parametrize("value", [None, 0, 1.5, b"2026-11-25T09:30:00Z", ["x"], {"a": 1}])
def test_parse_refuses_non_strings(value: Any) -> None:
    with pytest.raises(ValidationFailed, match="must be an RFC 3339 UTC time string"):
        parse_timestamp(value, "at")


def test_parse_refusals_name_the_field() -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_timestamp("2026-02-30T00:00:00Z", "occurredAt")
    assert err.value.extra == {"field": "occurredAt"}
    assert "occurredAt is not a valid time: day is out of range for month" in err.value.detail


def test_parse_matches_reference_on_random_near_misses() -> None:
    rng = random.Random(20261125)
    alphabet = "0123456789-:.TZ"
    base = "2026-11-25T09:30:00.123456789Z"
    for _ in range(5000):
        chars = [*base[: rng.randint(19, len(base))], "Z"]
        for _ in range(rng.randint(1, 3)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        text = "".join(chars)
        assert outcome(parse_timestamp, text) == outcome(reference_parse, text), text


def test_parse_matches_reference_on_random_fields() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        text = (
            f"{rng.randint(0, 9999):04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}"
            f"T{rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}:{rng.randint(0, 61):02d}"
            + rng.choice(["", "." + "".join(rng.choices("0123456789", k=rng.randint(1, 9)))])
            + "Z"
        )
        assert outcome(parse_timestamp, text) == outcome(reference_parse, text), text


FORMAT_CASES = [
    (datetime(2026, 11, 25, 9, 30, tzinfo=UTC), "2026-11-25T09:30:00.000Z"),
    (datetime(2026, 11, 25, 9, 30, 0, 999999, tzinfo=UTC), "2026-11-25T09:30:00.999Z"),
    (datetime(2026, 11, 25, 9, 30, 0, 1000, tzinfo=UTC), "2026-11-25T09:30:00.001Z"),
    (datetime(2026, 11, 25, 9, 30, 0, 999, tzinfo=UTC), "2026-11-25T09:30:00.000Z"),
    (
        datetime(2026, 11, 25, 11, 30, 0, 5000, tzinfo=timezone(timedelta(hours=2))),
        "2026-11-25T09:30:00.005Z",
    ),
    (datetime(1000, 1, 1, tzinfo=UTC), "1000-01-01T00:00:00.000Z"),
    (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "9999-12-31T23:59:59.999Z"),
]


@pytest.mark.parametrize(("moment", "expected"), FORMAT_CASES)
def test_format(moment: datetime, expected: str) -> None:
    assert format_timestamp(moment) == expected == reference_format(moment)


@pytest.mark.parametrize("year", [1, 5, 99, 999])
def test_format_of_early_years_is_unchanged(year: int) -> None:
    moment = datetime(year, 3, 4, 5, 6, 7, 8910, tzinfo=UTC)
    assert format_timestamp(moment) == reference_format(moment)


def test_format_of_naive_time_reads_it_as_local_like_before() -> None:
    moment = datetime(2026, 6, 1, 12, 0, 0, 123456)
    assert format_timestamp(moment) == reference_format(moment)


def test_format_matches_reference_on_random_times() -> None:
    rng = random.Random(3)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    start = datetime(1000, 1, 2, tzinfo=UTC)
    span = (datetime(9999, 12, 30, tzinfo=UTC) - start).total_seconds()
    for _ in range(5000):
        moment = start + timedelta(seconds=rng.uniform(0, span), microseconds=rng.randint(0, 10**6))
        moment = moment.astimezone(rng.choice(zones))
        text = format_timestamp(moment)
        assert text == reference_format(moment)
        assert parse_timestamp(text, "at") == moment.replace(
            microsecond=moment.microsecond // 1000 * 1000
        )

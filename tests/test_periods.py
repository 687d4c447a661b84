"""Report periods: keys, ISO weeks, and local-midnight bounds across DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from shared.errors import ValidationFailed
from shared.periods import (
    Period,
    PeriodType,
    local_date,
    parse_period,
    period_containing,
    period_from_key,
    previous_period,
    utc_bounds,
    zone,
)

DAILY = PeriodType.DAILY
WEEKLY = PeriodType.WEEKLY


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (periodType, periodKey, start, end)
VALID_KEYS = [
    ("daily", "2026-11-23", date(2026, 11, 23), date(2026, 11, 24)),  # an ordinary day
    ("daily", "2024-02-29", date(2024, 2, 29), date(2024, 3, 1)),  # leap day exists in 2024
    ("daily", "2026-12-31", date(2026, 12, 31), date(2027, 1, 1)),  # end rolls into next year
    ("weekly", "2026-W47", date(2026, 11, 16), date(2026, 11, 23)),  # CONTRACT example, a Monday
    ("weekly", "2026-W01", date(2025, 12, 29), date(2026, 1, 5)),  # ISO year starts in Dec 2025
    ("weekly", "2020-W53", date(2020, 12, 28), date(2021, 1, 4)),  # 2020 has 53 ISO weeks
    # 2026 starts on a Thursday, so it has 53 ISO weeks too.
    ("weekly", "2026-W53", date(2026, 12, 28), date(2027, 1, 4)),
    ("weekly", "2027-W01", date(2027, 1, 4), date(2027, 1, 11)),  # right after 2026-W53
]


@pytest.mark.parametrize(("period_type", "key", "start", "end"), VALID_KEYS)
def test_parse_period_valid(period_type: str, key: str, start: date, end: date) -> None:
    period = parse_period(period_type, key)
    assert period == Period(PeriodType(period_type), key, start, end)
    # The key alone names the same period.
    assert period_from_key(key) == period


# (periodType, periodKey, fragment of the detail)
INVALID = [
    ("monthly", "2026-11", "periodType"),  # not a period type of ours
    ("Daily", "2026-11-23", "periodType"),  # types are case-sensitive
    (None, "2026-11-23", "periodType"),  # not a string at all
    ("daily", None, "periodKey must be a string"),  # not a string at all
    ("daily", "2026-W47", "not a daily key"),  # weekly key under daily type
    ("weekly", "2026-11-23", "not a weekly key"),  # daily key under weekly type
    ("daily", "2026-11-3", "not a daily key"),  # day needs two digits
    ("daily", "26-11-23", "not a daily key"),  # year needs four digits
    ("daily", "2026/11/23", "not a daily key"),  # wrong separator
    ("daily", "2026-11-23 ", "not a daily key"),  # trailing space
    ("daily", "2026-11-23T00:00", "not a daily key"),  # a time is not a day
    ("daily", "２０２６-11-23", "not a daily key"),  # full-width digits are not ASCII digits
    ("daily", "", "not a daily key"),  # empty
    ("weekly", "2026-W7", "not a weekly key"),  # week needs two digits
    ("weekly", "2026-w47", "not a weekly key"),  # the W is upper case
    ("weekly", "2026W47", "not a weekly key"),  # missing dash
    ("weekly", "2026-W047", "not a weekly key"),  # three-digit week
    ("daily", "2026-02-30", "does not exist"),  # February has no 30th
    ("daily", "2026-02-29", "does not exist"),  # 2026 is not a leap year
    ("daily", "2026-13-01", "does not exist"),  # no month 13
    ("daily", "2026-00-10", "does not exist"),  # no month 0
    ("daily", "0000-01-01", "does not exist"),  # no year 0
    ("daily", "9999-12-31", "out of range"),  # its end date cannot be represented
    ("weekly", "2026-W00", "does not exist"),  # weeks start at 1
    ("weekly", "2026-W54", "does not exist"),  # never a week 54
    ("weekly", "2025-W53", "does not exist"),  # 2025 has 52 ISO weeks
    ("weekly", "2027-W53", "does not exist"),  # 2027 has 52 ISO weeks
]


@pytest.mark.parametrize(("period_type", "key", "detail"), INVALID)
def test_parse_period_refuses(period_type: Any, key: Any, detail: str) -> None:
    with pytest.raises(ValidationFailed, match=detail):
        parse_period(period_type, key)


@pytest.mark.parametrize(
    "key",
    [
        "2026-11",  # a month: not a shape we know
        "2026-47",  # a week without W
        "2026-W54",  # right shape, no such week
        "2026-02-30",  # right shape, no such day
        "",  # empty
        None,  # not a string
    ],
)
def test_period_from_key_refuses(key: Any) -> None:
    with pytest.raises(ValidationFailed):
        period_from_key(key)


# (day, type, key of the period containing it)
CONTAINING = [
    (date(2026, 11, 23), DAILY, "2026-11-23"),  # a day contains itself
    (date(2024, 2, 29), DAILY, "2024-02-29"),  # leap day
    (date(2026, 11, 16), WEEKLY, "2026-W47"),  # Monday: first day of its week
    (date(2026, 11, 22), WEEKLY, "2026-W47"),  # Sunday: last day of the same week
    (date(2026, 11, 23), WEEKLY, "2026-W48"),  # next Monday starts a new week
    (date(2025, 12, 31), WEEKLY, "2026-W01"),  # late December in the next ISO year
    (date(2021, 1, 3), WEEKLY, "2020-W53"),  # early January in the previous ISO year
    (date(2027, 1, 3), WEEKLY, "2026-W53"),  # the Sunday that ends 2026's week 53
]


@pytest.mark.parametrize(("day", "period_type", "key"), CONTAINING)
def test_period_containing(day: date, period_type: PeriodType, key: str) -> None:
    period = period_containing(day, period_type)
    assert period == parse_period(period_type, key)
    assert period.contains(day)


# (day, type, key of the complete period before the one containing it)
PREVIOUS = [
    (date(2026, 11, 24), DAILY, "2026-11-23"),  # yesterday
    (date(2026, 3, 1), DAILY, "2026-02-28"),  # across a month end
    (date(2024, 3, 1), DAILY, "2024-02-29"),  # back onto a leap day
    (date(2026, 1, 1), DAILY, "2025-12-31"),  # across a year end
    (date(2026, 11, 23), WEEKLY, "2026-W47"),  # Monday: last week
    (date(2026, 11, 29), WEEKLY, "2026-W47"),  # Sunday of W48 is still in W48
    (date(2026, 1, 1), WEEKLY, "2025-W52"),  # in 2026-W01, so 2025's last week
    (date(2021, 1, 10), WEEKLY, "2020-W53"),  # in 2021-W01, so 2020's week 53
    (date(2027, 1, 4), WEEKLY, "2026-W53"),  # Monday after 2026's week 53
]


@pytest.mark.parametrize(("day", "period_type", "key"), PREVIOUS)
def test_previous_period(day: date, period_type: PeriodType, key: str) -> None:
    previous = previous_period(day, period_type)
    assert previous == parse_period(period_type, key)
    # It is complete: it ends where the period containing `day` begins.
    assert previous.end == period_containing(day, period_type).start


@pytest.mark.parametrize("name", ["UTC", "Africa/Nairobi", "Europe/Berlin", "America/Santiago"])
def test_zone_known(name: str) -> None:
    assert zone(name).key == name


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus_Mons",  # no such zone
        "europe/berlin",  # zone names are case-sensitive
        "Europe/Berlin ",  # trailing space
        "",  # empty
        "America",  # a directory of zones, not a zone
        "../etc/passwd",  # a path out of the zone directory
        "/etc/localtime",  # an absolute path
        "Europe/../UTC",  # not a normalized name
        "zone1970.tab",  # a data file beside the zones, not a zone
        "localtime",  # the machine's own zone: differs between machines
        None,  # not a string
    ],
)
def test_zone_unknown(name: Any) -> None:
    with pytest.raises(ValidationFailed, match="unknown time zone"):
        zone(name)


# (instant, zone, local date)
LOCAL_DATES = [
    ("2026-11-22T21:30:00", "UTC", date(2026, 11, 22)),  # UTC is its own local time
    ("2026-11-22T21:30:00", "Africa/Nairobi", date(2026, 11, 23)),  # +03:00: already Monday
    ("2026-11-22T20:59:59", "Africa/Nairobi", date(2026, 11, 22)),  # one second before midnight
    ("2026-11-23T03:00:00", "America/New_York", date(2026, 11, 22)),  # -05:00: still Sunday
]


@pytest.mark.parametrize(("instant", "name", "expected"), LOCAL_DATES)
def test_local_date(instant: str, name: str, expected: date) -> None:
    assert local_date(utc(instant), zone(name)) == expected


def test_local_date_refuses_naive() -> None:
    # A naive datetime would be read in the machine's zone: a silent bug.
    with pytest.raises(ValueError, match="aware"):
        local_date(datetime(2026, 11, 22, 21, 30), zone("UTC"))


# (zone, periodType, periodKey, UTC start, UTC end)
BOUNDS = [
    # UTC: midnight to midnight.
    ("UTC", "daily", "2026-11-23", "2026-11-23T00:00:00", "2026-11-24T00:00:00"),
    # Nairobi is +03:00 all year: the week starts at 21:00 UTC on the Sunday before.
    ("Africa/Nairobi", "weekly", "2026-W47", "2026-11-15T21:00:00", "2026-11-22T21:00:00"),
    # Berlin springs forward 02:00 -> 03:00: a 23-hour day (+01:00 then +02:00).
    ("Europe/Berlin", "daily", "2026-03-29", "2026-03-28T23:00:00", "2026-03-29T22:00:00"),
    # Berlin falls back 03:00 -> 02:00: a 25-hour day (+02:00 then +01:00).
    ("Europe/Berlin", "daily", "2026-10-25", "2026-10-24T22:00:00", "2026-10-25T23:00:00"),
    # The week holding the spring change is 7 days less one hour.
    ("Europe/Berlin", "weekly", "2026-W13", "2026-03-22T23:00:00", "2026-03-29T22:00:00"),
    # Santiago springs forward at midnight (00:00 -> 01:00, -04:00 -> -03:00): local
    # midnight never happens and the day starts at the change, 04:00 UTC.
    ("America/Santiago", "daily", "2026-09-06", "2026-09-06T04:00:00", "2026-09-07T03:00:00"),
    # Santiago falls back at midnight (00:00 -> 23:00 the day before): a 25-hour day.
    ("America/Santiago", "daily", "2026-04-04", "2026-04-04T03:00:00", "2026-04-05T04:00:00"),
    # Beirut springs forward at midnight too (+02:00 -> +03:00).
    ("Asia/Beirut", "daily", "2026-03-29", "2026-03-28T22:00:00", "2026-03-29T21:00:00"),
    # Havana falls back 01:00 -> 00:00: midnight happens twice; the day starts at the first.
    ("America/Havana", "daily", "2026-11-01", "2026-11-01T04:00:00", "2026-11-02T05:00:00"),
]


@pytest.mark.parametrize(("name", "period_type", "key", "start", "end"), BOUNDS)
def test_utc_bounds(name: str, period_type: str, key: str, start: str, end: str) -> None:
    tz = zone(name)
    period = parse_period(period_type, key)
    assert utc_bounds(period, tz) == (utc(start), utc(end))


@pytest.mark.parametrize(("name", "period_type", "key"), [row[:3] for row in BOUNDS])
def test_utc_bounds_agree_with_local_date(name: str, period_type: str, key: str) -> None:
    # Selecting by instant between the bounds must select exactly the instants
    # whose local date is in the period: sweep two days either side, 15 minutes apart.
    tz = zone(name)
    period = parse_period(period_type, key)
    start, end = utc_bounds(period, tz)
    moment = start - timedelta(days=2)
    while moment < end + timedelta(days=2):
        assert (start <= moment < end) == period.contains(local_date(moment, tz)), moment
        moment += timedelta(minutes=15)

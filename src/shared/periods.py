"""Report periods: daily and ISO-week keys, and their bounds in a facility's zone.

A facility report covers the encounters whose *local* date falls in a period
(CONTRACT.md section 6). Periods are therefore spans of calendar dates, not of
instants; ``utc_bounds`` turns them into instants only where a query needs them,
using the facility's zone so that DST days of 23 or 25 hours come out right.

Keys are the wire form: ``YYYY-MM-DD`` for a day and ``YYYY-Www`` for an ISO
week (Monday start; the ISO year may differ from the calendar year at New Year,
so 2026-W01 starts on 2025-12-29).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.errors import ValidationFailed

# [0-9] rather than \d: \d also matches non-ASCII digits, which int() accepts.
_DAILY_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_WEEKLY_RE = re.compile(r"([0-9]{4})-W([0-9]{2})")

_ONE_DAY = timedelta(days=1)


class PeriodType(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


_TYPE_NAMES = frozenset(member.value for member in PeriodType)


@dataclass(frozen=True)
class Period:
    """A span of local calendar dates, ``start`` inclusive, ``end`` exclusive."""

    type: PeriodType
    key: str
    start: date
    end: date

    def contains(self, day: date) -> bool:
        return self.start <= day < self.end


def _daily(day: date) -> Period:
    try:
        end = day + _ONE_DAY
    except OverflowError as err:
        raise ValidationFailed(f"day {day.isoformat()} is out of range", field="periodKey") from err
    return Period(PeriodType.DAILY, day.isoformat(), day, end)


def _weekly(iso_year: int, week: int) -> Period:
    key = f"{iso_year:04d}-W{week:02d}"
    try:
        # fromisocalendar refuses week 53 in a year that has only 52 weeks.
        start = date.fromisocalendar(iso_year, week, 1)
        end = start + timedelta(days=7)
    except (ValueError, OverflowError) as err:
        raise ValidationFailed(f"week {key} does not exist", field="periodKey") from err
    return Period(PeriodType.WEEKLY, key, start, end)


def _parse_daily_key(key: str) -> Period:
    match = _DAILY_RE.fullmatch(key)
    if match is None:
        raise ValidationFailed(
            f"periodKey {key!r} is not a daily key like 2026-11-23", field="periodKey"
        )
    year, month, day = (int(part) for part in match.groups())
    try:
        return _daily(date(year, month, day))
    except ValueError as err:
        raise ValidationFailed(f"day {key} does not exist", field="periodKey") from err


def _parse_weekly_key(key: str) -> Period:
    match = _WEEKLY_RE.fullmatch(key)
    if match is None:
        raise ValidationFailed(
            f"periodKey {key!r} is not a weekly key like 2026-W47", field="periodKey"
        )
    year, week = (int(part) for part in match.groups())
    return _weekly(year, week)


def parse_period(period_type: str, key: str) -> Period:
    """The period named by a wire ``periodType`` and ``periodKey``.

    Both come from the wire, so they are checked as ``Any``: a type that is not
    ours, a key of the other type's shape, and dates that do not exist (2026-02-30,
    2026-W53) are all refused with ``ValidationFailed``.
    """
    raw_type: Any = period_type
    raw_key: Any = key
    if not isinstance(raw_type, str) or raw_type not in _TYPE_NAMES:
        raise ValidationFailed("periodType must be one of: daily, weekly", field="periodType")
    if not isinstance(raw_key, str):
        raise ValidationFailed("periodKey must be a string", field="periodKey")
    if PeriodType(raw_type) is PeriodType.DAILY:
        return _parse_daily_key(raw_key)
    return _parse_weekly_key(raw_key)


def period_from_key(key: str) -> Period:
    """The period named by a key alone; its shape tells the type."""
    raw: Any = key
    if isinstance(raw, str):
        if _DAILY_RE.fullmatch(raw):
            return _parse_daily_key(raw)
        if _WEEKLY_RE.fullmatch(raw):
            return _parse_weekly_key(raw)
    raise ValidationFailed(
        "periodKey must be a day (2026-11-23) or an ISO week (2026-W47)", field="periodKey"
    )


def period_containing(day: date, period_type: PeriodType) -> Period:
    if period_type is PeriodType.DAILY:
        return _daily(day)
    iso = day.isocalendar()
    return _weekly(iso.year, iso.week)


def previous_period(day: date, period_type: PeriodType) -> Period:
    """The last complete period before the one containing ``day``.

    A scheduler reports on this one: the current period is still filling up.
    """
    current = period_containing(day, period_type)
    return period_containing(current.start - _ONE_DAY, period_type)


def zone(name: str) -> ZoneInfo:
    """The IANA zone of a facility's settings, or ``ValidationFailed``."""
    raw: Any = name
    # "localtime" is whatever zone the machine is set to, so an edge node and the
    # gateway could place the same encounter on different days: make it explicit.
    if not isinstance(raw, str) or raw == "localtime":
        raise ValidationFailed(f"unknown time zone: {raw!r}", field="timeZone")
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError, OSError) as err:
        # ValueError covers absolute/relative path tricks and non-TZif files in
        # the zone directory; OSError a directory name such as "America" on some
        # platforms.
        raise ValidationFailed(f"unknown time zone: {raw!r}", field="timeZone") from err


def local_date(moment: datetime, tz: ZoneInfo) -> date:
    """The calendar date of an instant on the wall clocks of ``tz``."""
    if moment.utcoffset() is None:
        # A naive datetime would silently be read in the machine's own zone.
        raise ValueError("local_date needs an aware datetime")
    return moment.astimezone(tz).date()


def _start_of_day(day: date, tz: ZoneInfo) -> datetime:
    """The first UTC instant whose local date in ``tz`` is ``day``.

    That is local midnight, read at its earlier occurrence when the clocks go
    back over midnight. Where the clocks jump forward over midnight (Santiago,
    Beirut) midnight never happens and the day begins at the transition, which
    lies between the two readings of the missing midnight: find it by bisection
    on whole seconds (tz transitions are on whole seconds).
    """
    naive = datetime.combine(day, time())
    readings = sorted(naive.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1))
    low, high = readings
    if local_date(low, tz) >= day:
        return low
    before, after = 0, int((high - low).total_seconds())  # local date < day at `before`
    while after - before > 1:
        middle = (before + after) // 2
        if local_date(low + timedelta(seconds=middle), tz) >= day:
            after = middle
        else:
            before = middle
    return low + timedelta(seconds=after)


def utc_bounds(period: Period, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC instants ``[start, end)`` of the local midnights that bound the period.

    An instant ``t`` lies in the period exactly when ``start <= t < end``, so a
    database query can select by instant what ``local_date`` selects by day.
    """
    return _start_of_day(period.start, tz), _start_of_day(period.end, tz)

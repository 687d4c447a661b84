"""The report schedule: which periods are due, as a pure function of the time.

Defaults (CONTRACT section 6, issue 3): the daily report for the previous
local day once local time is past midnight plus ``daily_report_after_minutes``;
the weekly report for the previous ISO week from ``weekly_report_weekday``
(Monday) on. A period is due when it is complete; the caller generates those
whose report does not exist yet, so a node that was switched off catches up
on missed periods (back to ``since``, the node's first start, and at most
``catch_up`` periods of each type) at its next check.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from shared.periods import Period, PeriodType, period_containing, previous_period, utc_bounds


def _recent(last: Period, since: datetime | None, catch_up: int, tz: ZoneInfo) -> list[Period]:
    """``last``, always, and up to ``catch_up - 1`` periods before it that ended
    after ``since``: missed while the node was off, not before it existed. The
    latest period is due even on a new node, whose tablets may bring records
    gathered offline before it was installed."""
    periods = [last]
    while since is not None and len(periods) < catch_up:
        earlier = previous_period(periods[-1].start, periods[-1].type)
        if utc_bounds(earlier, tz)[1] <= since:
            break
        periods.append(earlier)
    return periods[::-1]


def due_periods(
    now: datetime,
    tz: ZoneInfo,
    daily_after_minutes: int,
    weekly_weekday: int,
    since: datetime | None = None,
    catch_up: int = 1,
) -> list[Period]:
    """Complete periods due for a report, oldest first (dailies, then weeklies)."""
    today = now.astimezone(tz).date()
    # Minutes since local midnight, from the UTC instant of midnight: right on
    # days whose clocks change.
    midnight = utc_bounds(period_containing(today, PeriodType.DAILY), tz)[0]
    if now - midnight < timedelta(minutes=daily_after_minutes):
        return []
    due = _recent(previous_period(today, PeriodType.DAILY), since, catch_up, tz)
    if today.weekday() >= weekly_weekday:
        due += _recent(previous_period(today, PeriodType.WEEKLY), since, catch_up, tz)
    return due

"""The report schedule: which periods are due, as a pure function of the time.

Defaults (CONTRACT section 6, issue 3): the daily report for the previous
local day once local time is past midnight plus ``daily_report_after_minutes``;
the weekly report for the previous ISO week from ``weekly_report_weekday``
(Monday) on. A node that was off at those moments catches up on the next
check, because a due period is simply one whose report does not exist yet.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from shared.periods import Period, PeriodType, previous_period


def due_periods(
    now: datetime, tz: ZoneInfo, daily_after_minutes: int, weekly_weekday: int
) -> list[Period]:
    local = now.astimezone(tz)
    today = local.date()
    due: list[Period] = []
    if local - local.replace(hour=0, minute=0, second=0, microsecond=0) >= timedelta(
        minutes=daily_after_minutes
    ):
        due.append(previous_period(today, PeriodType.DAILY))
    # Days since this ISO week began; the weekly report waits for the chosen weekday.
    if today.weekday() >= weekly_weekday and due:
        due.append(previous_period(today, PeriodType.WEEKLY))
    return due

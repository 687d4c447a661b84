"""The pure core of key rotation (shared.node_keys): literal tables."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from shared.errors import KeyRetired, KeyRevoked, ValidationFailed
from shared.node_keys import (
    MAX_OVERLAP_SECONDS,
    KeyStatus,
    NodeKey,
    key_id_for,
    overlap_seconds,
    retire,
    revoke,
    signs_report,
)
from shared.values import is_identifier

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def key(status: KeyStatus, retires_at: str | None = None) -> NodeKey:
    return NodeKey(
        "edge-01", "edge-01", b"\x01" * 32, status, "2026-11-01T00:00:00.000Z", retires_at
    )


RETIRING = key(KeyStatus.RETIRING, "2026-11-25T13:00:00.000Z")  # window ends at T0 + 1 h


@pytest.mark.parametrize(
    ("stored", "at", "status", "refusal"),
    [
        (key(KeyStatus.ACTIVE), T0, KeyStatus.ACTIVE, None),
        (RETIRING, T0, KeyStatus.RETIRING, None),  # inside the window: accepted
        (RETIRING, T0 + HOUR - timedelta(milliseconds=1), KeyStatus.RETIRING, None),  # last ms
        (RETIRING, T0 + HOUR, KeyStatus.RETIRED, KeyRetired),  # the window's end is excluded
        (key(KeyStatus.RETIRED, "2026-11-25T12:00:00.000Z"), T0, KeyStatus.RETIRED, KeyRetired),
        (key(KeyStatus.REVOKED), T0, KeyStatus.REVOKED, KeyRevoked),
    ],
)
def test_status_at_and_the_answer(
    stored: NodeKey, at: datetime, status: KeyStatus, refusal: type[Exception] | None
) -> None:
    assert stored.status_at(at) is status
    answer = stored.refusal(at)
    assert (None if answer is None else type(answer)) is refusal


def test_a_window_only_shrinks_and_refusal_is_final() -> None:
    opened = retire(key(KeyStatus.ACTIVE), T0, 3600)
    assert (opened.status, opened.retires_at) == (KeyStatus.RETIRING, "2026-11-25T13:00:00.000Z")
    assert retire(opened, T0, 7200) == opened  # a longer window: the earlier end stays
    shorter = retire(opened, T0, 60)
    assert shorter.retires_at == "2026-11-25T12:01:00.000Z"  # a shorter one is taken
    now = retire(opened, T0, 0)
    assert (now.status, now.retires_at) == (KeyStatus.RETIRED, "2026-11-25T12:00:00.000Z")
    assert retire(now, T0, 3600) == now  # retired stays retired
    revoked = revoke(opened, T0)
    assert (revoked.status, revoked.revoked_at) == (KeyStatus.REVOKED, "2026-11-25T12:00:00.000Z")
    assert revoke(revoked, T0 + HOUR) == revoked  # revoked when it was first revoked
    assert retire(revoked, T0, 0) == revoked


RETIRED_AT_T0 = key(KeyStatus.RETIRED, "2026-11-25T12:00:00.000Z")
DAY = date(2026, 11, 25)  # T0's date


@pytest.mark.parametrize(
    ("stored", "made", "period_start", "refusal"),
    [
        (RETIRING, T0, DAY, None),  # a usable key signs anything
        (RETIRING, T0 + 2 * HOUR, DAY, None),  # usable now (checked at T0), whatever the date
        (RETIRED_AT_T0, T0 - HOUR, DAY, None),  # made before the key retired
        (RETIRED_AT_T0, T0, DAY, KeyRetired),  # made at the end
        # Backdated: a period that began after the key retired, dated before it.
        (RETIRED_AT_T0, T0 - HOUR, date(2026, 11, 27), KeyRetired),
        # Dated before its period began anywhere (25 Nov starts 24 Nov 10:00 UTC at UTC+14):
        (RETIRED_AT_T0, T0 - 27 * HOUR, DAY, KeyRetired),  # 24 Nov 09:00 UTC: backdated
        (RETIRED_AT_T0, T0 - 26 * HOUR, DAY, None),  # 24 Nov 10:00 UTC: 25 Nov at UTC+14
        (key(KeyStatus.REVOKED), T0 - 24 * HOUR, DAY, KeyRevoked),  # a revoked key signs nothing
    ],
)
def test_which_reports_a_key_signs(
    stored: NodeKey, made: datetime, period_start: date, refusal: type[Exception] | None
) -> None:
    answer = signs_report(stored, made, period_start, T0)
    assert (None if answer is None else type(answer)) is refusal


def test_key_ids_and_windows() -> None:
    public = b"\x02" * 32
    assert key_id_for("edge-01", public) == "edge-01.75877bb41d393b5f"  # sha256(02 * 32)[:16]
    longest = key_id_for("n" * 128, public)
    assert len(longest) == 128 and is_identifier(longest)  # the node id is cut, fp kept
    assert overlap_seconds(0) == 0 and overlap_seconds(MAX_OVERLAP_SECONDS) == MAX_OVERLAP_SECONDS
    for bad in (-1, MAX_OVERLAP_SECONDS + 1, True, 1.5, "60"):
        with pytest.raises(ValidationFailed):
            overlap_seconds(bad)

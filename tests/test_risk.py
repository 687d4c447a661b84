"""The risk points model and override resolution (shared.risk, docs/risk.md)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaries import patient_ref as canary_ref
from shared.errors import ValidationFailed
from shared.registry import Condition, RegistryEntry, Sex, parse_registry_entry
from shared.risk import (
    AGE_BANDS,
    CONDITION_GROUPS,
    IMMUNIZATION_POINTS,
    LONG_STANDING_POINTS,
    MODEL_VERSION,
    MULTIMORBIDITY_POINTS,
    SCREENING_POINTS,
    Band,
    ComputedRisk,
    OverrideDisposition,
    RiskOverride,
    Source,
    audit_record,
    band_for,
    compute_risk,
    effective_risk,
    parse_risk_override,
    resolve_override,
)

TODAY = date(2026, 11, 25)
RECENT = date(2026, 10, 1)  # screened / immunized 55 days before TODAY: not overdue


def entry(
    birth: str = "1996-06-15",  # age 30 on TODAY: no age points
    conditions: tuple[tuple[str, str | None], ...] = (),
    screening: date | None = RECENT,
    immunization: date | None = RECENT,
) -> RegistryEntry:
    return RegistryEntry(
        id="e-1",
        facility_id="fac-1",
        patient_ref=canary_ref(1),
        sex=Sex.FEMALE,
        birth_date=date.fromisoformat(birth),
        conditions=tuple(
            Condition(code, None if onset is None else date.fromisoformat(onset))
            for code, onset in conditions
        ),
        last_screening_date=screening,
        last_immunization_date=immunization,
    )


def factors_of(risk: ComputedRisk) -> list[tuple[str, int]]:
    return [(f.name, f.points) for f in risk.factors]


# --------------------------------------------------------------------------
# The points model

# (case, entry, expected score, expected factors (name, points))
MODEL_CASES: list[tuple[str, RegistryEntry, int, list[tuple[str, int]]]] = [
    ("baseline", entry(), 0, []),  # age 30, screened and immunized recently: nothing
    # Age bands, on TODAY.
    ("age 0", entry("2026-11-25"), 10, [("age_under_5", 10)]),  # born today: age 0
    ("age 4", entry("2021-11-26"), 10, [("age_under_5", 10)]),  # 5th birthday tomorrow
    ("age 5", entry("2021-11-25"), 0, []),  # 5th birthday today: out of under-5
    ("age 39", entry("1986-11-26"), 0, []),  # 40th birthday tomorrow
    ("age 40", entry("1986-11-25"), 5, [("age_40_49", 5)]),  # 40th birthday today
    ("age 49", entry("1976-11-26"), 5, [("age_40_49", 5)]),
    ("age 50", entry("1976-11-25"), 10, [("age_50_59", 10)]),
    ("age 59", entry("1966-11-26"), 10, [("age_50_59", 10)]),
    ("age 60", entry("1966-11-25"), 15, [("age_60_69", 15)]),
    ("age 69", entry("1956-11-26"), 15, [("age_60_69", 15)]),
    ("age 70", entry("1956-11-25"), 20, [("age_70_79", 20)]),
    ("age 79", entry("1946-11-26"), 20, [("age_70_79", 20)]),
    ("age 80", entry("1946-11-25"), 25, [("age_80_plus", 25)]),
    ("age 104", entry("1922-01-01"), 25, [("age_80_plus", 25)]),  # no upper bound
    ("born tomorrow", entry("2026-11-26"), 0, []),  # bad data: no age points
    # Condition groups: each scores once; the category is the code before its ".".
    ("diabetes E10", entry(conditions=(("E10", None),)), 15, [("diabetes", 15)]),
    ("diabetes E14.9", entry(conditions=(("E14.9", None),)), 15, [("diabetes", 15)]),
    (
        "diabetes twice",  # E11 and E11.9 and E13: still one group, 15 once
        entry(conditions=(("E11", None), ("E11.9", None), ("E13", None))),
        15,
        [("diabetes", 15)],
    ),
    ("E09 not diabetes", entry(conditions=(("E09", None),)), 0, []),  # below E10
    ("E15 not diabetes", entry(conditions=(("E15", None),)), 0, []),  # above E14
    ("E119 undotted", entry(conditions=(("E119", None),)), 0, []),  # category must be E11
    ("programme code", entry(conditions=(("HTN", None),)), 0, []),  # not ICD-10
    ("hypertension I10", entry(conditions=(("I10", None),)), 10, [("hypertension", 10)]),
    ("hypertension I15.0", entry(conditions=(("I15.0", None),)), 10, [("hypertension", 10)]),
    ("I16 not hypertension", entry(conditions=(("I16", None),)), 0, []),
    ("IHD I20", entry(conditions=(("I20", None),)), 10, [("ischaemic_heart_disease", 10)]),
    ("IHD I25.1", entry(conditions=(("I25.1", None),)), 10, [("ischaemic_heart_disease", 10)]),
    ("heart failure I50.9", entry(conditions=(("I50.9", None),)), 15, [("heart_failure", 15)]),
    ("stroke I63", entry(conditions=(("I63", None),)), 10, [("stroke", 10)]),
    ("stroke I69.3", entry(conditions=(("I69.3", None),)), 10, [("stroke", 10)]),
    ("CKD N18.3", entry(conditions=(("N18.3", None),)), 15, [("ckd", 15)]),
    ("N17 not CKD", entry(conditions=(("N17", None),)), 0, []),  # acute kidney failure
    ("COPD J44.1", entry(conditions=(("J44.1", None),)), 10, [("copd", 10)]),
    ("asthma J45", entry(conditions=(("J45", None),)), 5, [("asthma", 5)]),
    ("HIV B20", entry(conditions=(("B20", None),)), 15, [("hiv", 15)]),
    ("HIV B24", entry(conditions=(("B24", None),)), 15, [("hiv", 15)]),
    ("B25 not HIV", entry(conditions=(("B25", None),)), 0, []),
    ("TB A15.0", entry(conditions=(("A15.0", None),)), 20, [("tuberculosis", 20)]),
    ("TB A19", entry(conditions=(("A19", None),)), 20, [("tuberculosis", 20)]),
    ("A20 not TB", entry(conditions=(("A20", None),)), 0, []),
    (
        "two groups",  # 15 + 10, below the multimorbidity threshold of 3
        entry(conditions=(("E11", None), ("I10", None))),
        25,
        [("diabetes", 15), ("hypertension", 10)],
    ),
    (
        "three groups",  # 15 + 10 + 15 + multimorbidity 10; factors in table order
        entry(conditions=(("N18", None), ("I10", None), ("E11", None))),
        50,
        [("diabetes", 15), ("hypertension", 10), ("ckd", 15), ("multimorbidity", 10)],
    ),
    # Long-standing: a scored condition 10 or more completed years since onset.
    (
        "onset 10 years ago today",  # 10th anniversary today: long-standing
        entry(conditions=(("E11", "2016-11-25"),)),
        25,
        [("diabetes", 15), ("long_standing_condition", 10)],
    ),
    (
        "onset 10 years ago tomorrow",  # 9 completed years: not yet
        entry(conditions=(("E11", "2016-11-26"),)),
        15,
        [("diabetes", 15)],
    ),
    (
        "old onset, unscored code",  # Z codes are in no group: no long-standing points
        entry(conditions=(("Z72.0", "1990-01-01"),)),
        0,
        [],
    ),
    (
        "two old onsets",  # counted once, however many
        entry(conditions=(("E11", "2000-01-01"), ("I10", "1999-05-05"))),
        35,
        [("diabetes", 15), ("hypertension", 10), ("long_standing_condition", 10)],
    ),
    (
        "onset unknown",  # no onset date: cannot be long-standing
        entry(conditions=(("E11", None),)),
        15,
        [("diabetes", 15)],
    ),
    # Screening: none on record, or more than 365 days before TODAY.
    ("never screened", entry(screening=None), 10, [("screening_overdue", 10)]),
    ("screened 365 days ago", entry(screening=date(2025, 11, 25)), 0, []),  # not overdue yet
    (
        "screened 366 days ago",
        entry(screening=date(2025, 11, 24)),
        10,
        [("screening_overdue", 10)],
    ),
    ("screened today", entry(screening=TODAY), 0, []),
    # Immunization: the same rule, 5 points.
    ("never immunized", entry(immunization=None), 5, [("immunization_overdue", 5)]),
    ("immunized 365 days ago", entry(immunization=date(2025, 11, 25)), 0, []),
    (
        "immunized 366 days ago",
        entry(immunization=date(2025, 11, 24)),
        5,
        [("immunization_overdue", 5)],
    ),
    # Bands through the model.
    (
        "medium at 25",  # age 70 (20) + immunization (5) = 25: medium
        entry("1956-11-25", immunization=None),
        25,
        [("age_70_79", 20), ("immunization_overdue", 5)],
    ),
    (
        "typical high",  # 67, diabetic and hypertensive, never screened: 15+15+10+10 = 50
        entry("1959-03-02", conditions=(("E11.9", None), ("I10", None)), screening=None),
        50,
        [("age_60_69", 15), ("diabetes", 15), ("hypertension", 10), ("screening_overdue", 10)],
    ),
    (
        "capped",  # 25 + 15+10+15+15+20 + 10 + 10 + 10 + 5 = 135, cut to 100 by cap -35
        entry(
            "1940-01-01",
            conditions=(
                ("E11", "1990-01-01"),
                ("I10", None),
                ("N18", None),
                ("B20", None),
                ("A15", None),
            ),
            screening=None,
            immunization=None,
        ),
        100,
        [
            ("age_80_plus", 25),
            ("diabetes", 15),
            ("hypertension", 10),
            ("ckd", 15),
            ("hiv", 15),
            ("tuberculosis", 20),
            ("multimorbidity", 10),
            ("long_standing_condition", 10),
            ("screening_overdue", 10),
            ("immunization_overdue", 5),
            ("cap", -35),
        ],
    ),
]


@pytest.mark.parametrize(
    ("case", "registry_entry", "score", "factors"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES]
)
def test_model(
    case: str, registry_entry: RegistryEntry, score: int, factors: list[tuple[str, int]]
) -> None:
    risk = compute_risk(registry_entry, TODAY)
    assert factors_of(risk) == factors
    assert risk.score == score
    assert sum(points for _, points in factors) == score  # factors explain the score
    assert risk.band is band_for(score)
    assert risk.model_version == MODEL_VERSION


# (birth date, day, expected age factor): 29 February birthdays count from 1 March
# in common years and on 29 February in leap years.
LEAP_CASES = [
    ("1956-02-29", "2026-02-28", ("age_60_69", 15)),  # still 69 the day before 1 March
    ("1956-02-29", "2026-03-01", ("age_70_79", 20)),  # 70 on 1 March of a common year
    ("1964-02-28", "2024-02-28", ("age_60_69", 15)),  # ordinary birthday: 60 today
    ("1964-02-29", "2024-02-28", ("age_50_59", 10)),  # leap year: 59 on the 28th
    ("1964-02-29", "2024-02-29", ("age_60_69", 15)),  # 60 on the 29th
]


@pytest.mark.parametrize(("birth", "day", "factor"), LEAP_CASES)
def test_leap_day_birthdays(birth: str, day: str, factor: tuple[str, int]) -> None:
    today = date.fromisoformat(day)
    risk = compute_risk(entry(birth, screening=today, immunization=today), today)
    assert factors_of(risk) == [factor]


# (score, band): low 0-24, medium 25-49, high 50-100
BAND_CASES = [
    (0, Band.LOW),
    (24, Band.LOW),  # last low
    (25, Band.MEDIUM),  # first medium
    (49, Band.MEDIUM),  # last medium
    (50, Band.HIGH),  # first high
    (100, Band.HIGH),
]


@pytest.mark.parametrize(("score", "band"), BAND_CASES)
def test_bands(score: int, band: Band) -> None:
    assert band_for(score) is band


def test_factor_reasons_explain() -> None:
    risk = compute_risk(
        entry(
            "1959-03-02",
            conditions=(("E11.9", "2010-04-01"), ("E11", None)),
            screening=date(2024, 1, 10),
            immunization=None,
        ),
        TODAY,
    )
    reasons = {f.name: f.reason for f in risk.factors}
    assert reasons == {
        "age_60_69": "age 67 on 2026-11-25",
        "diabetes": "diabetes mellitus (E11, E11.9)",
        "long_standing_condition": "E11.9 since 2010-04-01 (16 years)",
        "screening_overdue": "last screening 2024-01-10, 1050 days ago (more than 365)",
        "immunization_overdue": "no immunization on record",
    }
    assert risk.to_wire()["factors"][0] == {
        "name": "age_60_69",
        "points": 15,
        "reason": "age 67 on 2026-11-25",
    }


def test_model_reads_the_parsed_registry_entry() -> None:
    parsed = parse_registry_entry(
        {
            "id": "e-9",
            "facilityId": "fac-1",
            "patientRef": canary_ref(9),
            "sex": "male",
            "birthDate": "1950-01-01",
            "conditions": [{"code": "e11.9", "onset": "2001-02-03"}, {"code": "j44"}],
        }
    )
    # 76: 20; diabetes (code upper-cased by the parser) 15; COPD 10; onset 25 years
    # ago 10; never screened 10; never immunized 5.
    assert compute_risk(parsed, TODAY).score == 70


dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31))
codes = st.sampled_from(
    ["E11", "E11.9", "I10", "I50", "N18.3", "J44", "J45", "B20", "A15", "Z72", "HTN", "E119"]
)


@settings(max_examples=300, deadline=None)
@given(
    birth=dates,
    today=dates,
    conditions=st.lists(st.tuples(codes, st.none() | dates), max_size=8),
    screening=st.none() | dates,
    immunization=st.none() | dates,
)
def test_model_invariants(
    birth: date,
    today: date,
    conditions: list[tuple[str, date | None]],
    screening: date | None,
    immunization: date | None,
) -> None:
    e = RegistryEntry(
        "e",
        "f",
        "p",
        Sex.UNKNOWN,
        birth,
        tuple(Condition(c, o) for c, o in conditions),
        screening,
        immunization,
    )
    risk = compute_risk(e, today)
    assert 0 <= risk.score <= 100
    assert sum(f.points for f in risk.factors) == risk.score
    assert risk.band is band_for(risk.score)
    assert len({f.name for f in risk.factors}) == len(risk.factors)  # each factor once


# --------------------------------------------------------------------------
# Overrides: the wire form

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def wire(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "risk_score.override",
        "id": "ov-1",
        "entryId": "e-1",
        "value": 80,
        "reason": "recent hospital admission",
        "actorId": "admin-7",
        "occurredAt": "2026-11-25T09:00:00.000Z",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def test_parse_override() -> None:
    o = parse_risk_override(wire(), node_id="edge-3")
    assert o == RiskOverride(
        "ov-1", "e-1", 80, "recent hospital admission", "admin-7", "edge-3", T0
    )
    assert parse_risk_override(wire()).node_id is None  # an admin token: no node
    back = o.to_wire()
    assert back["nodeId"] == "edge-3"
    assert back["occurredAt"] == "2026-11-25T09:00:00.000Z"


# (changes to the valid document, expected: the value parsed, or the refused field)
PARSE_CASES: list[tuple[dict[str, Any], Any]] = [
    ({"value": None}, None),  # null clears
    ({"value": 0}, 0),  # lowest score
    ({"value": 100}, 100),  # highest score
    ({"kind": ...}, 80),  # kind may be left out (direct endpoint)
    ({"reason": "x"}, 80),  # one character is enough
    ({"reason": "x" * 500}, 80),  # 500 is the most
    ({"value": ...}, "/value"),  # missing: never clears by accident
    ({"value": 101}, "/value"),  # above 100
    ({"value": -1}, "/value"),  # below 0
    ({"value": True}, "/value"),  # JSON true is not a number
    ({"value": 50.0}, "/value"),  # not an integer
    ({"value": "50"}, "/value"),  # a string
    ({"reason": ""}, "/reason"),  # empty
    ({"reason": "   "}, "/reason"),  # blank
    ({"reason": "x" * 501}, "/reason"),  # too long
    ({"reason": None}, "/reason"),  # not a string
    ({"reason": ...}, "/reason"),  # missing
    ({"id": "has space"}, "/id"),  # not an identifier
    ({"entryId": ""}, "/entryId"),  # empty identifier
    ({"actorId": "x" * 129}, "/actorId"),  # identifier too long
    ({"occurredAt": "2026-11-25 09:00:00"}, "/occurredAt"),  # not RFC 3339 with Z
    ({"kind": "outreach.transition"}, "/kind"),  # another kind
    ({"extra": 1}, ""),  # unknown field: the item itself
]


@pytest.mark.parametrize(("changes", "expected"), PARSE_CASES)
def test_parse_cases(changes: dict[str, Any], expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(ValidationFailed) as info:
            parse_risk_override(wire(**changes), where="/items/3")
        assert info.value.extra["path"] == "/items/3" + expected
    else:
        assert parse_risk_override(wire(**changes)).value == expected


def test_parse_refusal_without_where_names_field() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_risk_override(wire(value=101))
    assert info.value.extra["path"] == "/value"
    with pytest.raises(ValidationFailed):
        parse_risk_override(["not", "an", "object"])


# --------------------------------------------------------------------------
# Overrides: resolution


def ov(
    id_: str, at: datetime, value: int | None = 50, entry_id: str = "e-1", actor: str = "admin-7"
) -> RiskOverride:
    return RiskOverride(id_, entry_id, value, f"reason {id_}", actor, None, at)


MS = timedelta(milliseconds=1)
US = timedelta(microseconds=1)

# (current, incoming, expected disposition, expected winner id)
RESOLVE_CASES: list[tuple[RiskOverride | None, RiskOverride, OverrideDisposition, str]] = [
    (None, ov("a", T0), OverrideDisposition.APPLIED, "a"),  # first override
    (ov("a", T0), ov("b", T0 + MS), OverrideDisposition.APPLIED, "b"),  # 1 ms later wins
    (ov("b", T0 + MS), ov("a", T0), OverrideDisposition.SUPERSEDED, "b"),  # arrives late, older
    (ov("a", T0), ov("b", T0), OverrideDisposition.APPLIED, "b"),  # same time: "b" > "a"
    (ov("b", T0), ov("a", T0), OverrideDisposition.SUPERSEDED, "b"),  # same time: "a" < "b"
    # Microseconds are below the wire's precision: T0 + 900 µs ties with T0, id decides.
    (ov("b", T0), ov("a", T0 + 900 * US), OverrideDisposition.SUPERSEDED, "b"),
    (ov("a", T0 + 900 * US), ov("b", T0), OverrideDisposition.APPLIED, "b"),
    (ov("a", T0), ov("a", T0), OverrideDisposition.DUPLICATE, "a"),  # re-sent winner
    (ov("a", T0), ov("a", T0 + MS, 99), OverrideDisposition.DUPLICATE, "a"),  # same id: first
    (ov("a", T0, 80), ov("b", T0 + MS, None), OverrideDisposition.APPLIED, "b"),  # later clear
    (ov("b", T0 + MS, None), ov("a", T0, 80), OverrideDisposition.SUPERSEDED, "b"),  # stale set
]


@pytest.mark.parametrize(("current", "incoming", "disposition", "winner"), RESOLVE_CASES)
def test_resolve(
    current: RiskOverride | None,
    incoming: RiskOverride,
    disposition: OverrideDisposition,
    winner: str,
) -> None:
    r = resolve_override(current, incoming)
    assert r.disposition is disposition
    assert r.winner is not None and r.winner.id == winner
    assert r.previous == current
    assert r.incoming == incoming
    assert r.changed is (disposition is OverrideDisposition.APPLIED)
    assert r.old_value == (None if current is None else current.value)
    assert r.new_value == r.winner.value


def test_duplicate_of_a_loser_via_seen() -> None:
    # "a" lost earlier (superseded); re-sent, the audit trail's record makes it a duplicate.
    r = resolve_override(ov("b", T0 + MS), ov("a", T0), seen=OverrideDisposition.SUPERSEDED)
    assert r.disposition is OverrideDisposition.DUPLICATE
    assert r.recorded is OverrideDisposition.SUPERSEDED
    assert r.winner is not None and r.winner.id == "b"
    # Re-sending the winner itself: recorded as applied.
    r = resolve_override(ov("b", T0 + MS), ov("b", T0 + MS))
    assert r.recorded is OverrideDisposition.APPLIED
    # A re-sent attempt that was rejected before any override existed: nothing in force.
    r = resolve_override(None, ov("a", T0), seen=OverrideDisposition.REJECTED)
    assert r.disposition is OverrideDisposition.DUPLICATE
    assert r.winner is None and r.new_value is None


def test_future_occurred_at_is_clamped() -> None:
    now = T0
    far = ov("z", T0 + timedelta(days=365), 90)
    r = resolve_override(ov("a", T0 - MS), far, now=now)
    assert r.disposition is OverrideDisposition.APPLIED
    assert r.clock_adjusted is True
    assert r.winner is not None and r.winner.occurred_at == now  # clamped, so it can lose later
    assert resolve_override(r.winner, ov("b", now + MS)).disposition is OverrideDisposition.APPLIED
    # Within tolerance (5 minutes): kept as sent.
    near = ov("y", T0 + timedelta(minutes=5))
    assert resolve_override(None, near, now=now).clock_adjusted is False


def test_other_entry_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        resolve_override(ov("a", T0), ov("b", T0 + MS, entry_id="e-2"))


# Overrides with ids from a small alphabet and times on a few milliseconds, with
# sub-millisecond noise, so ties (broken by id) and precision both come up.
override_rows = st.lists(
    st.tuples(
        st.integers(0, 5),  # millisecond
        st.integers(0, 999),  # microseconds within it: ignored by LWW
        st.none() | st.integers(0, 100),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), rows=override_rows)
def test_lww_any_arrival_order(
    data: st.DataObject, rows: list[tuple[int, int, int | None]]
) -> None:
    overrides = [
        ov(f"ov-{n:02d}", T0 + ms * MS + us * US, value) for n, (ms, us, value) in enumerate(rows)
    ]
    # The winner: latest millisecond, then greatest id (ids are "ov-NN", so n orders them).
    expected = overrides[max(range(len(rows)), key=lambda n: (rows[n][0], n))]
    order = data.draw(st.permutations(overrides))
    # Some attempts are re-sent (retries): they must change nothing.
    resend = data.draw(st.lists(st.sampled_from(overrides), max_size=4))
    current: RiskOverride | None = None
    seen: dict[str, OverrideDisposition] = {}
    for attempt in [*order, *resend]:
        r = resolve_override(current, attempt, seen=seen.get(attempt.id))
        if attempt.id in seen:
            assert r.disposition is OverrideDisposition.DUPLICATE
            assert r.recorded is seen[attempt.id]
        else:
            seen[attempt.id] = r.disposition
        if r.changed:
            assert current is None or attempt.lww_key() > current.lww_key()
        current = r.winner
    assert current == expected
    applied = [i for i, d in seen.items() if d is OverrideDisposition.APPLIED]
    assert expected.id in applied  # the winner was applied when it arrived


# --------------------------------------------------------------------------
# Effective score and the audit trail

COMPUTED = compute_risk(entry("1959-03-02", conditions=(("E11", None), ("I10", None))), TODAY)


def test_effective_without_override() -> None:
    assert COMPUTED.score == 40  # 67 (15) + diabetes (15) + hypertension (10)
    shown = effective_risk(COMPUTED, None)
    assert shown == {
        "score": 40,
        "band": "medium",
        "source": "computed",
        "computed": COMPUTED.to_wire(),
        "override": None,
    }


def test_effective_with_override_and_after_clearing() -> None:
    o = RiskOverride("ov-1", "e-1", 80, "admitted last week", "admin-7", "edge-3", T0)
    shown = effective_risk(COMPUTED, o)
    assert (shown["score"], shown["band"], shown["source"]) == (80, "high", "override")
    assert shown["computed"]["score"] == 40  # the model's answer is still shown
    assert shown["override"] == {
        "id": "ov-1",
        "entryId": "e-1",
        "value": 80,
        "reason": "admitted last week",
        "actorId": "admin-7",
        "nodeId": "edge-3",
        "occurredAt": "2026-11-25T09:00:00.000Z",
    }
    cleared = RiskOverride("ov-2", "e-1", None, "discharged", "admin-7", None, T0 + MS)
    shown = effective_risk(COMPUTED, cleared)
    # Back to the computed score; the clear itself is shown (who, when, why).
    assert (shown["score"], shown["band"], shown["source"]) == (40, "medium", "computed")
    assert shown["override"]["value"] is None
    assert shown["override"]["reason"] == "discharged"


def test_audit_trail_out_of_order() -> None:
    """Every attempt gets a row: old and new effective score, winning or not."""
    attempts = [
        ov("b", T0 + 2 * MS, 80, actor="admin-1"),  # arrives first
        ov("a", T0 + 1 * MS, 10, actor="admin-2"),  # older, arrives late
        ov("c", T0 + 3 * MS, None, actor="admin-1"),  # clear
        ov("c", T0 + 3 * MS, None, actor="admin-1"),  # retry of the clear
        ov("d", T0 + 4 * MS, 0),  # an override to 0 is a value, not a clear
    ]
    current: RiskOverride | None = None
    seen: dict[str, OverrideDisposition] = {}
    rows = []
    for attempt in attempts:
        r = resolve_override(current, attempt, seen=seen.get(attempt.id))
        seen.setdefault(attempt.id, r.disposition)
        rows.append(audit_record(r, COMPUTED))
        current = r.winner
    table = [
        (a.override_id, a.actor_id, a.requested_value, a.disposition.value, a.old_score,
         a.old_source, a.new_score, a.new_source)
        for a in rows
    ]  # fmt: skip
    assert table == [
        ("b", "admin-1", 80, "applied", 40, Source.COMPUTED, 80, Source.OVERRIDE),  # 40 -> 80
        ("a", "admin-2", 10, "superseded", 80, Source.OVERRIDE, 80, Source.OVERRIDE),  # lost
        ("c", "admin-1", None, "applied", 80, Source.OVERRIDE, 40, Source.COMPUTED),  # cleared
        ("c", "admin-1", None, "duplicate", 40, Source.COMPUTED, 40, Source.COMPUTED),  # retry
        ("d", "admin-7", 0, "applied", 40, Source.COMPUTED, 0, Source.OVERRIDE),  # set to 0
    ]
    assert rows[1].to_wire() == {
        "overrideId": "a",
        "entryId": "e-1",
        "actorId": "admin-2",
        "nodeId": None,
        "occurredAt": "2026-11-25T09:00:00.001Z",
        "reason": "reason a",
        "requestedValue": 10,
        "disposition": "superseded",
        "old": {"score": 80, "source": "override"},
        "new": {"score": 80, "source": "override"},
    }


def test_docs_list_every_factor_and_weight() -> None:
    """docs/risk.md's factor table states the weights the code uses."""
    doc = (Path(__file__).parent.parent / "docs" / "risk.md").read_text(encoding="utf-8")
    documented = {
        name: int(points) for name, points in re.findall(r"^\| `(\w+)` \| (\d+) \|", doc, re.M)
    }
    assert documented == {
        **{b.name: b.points for b in AGE_BANDS},
        **{g.name: g.points for g in CONDITION_GROUPS},
        "multimorbidity": MULTIMORBIDITY_POINTS,
        "long_standing_condition": LONG_STANDING_POINTS,
        "screening_overdue": SCREENING_POINTS,
        "immunization_overdue": IMMUNIZATION_POINTS,
    }
    assert f"(`{MODEL_VERSION}`)" in doc
    for group in CONDITION_GROUPS:  # the code ranges as written in the table
        assert group.codes.replace("-", "–") in doc

"""De-identified registry extracts: generalisation, k-anonymity, release or block."""

from __future__ import annotations

import json
import random
from datetime import date
from typing import Any

import pytest

from canaries import patient_ref
from shared.deident import (
    DEFAULT_K,
    DEFAULT_MAX_SUPPRESSED_SHARE,
    BlockReason,
    DeidentStatus,
    age_band,
    condition_group,
    deidentify,
    generalise_entry,
    identifier_reasons,
    suppress_small_cells,
)
from shared.errors import ValidationFailed
from shared.registry import Condition, RegistryEntry, Sex

AS_OF = date(2026, 11, 25)
DISTRICTS = {"f-001": "north", "f-002": "north", "f-003": "south"}


def entry(
    n: int,
    birth: date,
    sex: Sex,
    facility: str,
    conditions: tuple[Condition, ...] = (),
    screened: date | None = None,
) -> RegistryEntry:
    # Canary identifiers: none of these strings may ever reach an extract.
    return RegistryEntry(
        id=f"canary-id-{n:04d}",
        facility_id=facility,
        patient_ref=patient_ref(f"{n:04d}"),
        sex=sex,
        birth_date=birth,
        conditions=conditions,
        last_screening_date=screened,
    )


def passing_registry() -> list[RegistryEntry]:
    """20 entries in 4 classes of (ageBand, sex, district); one class of one."""
    entries = []
    # 6 women aged 39..44 from two facilities of one district: one class (35-44, female, north).
    for i in range(6):
        facility = "f-001" if i % 2 else "f-002"
        conditions = (Condition("E11.9", date(2019, 3, 14)),) if i < 3 else ()
        entries.append(entry(i, date(1982 + i, 2, 1), Sex.FEMALE, facility, conditions))
    # 5 men aged 50..54: exactly k, kept.
    for i in range(5):
        entries.append(
            entry(10 + i, date(1972 + i, 7, 15), Sex.MALE, "f-001", screened=date(2026, 10, i + 1))
        )
    # 8 women aged 75..96 in the south.
    for i in range(8):
        entries.append(entry(20 + i, date(1930 + 3 * i, 1, 1), Sex.FEMALE, "f-003"))
    # 1 boy aged 11 in the south: a class of one, suppressed (1 of 20 = 5%, the maximum).
    entries.append(entry(30, date(2015, 6, 6), Sex.MALE, "f-003", (Condition("J45"),)))
    return entries


def blocked_registry() -> list[RegistryEntry]:
    """The passing registry and 3 more people who are each alone in their class."""
    return [
        *passing_registry(),
        entry(40, date(2005, 1, 1), Sex.MALE, "f-003"),  # 21: 15-24, male, south
        entry(41, date(1995, 1, 1), Sex.OTHER, "f-001"),  # 31: 25-34, other, north
        entry(42, date(1965, 1, 1), Sex.UNKNOWN, "f-003"),  # 61: 55-64, unknown, south
    ]


def canaries(entries: list[RegistryEntry]) -> list[str]:
    return [e.id for e in entries] + [e.patient_ref for e in entries]


def assert_no_canary(result_wire: dict[str, Any], entries: list[RegistryEntry]) -> None:
    text = json.dumps(result_wire)
    assert "canary" not in text.lower()
    for value in canaries(entries):
        assert value not in text
    for e in entries:  # nor the facility or the exact birth date
        assert e.facility_id not in text
        assert e.birth_date.isoformat() not in text


# --- the two datasets ---------------------------------------------------------------


def test_passing_dataset_is_released_with_k_5() -> None:
    entries = passing_registry()
    result = deidentify(entries, DISTRICTS, AS_OF)
    assert result.status is DeidentStatus.RELEASED and result.released
    assert result.k == DEFAULT_K == 5
    assert result.reasons == ()
    assert result.total == 20
    assert result.suppressed == 1  # the boy, alone in (5-14, male, south)
    assert result.suppressed_classes == 1
    assert len(result.rows) == 19  # 6 + 5 + 8
    classes = {(r["ageBand"], r["sex"], r["district"]) for r in result.rows}
    assert classes == {
        ("35-44", "female", "north"),
        ("45-54", "male", "north"),
        ("65+", "female", "south"),
    }
    assert_no_canary(result.to_wire(), entries)


def test_blocked_dataset_lists_its_reasons_and_carries_no_rows() -> None:
    entries = blocked_registry()
    result = deidentify(entries, DISTRICTS, AS_OF)
    assert result.status is DeidentStatus.BLOCKED and not result.released
    assert result.rows == ()  # nothing to download
    assert result.total == 23
    assert result.suppressed == 4  # the boy and the three newcomers
    assert result.suppressed_classes == 4
    assert [r.code for r in result.reasons] == [BlockReason.TOO_MUCH_SUPPRESSED]
    assert result.reasons[0].detail == (
        "4 of 23 rows (17.4%) fall in classes smaller than k=5; at most 5.0% may be suppressed"
    )
    wire = result.to_wire()
    assert wire["status"] == "blocked"
    assert wire["rows"] == [] and wire["released"] == 0
    assert wire["reasons"] == [{"code": "too_much_suppressed", "detail": result.reasons[0].detail}]
    assert_no_canary(wire, entries)


def test_suppressed_share_at_the_maximum_is_released_and_above_it_blocked() -> None:
    entries = passing_registry()  # 1 of 20 suppressed: exactly 5%
    assert DEFAULT_MAX_SUPPRESSED_SHARE == 0.05
    assert deidentify(entries, DISTRICTS, AS_OF).released
    stricter = deidentify(entries, DISTRICTS, AS_OF, max_suppressed_share=0.04)
    assert [r.code for r in stricter.reasons] == [BlockReason.TOO_MUCH_SUPPRESSED]
    lenient = deidentify(blocked_registry(), DISTRICTS, AS_OF, max_suppressed_share=0.2)
    assert lenient.released and lenient.suppressed == 4 and len(lenient.rows) == 19


def test_k_is_configurable() -> None:
    # With k=6 the class of five men is suppressed too: 6 of 20 rows.
    result = deidentify(passing_registry(), DISTRICTS, AS_OF, k=6)
    assert (result.status, result.suppressed, result.suppressed_classes) == (
        DeidentStatus.BLOCKED,
        6,
        2,
    )
    assert result.k == 6
    relaxed = deidentify(passing_registry(), DISTRICTS, AS_OF, k=6, max_suppressed_share=0.3)
    assert relaxed.released and len(relaxed.rows) == 14


def test_fewer_than_k_rows_remaining_blocks() -> None:
    entries = blocked_registry()[-3:]  # three people, each alone
    result = deidentify(entries, DISTRICTS, AS_OF, max_suppressed_share=1.0)
    assert [r.code for r in result.reasons] == [BlockReason.TOO_FEW_ROWS]
    assert result.suppressed == 3 and result.rows == ()


def test_empty_extract_is_blocked() -> None:
    result = deidentify([], DISTRICTS, AS_OF)
    assert result.status is DeidentStatus.BLOCKED
    assert [r.code for r in result.reasons] == [BlockReason.TOO_FEW_ROWS]
    assert (result.total, result.suppressed) == (0, 0)


# --- cohort restriction ---------------------------------------------------------------


def test_cohort_members_restrict_the_extract() -> None:
    entries = passing_registry()
    members = [f"canary-id-{i:04d}" for i in range(6)] + ["canary-id-9999"]  # one not in registry
    result = deidentify(entries, DISTRICTS, AS_OF, member_ids=members)
    assert result.released and result.total == 6 and result.suppressed == 0
    assert {r["ageBand"] for r in result.rows} == {"35-44"}
    assert_no_canary(result.to_wire(), entries)


def test_small_cohort_is_blocked() -> None:
    members = {f"canary-id-{i:04d}" for i in range(4)}
    result = deidentify(passing_registry(), DISTRICTS, AS_OF, member_ids=members)
    assert result.status is DeidentStatus.BLOCKED
    assert {r.code for r in result.reasons} == {
        BlockReason.TOO_MUCH_SUPPRESSED,  # all 4 rows
        BlockReason.TOO_FEW_ROWS,
    }


# --- blocked for data or leaks ------------------------------------------------------------


def test_facility_without_district_blocks_and_names_the_facility() -> None:
    entries = [*passing_registry(), entry(50, date(1980, 1, 1), Sex.FEMALE, "f-999")]
    result = deidentify(entries, DISTRICTS, AS_OF)
    assert [r.code for r in result.reasons] == [BlockReason.FACILITY_WITHOUT_DISTRICT]
    assert "f-999" in result.reasons[0].detail
    assert result.rows == ()


def test_patient_ref_equal_to_an_output_value_blocks_without_naming_it() -> None:
    # A patientRef that happens to equal a condition group: the value would be
    # in the output, so the gate blocks (the safe direction) and does not echo it.
    entries = passing_registry()
    e0 = entries[0]
    entries[0] = RegistryEntry(
        id=e0.id,
        facility_id=e0.facility_id,
        patient_ref="E11",
        sex=e0.sex,
        birth_date=e0.birth_date,
        conditions=e0.conditions,
    )
    result = deidentify(entries, DISTRICTS, AS_OF)
    assert [r.code for r in result.reasons] == [BlockReason.IDENTIFIER_VALUE]
    assert "E11" not in result.reasons[0].detail
    assert result.rows == ()


def test_identifier_gate_catches_fields_and_values() -> None:
    rows: list[dict[str, Any]] = [
        {"ageBand": "0-4", "patientRef": "x"},
        {"ageBand": "0-4", "notes": ["ok", {"nested": "canary-id-0001"}]},
        {"ageBand": "0-4", "district": "north"},
    ]
    reasons = identifier_reasons(rows, {"canary-id-0001", "CANARY-PATIENT-0001"})
    assert [r.code for r in reasons] == [
        BlockReason.DIRECT_IDENTIFIER_FIELD,
        BlockReason.IDENTIFIER_VALUE,
    ]
    assert "patientRef" in reasons[0].detail
    assert reasons[1].detail == "1 row(s) would carry a patient id or patientRef value"
    assert "canary" not in reasons[1].detail.lower()
    # Whole values only: a short reference does not match inside other text.
    assert identifier_reasons([{"district": "north-7"}], {"7"}) == []


# --- generalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (-1, "0-4"),  # birth date after the extract date
        (0, "0-4"),
        (4, "0-4"),
        (5, "5-14"),
        (14, "5-14"),
        (15, "15-24"),
        (24, "15-24"),
        (25, "25-34"),
        (35, "35-44"),
        (45, "45-54"),
        (54, "45-54"),
        (55, "55-64"),
        (64, "55-64"),
        (65, "65+"),
        (117, "65+"),
    ],
)
def test_age_bands(age: int, band: str) -> None:
    assert age_band(age) == band


@pytest.mark.parametrize(
    ("code", "group"),
    [("E11.9", "E11"), ("E11.65", "E11"), ("I10", "I10"), ("e11.9", "E11"), ("HIV-1", "HIV-1")],
)
def test_condition_groups(code: str, group: str) -> None:
    assert condition_group(code) == group


def test_generalised_row_is_exact() -> None:
    e = RegistryEntry(
        id="canary-id-7",
        facility_id="f-002",
        patient_ref=patient_ref(7),
        sex=Sex.FEMALE,
        birth_date=date(1981, 11, 26),  # 44 on AS_OF, 45 the day after
        conditions=(
            Condition("E11.9", date(2019, 3, 14)),
            Condition("I10"),
            Condition("E11.65", date(2018, 7, 1)),  # the earlier onset of E11 wins
            Condition("E11"),
        ),
        last_screening_date=date(2026, 10, 31),
        last_immunization_date=None,
    )
    assert generalise_entry(e, "north", AS_OF) == {
        "ageBand": "35-44",
        "sex": "female",
        "district": "north",
        "conditions": [
            {"group": "E11", "onsetMonth": "2018-07"},
            {"group": "I10", "onsetMonth": None},
        ],
        "lastScreeningMonth": "2026-10",
        "lastImmunizationMonth": None,
    }
    assert generalise_entry(e, "north", date(2026, 11, 26))["ageBand"] == "45-54"


def test_extra_quasi_identifiers_split_classes() -> None:
    # The five men were screened on five different days of October: one month,
    # so adding the screening month keeps their class whole.
    result = deidentify(
        passing_registry(),
        DISTRICTS,
        AS_OF,
        quasi_identifiers=("ageBand", "sex", "district", "lastScreeningMonth"),
        max_suppressed_share=1.0,
    )
    assert result.released and result.suppressed == 1
    # Conditions split the six women 3/3: both halves fall below k.
    by_conditions = deidentify(
        passing_registry(),
        DISTRICTS,
        AS_OF,
        quasi_identifiers=("ageBand", "sex", "district", "conditions"),
    )
    assert by_conditions.suppressed == 7
    assert by_conditions.status is DeidentStatus.BLOCKED
    assert by_conditions.quasi_identifiers == ("ageBand", "sex", "district", "conditions")


def test_suppress_small_cells_counts() -> None:
    rows = [{"a": 1}] * 3 + [{"a": 2}] * 2 + [{"a": 3}]
    cells = suppress_small_cells(rows, ("a",), 3)
    assert (len(cells.kept), cells.suppressed, cells.suppressed_classes) == (3, 3, 2)


def test_rows_do_not_depend_on_registry_order() -> None:
    entries = passing_registry()
    expected = deidentify(entries, DISTRICTS, AS_OF)
    for seed in range(5):
        shuffled = list(entries)
        random.Random(seed).shuffle(shuffled)
        assert deidentify(shuffled, DISTRICTS, AS_OF) == expected


@pytest.mark.parametrize(
    "settings",
    [
        {"k": 1},
        {"k": 0},
        {"k": True},
        {"max_suppressed_share": -0.1},
        {"max_suppressed_share": 1.5},
        {"quasi_identifiers": ()},
        {"quasi_identifiers": ("ageBand", "patientRef")},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed):
        deidentify(passing_registry(), DISTRICTS, AS_OF, **settings)

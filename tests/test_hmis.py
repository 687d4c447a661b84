"""HMIS export: the DHIS2 dataValueSets document of merged facility reports."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime
from typing import Any

import pytest

from shared.errors import ValidationFailed
from shared.hmis import (
    METRIC_PATHS,
    DataElementRef,
    HmisMapping,
    Skip,
    SkipReason,
    data_value_sets,
    dhis2_period,
    hmis_mapping_to_wire,
    is_dhis2_uid,
    parse_hmis_mapping,
)
from shared.periods import parse_period, period_from_key
from shared.reports import FacilityReport, MetricTotals, metrics_from_totals

GENERATED = datetime(2026, 11, 23, 23, 59, tzinfo=UTC)


def report(
    facility: str,
    period_key: str,
    totals: tuple[int, int, int, int, int, int],
    device: str = "edge-01",
) -> FacilityReport:
    return FacilityReport(
        tenant_id="t1",
        facility_id=facility,
        device_id=device,
        period=period_from_key(period_key),
        generated_at=GENERATED,
        metrics=metrics_from_totals(MetricTotals(*totals)),
    )


# Uids from the DHIS2 demo where they exist; the rest made up, of the same shape.
MAPPING_WIRE: dict[str, Any] = {
    "orgUnits": {"f-001": "DiszpKrYNg8", "f-002": "FNnj3jKGS7i"},
    "dataElements": {
        "patientCount": "f7n9E0hX8qk",  # shorthand: data element only
        "encounterCount": {"dataElement": "Ix2HsbDMLea"},
        "screening.due": {"dataElement": "eY5ehpbEsB7", "categoryOptionCombo": "bRowv6yZOF2"},
        "screening.done": {"dataElement": "eY5ehpbEsB7", "categoryOptionCombo": "aBcDeFgHiJ1"},
        "screening.rate": "sCrRate0001",
        "immunization.due": "iMmDue00001",
        "immunization.given": "iMmGiven001",
        # immunization.rate deliberately unmapped
    },
}
MAPPING = parse_hmis_mapping(MAPPING_WIRE)

# (patients, encounters, screening due, done, immunization due, given)
REPORTS = [
    report("f-001", "2026-W47", (41, 57, 20, 15, 12, 9)),  # the CONTRACT §6 example
    report("f-002", "2026-W47", (10, 12, 0, 0, 4, 1)),  # nobody due for screening
    report("f-003", "2026-W47", (3, 3, 1, 1, 0, 0)),  # no orgUnit mapped
]

EXPECTED_DOCUMENT = {
    "dataValues": [
        # f-001 → DiszpKrYNg8, sorted before FNnj3jKGS7i; metrics in METRIC_PATHS order.
        {
            "dataElement": "f7n9E0hX8qk",
            "period": "2026W47",
            "orgUnit": "DiszpKrYNg8",
            "value": "41",
        },
        {
            "dataElement": "Ix2HsbDMLea",
            "period": "2026W47",
            "orgUnit": "DiszpKrYNg8",
            "value": "57",
        },
        {
            "dataElement": "eY5ehpbEsB7",
            "period": "2026W47",
            "orgUnit": "DiszpKrYNg8",
            "categoryOptionCombo": "bRowv6yZOF2",  # screening.due
            "value": "20",
        },
        {
            "dataElement": "eY5ehpbEsB7",
            "period": "2026W47",
            "orgUnit": "DiszpKrYNg8",
            "categoryOptionCombo": "aBcDeFgHiJ1",  # screening.done
            "value": "15",
        },
        # 15/20: the report's 4-decimal rate, printed without trailing zeros
        {
            "dataElement": "sCrRate0001",
            "period": "2026W47",
            "orgUnit": "DiszpKrYNg8",
            "value": "0.75",
        },
        {
            "dataElement": "iMmDue00001",
            "period": "2026W47",
            "orgUnit": "DiszpKrYNg8",
            "value": "12",
        },
        {"dataElement": "iMmGiven001", "period": "2026W47", "orgUnit": "DiszpKrYNg8", "value": "9"},
        # f-002: zero counts are values ("0"); the undefined screening rate is not.
        {
            "dataElement": "f7n9E0hX8qk",
            "period": "2026W47",
            "orgUnit": "FNnj3jKGS7i",
            "value": "10",
        },
        {
            "dataElement": "Ix2HsbDMLea",
            "period": "2026W47",
            "orgUnit": "FNnj3jKGS7i",
            "value": "12",
        },
        {
            "dataElement": "eY5ehpbEsB7",
            "period": "2026W47",
            "orgUnit": "FNnj3jKGS7i",
            "categoryOptionCombo": "bRowv6yZOF2",
            "value": "0",
        },
        {
            "dataElement": "eY5ehpbEsB7",
            "period": "2026W47",
            "orgUnit": "FNnj3jKGS7i",
            "categoryOptionCombo": "aBcDeFgHiJ1",
            "value": "0",
        },
        {"dataElement": "iMmDue00001", "period": "2026W47", "orgUnit": "FNnj3jKGS7i", "value": "4"},
        {"dataElement": "iMmGiven001", "period": "2026W47", "orgUnit": "FNnj3jKGS7i", "value": "1"},
    ]
}

EXPECTED_SKIPPED = [
    # Unmapped metrics first, once each, for every facility.
    {
        "reason": "unmapped_metric",
        "facilityId": None,
        "periodKey": None,
        "metric": "immunization.rate",
        "detail": "no data element is mapped for immunization.rate",
    },
    {
        "reason": "no_value",
        "facilityId": "f-002",
        "periodKey": "2026-W47",
        "metric": "screening.rate",
        "detail": "no patient was due, so the rate is undefined",
    },
    {
        "reason": "unmapped_facility",
        "facilityId": "f-003",
        "periodKey": "2026-W47",
        "metric": None,
        "detail": "no orgUnit is mapped for the facility",
    },
]


def test_known_reports_give_the_exact_document() -> None:
    export = data_value_sets(REPORTS, MAPPING)
    assert export.document == EXPECTED_DOCUMENT
    assert export.skipped_to_wire() == EXPECTED_SKIPPED
    # Key order too: the stored bytes are stable, and read as DHIS2's examples do.
    first = export.document["dataValues"][2]
    assert list(first) == ["dataElement", "period", "orgUnit", "categoryOptionCombo", "value"]


def test_document_is_plain_json_with_string_values() -> None:
    export = data_value_sets(REPORTS, MAPPING)
    assert json.loads(json.dumps(export.document)) == export.document
    assert all(isinstance(v["value"], str) for v in export.document["dataValues"])


def test_order_does_not_depend_on_input_order() -> None:
    reports = [*REPORTS, report("f-001", "2026-11-23", (2, 2, 0, 0, 0, 0))]
    expected = data_value_sets(reports, MAPPING)
    for seed in range(5):
        shuffled = list(reports)
        random.Random(seed).shuffle(shuffled)
        assert data_value_sets(shuffled, MAPPING) == expected


def test_periods_sort_by_start_then_org_unit() -> None:
    reports = [
        report("f-002", "2026-11-23", (1, 1, 0, 0, 0, 0)),  # Monday of W48
        report("f-001", "2026-W47", (1, 1, 0, 0, 0, 0)),  # starts 2026-11-16
        report("f-001", "2026-11-23", (1, 1, 0, 0, 0, 0)),
    ]
    only_counts = parse_hmis_mapping(
        {"orgUnits": MAPPING_WIRE["orgUnits"], "dataElements": {"patientCount": "f7n9E0hX8qk"}}
    )
    cells = [
        (v["period"], v["orgUnit"])
        for v in data_value_sets(reports, only_counts).document["dataValues"]
    ]
    assert cells == [
        ("2026W47", "DiszpKrYNg8"),
        ("20261123", "DiszpKrYNg8"),
        ("20261123", "FNnj3jKGS7i"),
    ]


# --- periods -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("period_type", "key", "expected"),
    [
        ("weekly", "2026-W47", "2026W47"),
        ("weekly", "2026-W05", "2026W5"),  # DHIS2's yyyyWn: no zero padding
        ("weekly", "2026-W01", "2026W1"),  # starts Mon 2025-12-29: the ISO year counts
        ("weekly", "2020-W53", "2020W53"),  # a 53-week year
        ("weekly", "2026-W53", "2026W53"),  # 2026 starts on a Thursday: 53 weeks
        ("daily", "2026-11-23", "20261123"),
        ("daily", "2026-01-05", "20260105"),  # DHIS2's yyyyMMdd keeps the zeros
        ("daily", "2024-02-29", "20240229"),
    ],
)
def test_dhis2_period(period_type: str, key: str, expected: str) -> None:
    assert dhis2_period(period_type, key) == expected


@pytest.mark.parametrize(
    ("period_type", "key"),
    [
        ("weekly", "2025-W53"),  # 2025 has 52 ISO weeks
        ("weekly", "2026W47"),  # already DHIS2's form: not one of our keys
        ("daily", "2026-02-30"),
        ("daily", "20261123"),
        ("monthly", "2026-11"),
        ("weekly", "2026-11-23"),  # a daily key under the weekly type
    ],
)
def test_dhis2_period_refuses_what_parse_period_refuses(period_type: str, key: str) -> None:
    with pytest.raises(ValidationFailed):
        dhis2_period(period_type, key)


def test_daily_report_period_in_document() -> None:
    daily = report("f-001", "2026-01-05", (1, 1, 0, 0, 0, 0))
    [value, *_] = data_value_sets([daily], MAPPING).document["dataValues"]
    assert value["period"] == "20260105"
    assert parse_period("daily", "2026-01-05") == daily.period


# --- what cannot be exported is reported -------------------------------------


def test_two_devices_for_one_facility_and_period_are_skipped_not_added() -> None:
    reports = [
        report("f-001", "2026-W47", (5, 6, 0, 0, 0, 0), device="edge-02"),
        report("f-001", "2026-W47", (7, 9, 0, 0, 0, 0), device="edge-01"),
        report("f-002", "2026-W47", (1, 1, 0, 0, 0, 0)),
    ]
    export = data_value_sets(reports, MAPPING)
    assert {v["orgUnit"] for v in export.document["dataValues"]} == {"FNnj3jKGS7i"}
    ambiguous = [s for s in export.skipped if s.reason is SkipReason.AMBIGUOUS_REPORTS]
    assert ambiguous == [
        Skip(
            SkipReason.AMBIGUOUS_REPORTS,
            "2 devices reported this facility and period: edge-01, edge-02",
            "f-001",
            "2026-W47",
        )
    ]


def test_inconsistent_metrics_are_skipped_with_the_fault() -> None:
    bad = report("f-001", "2026-W47", (5, 6, 2, 3, 0, 0))  # 3 done of 2 due
    export = data_value_sets([bad], MAPPING)
    assert export.document == {"dataValues": []}
    [skip] = [s for s in export.skipped if s.reason is SkipReason.INVALID_METRICS]
    assert skip.facility_id == "f-001"
    assert "exceeds" in skip.detail


def test_every_metric_unmapped_is_listed_and_no_report_is_dropped_silently() -> None:
    mapping = parse_hmis_mapping({"orgUnits": {"f-001": "DiszpKrYNg8"}, "dataElements": {}})
    export = data_value_sets(REPORTS, mapping)
    assert export.document == {"dataValues": []}
    assert [s.metric for s in export.skipped if s.reason is SkipReason.UNMAPPED_METRIC] == list(
        METRIC_PATHS
    )
    assert [s.facility_id for s in export.skipped if s.reason is SkipReason.UNMAPPED_FACILITY] == [
        "f-002",
        "f-003",
    ]


def test_no_reports_give_an_empty_document() -> None:
    export = data_value_sets([], MAPPING)
    assert export.document == {"dataValues": []}
    assert [s.reason for s in export.skipped] == [SkipReason.UNMAPPED_METRIC]


# --- completeness --------------------------------------------------------------


def with_data_set() -> HmisMapping:
    return parse_hmis_mapping({**MAPPING_WIRE, "dataSet": "pBOMPrpg1QX"})


def test_completion_registered_for_one_facility_and_period() -> None:
    export = data_value_sets(REPORTS[:1], with_data_set(), completed_at=date(2026, 11, 24))
    document = export.document
    assert list(document) == ["dataSet", "completeDate", "period", "orgUnit", "dataValues"]
    assert document["dataSet"] == "pBOMPrpg1QX"
    assert document["completeDate"] == "2026-11-24"  # DHIS2 dates are yyyy-MM-dd
    assert (document["period"], document["orgUnit"]) == ("2026W47", "DiszpKrYNg8")
    assert len(document["dataValues"]) == 7
    assert SkipReason.COMPLETION_NOT_REGISTERED not in {s.reason for s in export.skipped}


def test_completion_date_of_a_datetime_is_its_utc_date() -> None:
    moment = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    export = data_value_sets(REPORTS[:1], with_data_set(), completed_at=moment)
    assert export.document["completeDate"] == "2026-11-24"
    with pytest.raises(ValueError):
        data_value_sets(REPORTS[:1], with_data_set(), completed_at=datetime(2026, 11, 24, 12))


@pytest.mark.parametrize(
    ("reports", "mapping", "why"),
    [
        (REPORTS, with_data_set(), "2 orgUnit/period pairs"),
        (REPORTS[:1], MAPPING, "names no dataSet"),
        ([], with_data_set(), "0 orgUnit/period pairs"),
    ],
)
def test_completion_not_possible_is_reported(
    reports: list[FacilityReport], mapping: HmisMapping, why: str
) -> None:
    export = data_value_sets(reports, mapping, completed_at=date(2026, 11, 24))
    assert list(export.document) == ["dataValues"]
    [skip] = [s for s in export.skipped if s.reason is SkipReason.COMPLETION_NOT_REGISTERED]
    assert why in skip.detail


# --- the mapping -----------------------------------------------------------------


def test_mapping_parses_both_element_forms() -> None:
    assert MAPPING.org_units == {"f-001": "DiszpKrYNg8", "f-002": "FNnj3jKGS7i"}
    assert MAPPING.data_elements["patientCount"] == DataElementRef("f7n9E0hX8qk")
    assert MAPPING.data_elements["screening.due"] == DataElementRef("eY5ehpbEsB7", "bRowv6yZOF2")
    assert MAPPING.data_set is None


def test_mapping_round_trips() -> None:
    mapping = with_data_set()
    assert parse_hmis_mapping(hmis_mapping_to_wire(mapping)) == mapping


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("DiszpKrYNg8", True),
        ("a0000000000", True),
        ("0iszpKrYNg8", False),  # must start with a letter
        ("DiszpKrYNg", False),  # 10 characters
        ("DiszpKrYNg88", False),  # 12 characters
        ("Diszp-rYNg8", False),
        ("DiszpKrYNg٨", False),  # a non-ASCII digit
        (None, False),
    ],
)
def test_dhis2_uid_shape(value: object, ok: bool) -> None:
    assert is_dhis2_uid(value) is ok


def mapping_errors(obj: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationFailed) as caught:
        parse_hmis_mapping(obj)
    errors: list[dict[str, str]] = caught.value.extra["errors"]
    return errors


def test_mapping_errors_are_all_reported_with_pointers() -> None:
    errors = mapping_errors(
        {
            "orgUnits": {
                "f-001": "DiszpKrYNg8",
                "f-002": "DiszpKrYNg8",  # same orgUnit twice: values would overwrite
                "f/3": "FNnj3jKGS7i",  # not a facility id; "/" escaped in the pointer
                "f-004": "short",
            },
            "dataElements": {
                "patientCount": "f7n9E0hX8qk",
                "encounterCount": "f7n9E0hX8qk",  # same cell as patientCount
                "screening.pending": "eY5ehpbEsB7",  # no such metric
                "screening.due": {"dataElement": "eY5ehpbEsB7", "categoryOptionCombo": "x"},
                "immunization.due": {"dataElement": "eY5ehpbEsB7", "comment": "no"},
                "immunization.given": 7,
            },
            "dataSet": "pBOMPrpg1Q",
            "dataset": "typo",
        }
    )
    assert [e["path"] for e in errors] == [
        "/dataset",
        "/orgUnits/f-002",
        "/orgUnits/f~13",
        "/orgUnits/f-004",
        "/dataElements/encounterCount",
        "/dataElements/screening.pending",
        "/dataElements/screening.due/categoryOptionCombo",
        "/dataElements/immunization.due",
        "/dataElements/immunization.given",
        "/dataSet",
    ]
    assert "already mapped from f-001" in errors[1]["message"]
    assert "same data element and combo as patientCount" in errors[4]["message"]


def test_mapping_requires_both_maps() -> None:
    assert [e["path"] for e in mapping_errors({})] == ["/orgUnits", "/dataElements"]
    assert [e["path"] for e in mapping_errors({"orgUnits": [], "dataElements": "x"})] == [
        "/orgUnits",
        "/dataElements",
    ]
    assert [e["path"] for e in mapping_errors(["orgUnits"])] == [""]


def test_same_element_with_different_combos_is_allowed() -> None:
    mapping = parse_hmis_mapping(
        {
            "orgUnits": {},
            "dataElements": {
                "screening.due": {
                    "dataElement": "eY5ehpbEsB7",
                    "categoryOptionCombo": "bRowv6yZOF2",
                },
                "screening.done": "eY5ehpbEsB7",  # the default combo
            },
        }
    )
    assert len(mapping.data_elements) == 2

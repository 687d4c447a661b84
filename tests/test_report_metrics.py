"""Facility report metrics, and the gateway's check of a received payload."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import InvalidReport, ValidationFailed
from shared.periods import PeriodType, parse_period, period_containing, zone
from shared.reports import (
    REPORT_SCHEMA,
    Encounter,
    EncounterKind,
    FacilityReport,
    compute_metrics,
    encode_report_payload,
    parse_encounter,
    parse_report_payload,
    same_metrics,
    validate_metrics,
)
from vectors import load_vector

# --- the shared vector ------------------------------------------------------


def test_metrics_vector() -> None:
    vector = load_vector("facility_report_metrics.json")
    tz = zone(vector["timeZone"])
    encounters = [parse_encounter(item) for item in vector["encounters"]]
    # An emptied vector file must not pass by checking nothing.
    assert len(vector["expected"]) >= 4
    for expected in vector["expected"]:
        period = parse_period(expected["periodType"], expected["periodKey"])
        metrics = compute_metrics(encounters, period, tz)
        assert metrics == expected["metrics"], expected["periodKey"]
        assert validate_metrics(metrics) == metrics


# --- compute_metrics on literal encounters -----------------------------------

NAIROBI = zone("Africa/Nairobi")  # +03:00 all year
WEEK_47 = parse_period("weekly", "2026-W47")  # Mon 2026-11-16 .. Sun 2026-11-22, local


def enc(
    patient: str,
    occurred_at: str,
    kind: str = "visit",
    screening_due: bool = False,
    immunization_due: bool = False,
) -> Encounter:
    return Encounter(
        id=f"e-{patient}-{occurred_at}",
        patient_ref=patient,
        facility_id="f-001",
        occurred_at=datetime.fromisoformat(occurred_at).replace(tzinfo=UTC),
        kind=EncounterKind(kind),
        screening_due=screening_due,
        immunization_due=immunization_due,
    )


def metrics(
    patients: int,
    encounters: int,
    s_due: int,
    s_done: int,
    s_rate: float | None,
    i_due: int,
    i_given: int,
    i_rate: float | None,
) -> dict[str, Any]:
    return {
        "patientCount": patients,
        "encounterCount": encounters,
        "screening": {"due": s_due, "done": s_done, "rate": s_rate},
        "immunization": {"due": i_due, "given": i_given, "rate": i_rate},
    }


# (encounters, expected metrics over WEEK_47 in Nairobi)
COMPUTE = [
    # Nothing happened: zero counts, and rates null rather than 0.0.
    ([], metrics(0, 0, 0, 0, None, 0, 0, None)),
    # Two visits by one patient: one patient, two encounters.
    (
        [enc("p1", "2026-11-17T08:00:00"), enc("p1", "2026-11-18T08:00:00")],
        metrics(1, 2, 0, 0, None, 0, 0, None),
    ),
    # Flagged due at one visit, screened at a later one in the week: done.
    (
        [
            enc("p1", "2026-11-17T08:00:00", screening_due=True),
            enc("p1", "2026-11-19T08:00:00", kind="screening"),
        ],
        metrics(1, 2, 1, 1, 1.0, 0, 0, None),
    ),
    # Screened but never flagged due in the period: not counted as done.
    ([enc("p1", "2026-11-17T08:00:00", kind="screening")], metrics(1, 1, 0, 0, None, 0, 0, None)),
    # Due twice is still one patient due; two of three due patients immunized: 0.6667.
    (
        [
            enc("p1", "2026-11-17T08:00:00", kind="immunization", immunization_due=True),
            enc("p1", "2026-11-18T08:00:00", immunization_due=True),
            enc("p2", "2026-11-17T09:00:00", kind="immunization", immunization_due=True),
            enc("p3", "2026-11-17T10:00:00", immunization_due=True),
        ],
        metrics(3, 4, 0, 0, None, 3, 2, 0.6667),
    ),
    # A screening encounter does not count as an immunization, nor the reverse.
    (
        [
            enc(
                "p1", "2026-11-17T08:00:00", "screening", screening_due=True, immunization_due=True
            ),
            enc("p2", "2026-11-17T08:00:00", "immunization", screening_due=True),
        ],
        metrics(2, 2, 2, 1, 0.5, 1, 0, 0.0),
    ),
    # Local dates: 2026-11-15T21:00Z is Mon 00:00 in Nairobi (in), 20:59Z is
    # Sun 23:59 of the week before (out); 2026-11-22T20:59Z is Sun 23:59 (in),
    # 21:00Z is the next Monday (out).
    (
        [
            enc("in-1", "2026-11-15T21:00:00"),
            enc("out-1", "2026-11-15T20:59:00", screening_due=True),
            enc("in-2", "2026-11-22T20:59:00"),
            enc("out-2", "2026-11-22T21:00:00", immunization_due=True),
        ],
        metrics(2, 2, 0, 0, None, 0, 0, None),
    ),
    # Due in the period, screened only after it: not done.
    (
        [
            enc("p1", "2026-11-20T08:00:00", screening_due=True),
            enc("p1", "2026-11-23T08:00:00", kind="screening"),
        ],
        metrics(1, 1, 1, 0, 0.0, 0, 0, None),
    ),
]


@pytest.mark.parametrize(("encounters", "expected"), COMPUTE)
def test_compute_metrics(encounters: list[Encounter], expected: dict[str, Any]) -> None:
    assert compute_metrics(encounters, WEEK_47, NAIROBI) == expected


# --- parse_encounter ----------------------------------------------------------

GOOD_ENCOUNTER: dict[str, Any] = {
    "id": "enc-1",
    "patientRef": "p-25",
    "facilityId": "f-001",
    "occurredAt": "2026-11-16T08:51:00.000Z",
    "kind": "screening",
    "screeningDue": True,
    "immunizationDue": False,
}


def test_parse_encounter() -> None:
    assert parse_encounter(GOOD_ENCOUNTER) == Encounter(
        id="enc-1",
        patient_ref="p-25",
        facility_id="f-001",
        occurred_at=datetime(2026, 11, 16, 8, 51, tzinfo=UTC),
        kind=EncounterKind.SCREENING,
        screening_due=True,
        immunization_due=False,
    )


# (change to the good encounter, fragment of the detail)
BAD_ENCOUNTERS: list[tuple[dict[str, Any], str]] = [
    ({"extra": 1}, "unknown field"),  # a typo must not be ignored
    ({"patientRef": None}, "patientRef"),  # null is not an identifier
    ({"patientRef": "p 25"}, "patientRef"),  # space is not an identifier character
    ({"patientRef": "p" * 129}, "patientRef"),  # identifiers are at most 128 characters
    ({"facilityId": 7}, "facilityId"),  # a number is not an identifier
    ({"occurredAt": "2026-11-16T08:51:00+03:00"}, "occurredAt"),  # UTC with Z only
    ({"occurredAt": "2026-02-30T08:51:00Z"}, "occurredAt"),  # no such day
    ({"kind": "lab"}, "kind"),  # not an encounter kind
    ({"kind": "Screening"}, "kind"),  # kinds are case-sensitive
    ({"screeningDue": "true"}, "screeningDue"),  # a string is not a boolean
    ({"immunizationDue": 1}, "immunizationDue"),  # 1 is not a boolean
]


@pytest.mark.parametrize(("change", "detail"), BAD_ENCOUNTERS)
def test_parse_encounter_refuses(change: dict[str, Any], detail: str) -> None:
    with pytest.raises(ValidationFailed, match=detail):
        parse_encounter({**GOOD_ENCOUNTER, **change})


@pytest.mark.parametrize("missing", sorted(GOOD_ENCOUNTER))
def test_parse_encounter_refuses_missing_field(missing: str) -> None:
    body = {name: value for name, value in GOOD_ENCOUNTER.items() if name != missing}
    with pytest.raises(ValidationFailed, match=f"missing field: {missing}"):
        parse_encounter(body)


def test_parse_encounter_refuses_non_object() -> None:
    with pytest.raises(ValidationFailed, match="encounter must be an object"):
        parse_encounter(["enc-1"])


# --- payloads -------------------------------------------------------------------


def good_document() -> dict[str, Any]:
    """The CONTRACT section 6 example."""
    return {
        "schema": REPORT_SCHEMA,
        "tenantId": "t1",
        "facilityId": "f-001",
        "deviceId": "edge-01",
        "periodType": "weekly",
        "periodKey": "2026-W47",
        "generatedAt": "2026-11-23T23:59:00.000Z",
        "metrics": {
            "patientCount": 41,
            "encounterCount": 57,
            "screening": {"due": 20, "done": 15, "rate": 0.75},
            "immunization": {"due": 12, "given": 9, "rate": 0.75},
        },
    }


def encode(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def test_parse_good_payload() -> None:
    report = parse_report_payload(encode(good_document()))
    assert report == FacilityReport(
        tenant_id="t1",
        facility_id="f-001",
        device_id="edge-01",
        period=parse_period("weekly", "2026-W47"),
        generated_at=datetime(2026, 11, 23, 23, 59, tzinfo=UTC),
        metrics=good_document()["metrics"],
    )


def test_encode_is_canonical() -> None:
    # Sorted keys, no spaces: these exact bytes are what the edge signs.
    report = parse_report_payload(encode(good_document()))
    assert encode_report_payload(report) == (
        b'{"deviceId":"edge-01","facilityId":"f-001","generatedAt":"2026-11-23T23:59:00.000Z",'
        b'"metrics":{"encounterCount":57,"immunization":{"due":12,"given":9,"rate":0.75},'
        b'"patientCount":41,"screening":{"done":15,"due":20,"rate":0.75}},'
        b'"periodKey":"2026-W47","periodType":"weekly","schema":"phs.facility_report.v1",'
        b'"tenantId":"t1"}'
    )


def test_round_trip() -> None:
    vector = load_vector("facility_report_metrics.json")
    tz = zone(vector["timeZone"])
    encounters = [parse_encounter(item) for item in vector["encounters"]]
    period = parse_period("daily", "2026-11-22")
    report = FacilityReport(
        tenant_id="t1",
        facility_id="f-001",
        device_id="edge-01",
        period=period,
        # Milliseconds: the wire format carries no finer time.
        generated_at=datetime(2026, 11, 23, 0, 5, 0, 123000, tzinfo=UTC),
        metrics=compute_metrics(encounters, period, tz),
    )
    payload = encode_report_payload(report)
    parsed = parse_report_payload(payload)
    assert parsed == report
    # Encoding the parsed report gives the same bytes: the signature still holds.
    assert encode_report_payload(parsed) == payload


def set_path(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets ``path`` (dot-separated) to ``value``."""

    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = document
        for name in parents:
            target = target[name]
        target[last] = value

    return change


def delete_path(path: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = document
        for name in parents:
            target = target[name]
        del target[last]

    return change


# (name, change to the good document, fragment of the detail)
BAD_DOCUMENTS = [
    ("wrong schema", set_path("schema", "phs.facility_report.v2"), "schema must be"),
    ("schema not a string", set_path("schema", 1), "schema must be"),
    ("no schema", delete_path("schema"), "missing field: schema"),
    ("unknown top field", set_path("note", "x"), r"unknown field\(s\) in report: note"),
    ("unknown metrics field", set_path("metrics.visits", 3), r"in metrics: visits"),
    ("unknown screening field", set_path("metrics.screening.x", 1), r"in metrics.screening: x"),
    (
        "unknown immunization field",
        set_path("metrics.immunization.done", 9),  # "done" belongs to screening
        r"in metrics.immunization: done",
    ),
    ("no tenantId", delete_path("tenantId"), "missing field: tenantId"),
    ("no facilityId", delete_path("facilityId"), "missing field: facilityId"),
    ("no deviceId", delete_path("deviceId"), "missing field: deviceId"),
    ("no periodType", delete_path("periodType"), "missing field: periodType"),
    ("no periodKey", delete_path("periodKey"), "missing field: periodKey"),
    ("no generatedAt", delete_path("generatedAt"), "missing field: generatedAt"),
    ("no metrics", delete_path("metrics"), "missing field: metrics"),
    ("no patientCount", delete_path("metrics.patientCount"), "missing field: patientCount"),
    ("no encounterCount", delete_path("metrics.encounterCount"), "missing field: encounterCount"),
    ("no screening", delete_path("metrics.screening"), "missing field: screening"),
    ("no immunization", delete_path("metrics.immunization"), "missing field: immunization"),
    ("no screening.due", delete_path("metrics.screening.due"), "missing field: due"),
    ("no screening.done", delete_path("metrics.screening.done"), "missing field: done"),
    ("no screening.rate", delete_path("metrics.screening.rate"), "missing field: rate"),
    ("no immunization.given", delete_path("metrics.immunization.given"), "missing field: given"),
    ("bad tenantId", set_path("tenantId", "t 1"), "tenantId must be"),  # space not allowed
    ("bad deviceId", set_path("deviceId", ""), "deviceId must be"),  # empty identifier
    ("bad facilityId", set_path("facilityId", None), "facilityId must be"),  # null
    ("periodKey of the other type", set_path("periodKey", "2026-11-23"), "not a weekly key"),
    ("unknown periodType", set_path("periodType", "monthly"), "periodType must be"),
    ("no such week", set_path("periodKey", "2026-W54"), "does not exist"),
    ("generatedAt with offset", set_path("generatedAt", "2026-11-24T02:59:00+03:00"), "RFC 3339"),
    ("generatedAt a number", set_path("generatedAt", 1795478340), "generatedAt"),
    ("metrics not an object", set_path("metrics", [41, 57]), "metrics must be an object"),
    ("screening not an object", set_path("metrics.screening", 0.75), "must be an object"),
    ("negative count", set_path("metrics.screening.done", -1), r"done must be >= 0"),
    ("negative patientCount", set_path("metrics.patientCount", -41), r"must be >= 0"),
    ("bool as count", set_path("metrics.patientCount", True), "patientCount must be an integer"),
    ("float as count", set_path("metrics.encounterCount", 57.0), "must be an integer"),
    ("string as count", set_path("metrics.immunization.due", "12"), "must be an integer"),
    ("count beyond 2**53", set_path("metrics.encounterCount", 2**53), "at most"),
    ("done > due", set_path("metrics.screening.done", 21), r"done \(21\) exceeds"),
    ("given > due", set_path("metrics.immunization.given", 13), r"given \(13\) exceeds"),
    ("due > patientCount", set_path("metrics.patientCount", 19), r"due \(20\) exceeds"),
    ("patients > encounters", set_path("metrics.encounterCount", 40), "exceeds metrics.enc"),
    ("wrong rate", set_path("metrics.screening.rate", 0.7), "rate is 0.7"),  # 15/20 = 0.75
    ("rate as percent", set_path("metrics.immunization.rate", 75), "rate is 75"),  # 0.75 wanted
    ("rate null when due > 0", set_path("metrics.screening.rate", None), "must be a number"),
    ("rate a string", set_path("metrics.screening.rate", "0.75"), "must be a number"),
    ("rate a bool", set_path("metrics.screening.rate", True), "must be a number"),
]


@pytest.mark.parametrize(
    ("change", "detail"),
    [pytest.param(change, detail, id=name) for name, change, detail in BAD_DOCUMENTS],
)
def test_parse_refuses_document(change: Callable[[dict[str, Any]], None], detail: str) -> None:
    document = good_document()
    change(document)
    with pytest.raises(InvalidReport, match=detail):
        parse_report_payload(encode(document))


def test_rate_must_be_unrounded_match() -> None:
    # 11/17 = 0.647058...; the contract says 4 decimals, so 0.6471 and nothing else.
    document = good_document()
    document["metrics"]["screening"] = {"due": 17, "done": 11, "rate": 0.6470588235}
    with pytest.raises(InvalidReport, match=re.escape("rate is 0.6470588235")):
        parse_report_payload(encode(document))
    document["metrics"]["screening"]["rate"] = 0.6471
    parse_report_payload(encode(document))


def test_rate_not_null_when_due_is_zero() -> None:
    document = good_document()
    document["metrics"]["immunization"] = {"due": 0, "given": 0, "rate": 0.0}
    with pytest.raises(InvalidReport, match="rate must be null when due is 0"):
        parse_report_payload(encode(document))
    document["metrics"]["immunization"]["rate"] = None
    assert parse_report_payload(encode(document)).metrics["immunization"]["rate"] is None


GOOD_TEXT = encode(good_document()).decode("utf-8")

# (name, raw payload, fragment of the detail)
BAD_PAYLOADS = [
    ("invalid UTF-8", GOOD_TEXT.replace("edge-01", "edge-\xff").encode("latin-1"), "UTF-8"),
    ("UTF-16", GOOD_TEXT.encode("utf-16"), "UTF-8"),  # starts with a BOM that is not UTF-8
    ("UTF-8 BOM", b"\xef\xbb\xbf" + GOOD_TEXT.encode(), "not valid JSON"),  # JSON has no BOM
    ("NaN", GOOD_TEXT.replace("0.75", "NaN", 1).encode(), "NaN"),
    ("Infinity", GOOD_TEXT.replace("0.75", "Infinity", 1).encode(), "Infinity"),
    ("-Infinity", GOOD_TEXT.replace("0.75", "-Infinity", 1).encode(), "-Infinity"),
    ("overflowing float", GOOD_TEXT.replace("0.75", "1e999", 1).encode(), "out of range"),
    ("integer of 5000 digits", GOOD_TEXT.replace("57", "9" * 5000).encode(), "not valid JSON"),
    (
        "duplicate top key",
        GOOD_TEXT.replace('"tenantId": "t1"', '"tenantId": "t1", "tenantId": "t2"').encode(),
        "duplicate key in payload: 'tenantId'",
    ),
    (
        "duplicate metrics key",
        GOOD_TEXT.replace('"patientCount": 41', '"patientCount": 41, "patientCount": 1').encode(),
        "duplicate key in payload: 'patientCount'",
    ),
    ("truncated", GOOD_TEXT[:-1].encode(), "not valid JSON"),
    ("empty", b"", "not valid JSON"),
    ("array", b"[]", "must be a JSON object"),
    ("string", b'"phs.facility_report.v1"', "must be a JSON object"),
    ("nested too deep", GOOD_TEXT[:-1].encode() + b', "x": [[[[[[[[[]]]]]]]]]}', "nested deeper"),
    ("hostile nesting", b"[" * 30_000 + b"]" * 30_000, "nested deeper"),  # within 64 KiB
]


@pytest.mark.parametrize(
    ("payload", "detail"),
    [pytest.param(payload, detail, id=name) for name, payload, detail in BAD_PAYLOADS],
)
def test_parse_refuses_payload(payload: bytes, detail: str) -> None:
    with pytest.raises(InvalidReport, match=detail):
        parse_report_payload(payload)


def test_nesting_just_within_limit_reaches_field_check() -> None:
    # Depth 8 passes the nesting check; the unknown field is what fails.
    payload = GOOD_TEXT[:-1].encode() + b', "x": [[[[[[[]]]]]]]}'
    with pytest.raises(InvalidReport, match="unknown field"):
        parse_report_payload(payload)


def test_brackets_inside_strings_are_not_nesting() -> None:
    payload = GOOD_TEXT[:-1].encode() + b', "x": "[[[[[[[[[[\\"{{{{{{{{{{"}'
    with pytest.raises(InvalidReport, match="unknown field"):
        parse_report_payload(payload)


def test_size_limit() -> None:
    payload = encode(good_document())
    # Exactly at the limit: accepted.
    parse_report_payload(payload, max_bytes=len(payload))
    # One byte over: refused before it is decoded.
    with pytest.raises(InvalidReport, match="more than"):
        parse_report_payload(payload, max_bytes=len(payload) - 1)
    # The default limit is 64 KiB; whitespace is valid JSON but still counts.
    padded = payload[:-1] + b" " * (64 * 1024) + b"}"
    with pytest.raises(InvalidReport, match=f"{len(padded)} bytes, more than 65536"):
        parse_report_payload(padded)


def test_payload_must_be_bytes() -> None:
    with pytest.raises(InvalidReport, match="bytes"):
        parse_report_payload(GOOD_TEXT)  # type: ignore[arg-type]


def test_invalid_report_carries_the_field() -> None:
    document = good_document()
    document["metrics"]["screening"]["done"] = 21
    with pytest.raises(InvalidReport) as caught:
        parse_report_payload(encode(document))
    assert caught.value.code == "invalid_report"
    assert caught.value.extra == {"field": "metrics.screening.done"}
    # The ValidationFailed it came from stays reachable for debugging.
    assert isinstance(caught.value.__cause__, ValidationFailed)


# --- validate_metrics and same_metrics ----------------------------------------


# (metrics, accepted as)
ACCEPTED_METRICS = [
    # The contract example comes back unchanged.
    (good_document()["metrics"], good_document()["metrics"]),
    # Nothing due: null rates; and no encounters at all.
    (metrics(0, 0, 0, 0, None, 0, 0, None), metrics(0, 0, 0, 0, None, 0, 0, None)),
    # An integer rate of 1 is the number 1.0.
    (metrics(3, 3, 3, 3, 1, 3, 0, 0), metrics(3, 3, 3, 3, 1.0, 3, 0, 0.0)),
    # Float noise well below the tolerance is accepted (and kept as sent).
    (metrics(4, 4, 4, 3, 0.75 + 1e-12, 0, 0, None), metrics(4, 4, 4, 3, 0.75 + 1e-12, 0, 0, None)),
]


@pytest.mark.parametrize(("given_metrics", "expected"), ACCEPTED_METRICS)
def test_validate_metrics_accepts(given_metrics: Any, expected: dict[str, Any]) -> None:
    assert validate_metrics(copy.deepcopy(given_metrics)) == expected


def test_validate_metrics_refuses_non_object() -> None:
    with pytest.raises(InvalidReport, match="metrics must be an object"):
        validate_metrics(None)


# (a, b, same?)
SAME = [
    (metrics(4, 5, 4, 3, 0.75, 2, 1, 0.5), metrics(4, 5, 4, 3, 0.75, 2, 1, 0.5), True),  # equal
    # A rate printed with noise is the same report: a duplicate, not a conflict.
    (metrics(4, 5, 4, 3, 0.75, 2, 1, 0.5), metrics(4, 5, 4, 3, 0.75 + 1e-12, 2, 1, 0.5), True),
    (metrics(4, 5, 0, 0, None, 0, 0, None), metrics(4, 5, 0, 0, None, 0, 0, None), True),  # nulls
    (metrics(4, 5, 4, 3, 0.75, 2, 1, 0.5), metrics(4, 6, 4, 3, 0.75, 2, 1, 0.5), False),  # count
    (metrics(4, 5, 4, 3, 0.75, 2, 1, 0.5), metrics(4, 5, 4, 2, 0.5, 2, 1, 0.5), False),  # done
    (metrics(4, 5, 4, 3, 0.75, 2, 1, 0.5), metrics(4, 5, 4, 3, 0.75, 2, 2, 1.0), False),  # given
    (metrics(4, 5, 4, 3, 0.75, 2, 1, 0.5), metrics(4, 5, 4, 3, 0.75, 4, 2, 0.5), False),  # due
]


@pytest.mark.parametrize(("a", "b", "same"), SAME)
def test_same_metrics(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    assert same_metrics(validate_metrics(a), validate_metrics(b)) is same
    assert same_metrics(validate_metrics(b), validate_metrics(a)) is same


# --- property: whatever the encounters, the metrics validate --------------------

ZONES = ["UTC", "Africa/Nairobi", "Europe/Berlin", "America/Santiago", "Pacific/Kiritimati"]

encounters_strategy = st.lists(
    st.builds(
        Encounter,
        id=st.just("e-1"),
        patient_ref=st.sampled_from([f"p-{n}" for n in range(6)]),
        facility_id=st.just("f-001"),
        # Around Berlin's and Santiago's spring changes, several weeks wide.
        occurred_at=st.datetimes(
            min_value=datetime(2026, 3, 20),
            max_value=datetime(2026, 4, 12),
            timezones=st.just(UTC),
        ),
        kind=st.sampled_from(EncounterKind),
        screening_due=st.booleans(),
        immunization_due=st.booleans(),
    ),
    max_size=40,
)


@settings(deadline=None)
@given(
    encounters=encounters_strategy,
    day=st.dates(min_value=date(2026, 3, 20), max_value=date(2026, 4, 12)),
    period_type=st.sampled_from(PeriodType),
    zone_name=st.sampled_from(ZONES),
)
def test_computed_metrics_always_validate(
    encounters: list[Encounter], day: date, period_type: PeriodType, zone_name: str
) -> None:
    period = period_containing(day, period_type)
    computed = compute_metrics(encounters, period, zone(zone_name))
    assert validate_metrics(computed) == computed
    # And a report carrying them survives the gateway's check unchanged.
    report = FacilityReport(
        "t1", "f-001", "edge-01", period, datetime(2026, 4, 13, tzinfo=UTC), computed
    )
    assert parse_report_payload(encode_report_payload(report)) == report


@settings(deadline=None)
@given(
    encounters=encounters_strategy,
    day=st.dates(min_value=date(2026, 3, 20), max_value=date(2026, 4, 12)),
    zone_name=st.sampled_from(ZONES),
)
def test_days_add_up_to_their_week(encounters: list[Encounter], day: date, zone_name: str) -> None:
    # Every encounter of the week falls on exactly one of its seven local days.
    tz = zone(zone_name)
    week = period_containing(day, PeriodType.WEEKLY)
    daily_total = sum(
        compute_metrics(
            encounters, period_containing(week.start + timedelta(days=n), PeriodType.DAILY), tz
        )["encounterCount"]
        for n in range(7)
    )
    assert daily_total == compute_metrics(encounters, week, tz)["encounterCount"]

"""Facility reports: metrics from encounters, and the signed payload (CONTRACT.md §6).

The edge node computes a report offline with ``compute_metrics`` and signs the
exact bytes of ``encode_report_payload``. The gateway verifies the signature
over those bytes first and only then calls ``parse_report_payload``, which
refuses anything but a well-formed ``phs.facility_report.v1`` document with
self-consistent metrics. Both ends use this one module, so the edge can never
produce a report the gateway would refuse.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from shared.errors import InvalidReport, ValidationFailed
from shared.periods import Period, local_date, parse_period
from shared.values import (
    boolean,
    format_timestamp,
    identifier,
    integer,
    mapping,
    only_fields,
    parse_timestamp,
    required,
)

REPORT_SCHEMA = "phs.facility_report.v1"

MAX_PAYLOAD_BYTES = 64 * 1024
# A v1 report nests three objects deep (report > metrics > screening); the
# limit leaves room but stops a hostile payload before the JSON parser recurses.
MAX_NESTING_DEPTH = 8
# Counts beyond 2**53 - 1 do not survive a trip through a double (JavaScript
# dashboards, JSON tooling) and no facility sees that many encounters.
MAX_COUNT = 2**53 - 1
# Rates are rounded to 4 decimals; the tolerance absorbs float noise from a
# sender that computed them another way, not a different rounding.
RATE_TOLERANCE = 1e-9

_ENCOUNTER_FIELDS = frozenset(
    {"id", "patientRef", "facilityId", "occurredAt", "kind", "screeningDue", "immunizationDue"}
)
_REPORT_FIELDS = frozenset(
    {
        "schema",
        "tenantId",
        "facilityId",
        "deviceId",
        "periodType",
        "periodKey",
        "generatedAt",
        "metrics",
    }
)
_METRICS_FIELDS = frozenset({"patientCount", "encounterCount", "screening", "immunization"})
# Each programme: (wire name, numerator name); both have "due" and "rate".
_PROGRAMMES = (("screening", "done"), ("immunization", "given"))


class EncounterKind(StrEnum):
    VISIT = "visit"
    SCREENING = "screening"
    IMMUNIZATION = "immunization"


_KIND_NAMES = frozenset(member.value for member in EncounterKind)


@dataclass(frozen=True)
class Encounter:
    """One contact with a patient, as a tablet sends it to the edge node."""

    id: str
    patient_ref: str
    facility_id: str
    occurred_at: datetime
    kind: EncounterKind
    screening_due: bool
    immunization_due: bool


def parse_encounter(obj: Any) -> Encounter:
    """An encounter from its wire map, or ``ValidationFailed`` naming the field."""
    body = mapping(obj, "encounter")
    only_fields(body, _ENCOUNTER_FIELDS, "encounter")
    kind = required(body, "kind")
    if not isinstance(kind, str) or kind not in _KIND_NAMES:
        raise ValidationFailed("kind must be one of: immunization, screening, visit", field="kind")
    return Encounter(
        id=identifier(required(body, "id"), "id"),
        patient_ref=identifier(required(body, "patientRef"), "patientRef"),
        facility_id=identifier(required(body, "facilityId"), "facilityId"),
        occurred_at=parse_timestamp(required(body, "occurredAt"), "occurredAt"),
        kind=EncounterKind(kind),
        screening_due=boolean(required(body, "screeningDue"), "screeningDue"),
        immunization_due=boolean(required(body, "immunizationDue"), "immunizationDue"),
    )


def _rate(numerator: int, due: int) -> float | None:
    # No patient due: a rate would be 0/0, and 0.0 would read as "all missed".
    return None if due == 0 else round(numerator / due, 4)


@dataclass(frozen=True)
class MetricTotals:
    """The six counts every metric derives from (CONTRACT.md §6).

    ``screening_done`` counts patients flagged due who also had a screening in
    the period ("of those"), likewise ``immunization_given``; any source of
    encounters (a list in memory, an SQL aggregate over a million rows) only
    has to produce these.
    """

    patients: int
    encounters: int
    screening_due: int
    screening_done: int
    immunization_due: int
    immunization_given: int


def metrics_from_totals(t: MetricTotals) -> dict[str, Any]:
    return {
        "patientCount": t.patients,
        "encounterCount": t.encounters,
        "screening": {
            "due": t.screening_due,
            "done": t.screening_done,
            "rate": _rate(t.screening_done, t.screening_due),
        },
        "immunization": {
            "due": t.immunization_due,
            "given": t.immunization_given,
            "rate": _rate(t.immunization_given, t.immunization_due),
        },
    }


def compute_metrics(
    encounters: Iterable[Encounter], period: Period, tz: ZoneInfo
) -> dict[str, Any]:
    """The metrics of CONTRACT.md §6 over the encounters dated in ``period``.

    Dates are local to ``tz`` (the facility's zone). The caller passes one
    facility's encounters; encounters outside the period are skipped here so a
    caller may pass a wider window than the period.
    """
    # patient -> [encounters, screening due, screened, immunization due, immunized]
    flags: dict[str, list[int]] = {}
    for encounter in encounters:
        if not period.contains(local_date(encounter.occurred_at, tz)):
            continue
        f = flags.setdefault(encounter.patient_ref, [0, 0, 0, 0, 0])
        f[0] += 1
        f[1] |= encounter.screening_due
        f[2] |= encounter.kind is EncounterKind.SCREENING
        f[3] |= encounter.immunization_due
        f[4] |= encounter.kind is EncounterKind.IMMUNIZATION
    return metrics_from_totals(
        MetricTotals(
            patients=len(flags),
            encounters=sum(f[0] for f in flags.values()),
            screening_due=sum(f[1] for f in flags.values()),
            # "Of those": a screening of a patient never flagged due in the period
            # does not count, or done could exceed due.
            screening_done=sum(f[1] & f[2] for f in flags.values()),
            immunization_due=sum(f[3] for f in flags.values()),
            immunization_given=sum(f[3] & f[4] for f in flags.values()),
        )
    )


@dataclass(frozen=True)
class FacilityReport:
    tenant_id: str
    facility_id: str
    device_id: str
    period: Period
    generated_at: datetime
    metrics: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """The contract's JSON map of the report."""
        return {
            "schema": REPORT_SCHEMA,
            "tenantId": self.tenant_id,
            "facilityId": self.facility_id,
            "deviceId": self.device_id,
            "periodType": self.period.type.value,
            "periodKey": self.period.key,
            "generatedAt": format_timestamp(self.generated_at),
            "metrics": copy.deepcopy(self.metrics),  # the caller may change its map
        }


def encode_report_payload(report: FacilityReport) -> bytes:
    """The canonical bytes of a report: exactly what gets signed and sent.

    Sorted keys and no whitespace make the encoding a function of the report,
    so the same report always signs to the same bytes.
    """
    return json.dumps(
        report.to_wire(),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins; the signer and the
    # reader might then see different reports behind one signature.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidReport(f"duplicate key in payload: {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise InvalidReport(f"payload contains {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf without passing parse_constant
        raise InvalidReport(f"payload number {text} is out of range")
    return value


def _check_nesting(text: str, limit: int) -> None:
    """Refuse objects/arrays nested deeper than ``limit`` before parsing them."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                raise InvalidReport(f"payload is nested deeper than {limit} levels")
        elif char in "]}":
            depth -= 1


def parse_report_payload(payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> FacilityReport:
    """The gateway's check of received report bytes; ``InvalidReport`` on any fault.

    Call it on the bytes whose signature has been verified, never on a re-encoding.
    """
    if not isinstance(payload, bytes | bytearray):
        raise InvalidReport("payload must be bytes")
    if len(payload) > max_bytes:
        raise InvalidReport(f"payload is {len(payload)} bytes, more than {max_bytes}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidReport(f"payload is not valid UTF-8: {err.reason}") from err
    _check_nesting(text, MAX_NESTING_DEPTH)
    try:
        document = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as err:
        # ValueError: JSONDecodeError, and integers too long to convert.
        raise InvalidReport(f"payload is not valid JSON: {err}") from err
    if not isinstance(document, dict):
        raise InvalidReport("payload must be a JSON object")
    try:
        schema = required(document, "schema")
        if schema != REPORT_SCHEMA:
            raise InvalidReport(
                f"schema must be {REPORT_SCHEMA!r}, got {schema!r:.80}", field="schema"
            )
        only_fields(document, _REPORT_FIELDS, "report")
        tenant_id = identifier(required(document, "tenantId"), "tenantId")
        facility_id = identifier(required(document, "facilityId"), "facilityId")
        device_id = identifier(required(document, "deviceId"), "deviceId")
        period = parse_period(required(document, "periodType"), required(document, "periodKey"))
        generated_at = parse_timestamp(required(document, "generatedAt"), "generatedAt")
        metrics = validate_metrics(required(document, "metrics"))
    except ValidationFailed as err:
        raise InvalidReport(err.detail, **err.extra) from err
    return FacilityReport(
        tenant_id=tenant_id,
        facility_id=facility_id,
        device_id=device_id,
        period=period,
        generated_at=generated_at,
        metrics=metrics,
    )


def _count(body: Mapping[str, Any], name: str, where: str) -> int:
    field = f"{where}.{name}"
    value = integer(required(body, name), field, minimum=0)
    if value > MAX_COUNT:
        raise ValidationFailed(f"{field} must be at most {MAX_COUNT}", field=field)
    return value


def _programme(
    metrics: Mapping[str, Any], name: str, numerator: str, patient_count: int
) -> dict[str, Any]:
    where = f"metrics.{name}"
    body = mapping(required(metrics, name), where)
    only_fields(body, frozenset({"due", numerator, "rate"}), where)
    due = _count(body, "due", where)
    done = _count(body, numerator, where)
    rate = required(body, "rate")
    if done > due:
        raise ValidationFailed(
            f"{where}.{numerator} ({done}) exceeds {where}.due ({due})",
            field=f"{where}.{numerator}",
        )
    if due > patient_count:
        raise ValidationFailed(
            f"{where}.due ({due}) exceeds metrics.patientCount ({patient_count})",
            field=f"{where}.due",
        )
    expected = _rate(done, due)
    if expected is None:
        if rate is not None:
            raise ValidationFailed(
                f"{where}.rate must be null when due is 0", field=f"{where}.rate"
            )
        return {"due": due, numerator: done, "rate": None}
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not math.isfinite(rate):
        raise ValidationFailed(f"{where}.rate must be a number", field=f"{where}.rate")
    if abs(rate - expected) > RATE_TOLERANCE:
        raise ValidationFailed(
            f"{where}.rate is {rate}, but {numerator}/due rounded to 4 decimals is {expected}",
            field=f"{where}.rate",
        )
    return {"due": due, numerator: done, "rate": float(rate)}


def validate_metrics(metrics: Any) -> dict[str, Any]:
    """A checked copy of a metrics map, or ``InvalidReport`` naming the fault.

    Beyond types it checks what must hold of any honest computation: numerators
    within denominators, denominators within the patients seen, patients within
    encounters, and rates that match their counts.
    """
    try:
        body = mapping(metrics, "metrics")
        only_fields(body, _METRICS_FIELDS, "metrics")
        patient_count = _count(body, "patientCount", "metrics")
        encounter_count = _count(body, "encounterCount", "metrics")
        if patient_count > encounter_count:
            raise ValidationFailed(
                f"metrics.patientCount ({patient_count}) exceeds "
                f"metrics.encounterCount ({encounter_count})",
                field="metrics.patientCount",
            )
        result: dict[str, Any] = {
            "patientCount": patient_count,
            "encounterCount": encounter_count,
        }
        for name, numerator in _PROGRAMMES:
            result[name] = _programme(body, name, numerator, patient_count)
    except ValidationFailed as err:
        raise InvalidReport(err.detail, **err.extra) from err
    return result


def same_metrics(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two validated metric maps report the same thing.

    Counts must be equal; rates are then equal up to float noise, so a resend
    whose rate was printed differently is a duplicate, not a conflict.
    """
    if a["patientCount"] != b["patientCount"] or a["encounterCount"] != b["encounterCount"]:
        return False
    for name, numerator in _PROGRAMMES:
        left, right = a[name], b[name]
        if left["due"] != right["due"] or left[numerator] != right[numerator]:
            return False
        if (left["rate"] is None) != (right["rate"] is None):
            return False
        if left["rate"] is not None and abs(left["rate"] - right["rate"]) > RATE_TOLERANCE:
            return False
    return True

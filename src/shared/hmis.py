"""HMIS export: merged facility reports as a DHIS2 ``dataValueSets`` document.

Pure: the gateway's ``HmisExportJob`` reads the merged reports and the
configured mapping, calls ``data_value_sets`` and stores the document; nothing
here touches a database or the network.

The document is DHIS2's "bulk" form (docs.dhis2.org, Web API, *Sending bulks of
data values*): every data value carries its own ``period`` and ``orgUnit``, so
one document holds any number of facilities and periods::

    {"dataValues": [{"dataElement": "f7n9E0hX8qk", "period": "2026W47",
                     "orgUnit": "DiszpKrYNg8", "value": "41"}, ...]}

Values are strings, as DHIS2 expects. Whatever cannot be exported (a facility
or metric without a mapping, a rate with nobody due, two devices reporting one
facility and period) is returned as a ``Skip`` beside the document, never
dropped silently. ``docs/exports.md`` describes the mapping file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Protocol

from shared.errors import InvalidReport, ValidationFailed
from shared.periods import Period, PeriodType, parse_period
from shared.reports import validate_metrics
from shared.values import is_identifier

# DHIS2 uids: 11 characters, a letter first (CodeGenerator in dhis2-core).
DHIS2_UID_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{10}")

#: Every exportable metric path of a facility report, in document order.
METRIC_PATHS: tuple[str, ...] = (
    "patientCount",
    "encounterCount",
    "screening.due",
    "screening.done",
    "screening.rate",
    "immunization.due",
    "immunization.given",
    "immunization.rate",
)
_METRIC_INDEX = {path: n for n, path in enumerate(METRIC_PATHS)}

_MAPPING_FIELDS = frozenset({"dataSet", "orgUnits", "dataElements"})
_ELEMENT_FIELDS = frozenset({"dataElement", "categoryOptionCombo"})


def is_dhis2_uid(value: object) -> bool:
    return isinstance(value, str) and DHIS2_UID_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class DataElementRef:
    """Where one metric lands in DHIS2: a data element, and optionally the
    category option combo (disaggregation) of that element."""

    data_element: str
    category_option_combo: str | None = None


@dataclass(frozen=True)
class HmisMapping:
    """Facility id → DHIS2 orgUnit uid, metric path → data element.

    Build it with ``parse_hmis_mapping``, which refuses anything that would
    make two values land on the same DHIS2 cell.
    """

    org_units: Mapping[str, str]
    data_elements: Mapping[str, DataElementRef]
    data_set: str | None = None


def _pointer(*parts: str) -> str:
    """An RFC 6901 JSON pointer to the member named by ``parts``."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _uid_error(value: Any, what: str) -> str | None:
    if is_dhis2_uid(value):
        return None
    return f"{what} must be a DHIS2 uid: 11 characters [A-Za-z][A-Za-z0-9]{{10}}, got {value!r:.40}"


def _parse_org_units(raw: Any, errors: list[dict[str, str]]) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        errors.append({"path": "/orgUnits", "message": "orgUnits must be an object"})
        return {}
    org_units: dict[str, str] = {}
    facility_of: dict[str, str] = {}  # orgUnit -> first facility mapped to it
    for facility, uid in raw.items():
        path = _pointer("orgUnits", str(facility))
        if not is_identifier(facility):
            errors.append(
                {"path": path, "message": "a facility id must be 1-128 of [A-Za-z0-9._:-]"}
            )
            continue
        problem = _uid_error(uid, "orgUnit")
        if problem is not None:
            errors.append({"path": path, "message": problem})
            continue
        if uid in facility_of:
            # Two facilities' counts would overwrite each other in DHIS2.
            errors.append(
                {
                    "path": path,
                    "message": f"orgUnit {uid} is already mapped from {facility_of[uid]}",
                }
            )
            continue
        facility_of[uid] = facility
        org_units[facility] = uid
    return org_units


def _parse_element(raw: Any, path: str, errors: list[dict[str, str]]) -> DataElementRef | None:
    if isinstance(raw, str):  # shorthand: the data element alone
        raw = {"dataElement": raw}
    if not isinstance(raw, Mapping):
        errors.append({"path": path, "message": "must be a data element uid or an object"})
        return None
    unknown = sorted(set(raw) - _ELEMENT_FIELDS)
    if unknown:
        errors.append({"path": path, "message": f"unknown field(s): {', '.join(unknown)}"})
        return None
    element = raw.get("dataElement")
    combo = raw.get("categoryOptionCombo")
    ok = True
    problem = _uid_error(element, "dataElement")
    if problem is not None:
        errors.append({"path": path + "/dataElement", "message": problem})
        ok = False
    if combo is not None:
        problem = _uid_error(combo, "categoryOptionCombo")
        if problem is not None:
            errors.append({"path": path + "/categoryOptionCombo", "message": problem})
            ok = False
    if not ok:
        return None
    assert isinstance(element, str)
    return DataElementRef(element, combo)


def _parse_data_elements(raw: Any, errors: list[dict[str, str]]) -> dict[str, DataElementRef]:
    if not isinstance(raw, Mapping):
        errors.append({"path": "/dataElements", "message": "dataElements must be an object"})
        return {}
    elements: dict[str, DataElementRef] = {}
    metric_of: dict[DataElementRef, str] = {}
    for metric, value in raw.items():
        path = _pointer("dataElements", str(metric))
        if metric not in _METRIC_INDEX:
            errors.append(
                {"path": path, "message": f"unknown metric; known: {', '.join(METRIC_PATHS)}"}
            )
            continue
        ref = _parse_element(value, path, errors)
        if ref is None:
            continue
        if ref in metric_of:
            errors.append(
                {"path": path, "message": f"same data element and combo as {metric_of[ref]}"}
            )
            continue
        metric_of[ref] = metric
        elements[metric] = ref
    return elements


def parse_hmis_mapping(obj: Any) -> HmisMapping:
    """The mapping from its plain-dict form (a JSON or TOML file).

    Every fault is collected; ``ValidationFailed`` carries them as ``errors``,
    each ``{"path": <JSON pointer>, "message"}``.
    """
    errors: list[dict[str, str]] = []
    if not isinstance(obj, Mapping):
        raise ValidationFailed(
            "HMIS mapping must be an object",
            errors=[{"path": "", "message": "HMIS mapping must be an object"}],
        )
    for name in sorted(set(obj) - _MAPPING_FIELDS, key=str):
        errors.append({"path": _pointer(str(name)), "message": "unknown field"})
    for name in ("orgUnits", "dataElements"):
        if name not in obj:
            errors.append({"path": _pointer(name), "message": f"missing field: {name}"})
    org_units = _parse_org_units(obj.get("orgUnits", {}), errors)
    data_elements = _parse_data_elements(obj.get("dataElements", {}), errors)
    data_set = obj.get("dataSet")
    if data_set is not None:
        problem = _uid_error(data_set, "dataSet")
        if problem is not None:
            errors.append({"path": "/dataSet", "message": problem})
    if errors:
        raise ValidationFailed(f"HMIS mapping is invalid ({len(errors)} error(s))", errors=errors)
    return HmisMapping(org_units=org_units, data_elements=data_elements, data_set=data_set)


def hmis_mapping_to_wire(mapping: HmisMapping) -> dict[str, Any]:
    """The plain-dict form ``parse_hmis_mapping`` reads (the long element form)."""
    elements: dict[str, Any] = {}
    for metric in METRIC_PATHS:
        ref = mapping.data_elements.get(metric)
        if ref is None:
            continue
        entry: dict[str, Any] = {"dataElement": ref.data_element}
        if ref.category_option_combo is not None:
            entry["categoryOptionCombo"] = ref.category_option_combo
        elements[metric] = entry
    wire: dict[str, Any] = {
        "orgUnits": dict(sorted(mapping.org_units.items())),
        "dataElements": elements,
    }
    if mapping.data_set is not None:
        wire["dataSet"] = mapping.data_set
    return wire


def _dhis2_key(period: Period) -> str:
    if period.type is PeriodType.DAILY:
        day = period.start
        return f"{day.year:04d}{day.month:02d}{day.day:02d}"
    iso = period.start.isocalendar()
    # DHIS2's weekly format is yyyyWn: the week is not zero-padded (2026W5).
    return f"{iso.year}W{iso.week}"


def dhis2_period(period_type: str, period_key: str) -> str:
    """Our period key in DHIS2's format: ``2026-W47`` → ``2026W47``,
    ``2026-W05`` → ``2026W5``, ``2026-11-23`` → ``20261123``.

    Both DHIS2 ``Weekly`` and our weeks are ISO weeks starting on Monday.
    ``ValidationFailed`` for a type or key ``parse_period`` refuses.
    """
    return _dhis2_key(parse_period(period_type, period_key))


class ReportLike(Protocol):
    """What an export reads of a merged report (``FacilityReport`` fits)."""

    @property
    def facility_id(self) -> str: ...

    @property
    def device_id(self) -> str: ...

    @property
    def period(self) -> Period: ...

    @property
    def metrics(self) -> Mapping[str, Any]: ...


class SkipReason(StrEnum):
    UNMAPPED_FACILITY = "unmapped_facility"
    UNMAPPED_METRIC = "unmapped_metric"
    NO_VALUE = "no_value"
    AMBIGUOUS_REPORTS = "ambiguous_reports"
    INVALID_METRICS = "invalid_metrics"
    COMPLETION_NOT_REGISTERED = "completion_not_registered"


@dataclass(frozen=True)
class Skip:
    """Something the document leaves out, and why."""

    reason: SkipReason
    detail: str
    facility_id: str | None = None
    period_key: str | None = None
    metric: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "facilityId": self.facility_id,
            "periodKey": self.period_key,
            "metric": self.metric,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class HmisExport:
    """The ``dataValueSets`` document, and what it leaves out."""

    document: dict[str, Any]
    skipped: tuple[Skip, ...] = field(default=())

    def skipped_to_wire(self) -> list[dict[str, Any]]:
        return [s.to_wire() for s in self.skipped]


def _number_text(value: int | float) -> str:
    """A metric as DHIS2 reads a number: ``41``, ``0.75``, ``1`` (not ``1.0``)."""
    if isinstance(value, int):
        return str(value)
    # Rates are rounded to 4 decimals by the report; print no more, no fewer.
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _metric_value(metrics: Mapping[str, Any], path: str) -> int | float | None:
    value: Any = metrics
    for part in path.split("."):
        value = value[part]
    assert value is None or isinstance(value, int | float)
    return value


def _complete_date(moment: date) -> str:
    if isinstance(moment, datetime):
        if moment.utcoffset() is None:
            # A naive time would be read in the machine's own zone.
            raise ValueError("completed_at must be a date or an aware datetime")
        moment = moment.astimezone(UTC).date()
    return moment.isoformat()


def data_value_sets(
    reports: Iterable[ReportLike], mapping: HmisMapping, completed_at: date | None = None
) -> HmisExport:
    """The DHIS2 document of ``reports`` (one tenant's merged reports).

    One data value per report and mapped metric, ordered by period, orgUnit
    and metric (``METRIC_PATHS``), so the same input always gives the same
    document. A facility and period reported by more than one device is
    skipped as ambiguous: distinct-patient counts of two devices cannot be
    added, and sending either one would misstate the facility.

    ``completed_at`` asks DHIS2 to register the data set as complete on that
    date. DHIS2 registers completeness for the document's top-level
    ``dataSet``, ``period`` and ``orgUnit``, so it is only possible when the
    mapping names a ``dataSet`` and the document holds one facility and one
    period; otherwise a ``completion_not_registered`` skip says why.
    """
    groups: dict[tuple[str, PeriodType, str], list[ReportLike]] = {}
    for report in reports:
        key = (report.facility_id, report.period.type, report.period.key)
        groups.setdefault(key, []).append(report)

    skipped: list[Skip] = [
        Skip(SkipReason.UNMAPPED_METRIC, f"no data element is mapped for {path}", metric=path)
        for path in METRIC_PATHS
        if path not in mapping.data_elements
    ]
    # (period start, period type, orgUnit, metric index) -> data value
    values: list[tuple[tuple[date, str, str, int], dict[str, str]]] = []
    ordered = sorted(groups.items(), key=lambda g: (g[1][0].period.start, g[0][1].value, g[0][0]))
    for (facility_id, _, period_key), group in ordered:
        org_unit = mapping.org_units.get(facility_id)
        if org_unit is None:
            skipped.append(
                Skip(
                    SkipReason.UNMAPPED_FACILITY,
                    "no orgUnit is mapped for the facility",
                    facility_id,
                    period_key,
                )
            )
            continue
        if len(group) > 1:
            devices = ", ".join(sorted(r.device_id for r in group))
            skipped.append(
                Skip(
                    SkipReason.AMBIGUOUS_REPORTS,
                    f"{len(group)} devices reported this facility and period: {devices}",
                    facility_id,
                    period_key,
                )
            )
            continue
        report = group[0]
        try:
            metrics = validate_metrics(report.metrics)
        except InvalidReport as err:
            skipped.append(Skip(SkipReason.INVALID_METRICS, err.detail, facility_id, period_key))
            continue
        period = _dhis2_key(report.period)
        for path in METRIC_PATHS:
            ref = mapping.data_elements.get(path)
            if ref is None:
                continue  # reported once above
            value = _metric_value(metrics, path)
            if value is None:
                skipped.append(
                    Skip(
                        SkipReason.NO_VALUE,
                        "no patient was due, so the rate is undefined",
                        facility_id,
                        period_key,
                        path,
                    )
                )
                continue
            data_value = {"dataElement": ref.data_element, "period": period, "orgUnit": org_unit}
            if ref.category_option_combo is not None:
                data_value["categoryOptionCombo"] = ref.category_option_combo
            data_value["value"] = _number_text(value)
            sort_key = (
                report.period.start,
                report.period.type.value,
                org_unit,
                _METRIC_INDEX[path],
            )
            values.append((sort_key, data_value))
    values.sort(key=lambda v: v[0])
    data_values = [v for _, v in values]

    document: dict[str, Any] = {}
    if completed_at is not None:
        cells = {(v["orgUnit"], v["period"]) for v in data_values}
        if mapping.data_set is None:
            why = "the mapping names no dataSet"
        elif len(cells) != 1:
            why = (
                f"the document holds {len(cells)} orgUnit/period pairs; DHIS2 registers "
                "completeness for one: export each facility and period on its own"
            )
        else:
            why = ""
            ((org_unit, period),) = cells
            document.update(
                dataSet=mapping.data_set,
                completeDate=_complete_date(completed_at),
                period=period,
                orgUnit=org_unit,
            )
        if why:
            skipped.append(Skip(SkipReason.COMPLETION_NOT_REGISTERED, why))
    document["dataValues"] = data_values
    return HmisExport(document=document, skipped=tuple(skipped))

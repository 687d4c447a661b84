"""Disease registry entries (``disease_registry_entry``): upstream clinical
data, written only by ``service`` tokens (CONTRACT section 3).

The one shape every server-side computation reads: cohort definitions
(``shared.cohorts``), the risk model (``shared.risk``) and de-identified
extracts (``shared.deident``). Pure: parse the wire form, nothing else.

Wire form (JSON; dates are ``YYYY-MM-DD``)::

    {"id", "facilityId", "patientRef", "sex": "female"|"male"|"other"|"unknown",
     "birthDate", "conditions": [{"code", "onset"?}],
     "lastScreeningDate"?, "lastImmunizationDate"?}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from shared.errors import ValidationFailed
from shared.values import identifier, mapping, only_fields, required, text

MAX_CONDITIONS = 64
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# ICD-10 style codes and programme codes alike: letters, digits, dot, dash.
_CONDITION_RE = re.compile(r"[A-Za-z0-9.\-]{1,32}")

ENTRY_FIELDS = frozenset(
    {
        "id",
        "facilityId",
        "patientRef",
        "sex",
        "birthDate",
        "conditions",
        "lastScreeningDate",
        "lastImmunizationDate",
    }
)
CONDITION_FIELDS = frozenset({"code", "onset"})


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Condition:
    code: str
    onset: date | None = None


@dataclass(frozen=True)
class RegistryEntry:
    id: str
    facility_id: str
    patient_ref: str
    sex: Sex
    birth_date: date
    conditions: tuple[Condition, ...] = ()
    last_screening_date: date | None = None
    last_immunization_date: date | None = None

    def has_condition(self, code: str) -> bool:
        """Exact code, or a code under it (``E11`` covers ``E11.9``)."""
        return any(c.code == code or c.code.startswith(code + ".") for c in self.conditions)

    def age_on(self, day: date) -> int:
        """Completed years on ``day``."""
        years = day.year - self.birth_date.year
        return years - ((day.month, day.day) < (self.birth_date.month, self.birth_date.day))


def parse_date(value: Any, field: str) -> date:
    if not isinstance(value, str) or _DATE_RE.fullmatch(value) is None:
        raise ValidationFailed(f"{field} must be a date YYYY-MM-DD", field=field)
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise ValidationFailed(f"{field} is not a calendar date", field=field) from err


def _optional_date(body: Mapping[str, Any], name: str) -> date | None:
    value = body.get(name)
    return None if value is None else parse_date(value, name)


def parse_condition(obj: Any, where: str) -> Condition:
    body = mapping(obj, where)
    only_fields(body, CONDITION_FIELDS, where)
    code = required(body, "code")
    if not isinstance(code, str) or _CONDITION_RE.fullmatch(code) is None:
        raise ValidationFailed(f"{where}/code must be 1-32 of [A-Za-z0-9.-]", field=where)
    onset = body.get("onset")
    return Condition(code.upper(), None if onset is None else parse_date(onset, f"{where}/onset"))


def parse_registry_entry(obj: Any) -> RegistryEntry:
    body = mapping(obj, "registry entry")
    only_fields(body, ENTRY_FIELDS, "registry entry")
    raw_sex = required(body, "sex")
    try:
        sex = Sex(raw_sex)
    except ValueError as err:
        raise ValidationFailed(
            f"sex must be one of {', '.join(s.value for s in Sex)}", field="sex"
        ) from err
    raw_conditions = body.get("conditions", [])
    if not isinstance(raw_conditions, list) or len(raw_conditions) > MAX_CONDITIONS:
        raise ValidationFailed(
            f"conditions must be an array of at most {MAX_CONDITIONS}", field="conditions"
        )
    return RegistryEntry(
        id=identifier(required(body, "id"), "id"),
        facility_id=identifier(required(body, "facilityId"), "facilityId"),
        patient_ref=text(required(body, "patientRef"), "patientRef", 128),
        sex=sex,
        birth_date=parse_date(required(body, "birthDate"), "birthDate"),
        conditions=tuple(
            parse_condition(c, f"/conditions/{n}") for n, c in enumerate(raw_conditions)
        ),
        last_screening_date=_optional_date(body, "lastScreeningDate"),
        last_immunization_date=_optional_date(body, "lastImmunizationDate"),
    )


def registry_entry_to_wire(entry: RegistryEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "facilityId": entry.facility_id,
        "patientRef": entry.patient_ref,
        "sex": entry.sex.value,
        "birthDate": entry.birth_date.isoformat(),
        "conditions": [
            {"code": c.code, "onset": None if c.onset is None else c.onset.isoformat()}
            for c in entry.conditions
        ],
        "lastScreeningDate": _iso(entry.last_screening_date),
        "lastImmunizationDate": _iso(entry.last_immunization_date),
    }


def _iso(day: date | None) -> str | None:
    return None if day is None else day.isoformat()

"""De-identified extracts of the disease registry, with a k-anonymity check.

Pure: the gateway's ``DeidentExportJob`` reads the registry entries (and, for a
cohort, the ids of its members), calls ``deidentify`` and stores the result;
it may offer the rows for download only when the status is ``released``.

Three steps, each in its own function so tests can drive them one by one:

1. **Remove and generalise** (``generalise_entry``): the entry's ``id`` and
   ``patientRef`` are dropped; the birth date becomes an age band on the
   extract date, the facility becomes its district, every date becomes its
   month, and condition codes become their top-level group (``E11.9`` →
   ``E11``). A row::

       {"ageBand": "45-54", "sex": "female", "district": "north",
        "conditions": [{"group": "E11", "onsetMonth": "2019-03"}],
        "lastScreeningMonth": "2026-10", "lastImmunizationMonth": null}

2. **Suppress small cells** (``suppress_small_cells``): rows are grouped by
   their quasi-identifier tuple (by default age band, sex and district); every
   group with fewer than ``k`` rows is removed and counted.

3. **Decide** (in ``deidentify``): ``blocked`` with reasons when more than
   ``max_suppressed_share`` of the rows had to be suppressed, when fewer than
   ``k`` rows remain, when a facility has no district, or when a direct
   identifier (a field name or any patient's ``id``/``patientRef`` value)
   would remain in the output; ``released`` otherwise. A blocked result
   carries no rows at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from shared.errors import ValidationFailed
from shared.registry import RegistryEntry

DEFAULT_K = 5
DEFAULT_MAX_SUPPRESSED_SHARE = 0.05

#: (lowest age, label), youngest first; the last band is open-ended.
AGE_BANDS: tuple[tuple[int, str], ...] = (
    (0, "0-4"),
    (5, "5-14"),
    (15, "15-24"),
    (25, "25-34"),
    (35, "35-44"),
    (45, "45-54"),
    (55, "55-64"),
    (65, "65+"),
)

#: The fields of an extract row, in output order.
ROW_FIELDS: tuple[str, ...] = (
    "ageBand",
    "sex",
    "district",
    "conditions",
    "lastScreeningMonth",
    "lastImmunizationMonth",
)
DEFAULT_QUASI_IDENTIFIERS: tuple[str, ...] = ("ageBand", "sex", "district")

#: Field names that identify a patient (or pin one down) and must never be in
#: a row, whatever a future change to ``generalise_entry`` adds.
DIRECT_IDENTIFIER_FIELDS = frozenset(
    {
        "id",
        "patientRef",
        "patientId",
        "name",
        "birthDate",
        "facilityId",
        "phone",
        "address",
        "nationalId",
    }
)


class DeidentStatus(StrEnum):
    RELEASED = "released"
    BLOCKED = "blocked"


class BlockReason(StrEnum):
    TOO_MUCH_SUPPRESSED = "too_much_suppressed"
    TOO_FEW_ROWS = "too_few_rows"
    FACILITY_WITHOUT_DISTRICT = "facility_without_district"
    DIRECT_IDENTIFIER_FIELD = "direct_identifier_field"
    IDENTIFIER_VALUE = "identifier_value"


@dataclass(frozen=True)
class Reason:
    code: BlockReason
    detail: str

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code.value, "detail": self.detail}


@dataclass(frozen=True)
class DeidentResult:
    """The outcome of one extract.

    ``rows`` is empty unless ``status`` is ``released``. ``suppressed`` counts
    the rows removed because their quasi-identifier class was smaller than
    ``k`` (``suppressed_classes`` the classes), out of ``total`` rows built.
    """

    status: DeidentStatus
    rows: tuple[dict[str, Any], ...]
    suppressed: int
    reasons: tuple[Reason, ...]
    k: int
    total: int = 0
    suppressed_classes: int = 0
    quasi_identifiers: tuple[str, ...] = field(default=DEFAULT_QUASI_IDENTIFIERS)

    @property
    def released(self) -> bool:
        return self.status is DeidentStatus.RELEASED

    def to_wire(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "k": self.k,
            "quasiIdentifiers": list(self.quasi_identifiers),
            "total": self.total,
            "suppressed": self.suppressed,
            "suppressedClasses": self.suppressed_classes,
            "released": len(self.rows),
            "reasons": [r.to_wire() for r in self.reasons],
            "rows": [dict(r) for r in self.rows],
        }


def age_band(age: int) -> str:
    """The band of a completed age; a negative age (a birth date after the
    extract date: clock skew or a data error) falls in the youngest band."""
    label = AGE_BANDS[0][1]
    for lowest, name in AGE_BANDS:
        if age >= lowest:
            label = name
    return label


def month(day: date | None) -> str | None:
    return None if day is None else f"{day.year:04d}-{day.month:02d}"


def condition_group(code: str) -> str:
    """The top-level group of a code: the part before the first dot
    (the ICD-10 category: ``E11.65`` → ``E11``)."""
    return code.split(".", 1)[0].upper()


def generalise_entry(entry: RegistryEntry, district: str, as_of: date) -> dict[str, Any]:
    """The extract row of one entry: no ``id`` or ``patientRef``, quasi-identifiers
    generalised. ``district`` is the entry's facility's district."""
    onsets: dict[str, date | None] = {}
    for condition in entry.conditions:
        group = condition_group(condition.code)
        if group not in onsets:
            onsets[group] = condition.onset
        elif condition.onset is not None:
            # Several codes of one group: the earliest known onset stands for it.
            known = onsets[group]
            onsets[group] = condition.onset if known is None else min(known, condition.onset)
    return {
        "ageBand": age_band(entry.age_on(as_of)),
        "sex": entry.sex.value,
        "district": district,
        "conditions": [
            {"group": group, "onsetMonth": month(onsets[group])} for group in sorted(onsets)
        ],
        "lastScreeningMonth": month(entry.last_screening_date),
        "lastImmunizationMonth": month(entry.last_immunization_date),
    }


def _frozen(value: Any) -> Hashable:
    """A hashable, comparable stand-in for a row value (lists of maps included)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return ("", "") if value is None else (type(value).__name__, str(value))


def quasi_key(row: Mapping[str, Any], quasi_identifiers: Sequence[str]) -> Hashable:
    return tuple(_frozen(row.get(name)) for name in quasi_identifiers)


@dataclass(frozen=True)
class Suppression:
    kept: tuple[dict[str, Any], ...]
    suppressed: int
    suppressed_classes: int


def suppress_small_cells(
    rows: Iterable[dict[str, Any]], quasi_identifiers: Sequence[str], k: int
) -> Suppression:
    """Remove every row whose quasi-identifier class has fewer than ``k`` rows.

    The kept rows are sorted by their content, so their order says nothing
    about the registry's order (or ids).
    """
    all_rows = list(rows)
    keys = [quasi_key(row, quasi_identifiers) for row in all_rows]
    sizes = Counter(keys)
    small = {key for key, size in sizes.items() if size < k}
    kept = [row for row, key in zip(all_rows, keys, strict=True) if key not in small]
    kept.sort(key=lambda row: (quasi_key(row, quasi_identifiers), _frozen(row)))
    return Suppression(
        kept=tuple(kept),
        suppressed=len(all_rows) - len(kept),
        suppressed_classes=len(small),
    )


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def identifier_reasons(
    rows: Iterable[Mapping[str, Any]], identifiers: Collection[str]
) -> list[Reason]:
    """The last gate: no direct-identifier field name, and no string equal to
    any patient's ``id`` or ``patientRef``, anywhere in the rows.

    Values are compared whole: a district that happened to equal a patient
    reference would block the extract (the safe direction), while a short
    reference such as ``7`` does not block every row containing a 7.
    """
    fields: set[str] = set()
    leaked = 0
    for row in rows:
        fields.update(name for name in row if name in DIRECT_IDENTIFIER_FIELDS)
        leaked += any(s in identifiers for s in _strings(row))
    reasons = []
    if fields:
        reasons.append(
            Reason(
                BlockReason.DIRECT_IDENTIFIER_FIELD,
                f"rows would carry direct identifier field(s): {', '.join(sorted(fields))}",
            )
        )
    if leaked:
        # Never name the value: the reason is shown to the admin and stored.
        reasons.append(
            Reason(
                BlockReason.IDENTIFIER_VALUE,
                f"{leaked} row(s) would carry a patient id or patientRef value",
            )
        )
    return reasons


def _check_settings(k: int, max_suppressed_share: float, quasi_identifiers: Sequence[str]) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValidationFailed("k must be an integer of at least 2", field="k")
    if not 0.0 <= max_suppressed_share <= 1.0:
        raise ValidationFailed(
            "maxSuppressedShare must be between 0 and 1", field="maxSuppressedShare"
        )
    unknown = [name for name in quasi_identifiers if name not in ROW_FIELDS]
    if unknown or not quasi_identifiers:
        raise ValidationFailed(
            f"quasiIdentifiers must be a non-empty list of: {', '.join(ROW_FIELDS)}",
            field="quasiIdentifiers",
        )


def deidentify(
    entries: Iterable[RegistryEntry],
    districts: Mapping[str, str],
    as_of: date,
    *,
    member_ids: Collection[str] | None = None,
    k: int = DEFAULT_K,
    max_suppressed_share: float = DEFAULT_MAX_SUPPRESSED_SHARE,
    quasi_identifiers: Sequence[str] = DEFAULT_QUASI_IDENTIFIERS,
) -> DeidentResult:
    """The de-identified extract of ``entries`` and whether it may be released.

    ``districts`` maps facility id → district; ``as_of`` is the extract date
    (ages are completed years on it); ``member_ids``, when given, restricts the
    extract to those registry entry ids (a cohort version's members).
    ``ValidationFailed`` only for bad settings; bad data blocks the result.
    """
    _check_settings(k, max_suppressed_share, quasi_identifiers)
    quasi = tuple(quasi_identifiers)
    members = None if member_ids is None else frozenset(member_ids)

    identifiers: set[str] = set()
    rows: list[dict[str, Any]] = []
    no_district: set[str] = set()
    for entry in entries:
        if members is not None and entry.id not in members:
            continue
        identifiers.add(entry.id)
        identifiers.add(entry.patient_ref)
        district = districts.get(entry.facility_id)
        if district is None:
            no_district.add(entry.facility_id)
            continue
        rows.append(generalise_entry(entry, district, as_of))

    total = len(rows)  # entries of unmapped facilities are not built; they block below
    cells = suppress_small_cells(rows, quasi, k)
    reasons: list[Reason] = []
    if no_district:
        # Facility ids are not patient identifiers; the admin needs them to fix the mapping.
        reasons.append(
            Reason(
                BlockReason.FACILITY_WITHOUT_DISTRICT,
                f"no district is mapped for facility(ies): {', '.join(sorted(no_district))}",
            )
        )
    share = cells.suppressed / total if total else 0.0
    if share > max_suppressed_share:
        reasons.append(
            Reason(
                BlockReason.TOO_MUCH_SUPPRESSED,
                f"{cells.suppressed} of {total} rows ({share:.1%}) fall in classes smaller than "
                f"k={k}; at most {max_suppressed_share:.1%} may be suppressed",
            )
        )
    if len(cells.kept) < k:
        reasons.append(
            Reason(
                BlockReason.TOO_FEW_ROWS,
                f"{len(cells.kept)} row(s) remain after suppression, fewer than k={k}",
            )
        )
    reasons.extend(identifier_reasons(cells.kept, identifiers))
    status = DeidentStatus.BLOCKED if reasons else DeidentStatus.RELEASED
    return DeidentResult(
        status=status,
        rows=cells.kept if status is DeidentStatus.RELEASED else (),
        suppressed=cells.suppressed,
        reasons=tuple(reasons),
        k=k,
        total=total,
        suppressed_classes=cells.suppressed_classes,
        quasi_identifiers=quasi,
    )

"""Risk scores: the points model (``risk_score.computed``) and admin overrides
(``risk_score.override``), CONTRACT section 3. Pure: no I/O, no clock.

The computed score is a sum of documented points, each one a ``Factor`` with
its reason, so every score can be explained line by line (docs/risk.md holds
the same table). An override replaces the computed score until it is cleared;
overrides resolve last-write-wins by ``occurredAt`` and every attempt is
audited by the caller from the ``OverrideResolution`` it gets back::

    compute_risk(entry, today)              -> ComputedRisk
    parse_risk_override(obj, node_id=...)   -> RiskOverride        (wire form)
    resolve_override(current, incoming)     -> OverrideResolution  (LWW)
    audit_record(resolution, computed)      -> OverrideAudit       (one row per attempt)
    effective_risk(computed, override)      -> {"score", "band", "source", ...}

The gateway and the edge both call these, so their answers cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from shared.errors import ValidationFailed
from shared.fsm import FUTURE_TOLERANCE
from shared.registry import Condition, RegistryEntry
from shared.values import (
    format_timestamp,
    identifier,
    mapping,
    only_fields,
    parse_timestamp,
    required,
)

MODEL_VERSION = "points-v1"
MAX_SCORE = 100

RISK_OVERRIDE_KIND = "risk_score.override"
OVERRIDE_FIELDS = frozenset({"kind", "id", "entryId", "value", "reason", "actorId", "occurredAt"})
MAX_REASON = 500


# --------------------------------------------------------------------------
# The points model


class Band(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


#: Lowest score of each band above ``low`` (low is 0-24, medium 25-49, high 50-100).
MEDIUM_FROM = 25
HIGH_FROM = 50


def band_for(score: int) -> Band:
    if score >= HIGH_FROM:
        return Band.HIGH
    if score >= MEDIUM_FROM:
        return Band.MEDIUM
    return Band.LOW


@dataclass(frozen=True)
class AgeBand:
    name: str
    min_age: int  # completed years, inclusive
    max_age: int | None  # inclusive; None: no upper bound
    points: int


#: Age on ``today`` in completed years (a birthday counts from its day; a
#: 29 February birthday from 1 March in common years). Ages 5-39 score nothing.
AGE_BANDS: tuple[AgeBand, ...] = (
    AgeBand("age_under_5", 0, 4, 10),
    AgeBand("age_40_49", 40, 49, 5),
    AgeBand("age_50_59", 50, 59, 10),
    AgeBand("age_60_69", 60, 69, 15),
    AgeBand("age_70_79", 70, 79, 20),
    AgeBand("age_80_plus", 80, None, 25),
)


@dataclass(frozen=True)
class ConditionGroup:
    """ICD-10 categories ``letter + first..last`` (``E``, 10, 14: E10-E14)."""

    name: str
    label: str
    letter: str
    first: int
    last: int
    points: int

    @property
    def codes(self) -> str:
        if self.first == self.last:
            return f"{self.letter}{self.first:02d}"
        return f"{self.letter}{self.first:02d}-{self.letter}{self.last:02d}"

    def covers(self, category: tuple[str, int]) -> bool:
        return category[0] == self.letter and self.first <= category[1] <= self.last


#: Each group scores once, however many of its codes an entry carries.
CONDITION_GROUPS: tuple[ConditionGroup, ...] = (
    ConditionGroup("diabetes", "diabetes mellitus", "E", 10, 14, 15),
    ConditionGroup("hypertension", "hypertensive disease", "I", 10, 15, 10),
    ConditionGroup("ischaemic_heart_disease", "ischaemic heart disease", "I", 20, 25, 10),
    ConditionGroup("heart_failure", "heart failure", "I", 50, 50, 15),
    ConditionGroup("stroke", "cerebrovascular disease", "I", 60, 69, 10),
    ConditionGroup("ckd", "chronic kidney disease", "N", 18, 18, 15),
    ConditionGroup("copd", "chronic obstructive pulmonary disease", "J", 44, 44, 10),
    ConditionGroup("asthma", "asthma", "J", 45, 45, 5),
    ConditionGroup("hiv", "HIV disease", "B", 20, 24, 15),
    ConditionGroup("tuberculosis", "tuberculosis", "A", 15, 19, 20),
)

#: Three or more distinct condition groups add this much.
MULTIMORBIDITY_GROUPS = 3
MULTIMORBIDITY_POINTS = 10
#: A scored condition with an onset this many completed years ago or more.
LONG_STANDING_YEARS = 10
LONG_STANDING_POINTS = 10
#: No screening on record, or the last one more than this many days ago.
SCREENING_MAX_DAYS = 365
SCREENING_POINTS = 10
#: No immunization on record, or the last one more than this many days ago.
IMMUNIZATION_MAX_DAYS = 365
IMMUNIZATION_POINTS = 5

# The category of a code is the part before its first ".", as in
# RegistryEntry.has_condition: "E11.9" is in E11; "E119" and programme codes
# ("HTN") belong to no group.
_CATEGORY_RE = re.compile(r"([A-Z])(\d{2})")


@dataclass(frozen=True)
class Factor:
    name: str
    points: int
    reason: str


@dataclass(frozen=True)
class ComputedRisk:
    """A score of 0..100 and the factors whose points sum to it exactly
    (a ``cap`` factor with negative points records the cut at 100)."""

    score: int
    band: Band
    factors: tuple[Factor, ...]
    model_version: str = MODEL_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "band": self.band.value,
            "modelVersion": self.model_version,
            "factors": [
                {"name": f.name, "points": f.points, "reason": f.reason} for f in self.factors
            ],
        }


def condition_category(code: str) -> tuple[str, int] | None:
    """``("E", 11)`` for ``E11`` or ``E11.9``; None for anything else."""
    match = _CATEGORY_RE.fullmatch(code.split(".", 1)[0])
    return None if match is None else (match[1], int(match[2]))


def group_of(code: str) -> ConditionGroup | None:
    category = condition_category(code)
    if category is None:
        return None
    return next((g for g in CONDITION_GROUPS if g.covers(category)), None)


def completed_years(since: date, day: date) -> int:
    """Whole years from ``since`` to ``day``, counted like an age."""
    years = day.year - since.year
    return years - ((day.month, day.day) < (since.month, since.day))


def _age_factor(entry: RegistryEntry, today: date) -> Factor | None:
    age = entry.age_on(today)
    for band in AGE_BANDS:
        if band.min_age <= age and (band.max_age is None or age <= band.max_age):
            return Factor(band.name, band.points, f"age {age} on {today.isoformat()}")
    return None  # 5-39, or a birth date after today (no age points for bad data)


def _overdue(last: date | None, today: date, max_days: int, what: str) -> str | None:
    """The reason ``what`` is overdue, or None when it is not."""
    if last is None:
        return f"no {what} on record"
    days = (today - last).days
    if days > max_days:
        return f"last {what} {last.isoformat()}, {days} days ago (more than {max_days})"
    return None


def compute_risk(entry: RegistryEntry, today: date) -> ComputedRisk:
    """The points model, version ``MODEL_VERSION``; factors in a fixed order:
    age, condition groups (table order), multimorbidity, long-standing
    condition, screening, immunization, cap."""
    factors: list[Factor] = []
    age = _age_factor(entry, today)
    if age is not None:
        factors.append(age)

    found: dict[str, list[Condition]] = {}
    for condition in entry.conditions:
        group = group_of(condition.code)
        if group is not None:
            found.setdefault(group.name, []).append(condition)
    scored = [g for g in CONDITION_GROUPS if g.name in found]
    for group in scored:
        codes = ", ".join(sorted({c.code for c in found[group.name]}))
        factors.append(Factor(group.name, group.points, f"{group.label} ({codes})"))
    if len(scored) >= MULTIMORBIDITY_GROUPS:
        names = ", ".join(g.name for g in scored)
        factors.append(
            Factor(
                "multimorbidity",
                MULTIMORBIDITY_POINTS,
                f"{len(scored)} condition groups ({names})",
            )
        )

    onsets = [
        c
        for conditions in found.values()
        for c in conditions
        if c.onset is not None and completed_years(c.onset, today) >= LONG_STANDING_YEARS
    ]
    if onsets:
        oldest = min(onsets, key=lambda c: (c.onset, c.code))
        assert oldest.onset is not None
        years = completed_years(oldest.onset, today)
        factors.append(
            Factor(
                "long_standing_condition",
                LONG_STANDING_POINTS,
                f"{oldest.code} since {oldest.onset.isoformat()} ({years} years)",
            )
        )

    screening = _overdue(entry.last_screening_date, today, SCREENING_MAX_DAYS, "screening")
    if screening is not None:
        factors.append(Factor("screening_overdue", SCREENING_POINTS, screening))
    immunization = _overdue(
        entry.last_immunization_date, today, IMMUNIZATION_MAX_DAYS, "immunization"
    )
    if immunization is not None:
        factors.append(Factor("immunization_overdue", IMMUNIZATION_POINTS, immunization))

    total = sum(f.points for f in factors)
    if total > MAX_SCORE:
        factors.append(Factor("cap", MAX_SCORE - total, f"{total} points capped at {MAX_SCORE}"))
    score = min(total, MAX_SCORE)
    return ComputedRisk(score, band_for(score), tuple(factors))


# --------------------------------------------------------------------------
# Overrides: last write wins, every attempt audited


class Source(StrEnum):
    COMPUTED = "computed"
    OVERRIDE = "override"


class OverrideDisposition(StrEnum):
    """What became of an override attempt. ``resolve_override`` returns the
    first three; ``rejected`` is for the caller's audit rows of attempts
    refused before resolution (validation, permission, unknown entry)."""

    APPLIED = "applied"
    SUPERSEDED = "superseded"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class RiskOverride:
    id: str
    entry_id: str
    value: int | None  # None: clear the override, fall back to the computed score
    reason: str
    actor_id: str  # the admin's identity (also when a node carries it)
    node_id: str | None  # the enrolled node that carried it; None for an admin token
    occurred_at: datetime

    def lww_key(self) -> tuple[datetime, str]:
        """Last-write-wins order: ``occurredAt`` at the wire's millisecond
        precision, then ``id`` (plain string order) to break ties.

        Truncating to milliseconds keeps the order the same before and after
        a store and reload (times are sent and stored with milliseconds).
        """
        at = self.occurred_at
        return (at.replace(microsecond=at.microsecond // 1000 * 1000), self.id)

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": RISK_OVERRIDE_KIND,
            "id": self.id,
            "entryId": self.entry_id,
            "value": self.value,
            "reason": self.reason,
            "actorId": self.actor_id,
            "nodeId": self.node_id,
            "occurredAt": format_timestamp(self.occurred_at),
        }


def _override_value(value: Any) -> int | None:
    if value is None:
        return None
    # bool is an int in Python; JSON true is not a score.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SCORE:
        raise ValidationFailed(
            f"value must be an integer 0..{MAX_SCORE}, or null to clear", field="value"
        )
    return value


def _reason(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_REASON:
        raise ValidationFailed(
            f"reason must be a non-blank string of 1..{MAX_REASON} characters", field="reason"
        )
    return value


def parse_risk_override(obj: Any, *, node_id: str | None = None, where: str = "") -> RiskOverride:
    """An override from its wire form.

    ``value`` must be present (null clears: a missing value never clears by
    accident); ``kind`` may be left out but, if given, must be
    ``risk_score.override``. ``node_id`` is not read from the body: it is the
    authenticated node that carried the override, or None for an admin token.
    A refusal names the JSON pointer of the bad field (``where`` + field).
    """
    try:
        doc = mapping(obj, "risk override")
        only_fields(doc, OVERRIDE_FIELDS, "risk override")
        if doc.get("kind", RISK_OVERRIDE_KIND) != RISK_OVERRIDE_KIND:
            raise ValidationFailed(f"kind must be {RISK_OVERRIDE_KIND}", field="kind")
        return RiskOverride(
            id=identifier(required(doc, "id"), "id"),
            entry_id=identifier(required(doc, "entryId"), "entryId"),
            value=_override_value(required(doc, "value")),
            reason=_reason(required(doc, "reason")),
            actor_id=identifier(required(doc, "actorId"), "actorId"),
            node_id=None if node_id is None else identifier(node_id, "nodeId"),
            occurred_at=parse_timestamp(required(doc, "occurredAt"), "occurredAt"),
        )
    except ValidationFailed as err:
        field = err.extra.get("field")
        if not where and not field:
            raise
        pointer = f"{where}/{field}" if field else where
        raise ValidationFailed(f"{pointer}: {err.detail}", path=pointer) from err


@dataclass(frozen=True)
class OverrideResolution:
    disposition: OverrideDisposition  # applied | superseded | duplicate
    winner: RiskOverride | None  # the override in force after this attempt (None: none)
    incoming: RiskOverride  # as recorded (occurred_at possibly clamped)
    previous: RiskOverride | None  # the override in force before this attempt
    clock_adjusted: bool = False
    recorded: OverrideDisposition | None = None  # duplicates: the first disposition

    @property
    def changed(self) -> bool:
        """Whether the caller must store ``winner`` as the entry's override."""
        return self.disposition is OverrideDisposition.APPLIED

    @property
    def old_value(self) -> int | None:
        """The override value in force before (None: none, or cleared)."""
        return None if self.previous is None else self.previous.value

    @property
    def new_value(self) -> int | None:
        """The override value in force after (None: none, or cleared)."""
        return None if self.winner is None else self.winner.value


def resolve_override(
    current: RiskOverride | None,
    incoming: RiskOverride,
    *,
    seen: OverrideDisposition | None = None,
    now: datetime | None = None,
) -> OverrideResolution:
    """Resolve one override attempt against the entry's override in force.

    1. ``now`` given and ``incoming.occurred_at`` beyond ``now`` plus
       ``FUTURE_TOLERANCE``: it is clamped to ``now`` first (as for outreach
       transitions), so a skewed clock cannot pin an override forever.
    2. ``incoming.id`` already seen (``seen``, the disposition the audit trail
       recorded for it, or the id of ``current``): ``duplicate``, nothing changes.
    3. No ``current``, or ``incoming.lww_key()`` greater than the current's:
       ``applied`` (a ``value`` of None applies a clear).
    4. Otherwise: ``superseded``; ``current`` stays.

    Applying the same attempts in any order ends with the same winner: the
    one with the greatest ``lww_key()``. ``current`` for another entry is a
    programming error (``ValueError``).
    """
    if current is not None and current.entry_id != incoming.entry_id:
        raise ValueError(
            f"override {incoming.id} is for {incoming.entry_id}, not {current.entry_id}"
        )
    adjusted = False
    if now is not None and incoming.occurred_at > now + FUTURE_TOLERANCE:
        incoming, adjusted = replace(incoming, occurred_at=now), True
    if seen is not None or (current is not None and current.id == incoming.id):
        return OverrideResolution(
            OverrideDisposition.DUPLICATE,
            current,
            incoming,
            current,
            adjusted,
            recorded=seen if seen is not None else OverrideDisposition.APPLIED,
        )
    if current is None or incoming.lww_key() > current.lww_key():
        return OverrideResolution(
            OverrideDisposition.APPLIED, incoming, incoming, current, adjusted
        )
    return OverrideResolution(OverrideDisposition.SUPERSEDED, current, incoming, current, adjusted)


def effective_score(computed: ComputedRisk, override: RiskOverride | None) -> tuple[int, Source]:
    """The score in force and where it comes from."""
    if override is None or override.value is None:
        return computed.score, Source.COMPUTED
    return override.value, Source.OVERRIDE


def _override_wire(override: RiskOverride) -> dict[str, Any]:
    wire = override.to_wire()
    del wire["kind"]
    return wire


def effective_risk(computed: ComputedRisk, override: RiskOverride | None) -> dict[str, Any]:
    """The effective risk score as shown and fed to the edge.

    ``source`` is ``override`` while an override with a value is in force,
    else ``computed``. ``computed`` is always the model's result with its
    factors; ``override`` is the override in force, including a clear
    (``value`` null: who cleared it, when and why), or None if there never
    was one.
    """
    score, source = effective_score(computed, override)
    return {
        "score": score,
        "band": band_for(score).value,
        "source": source.value,
        "computed": computed.to_wire(),
        "override": None if override is None else _override_wire(override),
    }


@dataclass(frozen=True)
class OverrideAudit:
    """One audit row: every attempt, winning or not."""

    override_id: str
    entry_id: str
    actor_id: str
    node_id: str | None
    occurred_at: datetime  # as recorded (clamped if it was)
    reason: str
    requested_value: int | None  # what the attempt asked for (None: clear)
    disposition: OverrideDisposition
    old_score: int  # effective score before the attempt
    old_source: Source
    new_score: int  # effective score after it
    new_source: Source

    def to_wire(self) -> dict[str, Any]:
        return {
            "overrideId": self.override_id,
            "entryId": self.entry_id,
            "actorId": self.actor_id,
            "nodeId": self.node_id,
            "occurredAt": format_timestamp(self.occurred_at),
            "reason": self.reason,
            "requestedValue": self.requested_value,
            "disposition": self.disposition.value,
            "old": {"score": self.old_score, "source": self.old_source.value},
            "new": {"score": self.new_score, "source": self.new_source.value},
        }


def audit_record(resolution: OverrideResolution, computed: ComputedRisk) -> OverrideAudit:
    """The audit row for a resolved attempt, with the effective scores before
    and after it (the computed score stands in wherever no value is in force)."""
    old_score, old_source = effective_score(computed, resolution.previous)
    new_score, new_source = effective_score(computed, resolution.winner)
    attempt = resolution.incoming
    return OverrideAudit(
        override_id=attempt.id,
        entry_id=attempt.entry_id,
        actor_id=attempt.actor_id,
        node_id=attempt.node_id,
        occurred_at=attempt.occurred_at,
        reason=attempt.reason,
        requested_value=attempt.value,
        disposition=resolution.disposition,
        old_score=old_score,
        old_source=old_source,
        new_score=new_score,
        new_source=new_source,
    )

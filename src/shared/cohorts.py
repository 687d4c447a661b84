"""The PopulationCohort DSL: a JSON cohort definition, its validator and its
evaluator over disease registry entries (``population_cohort``, CONTRACT
section 3). Pure: no I/O; ``docs/cohorts.md`` is the reference an admin reads.

A definition is one expression, a JSON object of one of these shapes::

    {"all": [expr, ...]}                       every expression holds (1-100)
    {"any": [expr, ...]}                       at least one holds (1-100)
    {"not": expr}                              the expression does not hold
    {"field": "sex", "op": "eq"|"ne"|"in", "value": ...}
    {"field": "facilityId", "op": "eq"|"ne"|"in", "value": ...}
    {"field": "age", "op": "eq"|"ne"|"lt"|"le"|"gt"|"ge"|"between", "value": ...}
    {"field": "birthDate"|"lastScreeningDate"|"lastImmunizationDate",
     "op": "before"|"after"|"onOrBefore"|"onOrAfter"|"between"
           |"missing"|"present", "value"?: date}
    {"condition": "E11", "onsetBefore"?: date, "onsetAfter"?: date}

where a date is ``"YYYY-MM-DD"`` or one of ``{"daysAgo": n}``,
``{"monthsAgo": n}``, ``{"yearsAgo": n}``, counted back from the evaluation
date. ``missing``/``present`` exist only for the optional dates.

``validate_cohort`` reports every error with an RFC 6901 JSON-pointer path;
``parse_cohort`` turns a valid definition into frozen dataclasses (or raises
``CohortInvalid`` carrying the list); ``evaluate`` and ``members`` answer for
registry entries on a given day; ``canonical_json`` spells a definition one
way only, so identical drafts compare equal.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Any, TypeAlias, TypeVar, assert_never

from shared.errors import CohortInvalid
from shared.registry import RegistryEntry, Sex
from shared.values import is_identifier

# Limits. A definition past any of them is refused, never truncated.
MAX_DEPTH = 16  # nesting of expressions; the root is at depth 1
MAX_NODES = 500  # expressions in one definition (combinators and tests alike)
MAX_CHILDREN = 100  # expressions in one "all" / "any"
MAX_VALUES = 256  # values in one "in" list
MAX_SIZE = 65536  # bytes of the definition as compact UTF-8 JSON
MAX_AGE = 150  # years; ages and "yearsAgo" stay within one lifetime
MAX_AGO = {"daysAgo": MAX_AGE * 365, "monthsAgo": MAX_AGE * 12, "yearsAgo": MAX_AGE}

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# The registry's code alphabet, starting and ending with a letter or digit
# (a trailing dot would never match anything).
_CODE_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,30}[A-Za-z0-9])?")


class Field(StrEnum):
    """Registry fields a ``{"field": ...}`` test may name (wire spelling)."""

    SEX = "sex"
    FACILITY_ID = "facilityId"
    AGE = "age"
    BIRTH_DATE = "birthDate"
    LAST_SCREENING_DATE = "lastScreeningDate"
    LAST_IMMUNIZATION_DATE = "lastImmunizationDate"


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    BETWEEN = "between"
    BEFORE = "before"
    AFTER = "after"
    ON_OR_BEFORE = "onOrBefore"
    ON_OR_AFTER = "onOrAfter"
    MISSING = "missing"
    PRESENT = "present"


class Unit(StrEnum):
    """Units of a relative date, by the key that spells them."""

    DAYS = "daysAgo"
    MONTHS = "monthsAgo"
    YEARS = "yearsAgo"


_SET_OPS = (Op.EQ, Op.NE, Op.IN)
_AGE_OPS = (Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE, Op.BETWEEN)
_DATE_OPS = (Op.BEFORE, Op.AFTER, Op.ON_OR_BEFORE, Op.ON_OR_AFTER, Op.BETWEEN)
_OPTIONAL_DATE_OPS = (*_DATE_OPS, Op.MISSING, Op.PRESENT)
OPS: Mapping[Field, tuple[Op, ...]] = {
    Field.SEX: _SET_OPS,
    Field.FACILITY_ID: _SET_OPS,
    Field.AGE: _AGE_OPS,
    Field.BIRTH_DATE: _DATE_OPS,
    Field.LAST_SCREENING_DATE: _OPTIONAL_DATE_OPS,
    Field.LAST_IMMUNIZATION_DATE: _OPTIONAL_DATE_OPS,
}
DATE_FIELDS = frozenset({Field.BIRTH_DATE, Field.LAST_SCREENING_DATE, Field.LAST_IMMUNIZATION_DATE})

# The key that says what an expression is, and the keys each kind may carry.
_KINDS = ("all", "any", "not", "field", "condition")
_KEYS: Mapping[str, tuple[str, ...]] = {
    "all": ("all",),
    "any": ("any",),
    "not": ("not",),
    "field": ("field", "op", "value"),
    "condition": ("condition", "onsetBefore", "onsetAfter"),
}


# The parsed form. Values are stored canonically ("in" lists sorted and
# without duplicates, condition codes upper-case), so two definitions are
# equal exactly when their canonical JSON is.


@dataclass(frozen=True)
class RelativeDate:
    """``amount`` days, months or years before the evaluation date.

    Months and years keep the day of the month, clamped to the month's end:
    one month before 31 March is 28 (or 29) February, one year before
    29 February is 28 February.
    """

    unit: Unit
    amount: int

    def on(self, today: date) -> date:
        if self.unit is Unit.DAYS:
            try:
                return today - timedelta(days=self.amount)
            except OverflowError:
                return date.min
        months = self.amount if self.unit is Unit.MONTHS else 12 * self.amount
        year, month0 = divmod(today.year * 12 + today.month - 1 - months, 12)
        if year < date.min.year:
            return date.min
        month = month0 + 1
        return date(year, month, min(today.day, calendar.monthrange(year, month)[1]))


DateRef: TypeAlias = date | RelativeDate


def resolve_date(ref: DateRef, today: date) -> date:
    return ref if isinstance(ref, date) else ref.on(today)


@dataclass(frozen=True)
class AllOf:
    children: tuple[Expr, ...]


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    child: Expr


@dataclass(frozen=True)
class SexTest:
    op: Op  # eq, ne: one value; in: one or more
    values: tuple[Sex, ...]


@dataclass(frozen=True)
class FacilityTest:
    op: Op  # eq, ne: one value; in: one or more
    values: tuple[str, ...]


@dataclass(frozen=True)
class AgeTest:
    op: Op  # between: (low, high), inclusive; others: one bound
    bounds: tuple[int, ...]


@dataclass(frozen=True)
class DateTest:
    field: Field
    op: Op  # between: (from, to), inclusive; missing, present: none
    bounds: tuple[DateRef, ...]


@dataclass(frozen=True)
class ConditionTest:
    """A condition with ``code`` or a code under it; onset bounds are strict."""

    code: str
    onset_before: DateRef | None = None
    onset_after: DateRef | None = None


Expr: TypeAlias = AllOf | AnyOf | Not | SexTest | FacilityTest | AgeTest | DateTest | ConditionTest


@dataclass(frozen=True)
class CohortDefinition:
    root: Expr


@dataclass(frozen=True)
class CohortError:
    """One problem in a definition: where (RFC 6901 pointer) and what."""

    path: str
    message: str

    def to_wire(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


# Validation and parsing: one walk does both.


def validate_cohort(definition: Any) -> list[CohortError]:
    """Every error in ``definition`` (decoded JSON), in document order."""
    return _read(definition)[1]


def parse_cohort(definition: Any) -> CohortDefinition:
    """The parsed definition, or ``CohortInvalid`` carrying every error."""
    parsed, errors = _read(definition)
    if parsed is None:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CohortInvalid(
            f"invalid cohort definition: {first.path or '/'}: {first.message}{more}",
            errors=[e.to_wire() for e in errors],
        )
    return parsed


def pointer(path: str, token: object) -> str:
    """``path`` extended by one RFC 6901 reference token."""
    return path + "/" + str(token).replace("~", "~0").replace("/", "~1")


def _read(definition: Any) -> tuple[CohortDefinition | None, list[CohortError]]:
    size = _json_size(definition)
    if size is not None and size > MAX_SIZE:
        return None, [CohortError("", f"is larger than {MAX_SIZE} bytes")]
    reader = _Reader()
    root = reader.expr(definition, "", 1)
    if reader.errors or root is None:
        return None, reader.errors
    return CohortDefinition(root), []


def _json_size(obj: Any) -> int | None:
    """Bytes of ``obj`` as compact JSON, or None when it is not plain JSON
    (the walk then reports the offending value where it lies)."""
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return len(text.encode("utf-8", "surrogatepass"))


_T = TypeVar("_T")


class _Reader:
    def __init__(self) -> None:
        self.errors: list[CohortError] = []
        self.nodes = 0
        self.full = False  # past MAX_NODES: stop reading

    def error(self, path: str, message: str) -> None:
        self.errors.append(CohortError(path, message))

    def expr(self, obj: Any, path: str, depth: int) -> Expr | None:
        if self.full:
            return None
        if depth > MAX_DEPTH:
            self.error(path, f"is nested deeper than {MAX_DEPTH} levels")
            return None
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self.full = True
            self.error("", f"has more than {MAX_NODES} expressions")
            return None
        if not isinstance(obj, Mapping):
            self.error(path, "must be an object (an expression)")
            return None
        kinds = [kind for kind in _KINDS if kind in obj]
        if not kinds:
            self.error(path, f"must have one of the keys {', '.join(_KINDS)}")
            return None
        if len(kinds) > 1:
            self.error(
                path,
                f"must have only one of the keys {', '.join(_KINDS)} (has {', '.join(kinds)})",
            )
            return None
        kind = kinds[0]
        allowed = _KEYS[kind]
        for key in sorted((k for k in obj if k not in allowed), key=str):
            self.error(pointer(path, key), f"unknown key; allowed here: {', '.join(allowed)}")
        if kind == "all" or kind == "any":
            children = self.children(obj[kind], pointer(path, kind), depth)
            if children is None:
                return None
            return AllOf(children) if kind == "all" else AnyOf(children)
        if kind == "not":
            child = self.expr(obj["not"], pointer(path, "not"), depth + 1)
            return None if child is None else Not(child)
        if kind == "field":
            return self.field_test(obj, path)
        return self.condition_test(obj, path)

    def children(self, raw: Any, path: str, depth: int) -> tuple[Expr, ...] | None:
        if not isinstance(raw, list | tuple) or not 1 <= len(raw) <= MAX_CHILDREN:
            self.error(path, f"must be an array of 1 to {MAX_CHILDREN} expressions")
            return None
        read = []
        for n, item in enumerate(raw):
            if self.full:
                return None
            read.append(self.expr(item, pointer(path, n), depth + 1))
        return None if None in read else tuple(e for e in read if e is not None)

    def field_test(self, obj: Mapping[Any, Any], path: str) -> Expr | None:
        raw_field = obj["field"]
        known = isinstance(raw_field, str) and raw_field in _FIELD_NAMES
        field = Field(raw_field) if known else None
        if field is None:
            self.error(pointer(path, "field"), f"must be one of {', '.join(sorted(_FIELD_NAMES))}")
        if "op" not in obj:
            self.error(pointer(path, "op"), "is required")
            return None
        if field is None:
            return None
        ops = OPS[field]
        raw_op = obj["op"]
        if not isinstance(raw_op, str) or raw_op not in ops:
            self.error(pointer(path, "op"), f"must be one of {', '.join(ops)} for {field}")
            return None
        op = Op(raw_op)
        vpath = pointer(path, "value")
        if op is Op.MISSING or op is Op.PRESENT:
            if "value" in obj:
                self.error(vpath, f"must be absent with op {op}")
                return None
            return DateTest(field, op, ())
        if "value" not in obj:
            self.error(vpath, "is required")
            return None
        value = obj["value"]
        if field is Field.SEX:
            sexes = self.one_or_set(op, value, vpath, self.sex)
            return None if sexes is None else SexTest(op, sexes)
        if field is Field.FACILITY_ID:
            facilities = self.one_or_set(op, value, vpath, self.facility)
            return None if facilities is None else FacilityTest(op, facilities)
        if field is Field.AGE:
            if op is Op.BETWEEN:
                ages = self.pair(value, vpath, self.age, "[low, high]")
                if ages is not None and ages[0] > ages[1]:
                    self.error(vpath, "must be [low, high] with low <= high")
                    return None
                return None if ages is None else AgeTest(op, ages)
            age = self.age(value, vpath)
            return None if age is None else AgeTest(op, (age,))
        if op is Op.BETWEEN:
            days: tuple[DateRef, DateRef] | None = self.pair(
                value, vpath, self.date_ref, "[from, to]"
            )
            if days is not None and (_order(days[0], days[1]) or 0) > 0:
                self.error(vpath, "must be [from, to] with from on or before to")
                return None
            return None if days is None else DateTest(field, op, days)
        day = self.date_ref(value, vpath)
        return None if day is None else DateTest(field, op, (day,))

    def condition_test(self, obj: Mapping[Any, Any], path: str) -> Expr | None:
        raw = obj["condition"]
        code = raw.upper() if isinstance(raw, str) and _CODE_RE.fullmatch(raw) else None
        if code is None:
            self.error(
                pointer(path, "condition"),
                "must be a condition code: 1-32 of [A-Za-z0-9.-], "
                "starting and ending with a letter or digit",
            )
        before = after = None
        ok = code is not None
        if "onsetBefore" in obj:
            before = self.date_ref(obj["onsetBefore"], pointer(path, "onsetBefore"))
            ok = ok and before is not None
        if "onsetAfter" in obj:
            after = self.date_ref(obj["onsetAfter"], pointer(path, "onsetAfter"))
            ok = ok and after is not None
        order = None if before is None or after is None else _order(after, before)
        if order is not None and order >= 0:
            self.error(pointer(path, "onsetAfter"), "must be earlier than onsetBefore")
            return None
        if not ok or code is None:
            return None
        return ConditionTest(code, before, after)

    # Values.

    def one_or_set(
        self, op: Op, value: Any, path: str, item: Callable[[Any, str], _T | None]
    ) -> tuple[_T, ...] | None:
        if op is not Op.IN:
            one = item(value, path)
            return None if one is None else (one,)
        if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_VALUES:
            self.error(path, f"must be an array of 1 to {MAX_VALUES} values")
            return None
        read = [item(v, pointer(path, n)) for n, v in enumerate(value)]
        if None in read:
            return None
        return tuple(sorted({v for v in read if v is not None}, key=str))

    def pair(
        self, value: Any, path: str, item: Callable[[Any, str], _T | None], shape: str
    ) -> tuple[_T, _T] | None:
        if not isinstance(value, list | tuple) or len(value) != 2:
            self.error(path, f"must be an array {shape}")
            return None
        low, high = item(value[0], pointer(path, 0)), item(value[1], pointer(path, 1))
        return None if low is None or high is None else (low, high)

    def sex(self, value: Any, path: str) -> Sex | None:
        if isinstance(value, str) and value in _SEX_NAMES:
            return Sex(value)
        self.error(path, f"must be one of {', '.join(s.value for s in Sex)}")
        return None

    def facility(self, value: Any, path: str) -> str | None:
        if is_identifier(value):
            assert isinstance(value, str)
            return value
        self.error(path, "must be a facility id: 1-128 characters of [A-Za-z0-9._:-]")
        return None

    def age(self, value: Any, path: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_AGE:
            return value
        self.error(path, f"must be an integer from 0 to {MAX_AGE}")
        return None

    def date_ref(self, value: Any, path: str) -> DateRef | None:
        if isinstance(value, str) and _DATE_RE.fullmatch(value):
            try:
                return date.fromisoformat(value)
            except ValueError:
                self.error(path, "is not a calendar date")
                return None
        if isinstance(value, Mapping):
            units = [u for u in Unit if u.value in value]
            if len(units) != 1 or len(value) != 1:
                self.error(path, f"must have exactly one of the keys {', '.join(Unit)}")
                return None
            unit = units[0]
            amount = value[unit.value]
            limit = MAX_AGO[unit.value]
            if isinstance(amount, int) and not isinstance(amount, bool) and 0 <= amount <= limit:
                return RelativeDate(unit, amount)
            self.error(pointer(path, unit.value), f"must be an integer from 0 to {limit}")
            return None
        self.error(path, 'must be a date "YYYY-MM-DD" or {"daysAgo"|"monthsAgo"|"yearsAgo": n}')
        return None


_FIELD_NAMES = frozenset(f.value for f in Field)
_SEX_NAMES = frozenset(s.value for s in Sex)


def _order(a: DateRef, b: DateRef) -> int | None:
    """-1, 0 or 1 when ``a`` falls before, on or after ``b`` on every
    evaluation date; None when that depends on the date (mixed kinds)."""
    if isinstance(a, date) and isinstance(b, date):
        return (a > b) - (a < b)
    if isinstance(a, RelativeDate) and isinstance(b, RelativeDate) and a.unit is b.unit:
        return (a.amount < b.amount) - (a.amount > b.amount)  # more ago is earlier
    return None


# Evaluation.


def evaluate(definition: CohortDefinition, entry: RegistryEntry, today: date) -> bool:
    """Whether ``entry`` belongs to the cohort on ``today``."""
    return _holds(definition.root, entry, today)


def members(
    definition: CohortDefinition, entries: Iterable[RegistryEntry], today: date
) -> set[str]:
    """Ids of the entries that belong to the cohort on ``today``."""
    return {entry.id for entry in entries if _holds(definition.root, entry, today)}


def _holds(expr: Expr, entry: RegistryEntry, today: date) -> bool:
    match expr:
        case AllOf(children):
            return all(_holds(child, entry, today) for child in children)
        case AnyOf(children):
            return any(_holds(child, entry, today) for child in children)
        case Not(child):
            return not _holds(child, entry, today)
        case SexTest(op, values):
            return (entry.sex in values) is not (op is Op.NE)
        case FacilityTest(op, values):
            return (entry.facility_id in values) is not (op is Op.NE)
        case AgeTest(op, bounds):
            return _compare(op, entry.age_on(today), bounds)
        case DateTest(field, op, bounds):
            value = _date_of(entry, field)
            if op is Op.MISSING or op is Op.PRESENT:
                return (value is None) is (op is Op.MISSING)
            if value is None:  # an unknown date satisfies no comparison
                return False
            return _compare(op, value, tuple(resolve_date(b, today) for b in bounds))
        case ConditionTest(code, onset_before, onset_after):
            before = None if onset_before is None else resolve_date(onset_before, today)
            after = None if onset_after is None else resolve_date(onset_after, today)
            return any(
                (c.code == code or c.code.startswith(code + "."))
                and (before is None or (c.onset is not None and c.onset < before))
                and (after is None or (c.onset is not None and c.onset > after))
                for c in entry.conditions
            )
        case _:
            assert_never(expr)


_C = TypeVar("_C", int, date)


def _compare(op: Op, value: _C, bounds: tuple[_C, ...]) -> bool:
    if op is Op.BETWEEN:
        return bounds[0] <= value <= bounds[1]
    bound = bounds[0]
    if op is Op.EQ:
        return value == bound
    if op is Op.NE:
        return value != bound
    if op is Op.LT or op is Op.BEFORE:
        return value < bound
    if op is Op.LE or op is Op.ON_OR_BEFORE:
        return value <= bound
    if op is Op.GT or op is Op.AFTER:
        return value > bound
    if op is Op.GE or op is Op.ON_OR_AFTER:
        return value >= bound
    raise AssertionError(f"no comparison {op}")  # the parser admits no other op


def _date_of(entry: RegistryEntry, field: Field) -> date | None:
    if field is Field.BIRTH_DATE:
        return entry.birth_date
    if field is Field.LAST_SCREENING_DATE:
        return entry.last_screening_date
    return entry.last_immunization_date


def depends_on_today(definition: CohortDefinition) -> bool:
    """Whether membership can change with the date alone (an age test or a
    relative date): such cohorts must be re-evaluated when the day changes,
    not only when registry entries change."""
    return _dated(definition.root)


def _dated(expr: Expr) -> bool:
    match expr:
        case AllOf(children) | AnyOf(children):
            return any(_dated(child) for child in children)
        case Not(child):
            return _dated(child)
        case AgeTest():
            return True
        case DateTest(_, _, bounds):
            return any(isinstance(b, RelativeDate) for b in bounds)
        case ConditionTest(_, before, after):
            return isinstance(before, RelativeDate) or isinstance(after, RelativeDate)
        case _:
            return False


# Canonical form.


def to_wire(definition: CohortDefinition) -> dict[str, Any]:
    """The definition as decoded JSON, in its canonical spelling."""
    return _expr_to_wire(definition.root)


def canonical_json(definition: CohortDefinition) -> str:
    """One spelling per definition: keys sorted, no whitespace, ASCII only,
    ``in`` values sorted without duplicates, condition codes upper-case.
    Equal strings mean equal definitions; the order of ``all``/``any``
    members is kept (it is what the admin wrote)."""
    return json.dumps(to_wire(definition), sort_keys=True, separators=(",", ":"))


def _expr_to_wire(expr: Expr) -> dict[str, Any]:
    match expr:
        case AllOf(children):
            return {"all": [_expr_to_wire(child) for child in children]}
        case AnyOf(children):
            return {"any": [_expr_to_wire(child) for child in children]}
        case Not(child):
            return {"not": _expr_to_wire(child)}
        case SexTest(op, values):
            return _field_wire(Field.SEX, op, [v.value for v in values])
        case FacilityTest(op, values):
            return _field_wire(Field.FACILITY_ID, op, list(values))
        case AgeTest(op, bounds):
            return _field_wire(Field.AGE, op, list(bounds))
        case DateTest(field, op, bounds):
            return _field_wire(field, op, [_date_wire(b) for b in bounds])
        case ConditionTest(code, before, after):
            wire: dict[str, Any] = {"condition": code}
            if before is not None:
                wire["onsetBefore"] = _date_wire(before)
            if after is not None:
                wire["onsetAfter"] = _date_wire(after)
            return wire
        case _:
            assert_never(expr)


def _field_wire(field: Field, op: Op, values: list[Any]) -> dict[str, Any]:
    wire: dict[str, Any] = {"field": field.value, "op": op.value}
    if op is Op.IN or op is Op.BETWEEN:
        wire["value"] = values
    elif values:
        wire["value"] = values[0]
    return wire


def _date_wire(ref: DateRef) -> Any:
    return ref.isoformat() if isinstance(ref, date) else {ref.unit.value: ref.amount}

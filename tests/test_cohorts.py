"""The PopulationCohort DSL (shared.cohorts): validation with JSON-pointer
paths, limits, evaluation over a literal registry, the canonical form."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.cohorts import (
    MAX_CHILDREN,
    MAX_DEPTH,
    MAX_NODES,
    MAX_SIZE,
    MAX_VALUES,
    CohortDefinition,
    CohortError,
    RelativeDate,
    Unit,
    canonical_json,
    depends_on_today,
    evaluate,
    members,
    parse_cohort,
    to_wire,
    validate_cohort,
)
from shared.errors import CohortInvalid, ItemCode, Unprocessable
from shared.registry import Condition, RegistryEntry, Sex

TODAY = date(2026, 11, 25)

# Shorthands for the tables.
FEMALE = {"field": "sex", "op": "eq", "value": "female"}
E11 = {"condition": "E11"}


def entry(
    id: str,
    sex: Sex,
    facility: str,
    born: date,
    conditions: tuple[Condition, ...] = (),
    screened: date | None = None,
    immunized: date | None = None,
) -> RegistryEntry:
    return RegistryEntry(id, facility, "p-" + id, sex, born, conditions, screened, immunized)


# The literal registry, ages as on TODAY (2026-11-25).
REGISTRY = [
    # 66 today: her birthday.
    entry("ana", Sex.FEMALE, "f1", date(1960, 11, 25), (Condition("E11.9", date(2015, 3, 1)),),
          screened=date(2025, 11, 24), immunized=date(2026, 10, 1)),
    # 65 today, 66 tomorrow; E11 with an unknown onset; screened exactly 365 days ago.
    entry("ben", Sex.MALE, "f1", date(1960, 11, 26), (Condition("E11"),),
          screened=date(2025, 11, 25)),
    # Born on a leap day: 18 today. E110 is not under E11.
    entry("cai", Sex.FEMALE, "f2", date(2008, 2, 29),
          (Condition("E110"), Condition("I10", date(2024, 1, 10)))),
    # 36; screened today.
    entry("dee", Sex.OTHER, "f3", date(1990, 6, 15),
          screened=date(2026, 11, 25), immunized=date(2020, 1, 1)),
    # Under one year old; asthma since May.
    entry("eli", Sex.UNKNOWN, "f2", date(2026, 1, 1), (Condition("J45", date(2026, 5, 1)),)),
]  # fmt: skip
EVERYONE = {e.id for e in REGISTRY}


# --- Valid definitions and their canonical form ------------------------------

# (definition, canonical JSON)
VALID: list[tuple[Any, str]] = [
    # The smallest definition: one test.
    (FEMALE, '{"field":"sex","op":"eq","value":"female"}'),
    # "in" values are a set: sorted, duplicates dropped.
    (
        {"field": "sex", "op": "in", "value": ["unknown", "female", "unknown"]},
        '{"field":"sex","op":"in","value":["female","unknown"]}',
    ),
    # Condition codes are upper-cased, like the registry's.
    ({"condition": "e11.9"}, '{"condition":"E11.9"}'),
    # Keys are sorted; onset bounds absolute and relative.
    (
        {"onsetBefore": {"daysAgo": 30}, "condition": "E11", "onsetAfter": "2020-01-01"},
        '{"condition":"E11","onsetAfter":"2020-01-01","onsetBefore":{"daysAgo":30}}',
    ),
    # The order of "all" members is kept: it is what the admin wrote.
    (
        {"all": [E11, FEMALE]},
        '{"all":[{"condition":"E11"},{"field":"sex","op":"eq","value":"female"}]}',
    ),
    # Nesting of every combinator.
    (
        {"any": [{"not": {"all": [E11]}}]},
        '{"any":[{"not":{"all":[{"condition":"E11"}]}}]}',
    ),
    # Age between is inclusive; low == high is allowed.
    ({"field": "age", "op": "between", "value": [40, 40]}, None),
    # Ages 0 and 150 are the bounds.
    ({"field": "age", "op": "ge", "value": 0}, None),
    ({"field": "age", "op": "lt", "value": 150}, None),
    # missing/present carry no value.
    ({"field": "lastImmunizationDate", "op": "missing"}, None),
    # The brief's example: screened more than a year ago.
    ({"field": "lastScreeningDate", "op": "before", "value": {"daysAgo": 365}}, None),
    # Mixed units in between: the order depends on the day, so it is accepted.
    ({"field": "lastScreeningDate", "op": "between", "value": [{"daysAgo": 30}, {"monthsAgo": 0}]},
     None),
    # Same-unit relative bounds in order: 24 months ago to 12 months ago.
    ({"field": "birthDate", "op": "between", "value": [{"monthsAgo": 24}, {"monthsAgo": 12}]},
     None),
    # Leap day is a calendar date in 2024.
    ({"field": "birthDate", "op": "onOrAfter", "value": "2024-02-29"}, None),
    # A facility id uses the identifier alphabet.
    ({"field": "facilityId", "op": "in", "value": ["fac:north-1", "fac.2"]}, None),
    # Tuples are accepted where JSON has arrays (Python callers).
    ({"all": (E11,)}, '{"all":[{"condition":"E11"}]}'),
]  # fmt: skip


@pytest.mark.parametrize(("definition", "canonical"), VALID)
def test_valid_definitions(definition: Any, canonical: str | None) -> None:
    assert validate_cohort(definition) == []
    parsed = parse_cohort(definition)
    text = canonical_json(parsed)
    if canonical is not None:
        assert text == canonical
    # The canonical form reads back to the same definition and spells it the same.
    assert parse_cohort(json.loads(text)) == parsed
    assert canonical_json(parse_cohort(json.loads(text))) == text
    assert to_wire(parsed) == json.loads(text)


def test_identical_drafts_share_a_canonical_form() -> None:
    a = json.loads('{"all": [{"condition": "e11"}, {"value": ["f2", "f1"], "op": "in", '
                   '"field": "facilityId"}]}')  # fmt: skip
    b = {"all": [{"condition": "E11"}, {"field": "facilityId", "op": "in", "value": ["f1", "f2"]}]}
    assert canonical_json(parse_cohort(a)) == canonical_json(parse_cohort(b))
    # Different logic, or a different spelling of a relative date, is another draft.
    c = {"all": [b["all"][1], b["all"][0]]}  # members swapped
    assert canonical_json(parse_cohort(c)) != canonical_json(parse_cohort(b))
    d = {"field": "lastScreeningDate", "op": "before", "value": {"daysAgo": 365}}
    e = {"field": "lastScreeningDate", "op": "before", "value": {"yearsAgo": 1}}
    assert canonical_json(parse_cohort(d)) != canonical_json(parse_cohort(e))


# --- Invalid definitions: every error, with its path -------------------------

# (definition, [(path, fragment of the message)]) — the exact list, in order.
INVALID: list[tuple[Any, list[tuple[str, str]]]] = [
    (42, [("", "must be an object")]),  # not an expression at all
    ({}, [("", "must have one of the keys all, any, not, field, condition")]),  # no kind
    ({"all": [E11], "field": "sex"}, [("", "only one of the keys")]),  # two kinds at once
    ({"all": []}, [("/all", "array of 1 to 100 expressions")]),  # empty "all" is a mistake
    ({"any": E11}, [("/any", "array of 1 to 100 expressions")]),  # not an array
    # Each bad member reported on its own.
    ({"any": [1, "x"]}, [("/any/0", "must be an object"), ("/any/1", "must be an object")]),
    ({"not": None}, [("/not", "must be an object")]),  # null is no expression
    ({"field": "sex", "op": "eq", "value": "F"}, [("/value", "female, male, other, unknown")]),
    ({"field": "gender", "op": "eq", "value": "female"}, [("/field", "age, birthDate")]),
    # Unknown field and no op: both reported.
    ({"field": ["sex"]}, [("/field", "must be one of"), ("/op", "is required")]),
    ({"field": "sex"}, [("/op", "is required")]),  # op is required
    ({"field": "sex", "op": "lt", "value": "female"}, [("/op", "eq, ne, in for sex")]),
    ({"field": "sex", "op": "eq"}, [("/value", "is required")]),  # value is required
    ({"field": "sex", "op": "in", "value": []}, [("/value", "array of 1 to 256 values")]),
    ({"field": "sex", "op": "in", "value": "female"}, [("/value", "array of 1 to 256")]),
    # Each bad value of an "in" list by its index.
    ({"field": "sex", "op": "in", "value": ["female", "f", 3]},
     [("/value/1", "must be one of female"), ("/value/2", "must be one of female")]),
    ({"field": "sex", "op": "eq", "value": ["female"]}, [("/value", "must be one of")]),
    ({"field": "facilityId", "op": "eq", "value": "bad id"}, [("/value", "facility id")]),
    ({"field": "facilityId", "op": "ne", "value": ""}, [("/value", "facility id")]),
    ({"field": "age", "op": "ge", "value": True}, [("/value", "integer from 0 to 150")]),
    ({"field": "age", "op": "ge", "value": 151}, [("/value", "integer from 0 to 150")]),
    ({"field": "age", "op": "ge", "value": 12.5}, [("/value", "integer from 0 to 150")]),
    ({"field": "age", "op": "ge", "value": "65"}, [("/value", "integer from 0 to 150")]),
    ({"field": "age", "op": "before", "value": 3}, [("/op", "for age")]),  # a date op
    ({"field": "age", "op": "between", "value": [40]}, [("/value", "array [low, high]")]),
    ({"field": "age", "op": "between", "value": [70, 40]}, [("/value", "low <= high")]),
    # Both bounds bad: both reported.
    ({"field": "age", "op": "between", "value": [-1, 200]},
     [("/value/0", "integer from 0"), ("/value/1", "integer from 0")]),
    # birthDate is never missing, so missing/present are not offered for it.
    ({"field": "birthDate", "op": "missing"}, [("/op", "between for birthDate")]),
    ({"field": "lastScreeningDate", "op": "missing", "value": "2026-01-01"},
     [("/value", "must be absent with op missing")]),
    ({"field": "lastScreeningDate", "op": "before"}, [("/value", "is required")]),
    ({"field": "lastScreeningDate", "op": "before", "value": "2026-02-30"},
     [("/value", "not a calendar date")]),  # no 30 February
    ({"field": "lastScreeningDate", "op": "before", "value": "2025-02-29"},
     [("/value", "not a calendar date")]),  # 2025 is no leap year
    ({"field": "lastScreeningDate", "op": "before", "value": "26-01-01"},
     [("/value", 'must be a date "YYYY-MM-DD"')]),
    ({"field": "lastScreeningDate", "op": "before", "value": 20260101},
     [("/value", 'must be a date "YYYY-MM-DD"')]),
    ({"field": "lastScreeningDate", "op": "before", "value": {"daysAgo": 1, "monthsAgo": 1}},
     [("/value", "exactly one of the keys daysAgo, monthsAgo, yearsAgo")]),
    ({"field": "lastScreeningDate", "op": "before", "value": {"weeksAgo": 2}},
     [("/value", "exactly one of the keys")]),
    ({"field": "lastScreeningDate", "op": "before", "value": {"daysAgo": -1}},
     [("/value/daysAgo", "integer from 0 to 54750")]),  # relative dates look back only
    ({"field": "lastScreeningDate", "op": "before", "value": {"yearsAgo": 151}},
     [("/value/yearsAgo", "integer from 0 to 150")]),
    ({"field": "lastScreeningDate", "op": "before", "value": {"monthsAgo": "12"}},
     [("/value/monthsAgo", "integer from 0 to 1800")]),
    ({"field": "lastScreeningDate", "op": "between", "value": ["2026-12-31", "2026-01-01"]},
     [("/value", "from on or before to")]),  # reversed absolute bounds
    # 10 days ago is after 30 days ago, on every day.
    ({"field": "lastScreeningDate", "op": "between", "value": [{"daysAgo": 10}, {"daysAgo": 30}]},
     [("/value", "from on or before to")]),
    ({"condition": ""}, [("/condition", "condition code")]),
    ({"condition": "E11."}, [("/condition", "condition code")]),  # would never match
    ({"condition": 11}, [("/condition", "condition code")]),
    ({"condition": "E11", "onsetAfter": "2020-01-01", "onsetBefore": "2019-01-01"},
     [("/onsetAfter", "earlier than onsetBefore")]),  # an empty window
    ({"condition": "E11", "onsetAfter": "2020-01-01", "onsetBefore": "2020-01-01"},
     [("/onsetAfter", "earlier than onsetBefore")]),  # bounds are strict
    ({"condition": "E11", "onsetBefore": "soon"}, [("/onsetBefore", "must be a date")]),
    ({"condition": "E11", "onset": "2020-01-01"},
     [("/onset", "unknown key; allowed here: condition, onsetBefore, onsetAfter")]),
    ({**FEMALE, "negate": True}, [("/negate", "unknown key; allowed here: field, op, value")]),
    ({"not": E11, "comment": "x"}, [("/comment", "unknown key")]),  # no free-text members
    # RFC 6901 escapes "~" as "~0" and "/" as "~1".
    ({"all": [{"condition": "E11", "a/b~c": 1}]}, [("/all/0/a~1b~0c", "unknown key")]),
    # Unknown keys come first (sorted), then the members of the node.
    ({"condition": "e11.", "z": 1, "b": 2}, [("/b", "unknown"), ("/z", "unknown"),
                                             ("/condition", "condition code")]),
    # Several errors across one definition, all reported together.
    (
        {"all": [
            {"field": "sex", "op": "eq", "value": "F"},
            {"field": "age", "op": "between", "value": [70, 40]},
            {"any": [
                {"condition": "E11", "onsetBefor": "2020-01-01"},
                {"field": "lastScreeningDate", "op": "before", "value": {"daysAgo": "365"}},
            ]},
            {"not": {"field": "facilityId", "op": "in", "value": ["f1", "f 2"]}},
            FEMALE,
        ]},
        [
            ("/all/0/value", "must be one of female"),  # "F" is no sex of the registry
            ("/all/1/value", "low <= high"),  # reversed ages
            ("/all/2/any/0/onsetBefor", "unknown key"),  # a typo is not ignored
            ("/all/2/any/1/value/daysAgo", "integer from 0"),  # a string, not a number
            ("/all/3/not/value/1", "facility id"),  # a space in an id
        ],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("definition", "expected"), INVALID)
def test_invalid_definitions(definition: Any, expected: list[tuple[str, str]]) -> None:
    errors = validate_cohort(definition)
    assert [e.path for e in errors] == [path for path, _ in expected], errors
    for error, (_, fragment) in zip(errors, expected, strict=True):
        assert fragment in error.message, (error, fragment)
    with pytest.raises(CohortInvalid) as raised:
        parse_cohort(definition)
    assert raised.value.errors == [e.to_wire() for e in errors]


def test_cohort_invalid_problem_document() -> None:
    definition = {"all": [{"field": "sex", "op": "eq", "value": "F"}, {"condition": ""}]}
    with pytest.raises(CohortInvalid) as raised:
        parse_cohort(definition)
    err = raised.value
    assert isinstance(err, Unprocessable)
    problem = err.problem()
    assert problem["status"] == 422
    assert problem["code"] == "cohort_invalid"
    assert problem["type"] == "https://phs-sync.org/problems/cohort_invalid"
    assert problem["errors"] == [
        {"path": "/all/0/value", "message": "must be one of female, male, other, unknown"},
        {
            "path": "/all/1/condition",
            "message": "must be a condition code: 1-32 of [A-Za-z0-9.-], "
            "starting and ending with a letter or digit",
        },
    ]
    # The detail names the first error and counts the rest.
    assert problem["detail"].startswith("invalid cohort definition: /all/0/value: ")
    assert problem["detail"].endswith("(and 1 more)")
    # A batch item result carries the same code.
    assert ItemCode.COHORT_INVALID.value == CohortInvalid.code
    # The root is named "/" in the detail, "" in the pointer.
    with pytest.raises(CohortInvalid) as root:
        parse_cohort([])
    assert root.value.errors == [{"path": "", "message": "must be an object (an expression)"}]
    assert root.value.detail == "invalid cohort definition: /: must be an object (an expression)"


def test_cohort_error_wire() -> None:
    assert CohortError("/all/0", "x").to_wire() == {"path": "/all/0", "message": "x"}


# --- Limits -----------------------------------------------------------------


def nots(depth: int, leaf: Any = E11) -> Any:
    """An expression ``depth`` levels deep: depth - 1 "not"s around ``leaf``."""
    node = leaf
    for _ in range(depth - 1):
        node = {"not": node}
    return node


def test_depth_limit() -> None:
    assert MAX_DEPTH == 16
    assert validate_cohort(nots(16)) == []  # exactly at the limit
    # One deeper: reported at the node past the limit, which is not read.
    assert validate_cohort(nots(17, leaf="not even an object")) == [
        CohortError("/not" * 16, "is nested deeper than 16 levels")
    ]
    # Depth counts through "all" and "any" as well.
    assert [e.path for e in validate_cohort({"all": [nots(16)]})] == ["/all/0" + "/not" * 15]


def test_hostile_depth_is_refused_without_recursing() -> None:
    # Far past Python's recursion limit: measured by neither json nor the walk.
    errors = validate_cohort(nots(100_000))
    assert errors == [CohortError("/not" * 16, "is nested deeper than 16 levels")]


def test_node_limit() -> None:
    assert MAX_NODES == 500
    # 1 root + 99 chains of 5 + one chain of 4 = 500 expressions.
    at_limit = {"all": [nots(5)] * 99 + [nots(4)]}
    assert validate_cohort(at_limit) == []
    # 1 + 100 chains of 5 = 501: one error at the root; errors met before stay.
    over = {"all": [nots(5, {"condition": ""})] + [nots(5)] * 99}
    assert validate_cohort(over) == [
        CohortError(
            "/all/0/not/not/not/not/condition", validate_cohort({"condition": ""})[0].message
        ),
        CohortError("", "has more than 500 expressions"),
    ]


def test_list_limits() -> None:
    assert (MAX_CHILDREN, MAX_VALUES) == (100, 256)
    assert validate_cohort({"any": [E11] * 100}) == []
    assert [e.path for e in validate_cohort({"any": [E11] * 101})] == ["/any"]
    ids = [f"f{n}" for n in range(257)]
    assert validate_cohort({"field": "facilityId", "op": "in", "value": ids[:256]}) == []
    over = validate_cohort({"field": "facilityId", "op": "in", "value": ids})
    assert over == [CohortError("/value", "must be an array of 1 to 256 values")]


def test_size_limit() -> None:
    assert MAX_SIZE == 65536
    ids = [f"{n:03d}" + "x" * 125 for n in range(256)]  # 128-character ids
    big = {"field": "facilityId", "op": "in", "value": ids}  # about 33 KB
    assert len(json.dumps(big, separators=(",", ":"))) < MAX_SIZE
    assert validate_cohort(big) == []
    # Two of them pass every other limit but not the size: one error, nothing read.
    too_big = {"any": [big, big, {"condition": ""}]}
    assert validate_cohort(too_big) == [CohortError("", "is larger than 65536 bytes")]


# --- Evaluation over the literal registry ------------------------------------

# (definition, members on TODAY 2026-11-25)
EVALUATIONS: list[tuple[Any, set[str]]] = [
    (FEMALE, {"ana", "cai"}),
    ({"field": "sex", "op": "ne", "value": "female"}, {"ben", "dee", "eli"}),
    ({"field": "sex", "op": "in", "value": ["other", "unknown"]}, {"dee", "eli"}),
    ({"field": "facilityId", "op": "eq", "value": "f1"}, {"ana", "ben"}),
    ({"field": "facilityId", "op": "ne", "value": "f1"}, {"cai", "dee", "eli"}),
    ({"field": "facilityId", "op": "in", "value": ["f2", "f3"]}, {"cai", "dee", "eli"}),
    # Ana completes 66 today; Ben only tomorrow.
    ({"field": "age", "op": "ge", "value": 66}, {"ana"}),
    ({"field": "age", "op": "eq", "value": 65}, {"ben"}),
    ({"field": "age", "op": "gt", "value": 65}, {"ana"}),
    ({"field": "age", "op": "ne", "value": 65}, EVERYONE - {"ben"}),
    # Cai, born 2008-02-29, is 18; Eli is 0.
    ({"field": "age", "op": "le", "value": 18}, {"cai", "eli"}),
    ({"field": "age", "op": "lt", "value": 1}, {"eli"}),
    # Inclusive at both ends: Ben 65, Cai 18, Dee 36.
    ({"field": "age", "op": "between", "value": [18, 65]}, {"ben", "cai", "dee"}),
    # 365 days before 2026-11-25 is 2025-11-25: Ana (11-24) is before; Ben (11-25) is not;
    # Cai and Eli have no screening date, which satisfies no comparison.
    ({"field": "lastScreeningDate", "op": "before", "value": {"daysAgo": 365}}, {"ana"}),
    ({"field": "lastScreeningDate", "op": "onOrBefore", "value": {"daysAgo": 365}},
     {"ana", "ben"}),
    # ... so "not before" takes in the never-screened too.
    ({"not": {"field": "lastScreeningDate", "op": "before", "value": {"daysAgo": 365}}},
     {"ben", "cai", "dee", "eli"}),
    # Overdue for screening: never screened, or more than a year ago.
    ({"any": [{"field": "lastScreeningDate", "op": "missing"},
              {"field": "lastScreeningDate", "op": "before", "value": {"daysAgo": 365}}]},
     {"ana", "cai", "eli"}),
    ({"field": "lastScreeningDate", "op": "missing"}, {"cai", "eli"}),
    ({"field": "lastScreeningDate", "op": "present"}, {"ana", "ben", "dee"}),
    # 12 months ago is 2025-11-25; only Dee (today) is strictly after.
    ({"field": "lastScreeningDate", "op": "after", "value": {"monthsAgo": 12}}, {"dee"}),
    ({"field": "lastScreeningDate", "op": "onOrAfter", "value": {"yearsAgo": 1}}, {"ben", "dee"}),
    # "daysAgo": 0 is today.
    ({"field": "lastScreeningDate", "op": "onOrAfter", "value": {"daysAgo": 0}}, {"dee"}),
    ({"field": "lastImmunizationDate", "op": "between", "value": ["2026-01-01", "2026-12-31"]},
     {"ana"}),
    ({"field": "lastImmunizationDate", "op": "missing"}, {"ben", "cai", "eli"}),
    ({"field": "birthDate", "op": "before", "value": "1961-01-01"}, {"ana", "ben"}),
    # Born on or after 2008-11-25: Cai (2008-02-29) is not, Eli is.
    ({"field": "birthDate", "op": "onOrAfter", "value": {"yearsAgo": 18}}, {"eli"}),
    # E11 covers E11 and E11.9 but not E110.
    (E11, {"ana", "ben"}),
    # E11.9 does not cover a plain E11.
    ({"condition": "E11.9"}, {"ana"}),
    ({"condition": "e11"}, {"ana", "ben"}),  # codes compare upper-case
    # An onset bound needs a known onset: Ben's E11 has none.
    ({"condition": "E11", "onsetBefore": "2016-01-01"}, {"ana"}),
    ({"condition": "E11", "onsetAfter": "2016-01-01"}, set()),
    # 12 months ago is 2025-11-25; Eli's asthma began 2026-05-01.
    ({"condition": "J45", "onsetAfter": {"monthsAgo": 12}}, {"eli"}),
    # Onset bounds are strict: Cai's I10 began on the bound itself.
    ({"condition": "I10", "onsetAfter": "2024-01-10"}, set()),
    ({"condition": "I10", "onsetAfter": "2024-01-09", "onsetBefore": "2024-01-11"}, {"cai"}),
    ({"all": [FEMALE, E11]}, {"ana"}),
    ({"not": {"all": [FEMALE, E11]}}, EVERYONE - {"ana"}),
    ({"any": [{"field": "facilityId", "op": "eq", "value": "f3"},
              {"field": "age", "op": "lt", "value": 1}]}, {"dee", "eli"}),
]  # fmt: skip


@pytest.mark.parametrize(("definition", "expected"), EVALUATIONS)
def test_evaluation(definition: Any, expected: set[str]) -> None:
    parsed = parse_cohort(definition)
    assert members(parsed, REGISTRY, TODAY) == expected
    assert {e.id for e in REGISTRY if evaluate(parsed, e, TODAY)} == expected


# (today, age of someone born 2008-02-29)
LEAP_DAY_AGES = [
    (date(2026, 2, 28), 17),  # no 29 February in 2026: the year completes on 1 March
    (date(2026, 3, 1), 18),
    (date(2028, 2, 28), 19),  # the day before a real birthday
    (date(2028, 2, 29), 20),  # on the birthday
    (date(2008, 2, 29), 0),  # the day of birth
]


@pytest.mark.parametrize(("today", "age"), LEAP_DAY_AGES)
def test_age_on_a_leap_day_birthday(today: date, age: int) -> None:
    leap = entry("leap", Sex.FEMALE, "f1", date(2008, 2, 29))
    assert evaluate(parse_cohort({"field": "age", "op": "eq", "value": age}), leap, today)
    adult = parse_cohort({"field": "age", "op": "ge", "value": 18})
    assert evaluate(adult, leap, today) is (age >= 18)


# (relative date, today, the date it stands for)
RELATIVE = [
    (RelativeDate(Unit.DAYS, 365), date(2026, 11, 25), date(2025, 11, 25)),
    (RelativeDate(Unit.DAYS, 365), date(2025, 3, 1), date(2024, 3, 1)),  # spans no leap day
    (RelativeDate(Unit.DAYS, 365), date(2024, 3, 1), date(2023, 3, 2)),  # spans 2024-02-29
    (RelativeDate(Unit.DAYS, 0), date(2026, 11, 25), date(2026, 11, 25)),  # today
    (RelativeDate(Unit.MONTHS, 1), date(2026, 3, 31), date(2026, 2, 28)),  # clamped to month end
    (RelativeDate(Unit.MONTHS, 1), date(2028, 3, 31), date(2028, 2, 29)),  # leap February
    (RelativeDate(Unit.MONTHS, 12), date(2026, 1, 15), date(2025, 1, 15)),
    (RelativeDate(Unit.MONTHS, 11), date(2026, 11, 30), date(2025, 12, 30)),  # across a year
    (RelativeDate(Unit.YEARS, 1), date(2028, 2, 29), date(2027, 2, 28)),  # no leap day in 2027
    (RelativeDate(Unit.YEARS, 4), date(2028, 2, 29), date(2024, 2, 29)),
    (RelativeDate(Unit.DAYS, 10), date(1, 1, 5), date.min),  # clamped, never an overflow
    (RelativeDate(Unit.YEARS, 150), date(100, 1, 1), date.min),
]


@pytest.mark.parametrize(("ref", "today", "expected"), RELATIVE)
def test_relative_dates(ref: RelativeDate, today: date, expected: date) -> None:
    assert ref.on(today) == expected


# (definition, whether membership can change with the date alone)
DATED = [
    (FEMALE, False),
    (E11, False),
    ({"condition": "E11", "onsetBefore": "2020-01-01"}, False),  # absolute bound
    ({"condition": "E11", "onsetBefore": {"daysAgo": 1}}, True),  # relative bound
    ({"field": "age", "op": "ge", "value": 18}, True),  # ages grow every day
    ({"field": "lastScreeningDate", "op": "missing"}, False),
    ({"field": "lastScreeningDate", "op": "before", "value": "2026-01-01"}, False),
    ({"not": {"all": [FEMALE, {"field": "birthDate", "op": "before", "value": {"yearsAgo": 5}}]}},
     True),  # found however deep
]  # fmt: skip


@pytest.mark.parametrize(("definition", "dated"), DATED)
def test_depends_on_today(definition: Any, dated: bool) -> None:
    assert depends_on_today(parse_cohort(definition)) is dated


# --- Properties --------------------------------------------------------------

SEXES = [s.value for s in Sex]
FACILITIES = ["f1", "f2", "f3"]
CODES = ["E11", "E11.9", "e11", "I10", "J45"]

abs_dates = st.dates(date(1900, 1, 1), date(2100, 12, 31))
rel_dates = st.builds(
    lambda unit, n: {unit: n}, st.sampled_from(["daysAgo", "monthsAgo", "yearsAgo"]),
    st.integers(0, 150),
)  # fmt: skip
date_values = st.one_of(abs_dates.map(date.isoformat), rel_dates)


def _order_key(value: Any) -> tuple[str, int]:
    """A key comparing two date values of the same kind (absolute, or one unit)."""
    if isinstance(value, str):
        return ("abs", date.fromisoformat(value).toordinal())
    ((unit, n),) = value.items()
    return (unit, -n)


def _ordered(pair: tuple[Any, Any], strict: bool) -> bool:
    a, b = _order_key(pair[0]), _order_key(pair[1])
    if a[0] != b[0]:
        return True  # mixed kinds: the order depends on the day
    return a[1] < b[1] if strict else a[1] <= b[1]


def _set_test(field: str, values: list[str]) -> st.SearchStrategy[Any]:
    one = st.sampled_from(values)
    return st.one_of(
        st.builds(lambda op, v: {"field": field, "op": op, "value": v},
                  st.sampled_from(["eq", "ne"]), one),
        st.lists(one, min_size=1, max_size=4).map(
            lambda vs: {"field": field, "op": "in", "value": vs}),
    )  # fmt: skip


ages = st.integers(0, 150)
date_fields = st.sampled_from(["birthDate", "lastScreeningDate", "lastImmunizationDate"])
leaves = st.one_of(
    _set_test("sex", SEXES),
    _set_test("facilityId", FACILITIES),
    st.builds(lambda op, v: {"field": "age", "op": op, "value": v},
              st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge"]), ages),
    st.lists(ages, min_size=2, max_size=2).map(
        lambda v: {"field": "age", "op": "between", "value": sorted(v)}),
    st.builds(lambda f, op, v: {"field": f, "op": op, "value": v}, date_fields,
              st.sampled_from(["before", "after", "onOrBefore", "onOrAfter"]), date_values),
    st.builds(lambda f, v: {"field": f, "op": "between", "value": list(v)}, date_fields,
              st.tuples(date_values, date_values).filter(lambda p: _ordered(p, strict=False))),
    st.builds(lambda f, op: {"field": f, "op": op},
              st.sampled_from(["lastScreeningDate", "lastImmunizationDate"]),
              st.sampled_from(["missing", "present"])),
    st.builds(lambda c: {"condition": c}, st.sampled_from(CODES)),
    st.builds(lambda c, b: {"condition": c, "onsetBefore": b}, st.sampled_from(CODES), date_values),
    st.builds(lambda c, a: {"condition": c, "onsetAfter": a}, st.sampled_from(CODES), date_values),
    st.builds(lambda c, p: {"condition": c, "onsetAfter": p[0], "onsetBefore": p[1]},
              st.sampled_from(CODES),
              st.tuples(date_values, date_values).filter(lambda p: _ordered(p, strict=True))),
)  # fmt: skip


def _depth(node: Any) -> int:
    if "not" in node:
        return 1 + _depth(node["not"])
    for kind in ("all", "any"):
        if kind in node:
            return 1 + max(_depth(child) for child in node[kind])
    return 1


definitions = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=4).map(lambda xs: {"all": xs}),
        st.lists(kids, min_size=1, max_size=4).map(lambda xs: {"any": xs}),
        kids.map(lambda x: {"not": x}),
    ),
    max_leaves=12,
).filter(lambda d: _depth(d) <= MAX_DEPTH - 3)  # room for the wrappers below

optional_dates = st.none() | abs_dates
entries = st.builds(
    RegistryEntry,
    id=st.just("e"),
    facility_id=st.sampled_from(FACILITIES),
    patient_ref=st.just("p"),
    sex=st.sampled_from(list(Sex)),
    birth_date=abs_dates,
    conditions=st.lists(
        st.builds(Condition, st.sampled_from(["E11", "E11.9", "E110", "I10", "J45"]),
                  optional_dates), max_size=3).map(tuple),
    last_screening_date=optional_dates,
    last_immunization_date=optional_dates,
)  # fmt: skip
# Any day at all, to the ends of the calendar: evaluation must never raise.
todays = st.one_of(st.dates(date(1950, 1, 1), date(2100, 12, 31)), st.dates())


@settings(max_examples=300, deadline=None)
@given(definitions)
def test_generated_definitions_are_valid_and_canonical(definition: Any) -> None:
    assert validate_cohort(definition) == []
    parsed = parse_cohort(definition)
    text = canonical_json(parsed)
    again = parse_cohort(json.loads(text))
    assert again == parsed  # canonical JSON reads back to the same definition
    assert canonical_json(again) == text  # and is spelt the same way twice


@settings(max_examples=300, deadline=None)
@given(definitions, entries, todays)
def test_combinator_laws(definition: Any, person: RegistryEntry, today: date) -> None:
    def holds(d: Any) -> bool:
        return evaluate(parse_cohort(d), person, today)

    x = holds(definition)  # never raises on a valid definition, whatever the day
    assert holds({"not": {"not": definition}}) == x
    assert holds({"all": [definition]}) == x
    assert holds({"any": [definition]}) == x
    assert holds({"not": definition}) == (not x)
    # De Morgan, with a second expression.
    other = {"field": "sex", "op": "eq", "value": person.sex.value}  # true for this person
    assert holds({"not": {"all": [definition, other]}}) == holds(
        {"any": [{"not": definition}, {"not": other}]}
    )
    assert holds({"all": [definition, other]}) == x
    assert holds({"any": [definition, {"not": other}]}) == x


@settings(max_examples=300, deadline=None)
@given(definitions, st.lists(entries, max_size=6), todays)
def test_members_agrees_with_evaluate(
    definition: Any, people: list[RegistryEntry], today: date
) -> None:
    people = [replace(p, id=f"e{n}") for n, p in enumerate(people)]
    parsed = parse_cohort(definition)
    assert members(parsed, people, today) == {p.id for p in people if evaluate(parsed, p, today)}


# Arbitrary JSON, with the DSL's own keys and values mixed in to get deeper.
KEYS = ["all", "any", "not", "field", "op", "value", "condition", "onsetBefore", "onsetAfter",
        "daysAgo", "monthsAgo", "x", "a/b"]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True),
    st.sampled_from(["sex", "age", "lastScreeningDate", "eq", "in", "between", "missing",
                     "female", "f1", "E11", "2026-01-01", "2026-02-30", ""]),
)  # fmt: skip
json_values = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(KEYS), kids),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_validation_never_raises(definition: Any) -> None:
    errors = validate_cohort(definition)
    assert all(isinstance(e, CohortError) for e in errors)
    assert all(e.path == "" or e.path.startswith("/") for e in errors)
    if errors:
        with pytest.raises(CohortInvalid):
            parse_cohort(definition)
    else:
        assert isinstance(parse_cohort(definition), CohortDefinition)


# --- The reference page ------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cohorts.md"
BLOCK_RE = re.compile(r"^```json( invalid| problem)?\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def test_docs_examples() -> None:
    """Every ```json example in docs/cohorts.md is a valid definition; the
    ```json invalid one yields exactly the ```json problem document after it."""
    blocks = [
        (m.group(1) or "", json.loads(m.group(2))) for m in BLOCK_RE.finditer(DOCS.read_text())
    ]
    valid = [doc for tag, doc in blocks if tag == ""]
    assert len(valid) >= 5  # the examples are found at all
    for doc in valid:
        assert validate_cohort(doc) == [], doc
    [invalid] = [doc for tag, doc in blocks if tag == " invalid"]
    [problem] = [doc for tag, doc in blocks if tag == " problem"]
    with pytest.raises(CohortInvalid) as raised:
        parse_cohort(invalid)
    assert raised.value.problem() == problem

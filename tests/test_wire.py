"""shared.wire: the fast path for well-formed transitions accepts and builds
exactly what the field-by-field reader does, and leaves every refusal to it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from shared.encoding import Limits
from shared.errors import BatchTooLarge, PhsError, ValidationFailed
from shared.fsm import Role
from shared.wire import (
    BATCH_TRANSITION_FIELDS,
    FIELD_ROLES,
    MAX_SEQ,
    _parse_transition,
    parse_batch,
    parse_transition,
)

GOOD: dict[str, Any] = {
    "kind": "outreach.transition",
    "id": "t-1",
    "itemId": "item-1",
    "from": "pending",
    "to": "assigned",
    "occurredAt": "2026-11-25T09:30:00.123Z",
    "deviceId": "dev-1",
    "actorId": "worker-1",
    "role": "supervisor",
    "seq": 7,
}

# Values that are good or bad for some field, so mutations hit every check.
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, MAX_SEQ, MAX_SEQ + 1, 1.0, "", "x", "a" * 64, "a" * 65,
    "a" * 128, "a" * 129, "bad id", "é", "worker", "supervisor", "server", "WORKER",
    "2026-11-25T09:30:00Z", "2026-02-30T00:00:00Z", "2026-11-25T24:00:00Z", b"t-1",
    ["t-1"], {"a": 1}, Role.WORKER,
]  # fmt: skip
FIELDS = [*GOOD, "extra", "where"]


def outcome(parse: Any, doc: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "read", parse(doc, *args)
    except PhsError as err:
        return "refused", (type(err), err.detail, err.extra)


def slow(doc: Any, where: str = "") -> tuple[str, Any]:
    return outcome(_parse_transition, doc, where, FIELD_ROLES, BATCH_TRANSITION_FIELDS)


def fast(doc: Any, where: str = "") -> tuple[str, Any]:
    return outcome(parse_transition, doc, where, FIELD_ROLES, BATCH_TRANSITION_FIELDS)


def test_good_document_reads_the_same_both_ways() -> None:
    assert fast(GOOD) == slow(GOOD)
    kind, t = fast(GOOD)
    assert kind == "read"
    assert t.role is Role.SUPERVISOR and t.seq == 7 and t.occurred_at.microsecond == 123000


def test_random_mutations_read_or_refuse_the_same_both_ways() -> None:
    rng = random.Random(11)
    for _ in range(20000):
        doc = dict(GOOD)
        for _ in range(rng.randint(1, 3)):
            field = rng.choice(FIELDS)
            if rng.random() < 0.2:
                doc.pop(field, None)
            else:
                doc[field] = rng.choice(ODD_VALUES)
        assert fast(doc, "/items/3") == slow(doc, "/items/3"), doc


@pytest.mark.parametrize("doc", [None, [], "x", 1, [("id", "t-1")]])
def test_non_objects_refuse_the_same_both_ways(doc: Any) -> None:
    assert fast(doc) == slow(doc)
    assert fast(doc)[0] == "refused"


def batch(items: list[Any]) -> dict[str, Any]:
    return {
        "v": 1,
        "batchId": "b-1",
        "nodeId": "edge-1",
        "createdAt": "2026-11-25T09:30:00.000Z",
        "items": items,
    }


def test_batch_refusal_names_the_first_bad_item() -> None:
    bad = {**GOOD, "id": "bad id"}
    with pytest.raises(ValidationFailed) as err:
        parse_batch(batch([GOOD, GOOD, bad, {**GOOD, "seq": -1}]), Limits())
    assert err.value.extra == {"path": "/items/2/id"}
    assert err.value.detail.startswith("/items/2/id: id must be 1-128 characters")


def test_batch_mixes_fast_and_checked_items() -> None:
    report = {"kind": "facility_report", "id": "r-1", "deviceId": "d", "payload": b"p",
              "signature": b"s"}  # fmt: skip
    other = {"kind": "something.else", "id": "o-1"}
    parsed = parse_batch(batch([GOOD, report, other, {**GOOD, "seq": None}]), Limits())
    assert [type(i).__name__ for i in parsed.items] == [
        "Transition", "ReportSubmission", "OtherItem", "Transition",
    ]  # fmt: skip
    assert parsed.items[0] == parse_transition(GOOD, extra_fields=BATCH_TRANSITION_FIELDS)
    with pytest.raises(BatchTooLarge):
        parse_batch(batch([GOOD] * 3), Limits(max_items=2))

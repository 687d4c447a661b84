"""Typed readers for the batch and transition documents (CONTRACT sections 5, 7).

The gateway checks incoming batches with these, and the edge node checks what
it queues with the same functions, so a batch the edge sends never fails the
gateway's structural checks.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.encoding import Limits
from shared.errors import BatchTooLarge, ValidationFailed
from shared.fsm import Role, Transition
from shared.values import (
    IDENTIFIER_RE,
    binary,
    identifier,
    integer,
    mapping,
    only_fields,
    parse_timestamp,
    required,
    text,
)

TRANSITION_KIND = "outreach.transition"
REPORT_KIND = "facility_report"
COHORT_DRAFT_KIND = "cohort.draft"

TRANSITION_FIELDS = frozenset(
    {"id", "itemId", "from", "to", "occurredAt", "deviceId", "actorId", "seq", "role"}
)
REPORT_FIELDS = frozenset({"deviceId", "payload", "signature"})
REPORT_ITEM_FIELDS = REPORT_FIELDS | {"kind", "id"}
COHORT_DRAFT_FIELDS = frozenset({"kind", "id", "cohortId", "definition", "deviceId"})
BATCH_FIELDS = frozenset({"v", "batchId", "nodeId", "createdAt", "items"})
FIELD_ROLES = frozenset({Role.WORKER, Role.SUPERVISOR})
BATCH_TRANSITION_FIELDS = frozenset({"kind"})  # a batch item also names its kind


@dataclass(frozen=True)
class ReportSubmission:
    id: str | None  # the batch item id; None when posted on its own
    device_id: str
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class CohortDraft:
    """A proposed cohort definition (``cohort.draft``): the gateway validates
    the definition itself (a bad one is a per-item ``cohort_invalid``, not a
    malformed batch) and stores it as the cohort's next version."""

    id: str
    cohort_id: str
    definition: Any  # decoded JSON, as sent
    device_id: str | None = None  # the tablet that wrote it, when one did


@dataclass(frozen=True)
class OtherItem:
    """A kind this gateway does not accept from nodes; answered per item."""

    kind: str
    id: str


BatchItem = Transition | ReportSubmission | CohortDraft | OtherItem


@dataclass(frozen=True)
class Batch:
    batch_id: str
    node_id: str
    created_at: str
    items: Sequence[BatchItem]


def _at(where: str, err: ValidationFailed) -> ValidationFailed:
    field = err.extra.get("field")
    pointer = f"{where}/{field}" if field else where
    return ValidationFailed(f"{pointer}: {err.detail}", path=pointer)


def parse_transition(
    obj: Any,
    where: str = "",
    roles: frozenset[Role] = FIELD_ROLES,
    extra_fields: frozenset[str] = frozenset(),
) -> Transition:
    """A transition from a field device or edge node (role worker by default)."""
    fast = _well_formed_transition(obj, roles, extra_fields)
    if fast is not None:
        return fast
    return _parse_transition(obj, where, roles, extra_fields)


_ROLE_OF: dict[str, Role] = {role.value: role for role in Role}
_IDENTIFIER = IDENTIFIER_RE.fullmatch


def _well_formed_transition(
    obj: Any, roles: frozenset[Role], extra_fields: frozenset[str]
) -> Transition | None:
    """The transition when every check of ``_parse_transition`` passes, else None.

    The fast path for the usual, valid document: plain type tests in one
    function instead of a checked reader per field. It accepts a subset of
    what ``_parse_transition`` accepts and builds the same ``Transition``;
    anything else (including every refusal) goes through ``_parse_transition``,
    which words the error.
    """
    if type(obj) is not dict or not _transition_fields(extra_fields).issuperset(obj):
        return None
    get = obj.get
    role_name = get("role", "worker")
    if type(role_name) is not str or role_name not in roles:
        return None
    id_, item_id, device_id, actor_id = get("id"), get("itemId"), get("deviceId"), get("actorId")
    from_state, to_state, seq = get("from"), get("to"), get("seq")
    occurred_at = get("occurredAt")
    if not (
        type(id_) is str
        and type(item_id) is str
        and type(device_id) is str
        and type(actor_id) is str
        and type(from_state) is str
        and type(to_state) is str
        and type(occurred_at) is str
        and len(from_state) <= 64
        and len(to_state) <= 64
        and (seq is None or (type(seq) is int and 0 <= seq <= MAX_SEQ))
        and _IDENTIFIER(id_)
        and _IDENTIFIER(item_id)
        and _IDENTIFIER(device_id)
        and _IDENTIFIER(actor_id)
    ):
        return None
    try:
        at = parse_timestamp(occurred_at, "occurredAt")
    except ValidationFailed:
        return None
    return Transition(
        id=id_,
        item_id=item_id,
        from_state=from_state,
        to_state=to_state,
        occurred_at=at,
        device_id=device_id,
        actor_id=actor_id,
        role=_ROLE_OF[role_name],
        seq=seq,
    )


def _parse_transition(
    obj: Any, where: str, roles: frozenset[Role], extra_fields: frozenset[str]
) -> Transition:
    """``parse_transition`` with a check per field, naming the first that fails."""
    try:
        doc = mapping(obj, "transition")
        only_fields(doc, _transition_fields(extra_fields), "transition")
        role_name = doc.get("role", Role.WORKER.value)
        # Checked as a string first: a list or map is unhashable (a TypeError, a 500).
        # Role is a StrEnum, so a name is "in" the set of its members.
        if not isinstance(role_name, str) or role_name not in roles:
            raise ValidationFailed(f"role must be one of {', '.join(sorted(roles))}", field="role")
        seq = doc.get("seq")
        return Transition(
            id=identifier(required(doc, "id"), "id"),
            item_id=identifier(required(doc, "itemId"), "itemId"),
            # States are checked by the FSM (rule 3), so only their type here.
            from_state=text(required(doc, "from"), "from", 64),
            to_state=text(required(doc, "to"), "to", 64),
            occurred_at=parse_timestamp(required(doc, "occurredAt"), "occurredAt"),
            device_id=identifier(required(doc, "deviceId"), "deviceId"),
            actor_id=identifier(required(doc, "actorId"), "actorId"),
            role=Role(role_name),
            seq=None if seq is None else _seq(seq),
        )
    except ValidationFailed as err:
        raise _at(where, err) from err


@functools.cache
def _transition_fields(extra: frozenset[str]) -> frozenset[str]:
    return TRANSITION_FIELDS | extra


# Both services store seq as a signed 64-bit SQL integer: a larger one would
# make the insert fail (a 500) instead of a refusal naming the field.
MAX_SEQ = 2**63 - 1


def _seq(value: Any) -> int:
    seq = integer(value, "seq", minimum=0)
    if seq > MAX_SEQ:
        raise ValidationFailed(f"seq must be at most {MAX_SEQ}", field="seq")
    return seq


def parse_report_submission(
    obj: Any, where: str = "", fields: frozenset[str] = REPORT_ITEM_FIELDS
) -> ReportSubmission:
    try:
        doc = mapping(obj, "report")
        only_fields(doc, fields, "facility report")
        return ReportSubmission(
            id=identifier(required(doc, "id"), "id") if "id" in fields else None,
            device_id=identifier(required(doc, "deviceId"), "deviceId"),
            payload=binary(required(doc, "payload"), "payload", 256 * 1024),
            signature=binary(required(doc, "signature"), "signature", 128),
        )
    except ValidationFailed as err:
        raise _at(where, err) from err


def parse_cohort_draft(obj: Any, where: str = "") -> CohortDraft:
    """The item's envelope; its ``definition`` is left to ``shared.cohorts``."""
    try:
        doc = mapping(obj, "cohort draft")
        only_fields(doc, COHORT_DRAFT_FIELDS, "cohort draft")
        device_id = doc.get("deviceId")
        return CohortDraft(
            id=identifier(required(doc, "id"), "id"),
            cohort_id=identifier(required(doc, "cohortId"), "cohortId"),
            definition=required(doc, "definition"),
            device_id=None if device_id is None else identifier(device_id, "deviceId"),
        )
    except ValidationFailed as err:
        raise _at(where, err) from err


def parse_batch(obj: Mapping[str, Any], limits: Limits) -> Batch:
    only_fields(obj, BATCH_FIELDS, "batch")
    if obj.get("v") != 1:
        raise ValidationFailed("v must be 1", field="v")
    items = required(obj, "items")
    if not isinstance(items, list):
        raise ValidationFailed("items must be an array", field="items")
    if len(items) > limits.max_items:
        raise BatchTooLarge(f"{len(items)} items; at most {limits.max_items} per batch")
    created_at = required(obj, "createdAt")
    parse_timestamp(created_at, "createdAt")
    parsed: list[BatchItem] = []
    for index, raw in enumerate(items):
        if (
            type(raw) is dict
            and raw.get("kind") == TRANSITION_KIND
            and (t := _well_formed_transition(raw, FIELD_ROLES, BATCH_TRANSITION_FIELDS))
        ):
            parsed.append(t)  # the usual item, checked without building its error path
            continue
        where = f"/items/{index}"
        if not isinstance(raw, Mapping):
            raise ValidationFailed(f"{where}: each item must be an object", path=where)
        kind = raw.get("kind")
        if not isinstance(kind, str):
            raise ValidationFailed(f"{where}/kind: kind must be a string", path=where)
        if kind == TRANSITION_KIND:
            parsed.append(_parse_transition(raw, where, FIELD_ROLES, BATCH_TRANSITION_FIELDS))
        elif kind == REPORT_KIND:
            parsed.append(parse_report_submission(raw, where))
        elif kind == COHORT_DRAFT_KIND:
            parsed.append(parse_cohort_draft(raw, where))
        else:
            try:
                item_id = identifier(raw.get("id"), "id")
            except ValidationFailed as err:
                raise _at(where, err) from err
            parsed.append(OtherItem(kind, item_id))
    return Batch(
        batch_id=identifier(required(obj, "batchId"), "batchId"),
        node_id=identifier(required(obj, "nodeId"), "nodeId"),
        created_at=created_at,
        items=parsed,
    )

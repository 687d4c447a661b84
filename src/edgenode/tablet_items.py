"""Tablet writes of any kind (``POST …/sync/items``), judged locally by the
policy table of ``shared.policy`` (CONTRACT section 3): the edge refuses what
the gateway would refuse, before it travels.

- ``cohort.draft`` (the table's client submission for ``population_cohort``)
  is checked with ``shared.cohorts``: an invalid definition is ``rejected``
  ``cohort_invalid`` with every error's JSON-pointer path; a valid one is
  ``accepted``, kept in ``cohort_drafts`` and sent to the gateway in the next
  batch (``edgenode.outbox``), whose answer (the version it numbered, or its
  refusal) is stored with it.
- A server-authoritative kind, or any kind the table lets no edge or device
  write (``risk_score.override``), is ``rejected``
  ``policy_server_authoritative``.
- Kinds tablets do write, through their own endpoints
  (``outreach.transition``, ``facility_report``), are ``rejected``
  ``validation_failed`` with a detail naming the endpoint.
- Any other kind is ``rejected`` ``unknown_kind``.

Every refusal is kept in ``refused_writes`` (device, kind, record, code,
detail, time): nothing a tablet sends is dropped without a trace.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from edgenode.store.database import fetch_all
from gateway.http import PREFIX
from shared.cohorts import parse_cohort
from shared.encoding import JSON, encode
from shared.errors import CohortInvalid, ItemCode, ValidationFailed
from shared.policy import POLICY_TABLE, SERVER_AUTHORITATIVE_KINDS, policy_for
from shared.values import format_timestamp, identifier, is_identifier, only_fields
from shared.wire import COHORT_DRAFT_KIND, REPORT_KIND, TRANSITION_KIND, parse_cohort_draft

#: The kind in which tablets propose cohort definitions: the policy table's
#: client submission for ``population_cohort``, as batches spell it.
DRAFT_KIND = COHORT_DRAFT_KIND
assert POLICY_TABLE["population_cohort"].client_submission_kind == DRAFT_KIND
# The batch item's fields but ``deviceId``: the edge names the signing device.
DRAFT_FIELDS = frozenset({"kind", "id", "cohortId", "definition"})
MAX_KIND = 64
CHUNK = 500

# Where tablets send the kinds the edge does take from them. Routing, not
# policy: which kinds those are is the policy table's to say.
OWN_ENDPOINTS: Mapping[str, str] = {
    TRANSITION_KIND: f"POST {PREFIX}/sync/outreach",
    REPORT_KIND: f"POST {PREFIX}/sync/encounters (the edge node generates facility "
    "reports from encounters)",
}


@dataclass(frozen=True)
class TabletItem:
    """One pushed item: its kind and id; a draft's cohort and definition."""

    kind: str
    id: str
    cohort_id: str | None = None
    definition: Any = None


@dataclass(frozen=True)
class Refusal:
    code: ItemCode
    detail: str


def judge_kind(kind: str) -> Refusal | None:
    """Why a tablet may not write ``kind`` here; None for a cohort draft. Pure."""
    if kind == DRAFT_KIND:
        return None
    row = policy_for(kind)
    if row is None:
        return Refusal(ItemCode.UNKNOWN_KIND, f"unknown kind {kind}")
    if kind in SERVER_AUTHORITATIVE_KINDS or not row.accepts_edge_writes:
        writers = " or ".join(sorted(w.value for w in row.writers))
        detail = f"{kind} is {row.policy.value}: written by {writers}, never by a tablet"
        if row.client_submission_kind:
            detail += f"; tablets may submit {row.client_submission_kind}"
        return Refusal(ItemCode.POLICY_SERVER_AUTHORITATIVE, detail)
    where = OWN_ENDPOINTS.get(kind, "its own endpoint")
    return Refusal(ItemCode.VALIDATION_FAILED, f"{kind} is not taken here: use {where}")


def _at(where: str, err: ValidationFailed) -> ValidationFailed:
    """``err`` located in the push: ``/items/3/id``, as the gateway's batches say."""
    field = err.extra.get("field")
    pointer = f"{where}/{field}" if isinstance(field, str) else where
    return ValidationFailed(f"{pointer}: {err.detail}", path=pointer)


def parse_item(obj: Any, where: str) -> TabletItem:
    """An item's envelope (a bad one refuses the whole push, 422). A draft's
    definition is judged per item, not here."""
    if not isinstance(obj, Mapping):
        raise ValidationFailed(f"{where}: each item must be an object", path=where)
    kind = obj.get("kind")
    if not (is_identifier(kind) and isinstance(kind, str) and len(kind) <= MAX_KIND):
        raise ValidationFailed(
            f"{where}/kind: kind must be 1-{MAX_KIND} characters of [A-Za-z0-9._:-]",
            path=f"{where}/kind",
        )
    if kind == DRAFT_KIND:
        try:
            only_fields(obj, DRAFT_FIELDS, "cohort draft")
        except ValidationFailed as err:
            raise _at(where, err) from err
        # The gateway's own reading of the batch item: what is queued passes it.
        d = parse_cohort_draft(obj, where)
        return TabletItem(kind, d.id, cohort_id=d.cohort_id, definition=d.definition)
    try:
        return TabletItem(kind, identifier(obj.get("id"), "id"))
    except ValidationFailed as err:
        raise _at(where, err) from err


def parse_items(raw: Sequence[Any]) -> list[TabletItem]:
    return [parse_item(obj, f"/items/{n}") for n, obj in enumerate(raw)]


@dataclass(frozen=True)
class _Kept:
    device_id: str
    state: dict[str, Any]


async def _known_drafts(conn: aiosqlite.Connection, ids: Sequence[str]) -> dict[str, _Kept]:
    """Drafts already kept under these ids, whichever device sent them."""
    known: dict[str, _Kept] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in await fetch_all(
            conn,
            "SELECT draft_id, device_id, cohort_id, gateway_status, gateway_code, "
            f"gateway_version FROM cohort_drafts WHERE draft_id IN ({marks}) ORDER BY seq",
            chunk,
        ):
            known.setdefault(row["draft_id"], _Kept(row["device_id"], draft_state(row)))
    return known


def draft_state(row: sqlite3.Row) -> dict[str, Any]:
    """A kept draft as a tablet sees it: the gateway's answer once it came."""
    state: dict[str, Any] = {"cohortId": row["cohort_id"]}
    if row["gateway_status"] is not None:
        state["gatewayStatus"] = row["gateway_status"]
        if row["gateway_code"] is not None:
            state["gatewayCode"] = row["gateway_code"]
        if row["gateway_version"] is not None:
            state["version"] = row["gateway_version"]
    return state


async def ingest_items(
    conn: aiosqlite.Connection, device_id: str, items: Sequence[TabletItem], now: datetime
) -> list[dict[str, Any]]:
    """Judge each item, keep valid drafts and every refusal; one result per item."""
    stamp = format_timestamp(now)
    known = await _known_drafts(conn, sorted({i.id for i in items if i.kind == DRAFT_KIND}))
    results: list[dict[str, Any]] = []
    refused: list[tuple[str, str, str, str, str, str]] = []
    drafts: list[tuple[str, str, str, str, str]] = []
    for item in items:
        result: dict[str, Any] = {"id": item.id, "kind": item.kind}
        refusal = judge_kind(item.kind)
        if refusal is None:
            refusal = _draft(item, known, result, drafts, device_id, stamp)
        if refusal is not None:
            result.update(status="rejected", code=refusal.code.value, detail=refusal.detail)
            refused.append(
                (device_id, item.kind, item.id, refusal.code.value, refusal.detail, stamp)
            )
        results.append(result)
    await conn.executemany(
        "INSERT INTO refused_writes (device_id, kind, record_id, code, detail, received_at) "
        "VALUES (?,?,?,?,?,?)",
        refused,
    )
    await conn.executemany(
        "INSERT INTO cohort_drafts (draft_id, device_id, cohort_id, definition, received_at) "
        "VALUES (?,?,?,?,?)",
        drafts,
    )
    return results


def _draft(
    item: TabletItem,
    known: dict[str, _Kept],
    result: dict[str, Any],
    drafts: list[tuple[str, str, str, str, str]],
    device_id: str,
    stamp: str,
) -> Refusal | None:
    """A cohort draft: a resend answered from what was kept, an invalid one
    refused with every error, a valid one queued (``drafts``).

    A draft id is taken once on this edge: the gateway knows a draft by its
    id, and would answer another device's draft under the same id as a
    duplicate of the first, dropping it."""
    kept = known.get(item.id)
    if kept is not None and kept.device_id != device_id:
        return Refusal(
            ItemCode.VALIDATION_FAILED,
            f"draft id {item.id} is taken by another device's draft: use a unique id (a UUID)",
        )
    if kept is not None:
        result.update(status="duplicate", **kept.state)
        return None
    try:
        parse_cohort(item.definition)
    except CohortInvalid as err:
        result["errors"] = err.errors
        return Refusal(ItemCode.COHORT_INVALID, err.detail)
    assert item.cohort_id is not None
    definition = encode(item.definition, JSON).decode("utf-8")  # valid: plain JSON
    drafts.append((item.id, device_id, item.cohort_id, definition, stamp))
    known[item.id] = _Kept(device_id, {"cohortId": item.cohort_id})
    result.update(status="accepted", cohortId=item.cohort_id)
    return None

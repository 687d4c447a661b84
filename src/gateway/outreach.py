"""Outreach items: creation, history, and transitions resolved by the shared FSM.

``apply_transitions`` is the hot path of batch ingest: it loads every item
and prior sighting a batch touches in a few set queries, runs the pure
``resolve`` in memory in arrival order, and writes the log rows, item rows
and change-feed rows with one ``executemany`` each.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.database import execute_many, in_list, select_in
from gateway.db.schema import changes, outreach_items, outreach_transitions
from shared.errors import AlreadyExists, ItemCode, NotFound, ValidationFailed
from shared.fsm import (
    Disposition,
    ItemState,
    Resolution,
    Role,
    State,
    Transition,
    clamp,
    resolve,
)
from shared.values import (
    format_timestamp,
    identifier,
    only_fields,
    optional_identifier,
    required,
    text,
)

AGGREGATE = "outreach_item"
ITEM_FIELDS = frozenset(
    {"id", "facilityId", "state", "assigneeId", "patientRef", "cohortId", "dueDate"}
)


@dataclass(frozen=True)
class Scope:
    """Where a writer may write: a tenant and, for nodes, some facilities."""

    tenant_id: str
    facility_ids: frozenset[str] | None  # None: every facility of the tenant

    def covers(self, tenant_id: str, facility_id: str) -> bool:
        return tenant_id == self.tenant_id and (
            self.facility_ids is None or facility_id in self.facility_ids
        )


@dataclass(frozen=True)
class Source:
    """Who sent transitions, for the log: ``node:<id>`` or ``token:<id>``."""

    name: str
    batch_id: str | None = None


@dataclass
class _Item:
    row: dict[str, Any]
    state: State
    last: Transition | None
    changed: bool = False


def item_to_wire(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "facilityId": row["facility_id"],
        "state": row["state"],
        "assigneeId": row["assignee_id"],
        "patientRef": row["patient_ref"],
        "cohortId": row["cohort_id"],
        "dueDate": row["due_date"],
        "version": row["version"],
        "updatedAt": row["updated_at"],
    }


def _change_row(row: Mapping[str, Any], now: str) -> dict[str, Any]:
    """A change-feed row for ``execute_many``: ``data`` is already JSON text."""
    return {
        "tenant_id": row["tenant_id"],
        "facility_id": row["facility_id"],
        "aggregate": AGGREGATE,
        "entity_id": row["id"],
        "op": "upsert",
        "data": json.dumps(item_to_wire(row)),
        "committed_at": now,
    }


def _last_transition(row: Mapping[str, Any]) -> Transition | None:
    if row["last_transition_id"] is None:
        return None
    return Transition(
        id=row["last_transition_id"],
        item_id=row["id"],
        from_state=row["last_from_state"],
        to_state=row["last_to_state"],
        # We wrote it with format_timestamp: no need for the wire's checks
        # (fromisoformat reads "…Z" as UTC, at a tenth of the cost per loaded item).
        occurred_at=datetime.fromisoformat(row["last_occurred_at"]),
        device_id=row["last_device_id"],
        actor_id="",
        role=Role(row["last_role"]),
    )


def parse_new_item(body: Mapping[str, Any]) -> dict[str, Any]:
    only_fields(body, ITEM_FIELDS, "outreach item")
    state = required(body, "state")
    # Checked as a string first: a list or map is unhashable (a TypeError, a 500).
    if not isinstance(state, str) or state not in {s.value for s in State}:
        raise ValidationFailed(f"state must be one of {', '.join(State)}", field="state")
    due = body.get("dueDate")
    if due is not None:
        text(due, "dueDate", 10)
        try:
            datetime.strptime(due, "%Y-%m-%d")
        except ValueError as err:
            raise ValidationFailed("dueDate must be YYYY-MM-DD", field="dueDate") from err
    return {
        "id": identifier(required(body, "id"), "id"),
        "facility_id": identifier(required(body, "facilityId"), "facilityId"),
        "state": state,
        "assignee_id": optional_identifier(body.get("assigneeId"), "assigneeId"),
        "patient_ref": optional_identifier(body.get("patientRef"), "patientRef"),
        "cohort_id": optional_identifier(body.get("cohortId"), "cohortId"),
        "due_date": due,
    }


async def create_item(
    conn: AsyncConnection, tenant_id: str, fields: dict[str, Any], now: datetime
) -> dict[str, Any]:
    stamp = format_timestamp(now)
    row = {
        **fields,
        "tenant_id": tenant_id,
        "version": 1,
        "created_at": stamp,
        "updated_at": stamp,
        "last_transition_id": None,
        "last_from_state": None,
        "last_to_state": None,
        "last_occurred_at": None,
        "last_device_id": None,
        "last_role": None,
    }
    try:
        async with conn.begin_nested():
            await conn.execute(outreach_items.insert().values(**row))
    except IntegrityError as err:
        raise AlreadyExists(f"outreach item {fields['id']} already exists") from err
    await execute_many(conn, _INSERT_CHANGE, [_change_row(row, stamp)])
    return item_to_wire(row)


async def get_item(conn: AsyncConnection, item_id: str, tenant_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(
            sa.select(outreach_items).where(
                outreach_items.c.id == item_id, outreach_items.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"no outreach item {item_id}")
    log = await conn.execute(
        sa.select(outreach_transitions)
        .where(
            outreach_transitions.c.item_id == item_id, outreach_transitions.c.tenant_id == tenant_id
        )
        .order_by(outreach_transitions.c.seq)
    )
    history = [
        {
            "id": t.transition_id,
            "from": t.from_state,
            "to": t.to_state,
            "occurredAt": t.occurred_at,
            "receivedAt": t.received_at,
            "deviceId": t.device_id,
            "actorId": t.actor_id,
            "role": t.role,
            "seq": t.device_seq,
            "source": t.source,
            "disposition": t.disposition,
            "code": t.code,
            "clockAdjusted": t.clock_adjusted,
        }
        for t in log
    ]
    return {**item_to_wire(dict(row._mapping)), "history": history}


_SELECT_ITEMS = sa.select(outreach_items).where(in_list(outreach_items.c.id))
# On PostgreSQL, FOR UPDATE (SQLite has one writer): a transition is resolved
# against the item's state as committed, and no concurrent batch changes the
# item before this one commits. Rows are locked in id order (ORDER BY below
# the lock), so two batches touching the same items never deadlock.
_LOCK_ITEMS = _SELECT_ITEMS.order_by(outreach_items.c.id).with_for_update()
_SELECT_SEEN = (
    sa.select(
        outreach_transitions.c.item_id,
        outreach_transitions.c.transition_id,
        outreach_transitions.c.disposition,
    )
    .where(
        in_list(outreach_transitions.c.transition_id),
        outreach_transitions.c.tenant_id == sa.bindparam("tenant_id"),
        outreach_transitions.c.disposition != Disposition.DUPLICATE.value,
    )
    .order_by(outreach_transitions.c.seq)
)


async def lock_items(conn: AsyncConnection, ids: Iterable[str]) -> None:
    """Lock the items ``ids`` for this transaction, in id order (PostgreSQL)."""
    if conn.dialect.name != "sqlite":
        await select_in(conn, _LOCK_ITEMS, sorted(set(ids)))


async def _load_items(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, _Item]:
    found: dict[str, _Item] = {}
    keys = tuple(c.name for c in outreach_items.columns)  # the columns _SELECT_ITEMS lists
    query = _SELECT_ITEMS if conn.dialect.name == "sqlite" else _LOCK_ITEMS
    for row in await select_in(conn, query, ids):
        data = dict(zip(keys, row, strict=True))
        found[data["id"]] = _Item(data, State(data["state"]), _last_transition(data))
    return found


async def _load_seen(
    conn: AsyncConnection, tenant_id: str, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Disposition]:
    """First recorded disposition of each (item, transition id) already logged."""
    wanted = set(pairs)
    ids = sorted({tid for _, tid in wanted})
    seen: dict[tuple[str, str], Disposition] = {}
    for row in await select_in(conn, _SELECT_SEEN, ids, {"tenant_id": tenant_id}):
        key = (row.item_id, row.transition_id)
        if key in wanted:
            seen.setdefault(key, Disposition(row.disposition))
    return seen


async def apply_transitions(
    conn: AsyncConnection,
    transitions: Sequence[Transition],
    scope: Scope,
    source: Source,
    now: datetime,
) -> list[dict[str, Any]]:
    """Resolve and record transitions in order; one result per transition."""
    stamp = format_timestamp(now)
    items = await _load_items(conn, sorted({t.item_id for t in transitions}))
    seen = await _load_seen(conn, scope.tenant_id, ((t.item_id, t.id) for t in transitions))
    log_rows: list[dict[str, Any]] = []
    superseded: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for t in transitions:
        item = items.get(t.item_id)
        if item is not None and item.row["tenant_id"] != scope.tenant_id:
            item = None  # another tenant's item is unknown here: existence is not leaked
        if item is not None and not scope.covers(item.row["tenant_id"], item.row["facility_id"]):
            t_clamped, adjusted = clamp(t, now)
            r = Resolution(
                Disposition.REJECTED, ItemCode.OUT_OF_SCOPE, item.state, t_clamped, adjusted
            )
        else:
            current = (
                None
                if item is None
                else ItemState(item.state, item.last, seen.get((t.item_id, t.id)))
            )
            r = resolve(current, t, now)
        occurred_at = format_timestamp(r.transition.occurred_at)
        result = _result(r)
        results.append(result)
        log_rows.append(_log_row(r, occurred_at, scope.tenant_id, source, stamp))
        if item is None:
            result["version"] = None
            continue
        if r.disposition is not Disposition.DUPLICATE:
            seen[(t.item_id, t.id)] = r.disposition
        if r.superseded is not None:
            superseded.append(
                {"b_tenant": scope.tenant_id, "b_item": t.item_id, "b_tid": r.superseded.id}
            )
            seen[(t.item_id, r.superseded.id)] = Disposition.SUPERSEDED
        if r.changed_state:
            assert r.state is not None
            item.state, item.last, item.changed = r.state, r.transition, True
            item.row.update(
                state=r.state.value,
                version=item.row["version"] + 1,
                updated_at=stamp,
                last_transition_id=r.transition.id,
                last_from_state=r.transition.from_state,
                last_to_state=r.transition.to_state,
                last_occurred_at=occurred_at,
                last_device_id=r.transition.device_id,
                last_role=r.transition.role.value,
            )
        # The item's version with the state answered: an edge that also reads the
        # change feed keeps whichever of the two is newer (edgenode.gateway_items).
        result["version"] = item.row["version"]
    await _write(conn, log_rows, superseded, [i.row for i in items.values() if i.changed], stamp)
    return results


def _result(r: Resolution) -> dict[str, Any]:
    """The per-item answer: disposition and the authoritative state after it."""
    result: dict[str, Any] = {
        "id": r.transition.id,
        "status": r.disposition.value,
        "itemId": r.transition.item_id,
        "state": None if r.state is None else r.state.value,
    }
    if r.code is not None:
        result["code"] = r.code.value
    if r.recorded is not None:
        result["recordedDisposition"] = r.recorded.value
    if r.clock_adjusted:
        result["clockAdjusted"] = True
    return result


def _log_row(
    r: Resolution, occurred_at: str, tenant_id: str, source: Source, stamp: str
) -> dict[str, Any]:
    t = r.transition
    return {
        "tenant_id": tenant_id,
        "item_id": t.item_id,
        "transition_id": t.id,
        "from_state": t.from_state,
        "to_state": t.to_state,
        "occurred_at": occurred_at,
        "received_at": stamp,
        "device_id": t.device_id,
        "actor_id": t.actor_id,
        "role": t.role.value,
        "device_seq": t.seq,
        "source": source.name,
        "batch_id": source.batch_id,
        "disposition": r.disposition.value,
        "code": None if r.code is None else r.code.value,
        "clock_adjusted": r.clock_adjusted,
    }


def _insert_all(table: sa.Table) -> sa.Insert:
    """INSERT of every column but the generated ``seq``, bound by column name."""
    return table.insert().values(
        {c.name: sa.bindparam(c.name) for c in table.columns if c.name != "seq"}
    )


_INSERT_LOG = _insert_all(outreach_transitions)
_INSERT_CHANGE = _insert_all(changes)
_SUPERSEDE = (
    outreach_transitions.update()
    .where(
        outreach_transitions.c.tenant_id == sa.bindparam("b_tenant"),
        outreach_transitions.c.item_id == sa.bindparam("b_item"),
        outreach_transitions.c.transition_id == sa.bindparam("b_tid"),
        outreach_transitions.c.disposition == Disposition.APPLIED.value,
    )
    .values(disposition=Disposition.SUPERSEDED.value)
)
_ITEM_COLUMNS = (
    "state",
    "version",
    "updated_at",
    "last_transition_id",
    "last_from_state",
    "last_to_state",
    "last_occurred_at",
    "last_device_id",
    "last_role",
)
_ITEM_BINDS = tuple((f"b_{name}", name) for name in _ITEM_COLUMNS)
_UPDATE_ITEM = (
    outreach_items.update()
    .where(outreach_items.c.id == sa.bindparam("b_id"))
    .values({name: sa.bindparam(bind) for bind, name in _ITEM_BINDS})
)


async def _write(
    conn: AsyncConnection,
    log_rows: list[dict[str, Any]],
    superseded: list[dict[str, Any]],
    changed: list[dict[str, Any]],
    stamp: str,
) -> None:
    """The batch's rows, one ``executemany`` per statement."""
    await execute_many(conn, _INSERT_LOG, log_rows)
    # Supersede after inserting: the loser may have been applied in this batch.
    await execute_many(conn, _SUPERSEDE, superseded)
    await execute_many(
        conn,
        _UPDATE_ITEM,
        [{"b_id": row["id"], **{bind: row[name] for bind, name in _ITEM_BINDS}} for row in changed],
    )
    await execute_many(conn, _INSERT_CHANGE, [_change_row(row, stamp) for row in changed])

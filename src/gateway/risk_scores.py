"""Risk scores in the store: the computed part, the override in force, the
audit trail of every override attempt, and their change-feed rows.

The decisions are ``shared.risk``'s (``compute_risk``, ``resolve_override``,
``audit_record``, ``effective_risk``); this module loads, stores and feeds.
The feed's ``risk_score`` rows carry the *effective* score with its source,
scoped to the entry's facility.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.schema import registry_entries, risk_override_audit, risk_overrides, risk_scores
from gateway.feed import Aggregate, Op, record_change
from gateway.refusals import RefusedWrite, record_refused
from gateway.registry import Node
from shared.errors import (
    ItemCode,
    NotFound,
    OutOfScope,
    PhsError,
    PolicyServerAuthoritative,
    ValidationFailed,
)
from shared.registry import RegistryEntry, parse_registry_entry
from shared.risk import (
    MAX_REASON,
    RISK_OVERRIDE_KIND,
    Band,
    ComputedRisk,
    Factor,
    OverrideAudit,
    OverrideDisposition,
    RiskOverride,
    audit_record,
    compute_risk,
    effective_risk,
    effective_score,
    parse_risk_override,
    resolve_override,
)
from shared.values import format_timestamp, is_identifier, parse_timestamp

CAPABILITY = "risk_override"
# Earlier attempts that make a re-sent override id a duplicate: those that were
# heard and resolved. A refused attempt (bad field, no permission, unknown
# entry) may be retried with the same id.
_RESOLVED = (OverrideDisposition.APPLIED.value, OverrideDisposition.SUPERSEDED.value)


@dataclass(frozen=True)
class Origin:
    """Who sent an override attempt: ``token:<id>`` or ``node:<id>`` (+ batch)."""

    principal: str
    batch_id: str | None = None
    node: Node | None = None  # the carrying node, for batch items
    item_index: int | None = None  # the item's place in its batch


@dataclass(frozen=True)
class _Current:
    """An entry's stored risk: where it is, its computed part, its override."""

    facility_id: str
    computed: ComputedRisk
    computed_at: str
    override: RiskOverride | None


# --------------------------------------------------------------------------
# Rows to values and back


def _computed_from_row(row: Mapping[str, Any]) -> ComputedRisk:
    factors = tuple(Factor(f["name"], f["points"], f["reason"]) for f in row["factors"])
    return ComputedRisk(row["score"], Band(row["band"]), factors, row["model_version"])


def _factors_wire(computed: ComputedRisk) -> list[dict[str, Any]]:
    return [{"name": f.name, "points": f.points, "reason": f.reason} for f in computed.factors]


def _override_from_row(row: Mapping[str, Any]) -> RiskOverride:
    return RiskOverride(
        id=row["override_id"],
        entry_id=row["entry_id"],
        value=row["value"],
        reason=row["reason"],
        actor_id=row["actor_id"],
        node_id=row["node_id"],
        occurred_at=parse_timestamp(row["occurred_at"], "occurred_at"),
    )


def risk_to_wire(entry_id: str, current: _Current) -> dict[str, Any]:
    """The effective score as readers and the change feed see it."""
    return {
        "entryId": entry_id,
        "facilityId": current.facility_id,
        **effective_risk(current.computed, current.override),
        "computedAt": current.computed_at,
    }


def _audit_wire(row: Mapping[str, Any]) -> dict[str, Any]:
    def score(prefix: str) -> dict[str, Any] | None:
        if row[f"{prefix}_score"] is None:
            return None
        return {"score": row[f"{prefix}_score"], "source": row[f"{prefix}_source"]}

    return {
        "seq": row["seq"],
        "overrideId": row["override_id"],
        "entryId": row["entry_id"],
        "actorId": row["actor_id"],
        "nodeId": row["node_id"],
        "principal": row["principal"],
        "batchId": row["batch_id"],
        "occurredAt": row["occurred_at"],
        "receivedAt": row["received_at"],
        "requestedValue": row["requested_value"],
        "reason": row["reason"],
        "disposition": row["disposition"],
        "code": row["code"],
        "old": score("old"),
        "new": score("new"),
        "clockAdjusted": row["clock_adjusted"],
    }


# --------------------------------------------------------------------------
# Loading


async def _load(
    conn: AsyncConnection, tenant_id: str, entry_id: str, lock: bool = False
) -> _Current | None:
    query = sa.select(risk_scores).where(
        risk_scores.c.tenant_id == tenant_id, risk_scores.c.entry_id == entry_id
    )
    if lock:
        query = query.with_for_update()  # PostgreSQL: one override resolution at a time
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    override = await _load_override(conn, tenant_id, entry_id)
    data = row._mapping
    return _Current(
        data["facility_id"], _computed_from_row(dict(data)), data["computed_at"], override
    )


async def _load_override(
    conn: AsyncConnection, tenant_id: str, entry_id: str
) -> RiskOverride | None:
    row = (
        await conn.execute(
            sa.select(risk_overrides).where(
                risk_overrides.c.tenant_id == tenant_id, risk_overrides.c.entry_id == entry_id
            )
        )
    ).first()
    return None if row is None else _override_from_row(dict(row._mapping))


async def read_risk(conn: AsyncConnection, tenant_id: str, entry_id: str) -> dict[str, Any]:
    """The effective score with its source, the computed part, the override in
    force and the whole audit trail (oldest first)."""
    current = await _load(conn, tenant_id, entry_id)
    if current is None:
        raise NotFound(f"no risk score for registry entry {entry_id}")
    audit = await conn.execute(
        sa.select(risk_override_audit)
        .where(
            risk_override_audit.c.tenant_id == tenant_id,
            risk_override_audit.c.entry_id == entry_id,
        )
        .order_by(risk_override_audit.c.seq)
    )
    return {
        **risk_to_wire(entry_id, current),
        "audit": [_audit_wire(dict(r._mapping)) for r in audit],
    }


# --------------------------------------------------------------------------
# The computed part, on every registry change


async def recompute(
    conn: AsyncConnection, tenant_id: str, entry: RegistryEntry, moment: datetime
) -> bool:
    """Compute the entry's score for today; store and feed it if it changed
    (or moved to another facility, whose nodes get a delete first). Returns
    whether it did."""
    stamp = format_timestamp(moment)
    computed = compute_risk(entry, moment.date())
    before = await _load(conn, tenant_id, entry.id)
    if before is not None and before.facility_id == entry.facility_id:
        if before.computed == computed:
            return False
    values = {
        "facility_id": entry.facility_id,
        "score": computed.score,
        "band": computed.band.value,
        "factors": _factors_wire(computed),
        "model_version": computed.model_version,
        "computed_at": stamp,
    }
    if before is None:
        override = await _load_override(conn, tenant_id, entry.id)  # kept across a delete
        await conn.execute(
            risk_scores.insert().values(tenant_id=tenant_id, entry_id=entry.id, **values)
        )
    else:
        override = before.override
        await conn.execute(
            risk_scores.update()
            .where(risk_scores.c.tenant_id == tenant_id, risk_scores.c.entry_id == entry.id)
            .values(**values)
        )
        if before.facility_id != entry.facility_id:
            await _feed_delete(conn, tenant_id, entry.id, before.facility_id, stamp)
    after = _Current(entry.facility_id, computed, stamp, override)
    await _feed_upsert(conn, tenant_id, entry.id, after, stamp)
    return True


async def recompute_all(conn: AsyncConnection, moment: datetime) -> int:
    """Recompute every live entry's score for ``moment``'s day (scores move
    with the date: birthdays, screenings falling overdue). Meant to run when
    the day changes; returns how many scores changed."""
    rows = await conn.execute(
        sa.select(registry_entries.c.tenant_id, registry_entries.c.data)
        .where(registry_entries.c.deleted_at.is_(None))
        .order_by(registry_entries.c.tenant_id, registry_entries.c.id)
    )
    changed = 0
    for row in rows.all():
        if await recompute(conn, row.tenant_id, parse_registry_entry(row.data), moment):
            changed += 1
    return changed


async def drop(conn: AsyncConnection, tenant_id: str, entry_id: str, moment: datetime) -> None:
    """The entry was deleted: its score goes (the override and its audit stay,
    so last-write-wins still holds if the entry comes back)."""
    before = await _load(conn, tenant_id, entry_id)
    if before is None:
        return
    await conn.execute(
        risk_scores.delete().where(
            risk_scores.c.tenant_id == tenant_id, risk_scores.c.entry_id == entry_id
        )
    )
    await _feed_delete(conn, tenant_id, entry_id, before.facility_id, format_timestamp(moment))


async def _feed_upsert(
    conn: AsyncConnection, tenant_id: str, entry_id: str, current: _Current, stamp: str
) -> None:
    await record_change(
        conn,
        tenant_id=tenant_id,
        facility_id=current.facility_id,
        aggregate=Aggregate.RISK_SCORE,
        entity_id=entry_id,
        op=Op.UPSERT,
        data=risk_to_wire(entry_id, current),
        stamp=stamp,
    )


async def _feed_delete(
    conn: AsyncConnection, tenant_id: str, entry_id: str, facility_id: str, stamp: str
) -> None:
    await record_change(
        conn,
        tenant_id=tenant_id,
        facility_id=facility_id,
        aggregate=Aggregate.RISK_SCORE,
        entity_id=entry_id,
        op=Op.DELETE,
        data={"entryId": entry_id, "facilityId": facility_id},
        stamp=stamp,
    )


# --------------------------------------------------------------------------
# Overrides


class _Refused(Exception):
    """An attempt refused before resolution; ``error`` is what a direct request answers."""

    def __init__(self, error: PhsError, item_code: str | None = None) -> None:
        super().__init__(error.detail)
        self.error = error
        self.item_code = item_code or error.code


async def submit_override(
    conn: AsyncConnection,
    tenant_id: str,
    doc: Mapping[str, Any],
    origin: Origin,
    moment: datetime,
) -> tuple[dict[str, Any], PhsError | None]:
    """Resolve one override attempt (wire form with ``entryId`` and ``actorId``)
    and audit it, whatever its outcome.

    Returns the per-item result (as in a batch) and, when the attempt was
    refused, the error a direct request answers with. A node must hold the
    ``risk_override`` capability and carry the admin's ``actorId``; it may
    only override entries of its facilities.
    """
    current: _Current | None = None
    try:
        if origin.node is not None:
            _check_node(origin.node, doc)
        override = _parse(doc, origin)
        current = await _load(conn, tenant_id, override.entry_id, lock=True)
        if current is None:
            raise _Refused(
                NotFound(f"no registry entry {override.entry_id}"), ItemCode.UNKNOWN_ITEM.value
            )
        node = origin.node
        if node is not None and current.facility_id not in node.facility_ids:
            raise _Refused(
                OutOfScope(f"entry {override.entry_id} is not at a facility of {node.node_id}")
            )
    except _Refused as refused:
        result = await _reject(conn, tenant_id, doc, origin, refused, current, moment)
        return result, refused.error
    return await _resolve(conn, tenant_id, override, current, origin, moment), None


def _check_node(node: Node, doc: Mapping[str, Any]) -> None:
    if CAPABILITY not in node.capabilities:
        raise _Refused(
            PolicyServerAuthoritative(
                f"{RISK_OVERRIDE_KIND} is admin-only: node {node.node_id} lacks"
                f" the {CAPABILITY} capability"
            )
        )
    if not doc.get("actorId"):
        raise _Refused(
            PolicyServerAuthoritative(
                f"{RISK_OVERRIDE_KIND} from a node must carry the admin's actorId"
            )
        )


def _parse(doc: Mapping[str, Any], origin: Origin) -> RiskOverride:
    node_id = None if origin.node is None else origin.node.node_id
    try:
        return parse_risk_override(doc, node_id=node_id)
    except ValidationFailed as err:
        raise _Refused(err) from err


async def _seen(
    conn: AsyncConnection, tenant_id: str, override: RiskOverride
) -> OverrideDisposition | None:
    row = (
        await conn.execute(
            sa.select(risk_override_audit.c.disposition)
            .where(
                risk_override_audit.c.tenant_id == tenant_id,
                risk_override_audit.c.entry_id == override.entry_id,
                risk_override_audit.c.override_id == override.id,
                risk_override_audit.c.disposition.in_(_RESOLVED),
            )
            .order_by(risk_override_audit.c.seq)
            .limit(1)
        )
    ).first()
    return None if row is None else OverrideDisposition(row.disposition)


async def _resolve(
    conn: AsyncConnection,
    tenant_id: str,
    incoming: RiskOverride,
    current: _Current,
    origin: Origin,
    moment: datetime,
) -> dict[str, Any]:
    stamp = format_timestamp(moment)
    seen = await _seen(conn, tenant_id, incoming)
    resolution = resolve_override(current.override, incoming, seen=seen, now=moment)
    audit = audit_record(resolution, current.computed)
    await _insert_audit(conn, tenant_id, audit, origin, stamp, None, resolution.clock_adjusted)
    after = current
    if resolution.changed:
        assert resolution.winner is not None
        await _store_winner(conn, tenant_id, resolution.winner, stamp)
        after = _Current(
            current.facility_id, current.computed, current.computed_at, resolution.winner
        )
        await _feed_upsert(conn, tenant_id, incoming.entry_id, after, stamp)
    result: dict[str, Any] = {
        "id": incoming.id,
        "status": resolution.disposition.value,
        "entryId": incoming.entry_id,
        "risk": risk_to_wire(incoming.entry_id, after),
    }
    if resolution.recorded is not None:
        result["recordedDisposition"] = resolution.recorded.value
    if resolution.clock_adjusted:
        result["clockAdjusted"] = True
    return result


async def _store_winner(
    conn: AsyncConnection, tenant_id: str, winner: RiskOverride, stamp: str
) -> None:
    values = {
        "override_id": winner.id,
        "value": winner.value,
        "reason": winner.reason,
        "actor_id": winner.actor_id,
        "node_id": winner.node_id,
        "occurred_at": format_timestamp(winner.occurred_at),
        "received_at": stamp,
    }
    where = sa.and_(
        risk_overrides.c.tenant_id == tenant_id, risk_overrides.c.entry_id == winner.entry_id
    )
    updated = await conn.execute(risk_overrides.update().where(where).values(**values))
    if updated.rowcount == 0:
        await conn.execute(
            risk_overrides.insert().values(tenant_id=tenant_id, entry_id=winner.entry_id, **values)
        )


async def _insert_audit(
    conn: AsyncConnection,
    tenant_id: str,
    audit: OverrideAudit,
    origin: Origin,
    stamp: str,
    code: str | None,
    clock_adjusted: bool,
) -> None:
    await conn.execute(
        risk_override_audit.insert().values(
            tenant_id=tenant_id,
            entry_id=audit.entry_id,
            override_id=audit.override_id,
            actor_id=audit.actor_id,
            node_id=audit.node_id,
            principal=origin.principal,
            batch_id=origin.batch_id,
            occurred_at=format_timestamp(audit.occurred_at),
            received_at=stamp,
            requested_value=audit.requested_value,
            reason=audit.reason,
            old_score=audit.old_score,
            old_source=audit.old_source.value,
            new_score=audit.new_score,
            new_source=audit.new_source.value,
            disposition=audit.disposition.value,
            code=code,
            clock_adjusted=clock_adjusted,
        )
    )


async def _reject(
    conn: AsyncConnection,
    tenant_id: str,
    doc: Mapping[str, Any],
    origin: Origin,
    refused: _Refused,
    current: _Current | None,
    moment: datetime,
) -> dict[str, Any]:
    """Audit a refused attempt with what can be read of it, and answer it."""
    stamp = format_timestamp(moment)
    salvaged = _salvage(doc, origin, moment)
    old = None if current is None else effective_score(current.computed, current.override)
    await conn.execute(
        risk_override_audit.insert().values(
            tenant_id=tenant_id,
            entry_id=salvaged["entry_id"],
            override_id=salvaged["override_id"],
            actor_id=salvaged["actor_id"],
            node_id=None if origin.node is None else origin.node.node_id,
            principal=origin.principal,
            batch_id=origin.batch_id,
            occurred_at=salvaged["occurred_at"],
            received_at=stamp,
            requested_value=salvaged["requested_value"],
            reason=salvaged["reason"],
            old_score=None if old is None else old[0],
            old_source=None if old is None else old[1].value,
            new_score=None if old is None else old[0],
            new_source=None if old is None else old[1].value,
            disposition=OverrideDisposition.REJECTED.value,
            code=refused.item_code,
            clock_adjusted=False,
        )
    )
    if refused.item_code == PolicyServerAuthoritative.code:
        await record_refused(
            conn,
            RefusedWrite(
                tenant_id=tenant_id,
                principal=origin.principal,
                kind=RISK_OVERRIDE_KIND,
                record_id=salvaged["override_id"] or None,
                detail=refused.error.detail,
                batch_id=origin.batch_id,
                item_index=origin.item_index,
            ),
            moment,
        )
    result: dict[str, Any] = {
        "id": salvaged["override_id"],
        "status": OverrideDisposition.REJECTED.value,
        "entryId": salvaged["entry_id"],
        "code": refused.item_code,
        "detail": refused.error.detail,
        "risk": None if current is None else risk_to_wire(salvaged["entry_id"], current),
    }
    return result


def _salvage(doc: Mapping[str, Any], origin: Origin, moment: datetime) -> dict[str, Any]:
    """The fields of a refused attempt that can be kept as they are ("" or
    None where a field is missing or unusable; the time received stands in
    for an unreadable ``occurredAt``)."""

    def ident(name: str) -> str:
        value = doc.get(name)
        return value if isinstance(value, str) and is_identifier(value) else ""

    value = doc.get("value")
    usable = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100
    reason = doc.get("reason")
    try:
        occurred = format_timestamp(parse_timestamp(doc.get("occurredAt"), "occurredAt"))
    except ValidationFailed:
        occurred = format_timestamp(moment)
    return {
        "override_id": ident("id"),
        "entry_id": ident("entryId"),
        "actor_id": ident("actorId") or origin.principal,
        "requested_value": value if usable else None,
        "reason": reason[:MAX_REASON] if isinstance(reason, str) else "",
        "occurred_at": occurred,
    }


async def audit_refusal(
    conn: AsyncConnection,
    tenant_id: str,
    doc: Mapping[str, Any],
    origin: Origin,
    error: PhsError,
    moment: datetime,
) -> dict[str, Any]:
    """Audit an attempt refused before it reached ``submit_override`` (a token
    of another role, a field a direct request may not send)."""
    current = None
    entry_id = doc.get("entryId")
    if isinstance(entry_id, str) and is_identifier(entry_id):
        current = await _load(conn, tenant_id, entry_id)
    return await _reject(conn, tenant_id, doc, origin, _Refused(error), current, moment)

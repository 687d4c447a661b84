"""Quality metric snapshots (``quality_metric_snapshot``): server-computed, immutable.

A snapshot sums one tenant's merged facility reports (CONTRACT section 6) of
one period. ``compute_snapshot`` is pure; ``create_snapshot`` reads the
reports and the enrolled facilities inside the write transaction, so what it
stores is exactly what that transaction saw, and writes the snapshot, its
change-feed row and its event together (CONTRACT sections 8 and 9).

A snapshot is never changed: asking again for a stored period answers the
stored snapshot when a fresh computation gives the same content, and 409
``immutable`` when the reports (or the enrolled facilities) have changed
since. docs/quality.md describes the metrics.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.schema import changes, facility_reports, nodes, quality_snapshots
from gateway.events import append_event
from shared.errors import Immutable, NotFound, ValidationFailed
from shared.periods import Period, PeriodType, period_from_key
from shared.values import format_timestamp

KIND = "quality_metric_snapshot"
CREATED_EVENT = "population_health.quality_snapshot.created.v1"
AMBIGUOUS = "ambiguous_reports"


@dataclass(frozen=True)
class MergedReport:
    """What a snapshot reads of a stored report."""

    report_id: str
    facility_id: str
    device_id: str
    metrics: Mapping[str, Any]


def _rate(numerator: int, denominator: int) -> float | None:
    # As in reports: nothing due is "undefined", never 0.0 (which reads as all missed).
    return None if denominator == 0 else round(numerator / denominator, 4)


def compute_snapshot(
    period: Period, reports: Iterable[MergedReport], enrolled: Collection[str]
) -> dict[str, Any]:
    """The content of a snapshot of ``period`` (without id and creation stamp).

    ``enrolled`` is every facility of the tenant's active nodes. Coverage is
    the share of them with a merged report in the period. Totals and rates sum
    one report per facility; a facility reported by more than one device is
    counted as reporting but left out of the totals (``excluded``): two
    devices' distinct-patient counts cannot be added (as in HMIS exports).
    """
    by_facility: dict[str, list[MergedReport]] = {}
    for report in reports:
        by_facility.setdefault(report.facility_id, []).append(report)
    enrolled_set = set(enrolled)
    totals = dict.fromkeys(
        ("patients", "encounters", "sdue", "sdone", "idue", "igiven"),
        0,
    )
    included: list[str] = []
    report_ids: list[str] = []
    excluded: list[dict[str, Any]] = []
    for facility in sorted(by_facility):
        group = sorted(by_facility[facility], key=lambda r: r.device_id)
        if len(group) > 1:
            excluded.append(
                {
                    "facilityId": facility,
                    "reason": AMBIGUOUS,
                    "reportIds": [r.report_id for r in group],
                    "detail": f"{len(group)} devices reported this facility and period: "
                    + ", ".join(r.device_id for r in group),
                }
            )
            continue
        metrics = group[0].metrics
        totals["patients"] += metrics["patientCount"]
        totals["encounters"] += metrics["encounterCount"]
        totals["sdue"] += metrics["screening"]["due"]
        totals["sdone"] += metrics["screening"]["done"]
        totals["idue"] += metrics["immunization"]["due"]
        totals["igiven"] += metrics["immunization"]["given"]
        included.append(facility)
        report_ids.append(group[0].report_id)
    reporting = enrolled_set & set(by_facility)
    return {
        "periodType": period.type.value,
        "periodKey": period.key,
        "coverage": {
            "enrolled": len(enrolled_set),
            "reporting": len(reporting),
            "rate": _rate(len(reporting), len(enrolled_set)),
        },
        "patientCount": totals["patients"],
        "encounterCount": totals["encounters"],
        "screening": {
            "due": totals["sdue"],
            "done": totals["sdone"],
            "rate": _rate(totals["sdone"], totals["sdue"]),
        },
        "immunization": {
            "due": totals["idue"],
            "given": totals["igiven"],
            "rate": _rate(totals["igiven"], totals["idue"]),
        },
        "facilities": included,
        "facilitiesMissing": sorted(enrolled_set - set(by_facility)),
        "excluded": excluded,
        "reportIds": report_ids,
    }


def snapshot_to_wire(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored snapshot (a ``quality_snapshots`` row as a mapping) on the wire."""
    return {
        "id": row["period_key"],
        "tenantId": row["tenant_id"],
        **row["data"],
        "createdBy": row["created_by"],
        "createdAt": row["created_at"],
    }


def snapshot_period(snapshot_id: str) -> Period:
    """A snapshot's id is its period key; the key's shape tells the type."""
    try:
        return period_from_key(snapshot_id)
    except ValidationFailed as err:
        raise NotFound(f"no quality snapshot {snapshot_id[:40]!r}") from err


async def enrolled_facilities(conn: AsyncConnection, tenant_id: str) -> set[str]:
    rows = await conn.execute(
        sa.select(nodes.c.facility_ids).where(
            nodes.c.tenant_id == tenant_id, nodes.c.status == "active"
        )
    )
    return {facility for row in rows for facility in row.facility_ids}


async def merged_reports(
    conn: AsyncConnection, tenant_id: str, period: Period
) -> list[MergedReport]:
    rows = await conn.execute(
        sa.select(
            facility_reports.c.report_id,
            facility_reports.c.facility_id,
            facility_reports.c.device_id,
            facility_reports.c.metrics,
        ).where(
            facility_reports.c.tenant_id == tenant_id,
            facility_reports.c.period_type == period.type.value,
            facility_reports.c.period_key == period.key,
        )
    )
    return [MergedReport(r.report_id, r.facility_id, r.device_id, r.metrics) for r in rows]


async def get_snapshot_row(conn: AsyncConnection, tenant_id: str, period: Period) -> Any:
    return (
        await conn.execute(
            sa.select(quality_snapshots).where(
                quality_snapshots.c.tenant_id == tenant_id,
                quality_snapshots.c.period_type == period.type.value,
                quality_snapshots.c.period_key == period.key,
            )
        )
    ).first()


@dataclass(frozen=True)
class Created:
    snapshot: dict[str, Any]
    created: bool  # False: the identical stored snapshot


async def create_snapshot(
    conn: AsyncConnection, tenant_id: str, period: Period, created_by: str, moment: datetime
) -> Created:
    """Compute and store the snapshot of ``period``, or answer the stored one.

    ``Immutable`` when a snapshot of the period exists and a fresh computation
    differs from it.
    """
    if period.end > moment.date():
        raise ValidationFailed(
            f"period {period.key} has not ended yet (it ends {period.end.isoformat()}): "
            "a snapshot is immutable, so it is made only of finished periods",
            field="periodKey",
        )
    content = compute_snapshot(
        period,
        await merged_reports(conn, tenant_id, period),
        await enrolled_facilities(conn, tenant_id),
    )
    stored = await get_snapshot_row(conn, tenant_id, period)
    if stored is not None:
        return _stored(stored, content, period)
    stamp = format_timestamp(moment)
    row = {
        "tenant_id": tenant_id,
        "period_type": period.type.value,
        "period_key": period.key,
        "data": content,
        "created_by": created_by,
        "created_at": stamp,
    }
    try:
        async with conn.begin_nested():
            await conn.execute(quality_snapshots.insert().values(**row))
    except IntegrityError:
        # PostgreSQL: a concurrent request stored the period's snapshot first
        # (SQLite has one writer, so there the read above saw it).
        return _stored(await get_snapshot_row(conn, tenant_id, period), content, period)
    wire = snapshot_to_wire(row)
    await conn.execute(
        changes.insert().values(
            tenant_id=tenant_id,
            facility_id=None,  # tenant-wide
            aggregate=KIND,
            entity_id=period.key,
            op="upsert",
            data=wire,
            committed_at=stamp,
        )
    )
    await append_event(
        conn,
        CREATED_EVENT,
        tenant_id,
        moment,
        {
            "snapshotId": period.key,
            "periodType": period.type.value,
            "periodKey": period.key,
            "coverage": content["coverage"],
        },
    )
    return Created(wire, created=True)


def _stored(stored: Any, content: Mapping[str, Any], period: Period) -> Created:
    """The stored snapshot when ``content`` is what it holds, else ``Immutable``."""
    if stored.data == content:
        return Created(snapshot_to_wire(stored._mapping), created=False)
    raise Immutable(
        f"the snapshot of {period.key} was made at {stored.created_at} and is immutable; "
        "the period's merged reports or enrolled facilities have changed since",
        snapshotId=period.key,
    )


def period_filter(
    period_type: str | None, lower: str | None, upper: str | None
) -> list[sa.ColumnElement[bool]]:
    """Conditions of ``?periodType=&from=&to=`` (inclusive keys of one type).

    Keys of one type sort as text; a range selects snapshots of its bounds'
    type, and bounds and periodType of different types are refused.
    """
    conditions: list[sa.ColumnElement[bool]] = []
    types: set[str] = set()
    if period_type:
        if period_type not in {p.value for p in PeriodType}:
            raise ValidationFailed("periodType must be daily or weekly", field="periodType")
        types.add(period_type)
    if lower:
        start = period_from_key(lower)
        types.add(start.type.value)
        conditions.append(quality_snapshots.c.period_key >= start.key)
    if upper:
        end = period_from_key(upper)
        types.add(end.type.value)
        conditions.append(quality_snapshots.c.period_key <= end.key)
    if len(types) > 1:
        raise ValidationFailed(
            "periodType, from and to must name periods of one type", field="periodType"
        )
    if types:
        conditions.append(quality_snapshots.c.period_type == types.pop())
    return conditions


async def list_snapshots(
    conn: AsyncConnection,
    tenant_id: str,
    conditions: Sequence[sa.ColumnElement[bool]],
    limit: int,
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        sa.select(quality_snapshots)
        .where(quality_snapshots.c.tenant_id == tenant_id, *conditions)
        .order_by(quality_snapshots.c.period_type, quality_snapshots.c.period_key)
        .limit(limit)
    )
    return [snapshot_to_wire(r._mapping) for r in rows]

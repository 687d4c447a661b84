"""What a central admin sees of one tenant: the admin page and ``GET …/admin/overview``.

Read-only queries, each bounded: every node with when it was last seen and
its clock offset; a facility × period grid of the reports that arrived over
the last complete periods; the latest events; the latest rejected and
conflicting submissions (transitions refused or superseded, report copies
that conflict with the stored report, refused writes), with their totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.schema import (
    events,
    facility_reports,
    outreach_transitions,
    refused_writes,
    report_submissions,
)
from gateway.registry import Node, tenant_nodes
from shared.fsm import Disposition
from shared.periods import Period, PeriodType, previous_period
from shared.signing import fingerprint
from shared.values import format_timestamp, parse_timestamp

RECENT_ROWS = 20
GRID_PERIODS = {PeriodType.DAILY: 7, PeriodType.WEEKLY: 6}  # complete periods shown
# Transition dispositions listed as rejected or conflicting (superseded: it
# was applied, then lost last-writer-wins to a later one).
TRANSITION_PROBLEMS = (Disposition.REJECTED.value, Disposition.SUPERSEDED.value)
# Event data fields shown on the page: identifiers only, never a patient's.
EVENT_FIELDS = ("facilityId", "periodKey", "deviceId", "reportId", "snapshotId", "cohortId")


def grid_periods(today: date, period_type: PeriodType, count: int) -> list[Period]:
    """The ``count`` complete periods before the one containing ``today``, oldest first."""
    periods = [previous_period(today, period_type)]
    while len(periods) < count:
        periods.append(previous_period(periods[-1].start, period_type))
    return periods[::-1]


def _node(node: Node, now: datetime) -> dict[str, Any]:
    seen = node.last_seen_at
    return {
        "nodeId": node.node_id,
        "status": node.status,
        "facilityIds": sorted(node.facility_ids),
        "fp": fingerprint(node.public_key),
        "enrolledAt": node.enrolled_at,
        "revokedAt": node.revoked_at,
        "lastSeenAt": seen,
        "lastSeenAgeSeconds": (
            None if seen is None else (now - parse_timestamp(seen, "lastSeenAt")).total_seconds()
        ),
        "clockOffsetSeconds": node.clock_offset_seconds,
    }


async def _nodes(conn: AsyncConnection, tenant_id: str, now: datetime) -> list[dict[str, Any]]:
    return [_node(node, now) for node in await tenant_nodes(conn, tenant_id)]


async def _report_grid(
    conn: AsyncConnection, tenant_id: str, facilities: Iterable[str], today: date
) -> dict[str, Any]:
    grid: dict[str, Any] = {}
    facility_ids = set(facilities)
    for period_type, count in GRID_PERIODS.items():
        periods = grid_periods(today, period_type, count)
        keys = [p.key for p in periods]
        rows = (
            await conn.execute(
                sa.select(
                    facility_reports.c.facility_id,
                    facility_reports.c.period_key,
                    facility_reports.c.device_id,
                    facility_reports.c.received_at,
                )
                .where(
                    facility_reports.c.tenant_id == tenant_id,
                    facility_reports.c.period_type == period_type.value,
                    facility_reports.c.period_key.in_(keys),
                )
                .order_by(facility_reports.c.received_at)
            )
        ).all()
        cells: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            cell = cells.setdefault(
                (row.facility_id, row.period_key), {"nodes": [], "firstReceivedAt": row.received_at}
            )
            cell["nodes"].append(row.device_id)
        facility_ids.update(facility for facility, _ in cells)
        grid[period_type.value] = {
            "periods": keys,
            "rows": [
                {
                    "facilityId": facility,
                    "cells": {
                        key: cells.get((facility, key), {"nodes": [], "firstReceivedAt": None})
                        for key in keys
                    },
                }
                for facility in sorted(facility_ids)
            ],
            "arrived": len(cells),
        }
    return grid


async def _recent_events(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(
        sa.select(events.c.seq, events.c.type, events.c.time, events.c.data)
        .where(events.c.tenant_id == tenant_id)
        .order_by(events.c.seq.desc())
        .limit(RECENT_ROWS)
    )
    out = []
    for row in rows:
        data = row.data if isinstance(row.data, dict) else {}
        out.append(
            {
                "seq": row.seq,
                "type": row.type,
                "time": row.time,
                "subject": {k: data[k] for k in EVENT_FIELDS if isinstance(data.get(k), str | int)},
            }
        )
    return out


async def _count(conn: AsyncConnection, query: sa.Select[Any]) -> int:
    return int(
        (await conn.execute(sa.select(sa.func.count()).select_from(query.subquery()))).scalar_one()
    )


async def _rejected_transitions(
    conn: AsyncConnection, tenant_id: str
) -> tuple[int, list[dict[str, Any]]]:
    t = outreach_transitions
    query = sa.select(
        t.c.seq,
        t.c.transition_id,
        t.c.item_id,
        t.c.from_state,
        t.c.to_state,
        t.c.disposition,
        t.c.code,
        t.c.source,
        t.c.device_id,
        t.c.received_at,
    ).where(t.c.tenant_id == tenant_id, t.c.disposition.in_(TRANSITION_PROBLEMS))
    rows = await conn.execute(query.order_by(t.c.seq.desc()).limit(RECENT_ROWS))
    return await _count(conn, query), [
        {
            "transitionId": r.transition_id,
            "itemId": r.item_id,
            "from": r.from_state,
            "to": r.to_state,
            "disposition": r.disposition,
            "code": r.code,
            "source": r.source,
            "deviceId": r.device_id,
            "receivedAt": r.received_at,
        }
        for r in rows
    ]


async def _report_conflicts(
    conn: AsyncConnection, tenant_id: str
) -> tuple[int, list[dict[str, Any]]]:
    s, r = report_submissions, facility_reports
    query = (
        sa.select(
            s.c.seq, s.c.report_id, s.c.device_id, s.c.facility_id, s.c.period_key, s.c.received_at
        )
        .join(r, r.c.report_id == s.c.report_id)
        .where(r.c.tenant_id == tenant_id, s.c.disposition == "conflict")
    )
    rows = await conn.execute(query.order_by(s.c.seq.desc()).limit(RECENT_ROWS))
    return await _count(conn, query), [
        {
            "reportId": row.report_id,
            "deviceId": row.device_id,
            "facilityId": row.facility_id,
            "periodKey": row.period_key,
            "receivedAt": row.received_at,
        }
        for row in rows
    ]


async def _refused_writes(
    conn: AsyncConnection, tenant_id: str
) -> tuple[int, list[dict[str, Any]]]:
    w = refused_writes
    query = sa.select(
        w.c.seq, w.c.principal, w.c.kind, w.c.record_id, w.c.code, w.c.detail, w.c.received_at
    ).where(w.c.tenant_id == tenant_id)
    rows = await conn.execute(query.order_by(w.c.seq.desc()).limit(RECENT_ROWS))
    return await _count(conn, query), [
        {
            "principal": row.principal,
            "kind": row.kind,
            "recordId": row.record_id,
            "code": row.code,
            "detail": row.detail,
            "receivedAt": row.received_at,
        }
        for row in rows
    ]


def _facilities(node_docs: Sequence[dict[str, Any]]) -> set[str]:
    return {f for node in node_docs for f in node["facilityIds"]}


async def collect_overview(conn: AsyncConnection, tenant_id: str, now: datetime) -> dict[str, Any]:
    """The whole overview of ``tenant_id`` as of ``now`` (periods by the UTC date)."""
    node_docs = await _nodes(conn, tenant_id, now)
    transitions_total, transitions = await _rejected_transitions(conn, tenant_id)
    conflicts_total, conflicts = await _report_conflicts(conn, tenant_id)
    refused_total, refused = await _refused_writes(conn, tenant_id)
    return {
        "tenantId": tenant_id,
        "at": format_timestamp(now),
        "nodes": node_docs,
        "reportGrid": await _report_grid(conn, tenant_id, _facilities(node_docs), now.date()),
        "recentEvents": await _recent_events(conn, tenant_id),
        "rejected": {
            "transitionsTotal": transitions_total,
            "transitions": transitions,
            "reportConflictsTotal": conflicts_total,
            "reportConflicts": conflicts,
            "refusedWritesTotal": refused_total,
            "refusedWrites": refused,
        },
    }

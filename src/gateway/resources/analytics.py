"""``GET …/analytics/facility-reports``: the merged reports (analyst or admin).

Filters: ``facilityId``, ``periodType`` and a period-key range ``from``/``to``
(inclusive; keys of one type sort as text, e.g. 2026-W40..2026-W47). A range
selects reports of its bounds' type; bounds and periodType of different types
are refused (422).
"""

from __future__ import annotations

import sqlalchemy as sa
from aiohttp import web

from gateway import audit
from gateway.db.schema import facility_reports
from gateway.http import database, query_int, respond
from gateway.registry import Role
from gateway.reports import report_to_wire
from shared.errors import ValidationFailed
from shared.periods import PeriodType, period_from_key
from shared.values import identifier


async def read(request: web.Request) -> web.Response:
    action = "analytics.facility_reports.read"
    principal = await audit.authenticate_reader(request, action, None, Role.ANALYST, Role.ADMIN)
    q = request.query
    conditions = [facility_reports.c.tenant_id == principal.tenant_id]
    if q.get("facilityId"):
        conditions.append(
            facility_reports.c.facility_id == identifier(q["facilityId"], "facilityId")
        )
    types: set[str] = set()
    if q.get("periodType"):
        if q["periodType"] not in {p.value for p in PeriodType}:
            raise ValidationFailed("periodType must be daily or weekly", field="periodType")
        types.add(q["periodType"])
    # Keys compare as text only within one type ("2026-W40" sorts after any
    # "2026-MM-DD"), so a range selects reports of its bounds' type.
    if q.get("from"):
        lower = period_from_key(q["from"])
        types.add(lower.type.value)
        conditions.append(facility_reports.c.period_key >= lower.key)
    if q.get("to"):
        upper = period_from_key(q["to"])
        types.add(upper.type.value)
        conditions.append(facility_reports.c.period_key <= upper.key)
    if len(types) > 1:
        raise ValidationFailed(
            "periodType, from and to must name periods of one type", field="periodType"
        )
    if types:
        conditions.append(facility_reports.c.period_type == types.pop())
    limit = query_int(request, "limit", 1000, 1, 10000)
    facility = q["facilityId"] if q.get("facilityId") else None
    actor = audit.Actor.of_token(principal)
    # Aggregates, not patient-level; recorded all the same (docs/audit.md).
    async with audit.audited(request, actor, action, None, facility) as access:
        async with database(request).read() as conn:
            rows = await conn.execute(
                sa.select(facility_reports)
                .where(*conditions)
                .order_by(
                    facility_reports.c.facility_id,
                    facility_reports.c.period_key,
                    facility_reports.c.device_id,
                )
                .limit(limit)
            )
            reports = [report_to_wire(r) for r in rows]
        if reports:
            access.record = audit.span("reports", reports[0]["reportId"], reports[-1]["reportId"])
    return respond(request, 200, {"reports": reports})

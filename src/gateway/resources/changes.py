"""``GET …/sync/changes``: the change feed towards an edge node (CONTRACT section 8).

The cursor is the last change sequence number the node has seen, as a
string; the node treats it as opaque. Changes are read in sequence order,
which on SQLite (one writer) is commit order; on PostgreSQL the read waits
for the writes under way first (``Database.wait_for_writers``).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from aiohttp import web

from gateway import audit
from gateway.auth import authenticate_node
from gateway.db.database import Database
from gateway.db.schema import changes
from gateway.http import database, now, query_int, respond, settings
from shared.audit import Outcome
from shared.errors import BadCursor

# ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and
# other scripts' digits; and a cursor beyond a signed 64-bit integer cannot
# be bound as an SQL parameter.
_CURSOR_RE = re.compile(r"[0-9]{1,19}")
MAX_CURSOR = 2**63 - 1


def parse_cursor(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if _CURSOR_RE.fullmatch(raw) is None or int(raw) > MAX_CURSOR:
        raise BadCursor("since must be a cursor returned by this endpoint")
    return int(raw)


async def read(request: web.Request) -> web.Response:
    node = await authenticate_node(request, await request.read())
    since = parse_cursor(request.query.get("since"))
    limit = query_int(
        request,
        "limit",
        settings(request).changes_max_limit,
        1,
        settings(request).changes_max_limit,
    )
    facilities = sorted(node.facility_ids)
    query = (
        sa.select(changes)
        .where(
            changes.c.tenant_id == node.tenant_id,
            changes.c.seq > since,
            sa.or_(changes.c.facility_id.in_(facilities), changes.c.facility_id.is_(None)),
        )
        .order_by(changes.c.seq)
        .limit(limit + 1)
    )
    async with database(request).read() as conn:
        await Database.wait_for_writers(conn)  # no seq skipped behind a slower commit
        rows = (await conn.execute(query)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = str(rows[-1].seq) if rows else str(since)
    if rows:  # server data towards the node (PHI); an empty poll read nothing
        record = audit.span("changes", rows[0].seq, rows[-1].seq)
        moment = now(request)
        await audit.record(
            request, audit.Actor.of_node(node).entry("changes.read", record, Outcome.OK, moment)
        )
    return respond(
        request,
        200,
        {
            "changes": [
                {
                    "seq": r.seq,
                    "aggregate": r.aggregate,
                    "id": r.entity_id,
                    "op": r.op,
                    "data": r.data,
                }
                for r in rows
            ],
            "cursor": cursor,
            "more": more,
        },
    )

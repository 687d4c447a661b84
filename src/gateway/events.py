"""The transactional event outbox (CONTRACT section 9).

``append_event`` is called inside the transaction of the change it announces,
so an event exists exactly when its change committed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.database import Database
from gateway.db.schema import events
from shared.values import format_timestamp


async def append_event(
    conn: AsyncConnection, event_type: str, tenant_id: str, now: datetime, data: dict[str, Any]
) -> str:
    event_id = f"evt_{uuid.uuid4().hex}"
    await conn.execute(
        events.insert().values(
            event_id=event_id,
            type=event_type,
            time=format_timestamp(now),
            tenant_id=tenant_id,
            data=data,
        )
    )
    return event_id


async def read_events(
    conn: AsyncConnection, tenant_id: str, after: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Events after the cursor ``after``, in seq order, and the next cursor."""
    await Database.wait_for_writers(conn)  # no seq skipped behind a slower commit
    rows = await conn.execute(
        sa.select(events)
        .where(events.c.tenant_id == tenant_id, events.c.seq > after)
        .order_by(events.c.seq)
        .limit(limit)
    )
    out = [event_document(r) for r in rows]
    return out, (out[-1]["seq"] if out else after)


def event_document(row: sa.Row[Any]) -> dict[str, Any]:
    """An ``events`` row as consumers see it, from GET …/events and from NATS."""
    return {
        "seq": row.seq,
        "id": row.event_id,
        "type": row.type,
        "time": row.time,
        "tenantId": row.tenant_id,
        "data": row.data,
    }

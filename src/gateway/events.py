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
    rows = await conn.execute(
        sa.select(events)
        .where(events.c.tenant_id == tenant_id, events.c.seq > after)
        .order_by(events.c.seq)
        .limit(limit)
    )
    out = [
        {
            "seq": r.seq,
            "id": r.event_id,
            "type": r.type,
            "time": r.time,
            "tenantId": r.tenant_id,
            "data": r.data,
        }
        for r in rows
    ]
    return out, (out[-1]["seq"] if out else after)

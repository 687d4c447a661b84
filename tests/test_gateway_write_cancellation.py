"""A write whose caller goes away half-way still finishes (CONTRACT section 4).

aiohttp cancels a handler when its client disconnects (``handler_cancellation``,
on in ``TestServer``) and any handler still running at shutdown; the WAN drops
an edge node's connection at any moment, also while the gateway applies its
batch. Cut at the commit of its Idempotency-Key's claim, a batch left the key
claimed, neither completed nor released: every resend got 409
``idempotency_in_flight`` until ``idempotency_stale_seconds``, with the edge's
whole outbox waiting behind it (found by ``test_edge_flaky_wan.py``'s
outages). That window is too narrow to hit on purpose; this test pins the
behaviour that closes it: once begun, the write runs to its end and keeps its
answer, so the resend is a replay — as under ``phs-gateway serve``, which
never cancels a handler on disconnect.

The test holds the store locked from a second connection (SQLite: the
file's write lock; PostgreSQL: the outreach_items table), so the batch
request is surely inside its write when the client gives up.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import make_url

from gateway.settings import Settings
from harness import PREFIX, Gateway, document, transition


@asynccontextmanager
async def store_held(settings: Settings) -> AsyncIterator[None]:
    """The gateway's writes wait while this is open."""
    if not settings.database_url:
        blocker = sqlite3.connect(Path(settings.data_dir) / "gateway.db", timeout=10)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the gateway's writer must wait for us
            yield
        finally:
            blocker.rollback()
            blocker.close()
        return
    url = make_url(settings.database_url).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        async with conn.transaction():  # a batch reads the items it changes: it waits
            await conn.execute("LOCK TABLE outreach_items IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def test_a_batch_whose_client_disconnects_mid_write_is_applied_once_and_replayed(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    admin = await gateway.token("admin")
    await gateway.create_item(admin, "item-1", "assigned")
    node = await gateway.enroll()
    items = [transition("t-1", "item-1", "assigned", "in_progress")]
    batch_id, body = gateway.batch(node, items)

    def send() -> asyncio.Task[Any]:
        return asyncio.create_task(
            gateway.signed(
                node,
                "POST",
                f"{PREFIX}/sync/batches",
                body,
                headers={"Idempotency-Key": batch_id, "Accept": "application/msgpack"},
            )
        )

    async with store_held(gateway_settings):
        first = send()
        await asyncio.sleep(0.3)  # the handler is now waiting inside its write
        assert not first.done()
        first.cancel()  # the edge's link drops: the gateway cancels the handler
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.sleep(0.1)

    # The retry (same key, same bytes) gets the answer of the one application.
    deadline = time.monotonic() + 10
    while True:
        resp = await send()
        answer = await document(resp)
        if resp.status != 409 or time.monotonic() > deadline:
            break
        assert answer["code"] == "idempotency_in_flight"
        await asyncio.sleep(0.05)  # the first request is still finishing: retry later
    assert resp.status == 200, answer
    assert resp.headers.get("Idempotent-Replayed") == "true"
    assert [r["status"] for r in answer["results"]] == ["applied"]

    item = await gateway.client.get(
        f"{PREFIX}/outreach-items/item-1", headers={"Authorization": f"Bearer {admin}"}
    )
    history = (await item.json())["history"]
    assert [(h["id"], h["disposition"]) for h in history] == [("t-1", "applied")]
    # And the store takes the next write at once.
    await gateway.create_item(admin, "item-2", "assigned")

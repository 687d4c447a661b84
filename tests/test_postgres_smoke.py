"""The same gateway on PostgreSQL: migrations, a batch, a report, the feed.

Every gateway test also runs on PostgreSQL (tests/stores.py), on a database
emptied between tests; this one starts from a database nobody has touched.
Skips unless PHS_TEST_POSTGRES_URL names a server (``.ci/run`` sets it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.settings import Settings
from harness import PREFIX, FakeClock, Gateway, signed_report, transition
from stores import postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg_gateway() -> AsyncIterator[Gateway]:
    """A gateway on a database nobody has touched: its own migrations make the schema."""
    async with postgres_database() as url:
        clock = FakeClock()
        async with TestClient(TestServer(create_app(Settings(database_url=url), clock))) as client:
            yield Gateway(client, clock)


async def test_batch_report_and_feed_on_postgres(pg_gateway: Gateway) -> None:
    gateway = pg_gateway
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await gateway.create_item(admin, "item-1", "in_progress")
    resp = await gateway.post_batch(
        node,
        [
            transition("t1", "item-1", "in_progress", "contacted", "2026-11-25T10:00:00.000Z"),
            transition(
                "t2",
                "item-1",
                "in_progress",
                "unreachable",
                "2026-11-25T10:30:00.000Z",
                device="tab-b",
            ),
            {"kind": "facility_report", "id": "r1", **signed_report(node)},
        ],
    )
    assert resp.status == 200, await resp.text()
    results = msgpack.unpackb(await resp.read())["results"]
    assert [r["status"] for r in results] == ["applied", "applied", "applied"]
    assert results[1]["state"] == "unreachable"  # the newer sibling won (rule 5)
    replay = await gateway.post_batch(node, [], batch_id="b-edge-01-1")
    assert replay.status == 422  # same key, different body: idempotency works on PostgreSQL
    resp = await gateway.client.get(
        f"{PREFIX}/outreach-items/item-1", headers={"Authorization": f"Bearer {admin}"}
    )
    history = (await resp.json())["history"]
    assert [h["disposition"] for h in history] == ["superseded", "applied"]
    feed = await (await gateway.signed(node, "GET", f"{PREFIX}/sync/changes?since=0")).json()
    assert [c["data"]["state"] for c in feed["changes"]] == ["in_progress", "unreachable"]

"""The same gateway on PostgreSQL: migrations, a batch, a report, the feed.

Full PostgreSQL coverage (every gateway test on both stores, concurrency)
is the production-scale issue's; this proves the store is not SQLite-bound.
Skips unless PHS_TEST_POSTGRES_URL names a server (``.ci/run`` sets it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import make_url

from gateway.app import create_app
from gateway.settings import Settings
from harness import PREFIX, FakeClock, Gateway, signed_report, transition

POSTGRES_URL = os.environ.get("PHS_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not POSTGRES_URL,
    reason="PHS_TEST_POSTGRES_URL is not set: no PostgreSQL to test against "
    "(.ci/run sets it when a server answers on 127.0.0.1:5432)",
)


@pytest.fixture
async def pg_gateway() -> AsyncIterator[Gateway]:
    assert POSTGRES_URL
    url = make_url(POSTGRES_URL)
    name = f"phs_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(
            database_url=url.set(database=name).render_as_string(hide_password=False)
        )
        clock = FakeClock()
        async with TestClient(TestServer(create_app(settings, clock))) as client:
            yield Gateway(client, clock)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


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

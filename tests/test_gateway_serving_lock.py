"""Keys left in flight by a gateway that died mid-write (gateway.serving_lock).

Found by the chaos run: a gateway SIGKILLed between an Idempotency-Key's
claim and its write left the key "in flight"; the edge's resend got 409 for
two minutes (idempotency_stale_seconds) and its whole outbox waited behind
that batch. The next gateway to start alone on the store now releases such
claims; one starting beside a live gateway leaves them (they may be running).
Both stores: a gateway here is an app on a real server, stopped to play the
dead process (its lock goes with it, as the kernel or PostgreSQL drops a
killed process's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.db.schema import idempotency_keys
from gateway.registry import find_token
from gateway.settings import Settings
from harness import PREFIX, FakeClock, Gateway, bearer
from shared.idempotency import request_fingerprint
from shared.values import format_timestamp

PATH = f"{PREFIX}/outreach-items/item-1/transitions"
CANCEL = json.dumps({"id": "s-1", "from": "assigned", "to": "cancelled"}).encode()


@asynccontextmanager
async def running(settings: Settings, clock: FakeClock) -> AsyncIterator[Gateway]:
    async with TestClient(TestServer(create_app(settings, clock))) as client:
        yield Gateway(client, clock)


async def leave_in_flight(gateway: Gateway, token: str, key: str) -> None:
    """The claim row a gateway killed mid-write leaves: claimed, never finished."""
    async with gateway.database.read() as conn:
        principal = await find_token(conn, token)
    assert principal is not None
    async with gateway.database.write() as conn:
        await conn.execute(
            idempotency_keys.insert().values(
                principal=principal.principal,
                key=key,
                fingerprint=request_fingerprint("POST", PATH, CANCEL),
                state="in_flight",
                claimed_at=format_timestamp(gateway.clock()),
                expires_at=format_timestamp(gateway.clock()),
            )
        )


async def cancel(gateway: Gateway, token: str, key: str) -> tuple[int, str]:
    resp = await gateway.client.post(
        PATH,
        data=CANCEL,
        headers=bearer(token, **{"Idempotency-Key": key, "Content-Type": "application/json"}),
    )
    body = await resp.json()
    return resp.status, str(body.get("code") or body.get("status"))


async def history(gateway: Gateway, token: str) -> list[tuple[str, str]]:
    resp = await gateway.client.get(f"{PREFIX}/outreach-items/item-1", headers=bearer(token))
    return [(h["id"], h["disposition"]) for h in (await resp.json())["history"]]


async def test_next_gateway_releases_keys_a_dead_one_left_in_flight(
    gateway_settings: Settings, clock: FakeClock
) -> None:
    async with running(gateway_settings, clock) as first:
        admin = await first.token("admin")
        await first.create_item(admin, "item-1", "assigned")
        await leave_in_flight(first, admin, "k-1")
        assert await cancel(first, admin, "k-1") == (409, "idempotency_in_flight")
    # The first gateway is gone; the next one starts alone on the store.
    async with running(gateway_settings, clock) as second:
        # No clock moved: released at start-up, not taken over as stale.
        assert await cancel(second, admin, "k-1") == (200, "applied")
        assert await cancel(second, admin, "k-1") == (200, "applied")  # the replay
        assert await history(second, admin) == [("s-1", "applied")]


async def test_gateway_starting_beside_a_live_one_releases_nothing(
    gateway_settings: Settings, clock: FakeClock
) -> None:
    async with running(gateway_settings, clock) as first:
        admin = await first.token("admin")
        await first.create_item(admin, "item-1", "assigned")
        await leave_in_flight(first, admin, "k-1")  # as if the first were running it
        async with running(gateway_settings, clock) as second:
            assert await cancel(second, admin, "k-1") == (409, "idempotency_in_flight")
        assert await cancel(first, admin, "k-1") == (409, "idempotency_in_flight")
        assert await history(first, admin) == []


async def test_the_lock_takes_no_connection_of_the_pool(
    gateway_settings: Settings, clock: FakeClock
) -> None:
    """Held for the process's life on a connection of its own: a PostgreSQL pool
    of one still serves requests (on the pool's, it would wait forever)."""
    settings = dataclasses.replace(gateway_settings, database_pool_size=1, database_pool_overflow=0)
    async with running(settings, clock) as gateway:
        admin = await gateway.token("admin")
        await asyncio.wait_for(gateway.create_item(admin, "item-1", "assigned"), 30)
        assert await asyncio.wait_for(cancel(gateway, admin, "k-1"), 30) == (200, "applied")

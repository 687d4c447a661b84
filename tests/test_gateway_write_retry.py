"""A PostgreSQL write transaction aborted for a concurrent one is run again.

Two transactions that lock two rows in opposite orders deadlock for real;
PostgreSQL aborts one (SQLSTATE 40P01) after ``deadlock_timeout``, and
``Database.transact`` runs the loser again instead of answering 500. When
every attempt is aborted the caller gets 503 with Retry-After; any other
error is not retried. Skips unless PHS_TEST_POSTGRES_URL names a server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.database import Database
from shared.errors import ServiceUnavailable, ValidationFailed
from stores import postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg_store() -> AsyncIterator[Database]:
    async with postgres_database() as url:
        database = Database(url, retry_attempts=3)
        async with database.write() as conn:
            await conn.execute(text("CREATE TABLE pair (id int PRIMARY KEY, hits int NOT NULL)"))
            await conn.execute(text("INSERT INTO pair VALUES (1, 0), (2, 0)"))
            # Detect the deadlock quickly (the server default is 1 s).
            name = make_url(url).database
            await conn.execute(text(f"ALTER DATABASE {name} SET deadlock_timeout = '100ms'"))
        await database.close()  # new connections take the database's setting
        database = Database(url, retry_attempts=3)
        try:
            yield database
        finally:
            await database.close()


async def _hit(conn: AsyncConnection, row: int) -> None:
    await conn.execute(text("UPDATE pair SET hits = hits + 1 WHERE id = :id"), {"id": row})


async def test_a_deadlock_victim_is_run_again(
    pg_store: Database, caplog: pytest.LogCaptureFixture
) -> None:
    both_hold_their_first_row = asyncio.Barrier(2)
    attempts: list[str] = []

    def opposite_orders(name: str, first: int, second: int):  # type: ignore[no-untyped-def]
        async def work(conn: AsyncConnection) -> str:
            attempts.append(name)
            await _hit(conn, first)
            if attempts.count(name) == 1:  # only the first attempts meet
                await asyncio.wait_for(both_hold_their_first_row.wait(), 10)
            await _hit(conn, second)
            return name

        return work

    with caplog.at_level(logging.WARNING, logger="gateway.db"):
        done = await asyncio.wait_for(
            asyncio.gather(
                pg_store.transact(opposite_orders("a", 1, 2)),
                pg_store.transact(opposite_orders("b", 2, 1)),
            ),
            30,
        )
    assert done == ["a", "b"]
    # One of them lost the deadlock and ran a second time; both committed once.
    assert sorted(attempts) in (["a", "a", "b"], ["a", "b", "b"])
    async with pg_store.read() as conn:
        hits = dict((await conn.execute(text("SELECT id, hits FROM pair"))).all())
    assert hits == {1: 2, 2: 2}
    assert any("SQLSTATE 40P01" in r.getMessage() for r in caplog.records)


async def test_a_write_aborted_every_time_is_503_with_retry_after(pg_store: Database) -> None:
    attempts = 0

    async def always_a_serialization_failure(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        # A real 40001 from the server, raised as the driver raises it.
        await conn.execute(
            text(
                "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = 'serialization_failure';"
                " END $$"
            )
        )

    with pytest.raises(ServiceUnavailable) as raised:
        await pg_store.transact(always_a_serialization_failure)
    assert attempts == 3
    assert raised.value.status == 503
    assert raised.value.headers() == {"Retry-After": "1"}


async def test_other_errors_are_not_retried(pg_store: Database) -> None:
    attempts = 0

    async def duplicate_key(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(text("INSERT INTO pair VALUES (1, 0)"))

    with pytest.raises(IntegrityError):
        await pg_store.transact(duplicate_key)
    assert attempts == 1


def test_pool_and_retry_settings_are_checked() -> None:
    with pytest.raises(ValidationFailed):
        Database("sqlite+aiosqlite:///:memory:", retry_attempts=0)
    with pytest.raises(ValidationFailed):
        Database("postgresql+asyncpg://nobody@127.0.0.1/none", pool_size=0)


async def test_sessions_the_server_ended_answer_503_and_the_pool_reconnects(
    pg_store: Database,
) -> None:
    """PostgreSQL restarted, failed over, or an operator ended the sessions:
    each pooled connection is dead. The request that meets one answers 503
    with Retry-After (not 500), the pool drops every connection, and the next
    requests run on fresh ones."""

    async def hit(conn: AsyncConnection) -> None:
        await _hit(conn, 1)

    # Fill the pool with several idle connections.
    async def hold_one() -> None:
        async with pg_store.read() as conn:
            await conn.execute(text("SELECT pg_sleep(0.05)"))

    await asyncio.gather(*(hold_one() for _ in range(5)))
    await pg_store.transact(hit)
    operator = Database(pg_store.url.render_as_string(hide_password=False))
    try:
        async with operator.write() as conn:
            ended = (
                await conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            ).scalar_one()
    finally:
        await operator.close()
    assert ended >= 1
    outcomes: list[str] = []
    for _ in range(10):
        try:
            await pg_store.transact(hit)
            outcomes.append("done")
        except ServiceUnavailable as err:
            assert err.headers()["Retry-After"] == "1"
            outcomes.append("503")
        async with pg_store.read() as conn:  # reads too come back
            await conn.execute(text("SELECT 1"))
    assert outcomes.count("503") <= 1, outcomes  # the pool drops all its connections at once
    assert outcomes[-5:] == ["done"] * 5, outcomes
    async with pg_store.read() as conn:
        hits = (await conn.execute(text("SELECT hits FROM pair WHERE id = 1"))).scalar_one()
    assert hits == 1 + outcomes.count("done")

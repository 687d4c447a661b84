"""The two stores the gateway tests run on: SQLite and PostgreSQL.

The ``store`` fixture (conftest.py) is parametrised over :data:`STORES`, so
every test built on ``gateway``, ``gateway_settings`` or ``database_url``
runs twice, as ``test_x[sqlite]`` and ``test_x[postgresql]``. SQLite is a
file under ``tmp_path``. PostgreSQL is one database per test session (per
worker), made on the server named by ``PHS_TEST_POSTGRES_URL`` (``.ci/run``
sets it when a server answers on 127.0.0.1:5432), emptied before each test
(:func:`empty_database`: every row deleted, sequences restarted, other
sessions ended) and dropped at the end; the app migrates it as in production,
the first test for real, the others finding it at head. That is about 0.6 s a
test less than ``CREATE DATABASE`` and migrating for each (and no migration
may seed rows, or emptying would lose them). A test that needs a database
nobody has touched takes :func:`postgres_database`. Without a server the
PostgreSQL variants skip, saying why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy import URL, make_url

from canaries import scan_postgres_database

POSTGRES_URL = os.environ.get("PHS_TEST_POSTGRES_URL", "")
SQLITE, POSTGRESQL = "sqlite", "postgresql"
# ``-m "not postgres"`` leaves the PostgreSQL variants out.
STORES = (SQLITE, pytest.param(POSTGRESQL, marks=pytest.mark.postgres))
PREFIX = "phs_t_"  # of every database a test makes (a leftover is easy to spot)


T = TypeVar("T")


def run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end on an event loop of its own, in a thread of its
    own: for sync code that may itself be called inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _server() -> URL:
    return make_url(POSTGRES_URL)


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@functools.cache
def postgres_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if not POSTGRES_URL:
        return (
            "PHS_TEST_POSTGRES_URL is not set: no PostgreSQL to test against "
            "(.ci/run sets it when a server answers on 127.0.0.1:5432)"
        )

    async def probe() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(_server()), timeout=5)
        await conn.close()

    try:
        run_apart(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError) as err:
        shown = _server().render_as_string(hide_password=True)
        return f"PostgreSQL at PHS_TEST_POSTGRES_URL={shown} is unreachable: {err!r}"
    return None


def skip_without_postgres() -> None:
    """Skip the running test, with the reason, when PostgreSQL is unavailable."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)


async def create_database() -> str:
    """A new, empty database on the test server; its SQLAlchemy URL."""
    server = _server()
    name = f"{PREFIX}{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(_asyncpg_dsn(server))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server.set(database=name).render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    """Drop the database of ``url`` (``WITH (FORCE)``: open sessions do not keep it)."""
    name = make_url(url).database
    assert name and name.startswith(PREFIX), name
    admin = await asyncpg.connect(_asyncpg_dsn(_server()))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new database nobody has touched, for one test: its URL; dropped on exit."""
    skip_without_postgres()
    url = await create_database()
    try:
        yield url
        await scan_postgres_database(url)  # its sinks, for canaries (tests/canaries.py)
    finally:
        await drop_database(url)


# Ends the other sessions on the database (an app a test left open), then
# deletes every row but the schema version's and restarts every sequence, in
# one transaction; foreign keys are not checked meanwhile (replica role).
_EMPTY = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid();
DO $$
DECLARE r record;
BEGIN
  PERFORM set_config('session_replication_role', 'replica', true);
  FOR r IN SELECT tablename FROM pg_tables
            WHERE schemaname = current_schema() AND tablename <> 'alembic_version' LOOP
    EXECUTE format('DELETE FROM %I', r.tablename);
  END LOOP;
  FOR r IN SELECT sequencename, start_value FROM pg_sequences
            WHERE schemaname = current_schema() LOOP
    PERFORM setval(quote_ident(r.sequencename), r.start_value, false);
  END LOOP;
END $$;
"""


async def empty_database(url: str) -> None:
    """Make the database of ``url`` as a migrated one with no rows yet."""
    conn = await asyncpg.connect(_asyncpg_dsn(make_url(url)))
    try:
        await conn.execute("SET lock_timeout = '10s'")
        await conn.execute(_EMPTY)
    finally:
        await conn.close()

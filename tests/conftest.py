from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from canaries import scan_postgres_database
from gateway.app import create_app
from gateway.settings import Settings
from harness import FakeClock, Gateway
from netns import netns  # noqa: F401 - a private network namespace per test
from stores import (
    POSTGRESQL,
    STORES,
    create_database,
    drop_database,
    empty_database,
    run_apart,
    skip_without_postgres,
)

# canaries: seeded patient identifiers, and the session-wide check that none
# reaches a log line, an event, a report payload or an export (tests/canaries.py).
# pytester: its self-test runs a small session of its own.
pytest_plugins = ["canaries", "pytester"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    """The gateway's store: every gateway test runs on each (stores.py).

    A test bound to one store says so with
    ``@pytest.mark.parametrize("store", ["sqlite"], indirect=True)``.
    """
    name: str = request.param
    if name == POSTGRESQL:
        skip_without_postgres()
    return name


@pytest.fixture(scope="session")
def postgres_session_database() -> Iterator[str]:
    """The URL of this session's PostgreSQL database (stores.py); dropped at the end."""
    skip_without_postgres()
    url = run_apart(create_database())
    yield url
    run_apart(drop_database(url))


@pytest.fixture
def postgres_url(store: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The session's PostgreSQL database when ``store`` is PostgreSQL, else empty.

    Its sinks are scanned for canaries when the test is done (tests/canaries.py),
    before the next test empties it."""
    if store != POSTGRESQL:
        yield ""
        return
    url: str = request.getfixturevalue("postgres_session_database")
    yield url
    run_apart(scan_postgres_database(url))


@pytest.fixture
async def database_url(postgres_url: str) -> str:
    """``Settings.database_url`` on ``store``: empty for SQLite (DATA_DIR/gateway.db),
    for PostgreSQL the session's database, emptied for this test."""
    if postgres_url:
        await empty_database(postgres_url)
    return postgres_url


@pytest.fixture
def gateway_settings(tmp_path: Any, database_url: str) -> Settings:
    return Settings(data_dir=str(tmp_path / "gateway"), database_url=database_url)


@pytest.fixture
async def gateway(gateway_settings: Settings, clock: FakeClock) -> AsyncIterator[Gateway]:
    # Closed here, not by ``aiohttp_client``, so it is closed before the fixtures
    # it depends on are torn down.
    async with TestClient(TestServer(create_app(gateway_settings, clock))) as client:
        yield Gateway(client, clock)

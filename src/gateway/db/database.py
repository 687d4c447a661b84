"""Connections to the gateway store: SQLite (embedded default) or PostgreSQL.

On SQLite there is one writer: writes go through a single pooled connection
under an asyncio lock and ``BEGIN IMMEDIATE``, so a write transaction never
fails half-way on "database is locked"; reads use their own connections and
WAL lets them run beside the writer. ``synchronous=FULL`` because an answered
request must survive a power cut (NORMAL in WAL mode may lose the last
commits). On PostgreSQL every connection may write and row locks serialise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shared.errors import ServiceUnavailable

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


def _sqlite_engine(url: str, begin: str, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=300)

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        self.is_sqlite = self.dialect == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self._writer = _sqlite_engine(url, "BEGIN IMMEDIATE", pool_size=1)
            self._reader = _sqlite_engine(url, "BEGIN", pool_size=4)
        else:
            self._writer = create_async_engine(url, pool_size=10, max_overflow=10)
            self._reader = self._writer
        self._write_lock: AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.is_sqlite else nullcontext()
        )

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on exit, rolled back on error."""
        async with self._write_lock, self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot (one transaction, rolled back on exit)."""
        async with self._reader.connect() as conn:
            yield conn

    async def ping(self) -> None:
        try:
            async with self.read() as conn:
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError) as err:
            raise ServiceUnavailable("database unreachable") from err

    async def migrate(self) -> None:
        """Upgrade the schema to head in one transaction (a re-run is a no-op)."""
        async with self.write() as conn:
            await conn.run_sync(_upgrade_to_head)

    async def close(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade_to_head(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")

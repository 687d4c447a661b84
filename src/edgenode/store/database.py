"""The edge node's SQLite store (aiosqlite), one writer per file.

``SQLiteStore`` runs any tuple of numbered migrations; ``EdgeDatabase`` is it
with the edge's own (the field device's store runs its own tuple).

Writes go through one connection under an asyncio lock with ``BEGIN
IMMEDIATE``; reads use a second connection that WAL lets run beside it.
``synchronous=FULL``: a tablet is answered only after its records are
committed, and a committed record must survive a power cut.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aiosqlite

from edgenode.store.migrations import MIGRATIONS

#: (version, name, statements) of each numbered step, in order.
Migrations = tuple[tuple[int, str, tuple[str, ...]], ...]

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in PRAGMAS:
        await conn.execute(pragma)
    return conn


class WriteLock:
    """The writer connection's lock: first come, first served, except that an
    urgent waiter goes before every ordinary one.

    The forwarder's writes are urgent: with dozens of tablets queued on a
    plain FIFO lock it would get one turn in dozens and the outbox would grow
    for as long as they keep pushing. Its transactions are short (one batch).
    """

    def __init__(self) -> None:
        self._held = False
        self._waiters: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    async def acquire(self, urgent: bool = False) -> None:
        if not self._held:  # free: nobody waits (release hands it on while anyone does)
            self._held = True
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiters[0 if urgent else 1].append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if not granted.cancelled():  # handed the lock as we were cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        """Hand the lock to the next waiter (it stays held), or free it."""
        for queue in self._waiters:
            while queue:
                granted = queue.popleft()
                if not granted.done():  # a cancelled waiter is skipped
                    granted.set_result(None)
                    return
        self._held = False


class SQLiteStore:
    def __init__(self, path: Path, migrations: Migrations) -> None:
        self.path = path
        self._migrations = migrations
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = WriteLock()
        self._read_lock = asyncio.Lock()  # one snapshot at a time on the reader

    async def open(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await _connect(self.path)
        await self._migrate()
        self._reader = await _connect(self.path)
        return self

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @asynccontextmanager
    async def write(self, urgent: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: committed on exit, rolled back on error.
        ``urgent``: ahead of the writers already waiting (see ``WriteLock``)."""
        assert self._writer is not None, "database not open"
        await self._lock.acquire(urgent)
        try:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")
        finally:
            self._lock.release()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """A consistent snapshot for several reads."""
        assert self._reader is not None, "database not open"
        async with self._read_lock:
            await self._reader.execute("BEGIN")
            try:
                yield self._reader
            finally:
                await self._reader.execute("ROLLBACK")

    async def schema_version(self) -> int:
        async with self.read() as conn:
            row = await (
                await conn.execute("SELECT max(version) FROM schema_migrations")
            ).fetchone()
        return int(row[0] or 0) if row else 0

    async def _migrate(self) -> None:
        assert self._writer is not None
        await self._writer.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        rows = await (
            await self._writer.execute("SELECT version FROM schema_migrations")
        ).fetchall()
        done = {int(r[0]) for r in rows}
        for version, name, statements in self._migrations:
            if version in done:
                continue
            async with self.write() as conn:
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, datetime.now(UTC).isoformat()),
                )


class EdgeDatabase(SQLiteStore):
    """The edge node's store: its own migrations."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, MIGRATIONS)


# One trip to the connection's thread per query (execute and fetch together):
# each trip waits for the event loop, and writes wait inside the write lock.


async def fetch_all(
    conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()
) -> list[sqlite3.Row]:
    return list(await conn.execute_fetchall(sql, params))


async def fetch_one(
    conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()
) -> sqlite3.Row | None:
    """The first row of a query that answers at most a few (all are fetched)."""
    rows = await fetch_all(conn, sql, params)
    return rows[0] if rows else None

"""The serving lock: every gateway process serving a store holds it, shared, for life.

Why it exists. A write claims its Idempotency-Key in a transaction of its
own, then writes in another (``gateway.idempotency``). A process killed
between the two (SIGKILL, OOM, power cut) leaves the key claimed "in flight"
with nobody running it: every retry is answered 409 until
``idempotency_stale_seconds`` (120 s), and an edge node's outbox, which sends
its batches strictly in order, stands still behind that one batch. The chaos
run (tests/test_chaos.py) found it: after the gateway was SIGKILLed, draining
the edge's outbox took two minutes.

At start-up a process first tries to take the lock exclusively, without
waiting. Getting it proves that no other process serving this store is alive,
so every in-flight claim was left by a dead one: they are all released (the
retry then runs the write, exactly once, since the dead write never
committed). Then the process holds the lock shared, like every other serving
process. When another serving process is alive (PostgreSQL with several
workers, one of them restarted), nothing is released and an abandoned claim
waits for ``idempotency_stale_seconds`` as before.

- SQLite: ``flock`` on ``<database>.serve-lock`` beside the database file (an
  SQLite store is served from one host); the kernel drops it with the process.
- PostgreSQL: an advisory lock on a session kept for the purpose; the server
  drops it when the session ends, however the process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from gateway.db.database import Database
from gateway.db.schema import idempotency_keys
from gateway.idempotency import IN_FLIGHT

SERVING_LOCK_KEY = 0x5048_5347_5345_5256  # "PHSGSERV"
SHARED_WAIT_SECONDS = 30.0  # for a process starting beside us to finish its clean-up

log = logging.getLogger("gateway.serving_lock")


class ServingLock:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._fd: int | None = None  # SQLite: the locked file
        self._connection: AsyncConnection | None = None  # PostgreSQL: the lock's session
        self._engine: AsyncEngine | None = None  # ... opened outside the store's pool

    async def acquire(self) -> int:
        """Hold the lock shared; first, when no other serving process is alive,
        release the claims dead ones left in flight. Returns how many."""
        if self._database.is_sqlite:
            return await self._acquire_file()
        return await self._acquire_advisory()

    async def _acquire_file(self) -> int:
        name = self._database.url.database
        if not name or name == ":memory:":
            return await self._release_abandoned()  # no other process can share it
        fd = os.open(Path(name + ".serve-lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            released = 0
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another serving process is alive: its claims may be running
            else:
                released = await self._release_abandoned()
            await _share(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return released

    async def _acquire_advisory(self) -> int:
        # A connection of its own, not one of the pool's: held for the process's
        # life, it would leave a pool of one with none for the requests.
        self._engine = create_async_engine(self._database.url, poolclass=NullPool)
        connection = await self._engine.connect()
        try:
            key = {"key": SERVING_LOCK_KEY}
            alone = (
                await connection.execute(text("SELECT pg_try_advisory_lock(:key)"), key)
            ).scalar_one()
            await connection.commit()  # the lock is the session's, not a transaction's
            released = await self._release_abandoned() if alone else 0
            await connection.execute(text("SELECT pg_advisory_lock_shared(:key)"), key)
            if alone:
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
            await connection.commit()
        except BaseException:
            await _discard(connection)
            await self.release()
            raise
        self._connection = connection
        return released

    async def _release_abandoned(self) -> int:
        async with self._database.write() as conn:
            result = await conn.execute(
                idempotency_keys.delete().where(idempotency_keys.c.state == IN_FLIGHT)
            )
        released = int(result.rowcount or 0)
        if released:
            log.warning(
                "released %d Idempotency-Keys left in flight by a gateway that stopped "
                "mid-write (their retries run now instead of waiting to go stale)",
                released,
            )
        return released

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await _discard(connection)
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()


async def _share(fd: int) -> None:
    """Hold ``fd``'s lock shared: from exclusive, a conversion; else it may wait
    while a process starting beside us cleans up. Never blocks the event loop
    (two apps of one process may share a store, in tests)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHARED_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def _discard(connection: AsyncConnection) -> None:
    """Close the session for good, not back to the pool (where the lock would stay)."""
    with contextlib.suppress(SQLAlchemyError, OSError):
        await connection.invalidate()
    with contextlib.suppress(SQLAlchemyError, OSError):
        await connection.close()

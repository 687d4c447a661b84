"""One event relay per gateway database: a lock held for as long as a relay runs.

Two relays on one database would both publish every event (JetStream drops
the copies within its window, but the work and the broker's load double). So
a relay publishes only while it holds this lock; a second relay started by
mistake, or as a hot standby on another host, waits and takes over when the
holder stops or dies.

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a
  connection kept for the purpose. The server releases it when that session
  ends, however the holder died (SIGKILL, host lost, connection cut). Each
  round the holder checks its connection still answers: if the session is
  gone, so is the lock, and another relay may hold it already.
- SQLite: ``flock`` on ``<database>.relay-lock`` beside the database file;
  the kernel releases it when the holder's process ends. (An SQLite gateway
  and its relay share one host.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.database import Database

RELAY_LOCK_KEY = 0x5048_5347_524C_4159  # "PHSGRLAY"


class RelayLock:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._connection: AsyncConnection | None = None  # PostgreSQL: the lock's session
        self._fd: int | None = None  # SQLite: the locked file

    @property
    def held(self) -> bool:
        return self._connection is not None or self._fd is not None

    async def hold(self) -> bool:
        """True while this relay holds the lock: checks it is still held, or
        tries to take it. Never waits; database errors count as not held."""
        if self._database.is_sqlite:
            return self._hold_file()
        if self._connection is not None:
            try:
                await self._connection.execute(text("SELECT 1"))
                return True
            except (SQLAlchemyError, OSError):
                # The session, and with it the lock, is gone: another relay may
                # hold it by now. Stand by this round; ask again the next.
                await self.release()
                return False
        try:
            connection = await self._database.session_connection()
        except (SQLAlchemyError, OSError):
            return False
        try:
            taken = (
                await connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": RELAY_LOCK_KEY}
                )
            ).scalar_one()
            # Out of the implicit transaction: the lock is the session's, and
            # an idle-in-transaction session would hold back vacuum.
            await connection.commit()
        except (SQLAlchemyError, OSError):
            taken = False
        if taken:
            self._connection = connection
            return True
        await _discard(connection)
        return False

    def _hold_file(self) -> bool:
        if self._fd is not None:
            return True
        path = Path(str(self._database.url.database) + ".relay-lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await _discard(connection)


async def _discard(connection: AsyncConnection) -> None:
    """Close the session for good (not back to the pool, where a lock taken on
    it would stay held by a connection nobody uses)."""
    with contextlib.suppress(SQLAlchemyError, OSError):
        await connection.invalidate()
    with contextlib.suppress(SQLAlchemyError, OSError):
        await connection.close()

"""Connections to the gateway store: SQLite (embedded default) or PostgreSQL.

On SQLite there is one writer: writes go through a single pooled connection
under an asyncio lock and ``BEGIN IMMEDIATE``, so a write transaction never
fails half-way on "database is locked"; reads use their own connections and
WAL lets them run beside the writer. ``synchronous=FULL`` because an answered
request must survive a power cut (NORMAL in WAL mode may lose the last
commits). On PostgreSQL every connection may write and row locks serialise.

Sequence order is commit order on SQLite (one writer), not on PostgreSQL: a
transaction takes its ``changes`` or ``events`` seq when it inserts the row
and may commit after another that took a higher one; a reader paging by seq
would move its cursor past the first row before it commits, and skip it for
good. So every PostgreSQL write transaction holds an advisory lock in shared
mode (writers never wait for each other on it), and ``wait_for_writers``,
called by a sequence-ordered read before its query, takes it exclusively:
the read then starts once every write transaction under way has ended, and
sees a prefix of the sequence without holes (new writers wait for the read's
short transaction). A write transaction takes the lock as its first
statement, before any row lock, so the waits form no cycle.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    Insert,
    Row,
    Select,
    Update,
    bindparam,
    event,
    make_url,
    text,
)
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.compiler import SQLCompiler

from shared.errors import ServiceUnavailable, ValidationFailed

if TYPE_CHECKING:
    from gateway.settings import Settings

log = logging.getLogger("gateway.db")
T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# PostgreSQL advisory lock keys (8 ASCII letters each)
MIGRATION_LOCK_KEY = 0x5048_5347_4D49_4752  # "PHSGMIGR": migrate(), one process at a time
DAY_CHANGE_LOCK_KEY = 0x5048_5347_4441_5953  # "PHSGDAYS": the day-change recompute
WRITERS_LOCK_KEY = 0x5048_5347_5752_5452  # "PHSGWRTR": held shared by every write (above)
_SHARE_WRITERS_LOCK = f"SELECT pg_advisory_xact_lock_shared({WRITERS_LOCK_KEY})"
_WAIT_FOR_WRITERS = f"SELECT pg_advisory_xact_lock({WRITERS_LOCK_KEY})"
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


def _sqlite_engine(url: str, begin: str, pool_size: int) -> AsyncEngine:
    # hide_parameters: a database error's text (logged with its traceback)
    # names the statement but never the bound values: patient data (docs/logging.md).
    engine = create_async_engine(
        url, pool_size=pool_size, max_overflow=0, pool_timeout=300, hide_parameters=True
    )

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


def _postgres_engine(url: str, pool_size: int, pool_overflow: int) -> AsyncEngine:
    engine = create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_overflow, hide_parameters=True
    )

    @event.listens_for(engine.sync_engine, "handle_error")
    def on_error(context: ExceptionContext) -> None:
        # A session the server ended (restart, failover, an operator's
        # pg_terminate_backend) now and then surfaces from asyncpg as "cannot
        # switch to state …; another operation is in progress" rather than
        # "connection is closed", and SQLAlchemy then put the broken connection
        # back in its pool, to fail every request it served (sqlalchemy#13241).
        # It is a lost connection: the pool must drop it, as for the others.
        import asyncpg  # loaded already: this engine's driver

        if isinstance(context.original_exception.__cause__, asyncpg.InternalClientError):
            context.is_disconnect = True

    return engine


@contextmanager
def _unavailable_when_disconnected() -> Iterator[None]:
    """A lost database connection answers 503 with Retry-After, not 500: the
    pool has dropped its connections (SQLAlchemy invalidates them all on a
    disconnect) and the retry gets a fresh one."""
    try:
        yield
    except DBAPIError as err:
        if not err.connection_invalidated:
            raise
        log.warning("database connection lost (%s); the pool reconnects", type(err.orig).__name__)
        raise ServiceUnavailable("the database connection was lost; retry", retry_after=1) from err


# SQLSTATEs of a PostgreSQL transaction aborted only because of a concurrent
# one (deadlock victim, serialization failure): run again, it will succeed.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


class Database:
    def __init__(
        self, url: str, *, pool_size: int = 10, pool_overflow: int = 10, retry_attempts: int = 5
    ) -> None:
        if pool_size < 1 or pool_overflow < 0 or retry_attempts < 1:
            raise ValidationFailed(
                "database pool size and retry attempts must be at least 1, overflow at least 0"
            )
        self.retry_attempts = retry_attempts
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
            self._writer = _postgres_engine(url, pool_size, pool_overflow)
            self._reader = self._writer
        self._write_lock: AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.is_sqlite else nullcontext()
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> Database:
        """The store ``settings`` name, with their pool and retry settings."""
        return cls(
            settings.sqlalchemy_url(),
            pool_size=settings.database_pool_size,
            pool_overflow=settings.database_pool_overflow,
            retry_attempts=settings.database_retry_attempts,
        )

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on exit, rolled back on error."""
        with _unavailable_when_disconnected():
            async with self._write_lock, self._writer.begin() as conn:
                if not self.is_sqlite:
                    await conn.exec_driver_sql(_SHARE_WRITERS_LOCK)
                yield conn

    async def transact(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` in one write transaction, run again when PostgreSQL aborted it
        for a concurrent transaction's sake (deadlock, serialization failure).

        ``work`` must keep its effects inside the transaction, so that a rolled
        back attempt left nothing behind. Lock order keeps deadlocks rare, but
        not every path can take its locks in one global order (a batch mixing
        kinds locks items, cohorts and scores as its items come); the loser
        would otherwise answer 500 for a write that would have succeeded.
        After ``retry_attempts`` it answers 503 with Retry-After.
        """
        for attempt in range(1, self.retry_attempts + 1):
            try:
                async with self.write() as conn:
                    return await work(conn)
            except DBAPIError as err:
                sqlstate = _sqlstate(err)
                if sqlstate not in RETRYABLE_SQLSTATES:
                    raise
                log.warning(
                    "write transaction aborted by PostgreSQL (SQLSTATE %s), attempt %d of %d",
                    sqlstate,
                    attempt,
                    self.retry_attempts,
                )
                if attempt == self.retry_attempts:
                    raise ServiceUnavailable(
                        "the store kept aborting this write for concurrent ones; retry",
                        retry_after=1,
                    ) from err
                # Jitter, so the transactions that collided do not collide again.
                await asyncio.sleep(random.uniform(0.005, 0.02 * 2**attempt))
        raise AssertionError("unreachable: the loop returns or raises")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot (one transaction, rolled back on exit)."""
        with _unavailable_when_disconnected():
            async with self._reader.connect() as conn:
                yield conn

    async def session_connection(self) -> AsyncConnection:
        """A connection of its own (PostgreSQL), for state that lives as long as
        its session, such as an advisory lock; the caller closes it."""
        return await self._writer.connect()

    @staticmethod
    async def wait_for_writers(conn: AsyncConnection) -> None:
        """In a read, before a query in sequence order: on PostgreSQL, wait until
        the write transactions under way have ended (module docstring)."""
        if conn.dialect.name != "sqlite":
            await conn.exec_driver_sql(_WAIT_FOR_WRITERS)

    async def ping(self) -> None:
        try:
            async with self.read() as conn:
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError) as err:
            raise ServiceUnavailable("database unreachable") from err

    async def migrate(self) -> None:
        """Upgrade the schema to head in one transaction (a re-run is a no-op).

        On PostgreSQL the transaction first takes an advisory lock: gateway
        processes starting together on a new database (``serve --workers``,
        several units) migrate one after the other, the later ones finding the
        schema at head, instead of failing on each other's ``CREATE TABLE``.
        """
        async with self.write() as conn:
            await one_at_a_time(conn, MIGRATION_LOCK_KEY)
            await conn.run_sync(_upgrade_to_head)

    async def close(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()


def _sqlstate(err: DBAPIError) -> str | None:
    """The SQLSTATE of a driver error (asyncpg's, as SQLAlchemy wraps it)."""
    for candidate in (err.orig, getattr(err.orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


async def one_at_a_time(conn: AsyncConnection, key: int) -> None:
    """On PostgreSQL, take the advisory lock ``key`` until the transaction ends:
    transactions that take it run one after the other, across processes.
    Nothing to do on SQLite, where write transactions do anyway."""
    if conn.dialect.name != "sqlite":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


# Hot-path statements, compiled once per dialect and run as driver SQL.
#
# ``conn.execute(statement, rows)`` builds and type-processes every parameter
# of every row in Python, and an ``in_([...])`` of 500 values is expanded and
# processed again on every call; on a batch of 500 transitions that was over
# a third of the gateway's time. These helpers skip that work, so values go to
# the driver as they are and come back as the driver returns them: JSON as
# text (``json.dumps``, SQLAlchemy's default serializer), otherwise only
# str, int, bool and None. A statement's literals (``where(col == "x")``) are
# filled in from the statement itself; its ``bindparam`` values come from rows.

IN_LIST_SIZE = 500  # values per ``in_list`` query; also bounds its bound parameters
_IN_KEYS = tuple(f"in_{i}" for i in range(IN_LIST_SIZE))


def in_list(column: ColumnElement[Any]) -> ColumnElement[bool]:
    """``column IN (:in_0, …, :in_499)``: the shape ``select_in`` fills."""
    return column.in_([bindparam(key) for key in _IN_KEYS])


async def select_in(
    conn: AsyncConnection,
    statement: Select[Any],
    values: Sequence[Any],
    params: Mapping[str, Any] | None = None,
) -> list[Row[Any]]:
    """Rows of ``statement`` (built with ``in_list``) for every value, in chunks.

    A short chunk is padded with its last value (IN ignores repeats), so every
    query has the same text: compiled once, prepared once by the driver.
    """
    bulk = _compiled(statement, conn.dialect)
    rows: list[Row[Any]] = []
    for start in range(0, len(values), IN_LIST_SIZE):
        chunk = list(values[start : start + IN_LIST_SIZE])
        chunk += chunk[-1:] * (IN_LIST_SIZE - len(chunk))
        bound = {**(params or {}), **dict(zip(_IN_KEYS, chunk, strict=True))}
        rows += (await conn.exec_driver_sql(bulk.sql, bulk.parameters(bound))).all()
    return rows


async def execute_many(
    conn: AsyncConnection, statement: Insert | Update, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Run ``statement`` once per row, as one driver-level ``executemany``."""
    if rows:
        bulk = _compiled(statement, conn.dialect)
        await conn.exec_driver_sql(bulk.sql, [bulk.parameters(row) for row in rows])


Picker = Callable[[Mapping[str, Any]], tuple[Any, ...]]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bind names, in parameter order when positional
    literals: Mapping[str, Any]  # binds whose value is in the statement
    positional: bool
    pick: Picker  # a row's values in ``names`` order

    def parameters(self, bound: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values = {**self.literals, **bound} if self.literals else bound
        if self.positional:
            return self.pick(values)
        return {name: values[name] for name in self.names}


def _picker(names: tuple[str, ...]) -> Picker:
    if len(names) >= 2:
        pick: Picker = itemgetter(*names)  # in C: a tuple for two names or more
        return pick
    return lambda row: tuple(row[name] for name in names)


@functools.lru_cache(maxsize=64)
def _compiled(statement: Insert | Update | Select[Any], dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
    literals = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}
    return _Compiled(str(compiled), names, literals, compiled.positional, _picker(names))


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade_to_head(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")

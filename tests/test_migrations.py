"""Alembic migrations: head equals the declared schema; a re-run is a no-op."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from gateway.db.database import SQLITE_PRAGMAS, Database
from gateway.db.schema import metadata


async def test_upgrade_twice_and_match_declared_schema(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await database.migrate()
        await database.migrate()  # a second run finds the schema at head and does nothing

        def differences(conn: Connection) -> list[object]:
            context = MigrationContext.configure(conn)
            assert context.get_current_revision() == "0001"
            return list(compare_metadata(context, metadata))

        async with database.read() as conn:
            assert await conn.run_sync(differences) == []
    finally:
        await database.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_every_connection_gets_durable_pragmas(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    try:
        async with database.write() as conn:
            synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
        assert synchronous == 2  # FULL: an answered request survives a power cut
        assert "PRAGMA synchronous=FULL" in SQLITE_PRAGMAS
    finally:
        await database.close()

"""Alembic migrations: head equals the declared schema; a re-run is a no-op."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, make_url

from gateway.db.database import SQLITE_PRAGMAS, Database, alembic_config
from gateway.db.schema import metadata
from stores import postgres_database

HEAD = "0007"


async def test_upgrade_twice_and_match_declared_schema(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await database.migrate()
        await database.migrate()  # a second run finds the schema at head and does nothing

        def differences(conn: Connection) -> list[object]:
            context = MigrationContext.configure(conn)
            assert context.get_current_revision() == HEAD
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


ISSUE_5_TABLES = {
    "registry_entries",
    "cohorts",
    "cohort_versions",
    "cohort_memberships",
    "risk_scores",
    "risk_overrides",
    "risk_override_audit",
    "quality_snapshots",
    "hmis_export_jobs",
    "deident_export_jobs",
    "export_downloads",
    "refused_writes",
}


async def test_upgrade_from_0001_keeps_data_and_matches_declared_schema(tmp_path: Path) -> None:
    """A store left at 0001 (the frozen first schema) upgrades to head in place."""
    path = tmp_path / "g.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    try:

        def to_0001(conn: Connection) -> None:
            command.upgrade(alembic_config(conn), "0001")

        async with database.write() as conn:
            await conn.run_sync(to_0001)
            await conn.exec_driver_sql(
                "INSERT INTO tokens (token_hash, token_id, tenant_id, role, label, created_at) "
                "VALUES ('h', 'tid', 't1', 'admin', 'old', '2026-11-25T12:00:00.000Z')"
            )
        await database.migrate()

        def inspect(conn: Connection) -> tuple[str | None, list[object], set[str]]:
            context = MigrationContext.configure(conn)
            tables = set(sa.inspect(conn).get_table_names())
            return context.get_current_revision(), list(compare_metadata(context, metadata)), tables

        async with database.read() as conn:
            revision, diffs, tables = await conn.run_sync(inspect)
            kept = (await conn.exec_driver_sql("SELECT label FROM tokens")).scalar_one()
        assert revision == HEAD
        assert diffs == []
        assert ISSUE_5_TABLES <= tables
        assert kept == "old"  # rows written under 0001 survive the upgrade
    finally:
        await database.close()


POSTGRES_URL = os.environ.get("PHS_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES_URL, reason="PHS_TEST_POSTGRES_URL is not set")
async def test_head_matches_declared_schema_on_postgres() -> None:
    assert POSTGRES_URL
    url = make_url(POSTGRES_URL)
    name = f"phs_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    await admin.execute(f'CREATE DATABASE "{name}"')
    database = Database(url.set(database=name).render_as_string(hide_password=False))
    try:
        await database.migrate()
        await database.migrate()

        def differences(conn: Connection) -> tuple[str | None, list[object]]:
            context = MigrationContext.configure(conn)
            return context.get_current_revision(), list(compare_metadata(context, metadata))

        async with database.read() as conn:
            assert await conn.run_sync(differences) == (HEAD, [])
    finally:
        await database.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


ENROLLED_AT = "2026-11-01T08:00:00.000Z"


def _enroll_at_0006(conn: Connection, node_id: str, status: str, public_key: bytes) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO nodes (node_id, tenant_id, facility_ids, public_key, capabilities, "
            "status, enrolled_at) VALUES (:n, 't1', '[\"f-001\"]', :k, '[]', :s, :e)"
        ),
        {"n": node_id, "k": public_key, "s": status, "e": ENROLLED_AT},
    )


async def _upgrade_from_0006_carries_keys(url: str) -> None:
    """Nodes enrolled under 0006 keep their one key: 0007 carries it over as an
    active key whose keyId is the node id (a revoked node stays refused by its
    own status), so their requests are answered as before."""
    database = Database(url)
    keys = {"edge-01": b"\x01" * 32, "edge-02": b"\x02" * 32}
    try:

        def to_0006(conn: Connection) -> None:
            command.upgrade(alembic_config(conn), "0006")
            _enroll_at_0006(conn, "edge-01", "active", keys["edge-01"])
            _enroll_at_0006(conn, "edge-02", "revoked", keys["edge-02"])

        async with database.write() as conn:
            await conn.run_sync(to_0006)
        await database.migrate()
        await database.migrate()  # at head: a second run changes nothing
        async with database.read() as conn:
            rows = (
                await conn.exec_driver_sql(
                    "SELECT key_id, node_id, public_key, status, created_at, retires_at, "
                    "revoked_at FROM node_keys ORDER BY key_id"
                )
            ).all()
    finally:
        await database.close()
    assert [(r[0], r[1], bytes(r[2]), *r[3:]) for r in rows] == [
        ("edge-01", "edge-01", keys["edge-01"], "active", ENROLLED_AT, None, None),
        ("edge-02", "edge-02", keys["edge-02"], "active", ENROLLED_AT, None, None),
    ]


async def test_upgrade_from_0006_carries_node_keys_over_on_sqlite(tmp_path: Path) -> None:
    await _upgrade_from_0006_carries_keys(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")


async def test_upgrade_from_0006_carries_node_keys_over_on_postgres() -> None:
    async with postgres_database() as url:
        await _upgrade_from_0006_carries_keys(url)

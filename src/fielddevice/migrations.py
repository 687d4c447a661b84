"""Numbered migrations of the field device's SQLite store.

Run by ``edgenode.store.database.SQLiteStore`` exactly like the edge's: each
step in one transaction with its row in ``schema_migrations``, statements
that survive a re-run, released steps frozen (a change of shape is a new step).
"""

from __future__ import annotations

from edgenode.store.database import Migrations

MIGRATIONS: Migrations = (
    (
        1,
        "initial device store",
        (
            # The node this device paired with; one row (id = 1) at most.
            """CREATE TABLE IF NOT EXISTS pairing (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            node_id TEXT NOT NULL,
            tenant_id TEXT NOT NULL,
            facility_ids TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            node_public_key BLOB NOT NULL,
            edge_url TEXT NOT NULL,
            paired_at TEXT NOT NULL)""",
            # Every transition and encounter recorded here, in recording order.
            # Never deleted: a record is only marked synced, with the edge's result.
            """CREATE TABLE IF NOT EXISTS records (
            seq INTEGER PRIMARY KEY,
            record_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('transition', 'encounter')),
            body TEXT NOT NULL,
            created_at TEXT NOT NULL,
            synced_at TEXT,
            synced_via TEXT CHECK (synced_via IN ('push', 'gather')),
            result_status TEXT,
            result_code TEXT,
            result_state TEXT,
            UNIQUE (kind, record_id))""",
            "CREATE INDEX IF NOT EXISTS records_pending ON records (seq) WHERE synced_at IS NULL",
            # The outreach items pulled from the edge (its GET …/outreach-items).
            """CREATE TABLE IF NOT EXISTS items (
            id TEXT PRIMARY KEY,
            facility_id TEXT NOT NULL,
            state TEXT NOT NULL,
            body TEXT NOT NULL,
            pulled_at TEXT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS sync_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL)""",
        ),
    ),
    (
        2,
        "server data and cohort drafts",
        (
            # The edge's read-only projection of server-authoritative data
            # (GET …/server-data), one row per (aggregate, id) at its latest. A
            # delete keeps the row as a tombstone (deleted = 1), with the data
            # the delete carried; facility_id is data.facilityId (NULL: tenant-wide).
            """CREATE TABLE IF NOT EXISTS server_records (
            aggregate TEXT NOT NULL,
            entity_id TEXT NOT NULL,
            facility_id TEXT,
            data TEXT,
            deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
            seq INTEGER NOT NULL,
            pulled_at TEXT NOT NULL,
            PRIMARY KEY (aggregate, entity_id))""",
            # The server-data cursor: the edge's last seq held here.
            "INSERT OR IGNORE INTO sync_state (key, value) VALUES ('server_data_cursor', '0')",
            # Cohort drafts proposed here (sent with POST …/sync/items), in
            # drafting order. Never deleted: marked synced with the edge's result
            # (status and code in columns, the whole answer in result).
            """CREATE TABLE IF NOT EXISTS cohort_drafts (
            seq INTEGER PRIMARY KEY,
            draft_id TEXT NOT NULL UNIQUE,
            cohort_id TEXT NOT NULL,
            definition TEXT NOT NULL,
            created_at TEXT NOT NULL,
            synced_at TEXT,
            result_status TEXT,
            result_code TEXT,
            result TEXT)""",
            "CREATE INDEX IF NOT EXISTS cohort_drafts_pending ON cohort_drafts (seq) "
            "WHERE synced_at IS NULL",
        ),
    ),
)

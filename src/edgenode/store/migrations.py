"""Numbered migrations of the edge node's SQLite store.

Each step runs in one transaction together with its row in
``schema_migrations``; statements use IF NOT EXISTS so a step that was
interrupted and re-run does no harm. Released steps are frozen: a change
of shape is a new step.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "initial store",
        (
            """CREATE TABLE IF NOT EXISTS devices (
            device_id TEXT PRIMARY KEY,
            public_key BLOB NOT NULL,
            paired_at TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'active')""",
            """CREATE TABLE IF NOT EXISTS pairing_codes (
            code_hash TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT)""",
            # The outreach item projection: the gateway's state, plus local moves.
            """CREATE TABLE IF NOT EXISTS items (
            id TEXT PRIMARY KEY,
            facility_id TEXT NOT NULL,
            state TEXT NOT NULL,
            assignee_id TEXT,
            patient_ref TEXT,
            cohort_id TEXT,
            due_date TEXT,
            gateway_version INTEGER,
            last_transition_id TEXT,
            last_from_state TEXT,
            last_to_state TEXT,
            last_occurred_at TEXT,
            last_device_id TEXT,
            last_role TEXT,
            local_seq INTEGER NOT NULL,
            updated_at TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS items_by_facility ON items (facility_id, local_seq)",
            # Every transition a tablet pushed, with what the edge and the gateway made of it.
            """CREATE TABLE IF NOT EXISTS transitions (
            seq INTEGER PRIMARY KEY,
            transition_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            from_state TEXT NOT NULL,
            to_state TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            device_id TEXT NOT NULL,
            actor_id TEXT NOT NULL,
            role TEXT NOT NULL,
            device_seq INTEGER,
            received_at TEXT NOT NULL,
            local_disposition TEXT NOT NULL,
            local_code TEXT,
            clock_adjusted INTEGER NOT NULL DEFAULT 0,
            forward INTEGER NOT NULL,
            batch_id TEXT,
            gateway_status TEXT,
            gateway_code TEXT,
            gateway_state TEXT,
            gateway_at TEXT)""",
            "CREATE INDEX IF NOT EXISTS transitions_by_id ON transitions (transition_id)",
            """CREATE INDEX IF NOT EXISTS transitions_unsent ON transitions (seq)
            WHERE forward = 1 AND batch_id IS NULL""",
            "CREATE INDEX IF NOT EXISTS transitions_by_batch ON transitions (batch_id)",
            # Encounters stay on the edge: they feed reports and are never forwarded.
            """CREATE TABLE IF NOT EXISTS encounters (
            id TEXT PRIMARY KEY,
            patient_ref TEXT NOT NULL,
            facility_id TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            kind TEXT NOT NULL,
            screening_due INTEGER NOT NULL,
            immunization_due INTEGER NOT NULL,
            device_id TEXT NOT NULL,
            received_at TEXT NOT NULL)""",
            # Covers the report query: a week's range is read from the index alone.
            """CREATE INDEX IF NOT EXISTS encounters_by_facility_time
            ON encounters (facility_id, occurred_at, patient_ref, kind, screening_due,
                           immunization_due)""",
            # Signed reports: append-only, one per facility and period, never regenerated.
            """CREATE TABLE IF NOT EXISTS reports (
            seq INTEGER PRIMARY KEY,
            facility_id TEXT NOT NULL,
            period_type TEXT NOT NULL,
            period_key TEXT NOT NULL,
            payload BLOB NOT NULL,
            signature BLOB NOT NULL,
            generated_at TEXT NOT NULL,
            batch_id TEXT,
            gateway_status TEXT,
            gateway_code TEXT,
            gateway_report_id TEXT,
            gateway_at TEXT,
            UNIQUE (facility_id, period_key))""",
            """CREATE INDEX IF NOT EXISTS reports_unsent ON reports (seq)
            WHERE batch_id IS NULL""",
            # Outbox batches: persisted before the first send, so a resend is identical.
            """CREATE TABLE IF NOT EXISTS outbox_batches (
            seq INTEGER PRIMARY KEY,
            batch_id TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            stage TEXT NOT NULL,
            body BLOB NOT NULL,
            item_count INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            last_error TEXT,
            finished_at TEXT)""",
            "CREATE INDEX IF NOT EXISTS outbox_open ON outbox_batches (stage, seq)",
            """CREATE TABLE IF NOT EXISTS sync_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS idempotency_keys (
            principal TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            status_code INTEGER NOT NULL,
            reply BLOB NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (principal, key))""",
        ),
    ),
    (
        2,
        "indexes for answers and changes applied per item",
        (
            # A gateway answer or change for an item asks whether a newer local
            # move of it is still unanswered: without this, a scan of the log per item.
            "CREATE INDEX IF NOT EXISTS transitions_by_item ON transitions (item_id, seq)",
            # The next local_seq is max(local_seq) + 1: without this, a scan of the items.
            "CREATE INDEX IF NOT EXISTS items_by_local_seq ON items (local_seq)",
        ),
    ),
    (
        3,
        "devices seen on the LAN (discovery and gathering)",
        (
            # One row per field device ever seen advertising _phs-field._tcp;
            # paired or not is read from ``devices`` when asked.
            """CREATE TABLE IF NOT EXISTS devices_seen (
            device_id TEXT PRIMARY KEY,
            service_name TEXT NOT NULL,
            addresses TEXT NOT NULL,
            port INTEGER NOT NULL,
            pending INTEGER NOT NULL,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            present INTEGER NOT NULL DEFAULT 1,
            gone_at TEXT,
            last_gather_at TEXT,
            last_gather_error TEXT,
            gathered_records INTEGER NOT NULL DEFAULT 0)""",
            # A withdrawn advert names the mDNS instance, not the device.
            "CREATE INDEX IF NOT EXISTS devices_seen_by_name ON devices_seen (service_name)",
        ),
    ),
    (
        4,
        "server-authoritative projection, refused tablet writes, cohort drafts",
        (
            # The gateway's server-authoritative data (registry entries, cohorts,
            # memberships, risk scores, quality snapshots, and any aggregate this
            # release does not know), one row per record, ``data`` as the feed gave
            # it. A delete keeps its row (deleted = 1) so tablets learn of it;
            # ``local_seq`` orders the rows for tablet cursors.
            """CREATE TABLE IF NOT EXISTS server_records (
            aggregate TEXT NOT NULL,
            entity_id TEXT NOT NULL,
            facility_id TEXT,
            data TEXT,
            deleted INTEGER NOT NULL DEFAULT 0,
            gateway_seq INTEGER,
            local_seq INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (aggregate, entity_id))""",
            """CREATE UNIQUE INDEX IF NOT EXISTS server_records_by_local_seq
            ON server_records (local_seq)""",
            # Tablet writes the edge refused itself (shared.policy): kept, never sent.
            """CREATE TABLE IF NOT EXISTS refused_writes (
            seq INTEGER PRIMARY KEY,
            device_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            record_id TEXT NOT NULL,
            code TEXT NOT NULL,
            detail TEXT NOT NULL,
            received_at TEXT NOT NULL)""",
            # Cohort drafts a tablet wrote, valid here, queued for the gateway,
            # which numbers versions: its whole answer is kept with them.
            """CREATE TABLE IF NOT EXISTS cohort_drafts (
            seq INTEGER PRIMARY KEY,
            draft_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            cohort_id TEXT NOT NULL,
            definition TEXT NOT NULL,
            received_at TEXT NOT NULL,
            batch_id TEXT,
            gateway_status TEXT,
            gateway_code TEXT,
            gateway_detail TEXT,
            gateway_version INTEGER,
            gateway_result TEXT,
            gateway_at TEXT,
            UNIQUE (device_id, draft_id))""",
            """CREATE INDEX IF NOT EXISTS cohort_drafts_unsent ON cohort_drafts (seq)
            WHERE batch_id IS NULL""",
            "CREATE INDEX IF NOT EXISTS cohort_drafts_by_batch ON cohort_drafts (batch_id)",
        ),
    ),
    (
        5,
        "the gateway's newest state of each outreach item, apart from the projection",
        (
            # With gateway_version, the newest state the gateway is known to have
            # given the item (edgenode.gateway_items): a change-feed page or a
            # batch answer older than it is not applied. NULL on rows kept
            # before: the next answer or change fills it. (ADD COLUMN has no IF
            # NOT EXISTS; the step commits with its schema_migrations row, so it
            # never runs twice.)
            "ALTER TABLE items ADD COLUMN gateway_state TEXT",
        ),
    ),
)

"""Issue 5 on the edge: the server-authoritative projection and its tablet
read API, and the policy table enforced locally on tablet writes.

A real gateway and a real edge node on loopback (``edge_harness``), real
SQLite files. Most tests write change rows straight into the gateway's
``changes`` table (``feed_change``), to control their shapes exactly
(aggregates this release does not know, entries the edge cannot keep, a
facility the edge does not serve); the feed endpoint, the node's signature
and the puller are the real ones. The last test goes through the gateway's
own registry and cohort endpoints, from a registry entry to a tablet's read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgpack
import pytest

from canaries import patient_ref
from edge_harness import EdgeSystem, Tablet, edge_system
from edgenode import cli
from edgenode.outbox import PENDING, build_batch, record_refused, split_refused
from edgenode.status import collect_refused_writes
from edgenode.store.database import EdgeDatabase, SQLiteStore
from edgenode.store.migrations import MIGRATIONS
from gateway.db.schema import changes
from harness import PREFIX, START, assert_problem, bearer, document
from shared.cohorts import validate_cohort
from shared.policy import POLICY_TABLE

ITEMS = f"{PREFIX}/sync/items"
SERVER_DATA = f"{PREFIX}/server-data"
EDGE_FACILITIES = ("f-001", "f-002")

GOOD_DEFINITION = {"all": [{"field": "age", "op": "ge", "value": 40}, {"condition": "E11"}]}
BAD_DEFINITION = {
    "all": [{"field": "age", "op": "gt", "value": -1}, {"condition": ""}, {"field": "sex"}]
}


async def feed_change(
    system: EdgeSystem,
    aggregate: str,
    entity_id: str,
    data: Any,
    *,
    op: str = "upsert",
    facility: str | None = None,
    tenant: str = "t1",
) -> None:
    """A change row as the gateway writes one (its ``facility_id`` column
    scopes the feed; the edge reads the facility from ``data``)."""
    async with system.gateway.database.write() as conn:
        await conn.execute(
            changes.insert().values(
                tenant_id=tenant,
                facility_id=facility,
                aggregate=aggregate,
                entity_id=entity_id,
                op=op,
                data=data,
                committed_at="2026-11-25T10:00:00.000Z",
            )
        )


def entry(entry_id: str, facility: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": entry_id,
        "tenantId": "t1",
        "facilityId": facility,
        "patientRef": patient_ref(entry_id),
        "sex": "female",
        "birthDate": "1970-01-01",
        "conditions": [{"code": "E11", "onsetDate": "2020-03-01"}],
        **extra,
    }


async def projection(system: EdgeSystem) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The edge's rows: (aggregate, id) -> (facility, data, deleted, gateway seq)."""
    async with system.edge_db.read() as conn:
        cursor = await conn.execute(
            "SELECT aggregate, entity_id, facility_id, data, deleted, gateway_seq "
            "FROM server_records"
        )
        rows = await cursor.fetchall()
    return {
        (r[0], r[1]): (r[2], None if r[3] is None else json.loads(r[3]), r[4], r[5]) for r in rows
    }


async def read_all(
    system: EdgeSystem, tablet: Tablet, since: str = "0", limit: int = 1000
) -> tuple[list[dict[str, Any]], str, int]:
    """Every record from ``since`` on, page by page: (records, cursor, pages)."""
    records: list[dict[str, Any]] = []
    pages = 0
    while True:
        path = f"{SERVER_DATA}?{urlencode({'since': since, 'limit': limit})}"
        resp = await system.tablet_request(tablet, "GET", path)
        assert resp.status == 200, await resp.read()
        doc = await document(resp)
        pages += 1
        records += doc["records"]
        assert doc["cursor"] == (str(doc["records"][-1]["seq"]) if doc["records"] else since)
        since = doc["cursor"]
        if not doc["more"]:
            return records, since, pages


async def push_items(
    system: EdgeSystem,
    tablet: Tablet,
    items: Sequence[dict[str, Any]],
    *,
    key: str | None = None,
    fmt: str = "json",
) -> list[dict[str, Any]]:
    headers = {"Idempotency-Key": key} if key else None
    resp = await system.tablet_request(
        tablet, "POST", ITEMS, {"items": list(items)}, fmt=fmt, headers=headers
    )
    assert resp.status == 200, await resp.read()
    return list((await document(resp))["results"])


def draft(draft_id: str, definition: Any = None, cohort: str = "c-diabetes") -> dict[str, Any]:
    return {
        "kind": "cohort.draft",
        "id": draft_id,
        "cohortId": cohort,
        "definition": GOOD_DEFINITION if definition is None else definition,
    }


async def refused_rows(system: EdgeSystem) -> list[dict[str, Any]]:
    async with system.edge_db.read() as conn:
        return list(reversed(await collect_refused_writes(conn, limit=10_000)))


@pytest.fixture
async def system(tmp_path: Path) -> Any:
    # The gateway also sends f-009 (enrolled so), which this edge does not
    # serve: its tablets must never see it.
    async with edge_system(
        tmp_path, facilities=EDGE_FACILITIES, enroll=False, edge_overrides={"max_push_items": 20}
    ) as running:
        await running.enroll_edge([*EDGE_FACILITIES, "f-009"])
        yield running


# -- the store -----------------------------------------------------------------------


async def test_migration_4_upgrades_a_version_3_store(tmp_path: Path) -> None:
    path = tmp_path / "edgenode.db"
    old = await SQLiteStore(path, MIGRATIONS[:3]).open()  # the store as released
    async with old.write() as conn:
        await conn.execute("INSERT INTO sync_state (key, value) VALUES ('changes_cursor', '7')")
    await old.close()
    for _ in range(2):  # the second open finds it current and does nothing
        db = await EdgeDatabase(path).open()
        try:
            assert await db.schema_version() == MIGRATIONS[-1][0]  # 4 and any later step
            async with db.read() as conn:
                tables = {
                    row[0]
                    for row in await conn.execute_fetchall(
                        "SELECT name FROM sqlite_master WHERE type = 'table'"
                    )
                }
                kept = await conn.execute_fetchall("SELECT value FROM sync_state")
        finally:
            await db.close()
        assert {"server_records", "refused_writes", "cohort_drafts"} <= tables
        assert [tuple(r) for r in kept] == [("7",)]  # the data of step 1-3 is untouched
    db = await EdgeDatabase(path).open()
    try:  # step 4 survives being run again over its own result
        async with db.write() as conn:
            for statement in MIGRATIONS[3][2]:
                await conn.execute(statement)
    finally:
        await db.close()


# -- the puller ----------------------------------------------------------------------


async def test_puller_applies_server_aggregates_in_the_cursor_transaction(
    system: EdgeSystem,
) -> None:
    await system.create_items(["oi-1"], "assigned", "f-001")  # an outreach item beside them
    cohort = {"cohortId": "c-1", "name": "Diabetics", "version": 1, "definition": GOOD_DEFINITION}
    membership = {"cohortId": "c-1", "version": 1, "entryId": "e-1", "facilityId": "f-001"}
    risk = {"entryId": "e-1", "facilityId": "f-001", "score": 7, "source": "computed"}
    snapshot = {"period": "2026-W47", "coverage": 0.5}
    future = {"anything": [1, {"nested": True}], "facilityId": "f-002"}
    await feed_change(
        system, "disease_registry_entry", "e-1", entry("e-1", "f-001"), facility="f-001"
    )
    await feed_change(
        system, "disease_registry_entry", "e-2", entry("e-2", "f-002"), facility="f-002"
    )
    await feed_change(system, "population_cohort", "c-1", cohort)
    await feed_change(system, "cohort_membership", "c-1/e-1", membership, facility="f-001")
    await feed_change(system, "risk_score", "e-1", risk, facility="f-001")
    await feed_change(system, "quality_metric_snapshot", "t1/2026-W47", snapshot)
    await feed_change(system, "aggregate_of_a_later_release", "x-1", future, facility="f-002")
    # Entries the edge cannot keep are skipped, and the pull goes on.
    await feed_change(system, "cohort_membership", "c-1/e-9", membership, op="patch")

    pulled = await system.pull()
    assert pulled.error is None
    assert pulled.changes == 8  # the item and the seven kept
    rows = await projection(system)
    assert rows == {
        ("disease_registry_entry", "e-1"): ("f-001", entry("e-1", "f-001"), 0, 2),
        ("disease_registry_entry", "e-2"): ("f-002", entry("e-2", "f-002"), 0, 3),
        ("population_cohort", "c-1"): (None, cohort, 0, 4),  # tenant-wide
        ("cohort_membership", "c-1/e-1"): ("f-001", membership, 0, 5),
        ("risk_score", "e-1"): ("f-001", risk, 0, 6),
        ("quality_metric_snapshot", "t1/2026-W47"): (None, snapshot, 0, 7),
        ("aggregate_of_a_later_release", "x-1"): ("f-002", future, 0, 8),  # kept generically
    }
    assert (await system.tablet_view(await system.pair_tablet("tab-a")))["oi-1"]["state"] == (
        "assigned"
    )
    status = await system.edge_status()
    assert status["changesCursor"] == "9" == pulled.cursor

    # An update, a removal without data (it keeps its facility) and a re-add.
    moved = entry("e-1", "f-002", sex="male")
    await feed_change(system, "disease_registry_entry", "e-1", moved, facility="f-002")
    await feed_change(system, "cohort_membership", "c-1/e-1", None, op="delete", facility="f-001")
    await feed_change(system, "risk_score", "e-1", None, op="delete", facility="f-001")
    await feed_change(system, "risk_score", "e-1", risk, facility="f-001")
    pulled = await system.pull()
    assert (pulled.error, pulled.changes, pulled.cursor) == (None, 4, "13")
    rows = await projection(system)
    assert rows[("disease_registry_entry", "e-1")] == ("f-002", moved, 0, 10)
    assert rows[("cohort_membership", "c-1/e-1")] == ("f-001", None, 1, 11)  # a tombstone
    assert rows[("risk_score", "e-1")] == ("f-001", risk, 0, 13)
    assert len(rows) == 7

    # A page that fails to apply moves neither the projection nor the cursor.
    await feed_change(system, "population_cohort", "c-2", {"cohortId": "c-2"})
    before = await system.edge_snapshot()
    async with system.edge_db.write() as conn:
        await conn.execute(
            "CREATE TRIGGER no_more BEFORE INSERT ON server_records "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(Exception, match="disk full"):
        await system.pull()
    async with system.edge_db.write() as conn:
        await conn.execute("DROP TRIGGER no_more")
    assert await system.edge_snapshot() == before
    assert (await system.pull()).changes == 1
    assert (await system.edge_status())["changesCursor"] == "14"


# -- the tablet read API -------------------------------------------------------------------


async def test_tablets_read_server_data_scoped_paged_with_deletes(system: EdgeSystem) -> None:
    await feed_change(
        system, "disease_registry_entry", "e-1", entry("e-1", "f-001"), facility="f-001"
    )
    await feed_change(
        system, "disease_registry_entry", "e-9", entry("e-9", "f-009"), facility="f-009"
    )
    await feed_change(system, "population_cohort", "c-1", {"cohortId": "c-1", "version": 1})
    membership = {"cohortId": "c-1", "version": 1, "entryId": "e-2", "facilityId": "f-002"}
    await feed_change(system, "cohort_membership", "c-1/e-2", membership, facility="f-002")
    await feed_change(
        system, "risk_score", "e-9", {"facilityId": "f-009", "score": 3}, facility="f-009"
    )
    await system.pull()
    assert len(await projection(system)) == 5  # the gateway sent f-009 too
    tablet = await system.pair_tablet("tab-a")

    records, cursor, pages = await read_all(system, tablet, limit=2)
    assert pages == 2  # two full pages; the second says there is no more
    assert [(r["aggregate"], r["id"], r["op"]) for r in records] == [
        ("disease_registry_entry", "e-1", "upsert"),
        ("population_cohort", "c-1", "upsert"),  # tenant-wide: every tablet
        ("cohort_membership", "c-1/e-2", "upsert"),
    ]  # never f-009's: this edge does not serve it
    assert records[0]["data"] == entry("e-1", "f-001")
    assert records[2]["data"] == membership
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs) and cursor == str(seqs[-1])

    # Nothing new: the same cursor, nothing more.
    assert await read_all(system, tablet, cursor) == ([], cursor, 1)

    # A removal reaches the tablet from its cursor, with the rest of what changed.
    await feed_change(system, "cohort_membership", "c-1/e-2", None, op="delete", facility="f-002")
    await feed_change(system, "population_cohort", "c-1", {"cohortId": "c-1", "version": 2})
    await system.pull()
    later, cursor2, _ = await read_all(system, tablet, cursor)
    assert [(r["aggregate"], r["id"], r["op"], r["data"]) for r in later] == [
        ("cohort_membership", "c-1/e-2", "delete", None),
        ("population_cohort", "c-1", "upsert", {"cohortId": "c-1", "version": 2}),
    ]
    # From the start, each record once, at its latest.
    everything, cursor3, _ = await read_all(system, tablet)
    assert cursor3 == cursor2
    assert [(r["id"], r["op"]) for r in everything] == [
        ("e-1", "upsert"),
        ("c-1/e-2", "delete"),
        ("c-1", "upsert"),
    ]

    # msgpack too.
    resp = await system.tablet_request(tablet, "GET", f"{SERVER_DATA}?since=0", fmt="msgpack")
    assert resp.content_type == "application/msgpack"
    assert [r["id"] for r in (await document(resp))["records"]] == ["e-1", "c-1/e-2", "c-1"]


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("since=-1", 400, "bad_cursor"),
        ("since=abc", 400, "bad_cursor"),
        ("since=1234567890123456789", 400, "bad_cursor"),
        ("limit=0", 422, "validation_failed"),
        ("limit=5001", 422, "validation_failed"),
    ],
)
async def test_server_data_bad_queries(
    system: EdgeSystem, query: str, status: int, code: str
) -> None:
    tablet = await system.pair_tablet("tab-a")
    resp = await system.tablet_request(tablet, "GET", f"{SERVER_DATA}?{query}")
    await assert_problem(resp, status, code)


@pytest.mark.parametrize("path", [SERVER_DATA, f"{PREFIX}/outreach-items"])
async def test_a_non_ascii_digit_is_not_a_cursor(system: EdgeSystem, path: str) -> None:
    tablet = await system.pair_tablet("tab-a")
    resp = await system.tablet_request(tablet, "GET", f"{path}?since=%C2%B2")  # "²"
    await assert_problem(resp, 400, "bad_cursor")


async def test_server_data_needs_a_paired_device(system: EdgeSystem) -> None:
    stranger = Tablet("tab-x")
    resp = await system.tablet_request(stranger, "GET", SERVER_DATA)
    await assert_problem(resp, 401, "unknown_key")
    tablet = await system.pair_tablet("tab-a")
    resp = await system.tablet_request(tablet, "GET", SERVER_DATA, signed=False)
    await assert_problem(resp, 401, "unauthenticated")


# -- tablet writes: the policy table, locally ------------------------------------------------

# Every kind of the policy table, and what a tablet writing it here is answered.
EXPECTED_CODES = {
    "population_cohort": "policy_server_authoritative",  # drafts only (cohort.draft)
    "cohort_membership": "policy_server_authoritative",
    "disease_registry_entry": "policy_server_authoritative",
    "risk_score.computed": "policy_server_authoritative",
    "risk_score.override": "policy_server_authoritative",  # admins (lww + audit), not tablets
    "quality_metric_snapshot": "policy_server_authoritative",
    "hmis_export_job": "policy_server_authoritative",
    "deident_export_job": "policy_server_authoritative",
    "outreach.transition": "validation_failed",  # POST …/sync/outreach
    "facility_report": "validation_failed",  # generated by the edge from encounters
}


def test_expected_codes_cover_the_policy_table() -> None:
    assert set(EXPECTED_CODES) == set(POLICY_TABLE)


async def test_sync_items_refuses_by_the_policy_table_and_records(system: EdgeSystem) -> None:
    tablet = await system.pair_tablet("tab-a")
    kinds = [*EXPECTED_CODES, "made.up"]
    items = [{"kind": kind, "id": f"r-{n}", "score": 9} for n, kind in enumerate(kinds)]
    results = await push_items(system, tablet, items)
    assert [(r["id"], r["kind"], r["status"], r["code"]) for r in results] == [
        (f"r-{n}", kind, "rejected", EXPECTED_CODES.get(kind, "unknown_kind"))
        for n, kind in enumerate(kinds)
    ]
    details = {r["kind"]: r["detail"] for r in results}
    assert "/sync/outreach" in details["outreach.transition"]
    assert "/sync/encounters" in details["facility_report"]
    assert "cohort.draft" in details["population_cohort"]
    assert details["made.up"] == "unknown kind made.up"

    # Recorded, every one, with its reason; never queued for the gateway.
    rows = await refused_rows(system)
    assert [(r["kind"], r["id"], r["device_id"], r["code"], r["detail"]) for r in rows] == [
        (r["kind"], r["id"], "tab-a", r["code"], r["detail"]) for r in results
    ]
    status = await system.edge_status()
    assert (status["refusedWrites"], status["outboxDepth"], status["problems"]) == (11, 0, 0)
    forwarded = await system.forward()
    assert forwarded.batches_sent == 0
    metrics = await (await system.edge.get("/metrics")).text()
    assert "phs_edge_refused_writes 11.0\n" in metrics


async def test_cohort_draft_invalid_answers_every_error_path(system: EdgeSystem) -> None:
    tablet = await system.pair_tablet("tab-a")
    [result] = await push_items(system, tablet, [draft("d-bad", BAD_DEFINITION)])
    assert (result["status"], result["code"]) == ("rejected", "cohort_invalid")
    assert [e["path"] for e in result["errors"]] == [
        "/all/0/value",  # an age below 0
        "/all/1/condition",  # an empty condition code
        "/all/2/op",  # a field test without its op
    ]
    assert result["errors"] == [e.to_wire() for e in validate_cohort(BAD_DEFINITION)]
    [row] = await refused_rows(system)
    assert (row["kind"], row["id"], row["code"]) == ("cohort.draft", "d-bad", "cohort_invalid")
    status = await system.edge_status()
    assert (status["refusedWrites"], status["outboxDepth"]) == (1, 0)


async def test_cohort_draft_is_forwarded_and_the_gateway_refusal_kept(
    system: EdgeSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    await system.create_items(["oi-1"], "assigned", "f-001")
    await system.pull()
    tablet = await system.pair_tablet("tab-a")
    [result] = await push_items(system, tablet, [draft("d-1")])
    assert result == {
        "id": "d-1",
        "kind": "cohort.draft",
        "status": "accepted",
        "cohortId": "c-diabetes",
    }
    # A transition queued after it still goes first: transitions, reports, drafts.
    [moved] = await system.push_transitions(
        tablet, [tablet.transition("t-1", "oi-1", "assigned", "in_progress")]
    )
    assert moved["status"] == "applied"
    status = await system.edge_status()
    assert (status["outboxDepth"], status["unsentCohortDrafts"]) == (2, 1)

    forwarded = await system.forward()
    assert forwarded.batches_sent == 1 and forwarded.error is None
    async with system.edge_db.read() as conn:
        [(body,)] = await conn.execute_fetchall("SELECT body FROM outbox_batches")
        [kept] = await conn.execute_fetchall("SELECT * FROM cohort_drafts")
    items = msgpack.unpackb(body)["items"]
    assert [i["kind"] for i in items] == ["outreach.transition", "cohort.draft"]
    assert items[1] == {
        "kind": "cohort.draft",
        "id": "d-1",
        "cohortId": "c-diabetes",
        "definition": GOOD_DEFINITION,
        "deviceId": "tab-a",
    }
    # The gateway holds no cohort c-diabetes (only admins create cohorts): it
    # refuses the draft, and its whole answer is kept; the draft is a problem.
    # (A draft it numbers: test_registry_to_cohort_to_membership_to_edge_to_tablet.)
    answer = json.loads(kept["gateway_result"])
    assert (answer["id"], answer["status"], answer["code"]) == ("d-1", "rejected", "not_found")
    assert (kept["gateway_status"], kept["gateway_code"], kept["gateway_version"]) == (
        "rejected",
        "not_found",
        None,
    )
    assert kept["gateway_detail"] == answer["detail"]
    assert forwarded.statuses == {"applied": 1, "rejected": 1}
    status = await system.edge_status()
    assert (status["outboxDepth"], status["unsentCohortDrafts"], status["problems"]) == (0, 0, 1)
    [problem] = await system.edge_problems()
    assert (problem["kind"], problem["id"], problem["subject"], problem["code"]) == (
        "cohort.draft",
        "d-1",
        "c-diabetes",
        "not_found",
    )
    assert status["refusedWrites"] == 0  # refused by the gateway, not by this edge

    # A resend of the draft is a duplicate, answered with what the gateway said.
    [again] = await push_items(system, tablet, [draft("d-1")])
    assert (again["status"], again["gatewayStatus"], again["gatewayCode"]) == (
        "duplicate",
        "rejected",
        "not_found",
    )
    assert (await system.edge_status())["outboxDepth"] == 0

    # edgenode problems lists refused tablet writes with their reasons.
    await push_items(system, tablet, [{"kind": "risk_score.override", "id": "ov-1"}])
    await cli.problems(system.edge_settings, argparse.Namespace(), system.edge_db)
    out = capsys.readouterr().out
    assert "tablet writes refused by this node:" in out
    assert "risk_score.override  ov-1  (device tab-a): policy_server_authoritative: " in out


async def test_a_draft_id_is_taken_once_on_the_edge(system: EdgeSystem) -> None:
    a, b = await system.pair_tablet("tab-a"), await system.pair_tablet("tab-b")
    first = await push_items(system, a, [draft("d-1"), draft("d-1", cohort="c-other")])
    assert [(r["status"], r["cohortId"]) for r in first] == [
        ("accepted", "c-diabetes"),
        ("duplicate", "c-diabetes"),  # the one kept
    ]
    # The gateway knows a draft by its id: another device's d-1 would be
    # answered as a duplicate of this one, so the edge refuses it.
    [other] = await push_items(system, b, [draft("d-1")])
    assert (other["status"], other["code"]) == ("rejected", "validation_failed")
    assert "unique id" in other["detail"]
    [row] = await refused_rows(system)
    assert (row["device_id"], row["id"], row["code"]) == ("tab-b", "d-1", "validation_failed")
    status = await system.edge_status()
    assert (status["unsentCohortDrafts"], status["refusedWrites"]) == (1, 1)


async def test_outbox_splits_and_refuses_drafts_like_other_records(tmp_path: Path) -> None:
    """A batch refused as a whole puts its drafts back in the queue, in order;
    a draft alone in a refused batch becomes a problem."""
    db = await EdgeDatabase(tmp_path / "edge.db").open()
    try:
        async with db.write() as conn:
            await conn.executemany(
                "INSERT INTO cohort_drafts (draft_id, device_id, cohort_id, definition, "
                "received_at) VALUES (?, 'tab-a', 'c-1', '{}', '2026-11-25T10:00:00.000Z')",
                [("d-1",), ("d-2",)],
            )
            batch = await build_batch(conn, "edge-01", START, 500, 1024 * 1024)
            assert batch is not None and batch.item_count == 2
            await split_refused(conn, batch.batch_id, 2, "validation_failed", "bad", START)
            queued = await conn.execute_fetchall(
                "SELECT draft_id FROM cohort_drafts WHERE batch_id IS NULL ORDER BY seq"
            )
            assert [r[0] for r in queued] == ["d-1", "d-2"]
            half = await build_batch(conn, "edge-01", START, 1, 1024 * 1024)
            assert half is not None and half.item_count == 1
            assert [i["id"] for i in msgpack.unpackb(half.body)["items"]] == ["d-1"]
            await record_refused(conn, half.batch_id, "validation_failed", "bad draft", START)
            stages = await conn.execute_fetchall("SELECT stage FROM outbox_batches ORDER BY seq")
            assert [r[0] for r in stages] == ["split", "refused"]
            assert PENDING not in [r[0] for r in stages]
            rows = await conn.execute_fetchall(
                "SELECT draft_id, gateway_status, gateway_code, gateway_detail, batch_id "
                "FROM cohort_drafts ORDER BY seq"
            )
        assert [tuple(r) for r in rows] == [
            ("d-1", "rejected", "validation_failed", "bad draft", half.batch_id),
            ("d-2", None, None, None, None),
        ]
    finally:
        await db.close()


async def test_sync_items_idempotent_replay(system: EdgeSystem) -> None:
    tablet = await system.pair_tablet("tab-a")
    doc = {"items": [draft("d-1"), {"kind": "cohort_membership", "id": "m-1"}]}
    first = await system.tablet_request(
        tablet, "POST", ITEMS, doc, headers={"Idempotency-Key": "k-1"}
    )
    assert first.status == 200
    answer = await document(first)
    snapshot = await system.edge_snapshot()
    again = await system.tablet_request(
        tablet, "POST", ITEMS, doc, headers={"Idempotency-Key": "k-1"}
    )
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert await document(again) == answer
    assert await system.edge_snapshot() == snapshot  # nothing recorded twice
    other = {"items": [draft("d-2")]}
    mismatch = await system.tablet_request(
        tablet, "POST", ITEMS, other, headers={"Idempotency-Key": "k-1"}
    )
    await assert_problem(mismatch, 422, "idempotency_key_mismatch")
    assert await system.edge_snapshot() == snapshot
    status = await system.edge_status()
    assert (status["refusedWrites"], status["unsentCohortDrafts"]) == (1, 1)


BAD_PUSHES: list[tuple[str, Any, int, str]] = [
    ("not an object", [1, 2], 400, "malformed_body"),
    ("no items", {}, 422, "validation_failed"),
    ("items not a list", {"items": {"kind": "x"}}, 422, "validation_failed"),
    ("unknown field", {"items": [], "extra": 1}, 422, "validation_failed"),
    ("item not an object", {"items": ["cohort.draft"]}, 422, "validation_failed"),
    ("no kind", {"items": [{"id": "x-1"}]}, 422, "validation_failed"),
    ("kind not a string", {"items": [{"kind": 5, "id": "x-1"}]}, 422, "validation_failed"),
    ("kind too long", {"items": [{"kind": "k" * 65, "id": "x-1"}]}, 422, "validation_failed"),
    ("kind with spaces", {"items": [{"kind": "a b", "id": "x-1"}]}, 422, "validation_failed"),
    ("no id", {"items": [{"kind": "cohort_membership"}]}, 422, "validation_failed"),
    ("bad id", {"items": [{"kind": "cohort_membership", "id": "a/b"}]}, 422, "validation_failed"),
    (
        "draft without cohortId",
        {"items": [{"kind": "cohort.draft", "id": "d-1", "definition": GOOD_DEFINITION}]},
        422,
        "validation_failed",
    ),
    (
        "draft without definition",
        {"items": [{"kind": "cohort.draft", "id": "d-1", "cohortId": "c-1"}]},
        422,
        "validation_failed",
    ),
    (
        "draft with an unknown field",
        {"items": [{**draft("d-1"), "deviceId": "tab-b"}]},
        422,
        "validation_failed",
    ),
    # One bad item refuses the push whole: the good ones before it are not kept.
    (
        "good then bad",
        {"items": [draft("d-1"), {"kind": "cohort_membership", "id": "m-1"}, {"kind": 1}]},
        422,
        "validation_failed",
    ),
    ("too many", {"items": [draft(f"d-{n}") for n in range(21)]}, 413, "batch_too_large"),
]


@pytest.mark.parametrize(
    ("doc", "status", "code"),
    [case[1:] for case in BAD_PUSHES],
    ids=[case[0] for case in BAD_PUSHES],
)
async def test_sync_items_bad_input_changes_nothing(
    system: EdgeSystem, doc: Any, status: int, code: str
) -> None:
    tablet = await system.pair_tablet("tab-a")
    before = await system.edge_snapshot()
    resp = await system.tablet_request(tablet, "POST", ITEMS, doc)
    problem = await assert_problem(resp, status, code)
    if status == 422 and isinstance(doc, dict) and isinstance(doc.get("items"), list):
        assert problem.get("path", "").startswith("/items/") or "fields" in problem
    assert await system.edge_snapshot() == before


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        ({"kind": "cohort_membership", "id": "a/b"}, "/items/1/id"),
        ({"kind": 5, "id": "x-1"}, "/items/1/kind"),
        ({"kind": "cohort.draft", "id": "d-2", "definition": {}}, "/items/1/cohortId"),
        ("x", "/items/1"),
    ],
)
async def test_sync_items_bad_input_names_its_path(system: EdgeSystem, bad: Any, path: str) -> None:
    tablet = await system.pair_tablet("tab-a")
    resp = await system.tablet_request(tablet, "POST", ITEMS, {"items": [draft("d-1"), bad]})
    assert (await assert_problem(resp, 422, "validation_failed"))["path"] == path


async def test_sync_items_auth_and_body(system: EdgeSystem) -> None:
    tablet = await system.pair_tablet("tab-a")
    before = await system.edge_snapshot()
    doc = {"items": [{"kind": "cohort_membership", "id": "m-1"}]}
    cases = [
        (await system.tablet_request(tablet, "POST", ITEMS, doc, signed=False), 401),
        (await system.tablet_request(Tablet("tab-x"), "POST", ITEMS, doc), 401),
        (
            await system.tablet_request(
                tablet, "POST", ITEMS, doc, keypair=Tablet("tab-z").keypair
            ),
            401,
        ),
        (await system.tablet_request(tablet, "POST", ITEMS, body=b"{not json"), 400),
    ]
    assert [resp.status for resp, _ in cases] == [status for _, status in cases]
    assert await system.edge_snapshot() == before


# -- end to end, through the gateway's own endpoints ---------------------------------------

ENTRIES = f"{PREFIX}/registry/entries"
COHORTS = f"{PREFIX}/cohorts"
WOMEN_WITH_DIABETES = {
    "all": [{"field": "sex", "op": "eq", "value": "female"}, {"condition": "E11"}]
}
WOMEN = {"field": "sex", "op": "eq", "value": "female"}


def registry_entry(entry_id: str, facility: str, sex: str, *codes: str) -> dict[str, Any]:
    return {
        "id": entry_id,
        "facilityId": facility,
        "patientRef": patient_ref(entry_id),
        "sex": sex,
        "birthDate": "1970-05-01",
        "conditions": [{"code": c} for c in codes],
    }


async def gateway_call(
    system: EdgeSystem, method: str, path: str, token: str, doc: Any = None
) -> Any:
    resp = await system.gateway.client.request(method, path, json=doc, headers=bearer(token))
    assert 200 <= resp.status < 300, await resp.text()
    return await resp.json()


def by_key(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest record of each (aggregate, id), as a tablet folds them."""
    return {(r["aggregate"], r["id"]): r for r in records}


async def test_registry_to_cohort_to_membership_to_edge_to_tablet(system: EdgeSystem) -> None:
    service = await system.gateway.token("service")
    admin = system.admin_token
    for doc in (
        registry_entry("e-1", "f-001", "female", "E11"),
        registry_entry("e-2", "f-002", "male", "E11"),
        registry_entry("e-3", "f-009", "female", "E11"),  # not served by this edge
        registry_entry("e-4", "f-001", "female", "I10"),
    ):
        await gateway_call(system, "PUT", f"{ENTRIES}/{doc['id']}", service, doc)
    await gateway_call(
        system,
        "POST",
        COHORTS,
        admin,
        {"cohortId": "dm-women", "name": "Women with diabetes", "definition": WOMEN_WITH_DIABETES},
    )
    assert (await system.pull()).error is None
    tablet = await system.pair_tablet("tab-a")
    records, cursor, _ = await read_all(system, tablet)
    seen = by_key(records)
    of = {a: {i for (agg, i) in seen if agg == a} for a in {a for a, _ in seen}}
    assert of["disease_registry_entry"] == {"e-1", "e-2", "e-4"}  # never e-3 (f-009)
    assert of["cohort_membership"] == {"dm-women/e-1"}
    assert of["population_cohort"] == {"dm-women"}
    assert of.get("risk_score", set()) <= {"e-1", "e-2", "e-4"}
    assert seen[("population_cohort", "dm-women")]["data"]["version"] == 1
    assert seen[("disease_registry_entry", "e-1")]["data"]["patientRef"] == patient_ref("e-1")
    assert all(
        not isinstance(r["data"], dict) or r["data"].get("facilityId") in (None, "f-001", "f-002")
        for r in records
    )

    # A tablet's draft: valid here, forwarded, numbered by the gateway.
    [accepted] = await push_items(system, tablet, [draft("d-1", WOMEN, cohort="dm-women")])
    assert accepted["status"] == "accepted"
    forwarded, pulled = await system.sync()
    assert forwarded.statuses == {"applied": 1} and pulled.error is None
    async with system.edge_db.read() as conn:
        [kept] = await conn.execute_fetchall(
            "SELECT gateway_status, gateway_code, gateway_version FROM cohort_drafts"
        )
    assert tuple(kept) == ("applied", None, 2)
    [again] = await push_items(system, tablet, [draft("d-1", WOMEN, cohort="dm-women")])
    assert (again["status"], again["gatewayStatus"], again["version"]) == (
        "duplicate",
        "applied",
        2,
    )
    later, cursor, _ = await read_all(system, tablet, cursor)
    changed = by_key(later)
    assert changed[("population_cohort", "dm-women")]["data"]["version"] == 2
    assert changed[("cohort_membership", "dm-women/e-4")]["op"] == "upsert"  # now a member

    # A removal upstream reaches the tablet as deletes.
    await gateway_call(system, "DELETE", f"{ENTRIES}/e-1", service)
    await system.pull()
    later, _, _ = await read_all(system, tablet, cursor)
    changed = by_key(later)
    assert changed[("disease_registry_entry", "e-1")]["op"] == "delete"
    assert changed[("cohort_membership", "dm-women/e-1")]["op"] == "delete"
    everything = by_key((await read_all(system, tablet))[0])
    assert everything[("cohort_membership", "dm-women/e-1")]["op"] == "delete"
    assert everything[("cohort_membership", "dm-women/e-4")]["op"] == "upsert"

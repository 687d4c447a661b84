"""The gateway's audit log (docs/audit.md): one row per operation on patient
data, in the operation's transaction; a hash chain that ``phs-gateway audit
verify`` walks, and which direct tampering with the database breaks."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from canaries import patient_ref, scan_output
from gateway import audit
from gateway.db.database import Database
from gateway.db.schema import audit_head, audit_log
from gateway.settings import Settings
from harness import (
    PREFIX,
    Gateway,
    assert_problem,
    bearer,
    signed_report,
    token_principal,
    transition,
)
from shared.audit import AuditEntry, BreakKind, ChainHead, link_hash
from shared.signing import KeyPair

REPO = Path(__file__).resolve().parent.parent
ENTRIES = f"{PREFIX}/registry/entries"
Row = tuple[
    str, str, str | None, str | None, str | None, str
]  # action actor node facility record outcome


def registry_entry(entry_id: str, facility: str = "f-001") -> dict[str, Any]:
    return {
        "id": entry_id,
        "facilityId": facility,
        "patientRef": patient_ref(entry_id),
        "sex": "female",
        "birthDate": "1959-03-02",
        "conditions": [{"code": "E11.9", "onset": "2010-01-01"}],
    }


async def rows_after(gateway: Gateway, seq: int) -> list[Row]:
    async with gateway.database.read() as conn:
        found = await conn.execute(
            sa.select(audit_log).where(audit_log.c.seq > seq).order_by(audit_log.c.seq)
        )
        return [
            (r.action, r.actor, r.node_id, r.facility_id, r.record, r.outcome)
            for r in found
            if r.tenant_id == "t1"
        ]


async def last_seq(gateway: Gateway) -> int:
    async with gateway.database.read() as conn:
        value = (await conn.execute(sa.select(sa.func.max(audit_log.c.seq)))).scalar()
    return int(value or 0)


class Recorder:
    """Runs one operation and returns the audit rows it added."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, operation: Awaitable[Any], status: int) -> list[Row]:
        before = await last_seq(self.gateway)
        resp = await operation
        assert resp.status == status, await resp.text()
        return await rows_after(self.gateway, before)


async def test_every_listed_operation_writes_one_row(gateway: Gateway) -> None:
    client, did = gateway.client, Recorder(gateway)
    admin, service, analyst = [await gateway.token(r) for r in ("admin", "service", "analyst")]
    a, s, n = token_principal(admin), token_principal(service), token_principal(analyst)
    node = await gateway.enroll("edge-01", "t1", ("f-001",))
    edge = ("node:edge-01", "edge-01")

    # Outreach items: create, read (and a miss), a server transition, a node's batch.
    body = {"id": "item-1", "facilityId": "f-001", "state": "assigned"}
    body["patientRef"] = patient_ref(1)  # a canary: no audit row may carry it
    create = client.post(f"{PREFIX}/outreach-items", json=body, headers=bearer(admin))
    assert await did(create, 201) == [("outreach_item.create", a, None, "f-001", "item-1", "ok")]
    read = client.get(f"{PREFIX}/outreach-items/item-1", headers=bearer(analyst))
    assert await did(read, 200) == [("outreach_item.read", n, None, "f-001", "item-1", "ok")]
    miss = client.get(f"{PREFIX}/outreach-items/nope", headers=bearer(analyst))
    assert await did(miss, 404) == [("outreach_item.read", n, None, None, "nope", "not_found")]
    odd = client.get(f"{PREFIX}/outreach-items/%C3%A9%09x", headers=bearer(analyst))
    assert await did(odd, 404) == [  # a record named in a path is kept printable ASCII
        ("outreach_item.read", n, None, None, "\\xe9\\tx", "not_found")
    ]
    batch = gateway.post_batch(
        node,
        [
            transition("t-1", "item-1", "assigned", "in_progress"),
            transition("t-2", "item-9", "assigned", "in_progress"),  # unknown item
            {"kind": "no.such.kind", "id": "x-1"},
        ],
    )
    assert await did(batch, 200) == [
        ("outreach_item.transition", *edge, None, "item-1", "applied"),
        ("outreach_item.transition", *edge, None, "item-9", "rejected"),
        ("batch_item.refused", *edge, None, "x-1", "rejected"),
    ]
    server = client.post(
        f"{PREFIX}/outreach-items/item-1/transitions",
        json={"id": "t-3", "from": "in_progress", "to": "cancelled"},
        headers=bearer(admin),
    )
    [(action, actor, _, _, record, _)] = await did(server, 200)
    assert (action, actor, record) == ("outreach_item.transition", a, "item-1")

    # Registry entries: put, read, list, delete; a refused write; a miss.
    put = client.put(f"{ENTRIES}/e-1", json=registry_entry("e-1"), headers=bearer(service))
    assert await did(put, 201) == [("registry_entry.put", s, None, "f-001", "e-1", "ok")]
    await client.put(f"{ENTRIES}/e-2", json=registry_entry("e-2"), headers=bearer(service))
    get = client.get(f"{ENTRIES}/e-1", headers=bearer(analyst))
    assert await did(get, 200) == [("registry_entry.read", n, None, "f-001", "e-1", "ok")]
    listed = client.get(f"{ENTRIES}?facilityId=f-001", headers=bearer(admin))
    assert await did(listed, 200) == [
        ("registry_entry.list", a, None, "f-001", "entries:e-1..e-2", "ok")
    ]
    refused = client.put(f"{ENTRIES}/e-1", json=registry_entry("e-1"), headers=bearer(analyst))
    assert await did(refused, 403) == [
        ("disease_registry_entry.write", n, None, None, "e-1", "refused")
    ]
    forbidden = client.get(f"{ENTRIES}/e-1", headers=bearer(service))  # service may not read
    assert await did(forbidden, 403) == [("registry_entry.read", s, None, None, "e-1", "refused")]

    # Risk scores: a read, a refused override (analyst), an admin override.
    risk = client.get(f"{PREFIX}/risk-scores/e-1", headers=bearer(analyst))
    assert await did(risk, 200) == [("risk_score.read", n, None, "f-001", "e-1", "ok")]
    attempt = {
        "id": "o-1",
        "value": 90,
        "reason": "home visit",
        "occurredAt": "2026-11-25T11:00:00Z",
    }
    denied = client.post(
        f"{PREFIX}/risk-scores/e-1/overrides", json=attempt, headers=bearer(analyst)
    )
    assert await did(denied, 403) == [("risk_score.override", n, None, None, "e-1", "refused")]
    override = client.post(
        f"{PREFIX}/risk-scores/e-1/overrides", json=attempt, headers=bearer(admin)
    )
    assert await did(override, 200) == [("risk_score.override", a, None, "f-001", "e-1", "applied")]

    # Cohort members (the cohort itself is a definition, not patient data).
    definition = {"all": [{"field": "sex", "op": "eq", "value": "female"}]}
    cohort = {"cohortId": "women", "name": "Women", "definition": definition}
    resp = await client.post(f"{PREFIX}/cohorts", json=cohort, headers=bearer(admin))
    assert resp.status == 201, await resp.text()
    members = client.get(f"{PREFIX}/cohorts/women/members", headers=bearer(analyst))
    assert await did(members, 200) == [
        ("cohort.members.read", n, None, None, "cohort:women/1:e-1..e-2", "ok")
    ]

    # A facility report (aggregates), then the analytics that read it.
    report = signed_report(node)
    submit = client.post(
        f"{PREFIX}/sync/facility-reports",
        data=msgpack.packb(report),
        headers={"Content-Type": "application/msgpack"},
    )
    [submitted] = await did(submit, 201)
    assert submitted[:4] == ("facility_report.submit", *edge, "f-001")
    assert submitted[5] == "merged"
    report_id = submitted[4]
    analytics = client.get(f"{PREFIX}/analytics/facility-reports", headers=bearer(analyst))
    assert await did(analytics, 200) == [
        (
            "analytics.facility_reports.read",
            n,
            None,
            None,
            f"reports:{report_id}..{report_id}",
            "ok",
        )
    ]

    # The change feed towards the node: one row per page that carried changes.
    page = gateway.signed(node, "GET", f"{PREFIX}/sync/changes")
    [(action, actor, node_id, _, record, outcome)] = await did(page, 200)
    assert (action, actor, node_id, outcome) == ("changes.read", *edge, "ok")
    assert record is not None and record.startswith("changes:1..")
    cursor = record.split("..")[1]
    empty = gateway.signed(node, "GET", f"{PREFIX}/sync/changes?since={cursor}")
    assert await did(empty, 200) == []  # nothing read, nothing recorded

    # Exports: a job created, a download refused (not ready yet).
    hmis = client.post(
        f"{PREFIX}/hmis-exports",
        json={"periodType": "weekly", "periodKey": "2026-W47"},
        headers=bearer(admin),
    )
    [(action, actor, _, _, job_id, outcome)] = await did(hmis, 202)
    assert (action, actor, outcome) == ("hmis_export_job.create", a, "ok")
    download = client.get(f"{PREFIX}/hmis-exports/{job_id}/document", headers=bearer(analyst))
    assert await did(download, 403) == [
        ("hmis_export_job.download", n, None, None, job_id, "refused")
    ]

    # Deleting an entry, and nodes enrolled and revoked by an admin.
    delete = client.delete(f"{ENTRIES}/e-2", headers=bearer(service))
    assert await did(delete, 200) == [("registry_entry.delete", s, None, "f-001", "e-2", "ok")]
    gone = client.delete(f"{ENTRIES}/e-404", headers=bearer(service))
    assert await did(gone, 404) == [("registry_entry.delete", s, None, None, "e-404", "not_found")]
    enroll_body = {
        "nodeId": "edge-02",
        "tenantId": "t1",
        "facilityIds": ["f-002"],
        "publicKey": base64.b64encode(KeyPair.generate().public_key).decode(),
    }
    enroll = client.post(f"{PREFIX}/admin/nodes", json=enroll_body, headers=bearer(admin))
    assert await did(enroll, 201) == [("node.enroll", a, None, None, "node:edge-02", "ok")]
    revoke = client.delete(f"{PREFIX}/admin/nodes/edge-02", headers=bearer(admin))
    assert await did(revoke, 200) == [("node.revoke", a, None, None, "node:edge-02", "ok")]

    # A request refused before authentication names no actor: no row.
    stranger = client.get(f"{ENTRIES}/e-1", headers=bearer("phs_nobody_x"))
    assert await did(stranger, 401) == []

    result = await audit.verify(gateway.database)
    assert result.broken is None and result.checked == await last_seq(gateway)
    assert result.stored_head == result.head


async def test_a_rolled_back_write_leaves_no_row(gateway: Gateway) -> None:
    db: Database = gateway.database
    entry = audit.Actor("token:x", "t1").entry("registry_entry.put", "e-1", "ok", gateway.clock())

    async def append_then_fail(conn: AsyncConnection) -> None:
        await audit.append(conn, [entry, entry], gateway.clock())
        raise RuntimeError("the operation failed after its audit rows")

    with pytest.raises(RuntimeError):
        await db.transact(append_then_fail)
    assert await last_seq(gateway) == 0
    async with db.read() as conn:
        assert await audit.read_head(conn) is None
    # Through the API: a DELETE of no entry fails inside its write, which rolls
    # back; only its not_found row, in a transaction of its own, remains.
    service = await gateway.token("service")
    gone = await gateway.client.delete(f"{ENTRIES}/e-404", headers=bearer(service))
    await assert_problem(gone, 404, "not_found")
    assert [r[0::5] for r in await rows_after(gateway, 0)] == [
        ("registry_entry.delete", "not_found")
    ]
    # A malformed body touches no record: refused before the write, not recorded.
    bad = await gateway.client.put(
        f"{ENTRIES}/e-1", json={**registry_entry("e-1"), "sex": "?"}, headers=bearer(service)
    )
    await assert_problem(bad, 422, "validation_failed")
    assert await last_seq(gateway) == 1


async def seed(db: Database, count: int, moment: Any) -> None:
    actor = audit.Actor("token:abc", "t1")
    entries = [actor.entry("registry_entry.read", f"e-{i}", "ok", moment) for i in range(count)]
    await db.transact(lambda conn: audit.append(conn, entries, moment))


async def forge_next(conn: AsyncConnection) -> None:
    """A forged row appended as the gateway would, hash and all, without the head."""
    last = (await conn.execute(sa.select(audit_log).order_by(audit_log.c.seq.desc()))).first()
    assert last is not None
    entry = AuditEntry(
        "token:evil", None, "t1", None, "registry_entry.read", "e-0", last.time, "ok"
    )
    seq = last.seq + 1
    await conn.execute(
        audit_log.insert().values(
            seq=seq,
            actor=entry.actor,
            node_id=None,
            tenant_id="t1",
            facility_id=None,
            action=entry.action,
            record=entry.record,
            time=entry.time,
            outcome="ok",
            prev_hash=last.hash,
            hash=link_hash(last.hash, seq, entry),
        )
    )


async def swap_2_and_3(conn: AsyncConnection) -> None:
    for old, new in ((2, -1), (3, 2), (-1, 3)):
        await conn.execute(audit_log.update().where(audit_log.c.seq == old).values(seq=new))


Tamper = Callable[[AsyncConnection], Awaitable[Any]]
TAMPERING: dict[str, tuple[Tamper, int, BreakKind]] = {
    "edit a field": (
        lambda c: c.execute(audit_log.update().where(audit_log.c.seq == 3).values(actor="x")),
        3,
        BreakKind.EDITED,
    ),
    "delete a middle row": (
        lambda c: c.execute(audit_log.delete().where(audit_log.c.seq == 2)),
        2,
        BreakKind.GAP,
    ),
    "delete the last row": (
        lambda c: c.execute(audit_log.delete().where(audit_log.c.seq == 5)),
        5,
        BreakKind.TRUNCATED,
    ),
    "swap two rows": (swap_2_and_3, 2, BreakKind.LINK),
    "insert a forged row": (forge_next, 6, BreakKind.BEYOND_HEAD),
    "rewrite the head": (
        lambda c: c.execute(audit_head.update().values(last_hash="ab" * 32)),
        5,
        BreakKind.HEAD_MISMATCH,
    ),
}


@pytest.mark.parametrize("how", list(TAMPERING))
async def test_tampering_is_found_at_its_row(gateway: Gateway, how: str) -> None:
    db: Database = gateway.database
    await seed(db, 5, gateway.clock())
    clean = await audit.verify(db)
    assert (clean.checked, clean.broken, clean.head.count) == (5, None, 5)
    tamper, seq, kind = TAMPERING[how]
    async with db.write() as conn:
        await tamper(conn)
    broken = (await audit.verify(db)).broken
    assert broken is not None and (broken.seq, broken.kind) == (seq, kind), broken


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "audit",
            *args,
            "--database-url",
            settings.sqlalchemy_url(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    scan_output(done.stderr, f"phs-gateway audit {args[0]} stderr")  # its log (canaries.py)
    return done


async def test_verify_from_the_command_line(gateway: Gateway, gateway_settings: Settings) -> None:
    db: Database = gateway.database
    await seed(db, 7, gateway.clock())
    done = await asyncio.to_thread(cli, gateway_settings, "verify", "--progress-every", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    head = (await audit.verify(db)).head
    assert lines == ["rows checked: 7", f"head: 7:{head.last_hash}", "OK"]
    assert "checked 6 rows" in done.stderr  # progress, every 3 rows
    tail = await asyncio.to_thread(cli, gateway_settings, "tail", "-n", "2")
    assert [line.count('"seq": ') for line in tail.stdout.splitlines()] == [1, 1]

    # The whole chain rewritten consistently (full write access) passes alone,
    # but not against the head noted before.
    anchor = f"7:{head.last_hash}"
    async with db.write() as conn:
        await conn.execute(audit_log.delete())
        await conn.execute(audit_head.delete())
    await seed(db, 7, gateway.clock().replace(year=2025))
    again = await asyncio.to_thread(cli, gateway_settings, "verify")
    assert again.returncode == 0, again.stdout
    anchored = await asyncio.to_thread(cli, gateway_settings, "verify", "--anchor", anchor)
    assert anchored.returncode == 1
    assert anchored.stdout.splitlines()[-1].startswith("BROKEN at row 7 (anchor_mismatch)")

    async with db.write() as conn:
        await conn.execute(audit_log.update().where(audit_log.c.seq == 4).values(outcome="ok2"))
    broken = await asyncio.to_thread(cli, gateway_settings, "verify")
    assert broken.returncode == 1
    assert broken.stdout.splitlines()[-1] == (
        "BROKEN at row 4 (edited): row 4's content does not match its hash"
    )


async def test_concurrent_writers_keep_one_intact_chain(gateway: Gateway, store: str) -> None:
    """8 batches at once through the gateway, and 8 appends at once from a second
    engine (as another gateway process would): one chain, every row in it."""
    if store != "postgresql":
        pytest.skip("SQLite has one writer: appends never run concurrently")
    nodes = [await gateway.enroll(f"edge-{i}", "t1", (f"f-{i}",)) for i in range(8)]
    admin = await gateway.token("admin")
    for i in range(8):
        for j in range(10):
            await gateway.create_item(admin, f"i-{i}-{j}", "assigned", facility=f"f-{i}")
    other = Database(str(gateway.database.url.render_as_string(hide_password=False)))
    try:

        async def batch(i: int) -> None:
            items = [
                transition(f"t-{i}-{j}", f"i-{i}-{j}", "assigned", "in_progress") for j in range(10)
            ]
            resp = await gateway.post_batch(nodes[i], items)
            assert resp.status == 200, await resp.text()

        moment = gateway.clock()
        await asyncio.gather(
            *(batch(i) for i in range(8)), *(seed(other, 5, moment) for _ in range(8))
        )
    finally:
        await other.close()
    result = await audit.verify(gateway.database)
    assert result.broken is None
    assert result.checked == 8 * 10 + 8 * 10 + 8 * 5  # creates, transitions, direct appends
    assert result.stored_head == ChainHead(result.checked, result.head.last_hash)
    transitions = [r for r in await rows_after(gateway, 0) if r[0] == "outreach_item.transition"]
    assert len(transitions) == 80 and {r[5] for r in transitions} == {"applied"}


def test_entries_keep_references_not_identifiers() -> None:
    """The row shape has no place for a patient identifier: the record is a
    reference, and the canonical bytes hold only the row's own fields."""
    fields = {f.name for f in dataclasses.fields(AuditEntry)}
    assert fields == {"actor", "node", "tenant", "facility", "action", "record", "time", "outcome"}

"""Four gateway processes on one PostgreSQL database, eight edge nodes at once.

``phs-gateway serve --workers 4`` runs as a real process on a new database;
eight simulated edge nodes (asyncio tasks, each signing with its own enrolled
key) send overlapping batches: the same items from several nodes, the same
transitions relayed by two or three nodes, batches resent with their
Idempotency-Key while the first send is still running, identical facility
reports sent in two batches and twice at once on their own. Meanwhile each
node pulls the change feed with its cursor, as an edge node does. The
scenario is drawn from a seeded random source; the run is bounded (8 nodes
x 6 batches, 2 minutes at most).

Then, from the database:

- every transition is recorded exactly once (one row that is not a
  ``duplicate`` per item and transition id), and every batch's transitions
  once (resends of a batch are replays);
- each item's state is what a sequential replay of its recorded transitions,
  in their recorded order, through ``shared.fsm.resolve`` gives, with every
  recorded disposition the replay's;
- each merged report is stored once with exactly one ``…facility_report.synced``
  event, and every submission of it answered with its reportId;
- every node's cursor walk saw every change of its facility exactly once
  (none skipped behind a slower concurrent commit).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import sqlalchemy as sa

from gateway.db.database import Database
from gateway.db.schema import (
    changes,
    events,
    facility_reports,
    outreach_items,
    outreach_transitions,
    report_submissions,
)
from gateway.events import append_event
from gateway.feed import Aggregate, Op, record_change
from gateway.registry import create_token, enroll_node
from gateway.reports import SYNCED_EVENT
from gateway_processes import start_serve
from harness import PREFIX, Gateway, NodeIdentity, bearer, signed_report, transition
from shared.fsm import ALLOWED, Disposition, ItemState, Role, State, Transition, resolve
from shared.signing import authorization_header
from shared.values import format_timestamp, parse_timestamp
from stores import POSTGRESQL, postgres_database

pytestmark = pytest.mark.postgres  # every test here is about PostgreSQL

NODES = 8
ITEMS = 16
TRANSITIONS = 200
BATCHES_PER_NODE = 6
PERIODS = ("2026-W46", "2026-W47")
FACILITY = "f-001"
DEVICES = ("tab-a", "tab-b", "tab-c")
INITIAL = (State.ASSIGNED, State.IN_PROGRESS, State.IN_PROGRESS, State.CONTACTED)
FIELD_EDGES = sorted(
    (edge, role)
    for edge, roles in ALLOWED.items()
    for role in roles
    if role is not Role.SERVER  # nodes may not send server transitions
)


@dataclass
class Node:
    identity: NodeIdentity
    batches: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    seen_changes: list[int] = field(default_factory=list)


@dataclass
class Run:
    base: str
    admin: str
    nodes: list[Node]
    statuses: Counter[int] = field(default_factory=Counter)
    batch_answers: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    report_ids: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    writing: int = NODES


def scenario(rng: random.Random, nodes: list[NodeIdentity], now: datetime) -> list[Node]:
    """Batches and reports per node: transitions on shared items, some relayed by
    several nodes, each node's reports in two of its batches."""
    plan = [Node(identity) for identity in nodes]
    per_node: list[list[dict[str, Any]]] = [[] for _ in nodes]
    for n in range(TRANSITIONS):
        (frm, to), role = rng.choice(FIELD_EDGES)
        at = now - timedelta(minutes=rng.choice([20, 10, 10, 5, 1]), milliseconds=rng.randrange(3))
        item = transition(
            f"t-{n:03d}",
            f"item-{rng.randrange(ITEMS):02d}",
            frm.value,
            to.value,
            format_timestamp(at),
            device=rng.choice(DEVICES),
            role=role.value,
        )
        relays = rng.sample(range(NODES), rng.choice([1, 1, 1, 2, 3]))
        for index in relays:
            per_node[index].append(item)
    for node, items in zip(plan, per_node, strict=True):
        rng.shuffle(items)
        cuts = sorted(rng.sample(range(1, len(items)), BATCHES_PER_NODE - 1))
        parts = [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]
        node.reports = [
            {"kind": "facility_report", "id": f"r-{period}", **signed_report(node.identity,
             period_key=period)}
            for period in PERIODS
        ]  # fmt: skip
        for number, part in enumerate(parts):
            if number in (1, 3):  # report 0 in batches 1 and 3, report 1 in 2 and 4, …
                part = [*part, node.reports[0]]
            if number in (2, 4):
                part = [node.reports[1], *part]
            node.batches.append((f"b-{node.identity.node_id}-{number}", part))
    return plan


def batch_body(node: NodeIdentity, batch_id: str, items: list[dict[str, Any]]) -> bytes:
    doc = {
        "v": 1,
        "batchId": batch_id,
        "nodeId": node.node_id,
        "createdAt": format_timestamp(datetime.now(UTC)),
        "items": items,
    }
    return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


async def signed(
    session: aiohttp.ClientSession,
    run: Run,
    node: NodeIdentity,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    auth = authorization_header(node.keypair, node.node_id, method, path, body, int(time.time()))
    all_headers = {
        "Authorization": auth,
        "Content-Type": "application/msgpack",
        "Accept": "application/msgpack",
        **(headers or {}),
    }
    async with session.request(method, run.base + path, data=body, headers=all_headers) as resp:
        raw = await resp.read()
        run.statuses[resp.status] += 1
        document = msgpack.unpackb(raw) if resp.content_type == "application/msgpack" else raw
        return resp.status, document


async def send_batch(
    session: aiohttp.ClientSession, run: Run, node: NodeIdentity, batch_id: str, body: bytes
) -> None:
    """Until answered: a 409 means the first send of this key is still running."""
    for _ in range(400):
        status, doc = await signed(
            session,
            run,
            node,
            "POST",
            f"{PREFIX}/sync/batches",
            body,
            {"Idempotency-Key": batch_id},
        )
        if status == 409 and doc["code"] == "idempotency_in_flight":
            await asyncio.sleep(0.05)
            continue
        assert status == 200, doc
        run.batch_answers[batch_id].append(doc)
        for result in doc["results"]:
            if "reportId" in result:
                run.report_ids[(node.node_id, result["id"])].add(result["reportId"])
        return
    raise AssertionError(f"batch {batch_id} stayed in flight")


async def send_report(
    session: aiohttp.ClientSession, run: Run, node: NodeIdentity, report: dict[str, Any]
) -> None:
    body = msgpack.packb({k: v for k, v in report.items() if k not in ("kind", "id")})
    async with session.post(
        f"{run.base}{PREFIX}/sync/facility-reports",
        data=body,
        headers={"Content-Type": "application/msgpack"},
    ) as resp:
        run.statuses[resp.status] += 1
        raw = await resp.read()
        doc = msgpack.unpackb(raw) if resp.content_type == "application/msgpack" else raw
        assert resp.status in (200, 201), doc  # merged, or a duplicate of the merged one
        run.report_ids[(node.node_id, report["id"])].add(doc["reportId"])


async def pull(session: aiohttp.ClientSession, run: Run, node: Node, cursor: str) -> str:
    """One walk of the change feed from ``cursor`` to its end; the new cursor."""
    more = True
    while more:
        status, doc = await signed(
            session, run, node.identity, "GET", f"{PREFIX}/sync/changes?since={cursor}&limit=40"
        )
        assert status == 200, doc
        node.seen_changes += [c["seq"] for c in doc["changes"]]
        cursor, more = doc["cursor"], doc["more"]
    return cursor


async def edge_node(run: Run, node: Node, rng: random.Random) -> None:
    async with aiohttp.ClientSession() as session:
        try:
            bodies = {
                batch_id: batch_body(node.identity, batch_id, items)
                for batch_id, items in node.batches
            }  # a resend sends the same bytes
            for batch_id, body in bodies.items():
                sends = 2 if rng.random() < 0.5 else 1  # resent while the first runs
                await asyncio.gather(
                    *(send_batch(session, run, node.identity, batch_id, body) for _ in range(sends))
                )
                if rng.random() < 0.4:  # a report, twice at once, on its own
                    report = rng.choice(node.reports)
                    await asyncio.gather(
                        *(send_report(session, run, node.identity, report) for _ in range(2))
                    )
            # Later, an old batch again: its stored answer.
            batch_id = rng.choice(sorted(bodies))
            await send_batch(session, run, node.identity, batch_id, bodies[batch_id])
        finally:
            run.writing -= 1


async def feed_reader(run: Run, node: Node) -> None:
    """Pulls all along, as an edge node does, then once more after the writes."""
    cursor = "0"
    async with aiohttp.ClientSession() as session:
        while run.writing:
            cursor = await pull(session, run, node, cursor)
            await asyncio.sleep(0.01)
        await pull(session, run, node, cursor)


async def setup_store(url: str, now: datetime) -> tuple[str, list[NodeIdentity]]:
    database = Database(url)
    try:
        await database.migrate()
        async with database.write() as conn:
            admin, _ = await create_token(conn, tenant_id="t1", role="admin", label="t", now=now)
            nodes = [NodeIdentity(f"edge-{n:02d}", "t1", [FACILITY]) for n in range(NODES)]
            for node in nodes:
                await enroll_node(
                    conn,
                    node_id=node.node_id,
                    tenant_id="t1",
                    facility_ids=[FACILITY],
                    public_key=node.keypair.public_key,
                    capabilities=[],
                    now=now,
                )
    finally:
        await database.close()
    return admin, nodes


async def create_items(run: Run, rng: random.Random) -> dict[str, State]:
    initial = {f"item-{n:02d}": rng.choice(INITIAL) for n in range(ITEMS)}
    async with aiohttp.ClientSession() as session:
        for item_id, state in initial.items():
            async with session.post(
                f"{run.base}{PREFIX}/outreach-items",
                json={"id": item_id, "facilityId": FACILITY, "state": state.value},
                headers={"Authorization": f"Bearer {run.admin}"},
            ) as resp:
                assert resp.status == 201, await resp.text()
    return initial


async def test_four_processes_and_eight_nodes(tmp_path: Path) -> None:
    rng = random.Random(6)
    now = datetime.now(UTC)
    async with postgres_database() as url:
        admin, identities = await setup_store(url, now)
        gateway = await start_serve(url, tmp_path, 4)
        try:
            run = Run(f"http://127.0.0.1:{gateway.port}", admin, scenario(rng, identities, now))
            async with asyncio.timeout(120):
                initial = await create_items(run, rng)
                await asyncio.gather(
                    *(edge_node(run, node, random.Random(rng.random())) for node in run.nodes),
                    *(feed_reader(run, node) for node in run.nodes),
                )
            assert await gateway.stop() == 0
        except BaseException:
            await gateway.kill_all()
            raise
        assert not [s for s in run.statuses if s >= 500], (run.statuses, gateway.output())
        errors = [
            line for line in gateway.lines if '"level":"ERROR"' in line or "Traceback" in line
        ]
        assert not errors, "\n".join(gateway.lines)
        await check_store(url, run, initial)


async def check_store(url: str, run: Run, initial: dict[str, State]) -> None:
    database = Database(url)
    try:
        async with database.read() as conn:
            log = (await conn.execute(sa.select(outreach_transitions).order_by("seq"))).all()
            items = {r.id: r for r in await conn.execute(sa.select(outreach_items))}
            reports = (await conn.execute(sa.select(facility_reports))).all()
            synced = await conn.execute(sa.select(events).where(events.c.type == SYNCED_EVENT))
            synced_events = synced.all()
            submissions = (await conn.execute(sa.select(report_submissions))).all()
            feed = [r.seq for r in await conn.execute(sa.select(changes.c.seq))]
    finally:
        await database.close()

    # Every transition recorded exactly once; every batch applied once.
    sent = {
        (item["itemId"], item["id"])
        for node in run.nodes
        for _, batch in node.batches
        for item in batch
        if item["kind"] == "outreach.transition"
    }
    firsts = Counter((r.item_id, r.transition_id) for r in log if r.disposition != "duplicate")
    assert set(firsts) == sent and set(firsts.values()) == {1}
    per_batch = Counter(r.batch_id for r in log)
    for node in run.nodes:
        for batch_id, batch in node.batches:
            count = sum(1 for item in batch if item["kind"] == "outreach.transition")
            assert per_batch[batch_id] == count, batch_id
            answers = run.batch_answers[batch_id]
            assert answers and all(a == answers[0] for a in answers), batch_id  # replays

    # Each item's state is the sequential replay of its recorded transitions.
    by_item: dict[str, list[Any]] = defaultdict(list)
    for row in log:
        by_item[row.item_id].append(row)
    for item_id, state in initial.items():
        replayed = replay(state, by_item[item_id])
        assert replayed == (items[item_id].state, [r.disposition for r in by_item[item_id]])

    # One stored report and one synced event per merged report, the same reportId
    # in every answer about it.
    assert len(reports) == NODES * len(PERIODS)
    stored = {(r.device_id, f"r-{r.period_key}"): r.report_id for r in reports}
    assert {key: {rid} for key, rid in stored.items()} == dict(run.report_ids)
    assert sorted(e.data["reportId"] for e in synced_events) == sorted(stored.values())
    merged = Counter(s.report_id for s in submissions if s.disposition == "merged")
    assert merged == Counter(stored.values())
    # Resent reports are the same bytes: answered duplicate, with no new receipt.
    assert {s.disposition for s in submissions} == {"merged"}

    # Every node's cursor saw every change of its facility once, in order.
    for node in run.nodes:
        assert node.seen_changes == sorted(feed), node.identity.node_id


def replay(state: str | State, rows: list[Any]) -> tuple[str, list[str]]:
    """The item's state and the dispositions its log would have, replayed in order."""
    current, last = State(state), None
    seen: dict[str, Disposition] = {}
    dispositions: list[str] = []
    applied_at: dict[str, int] = {}  # transition id -> index of its applied row
    for row in rows:
        t = Transition(
            id=row.transition_id,
            item_id=row.item_id,
            from_state=row.from_state,
            to_state=row.to_state,
            occurred_at=parse_timestamp(row.occurred_at, "occurredAt"),
            device_id=row.device_id,
            actor_id=row.actor_id,
            role=Role(row.role),
        )
        received = parse_timestamp(row.received_at, "receivedAt")
        r = resolve(ItemState(current, last, seen.get(t.id)), t, received)
        dispositions.append(r.disposition.value)
        if r.disposition is not Disposition.DUPLICATE:
            seen[t.id] = r.disposition
        if r.superseded is not None:
            seen[r.superseded.id] = Disposition.SUPERSEDED
            dispositions[applied_at[r.superseded.id]] = Disposition.SUPERSEDED.value
        if r.changed_state:
            assert r.state is not None
            current, last = r.state, r.transition
            applied_at[t.id] = len(dispositions) - 1
    return current.value, dispositions


# --- A read by sequence waits for a slower concurrent commit (deterministic) ---


@pytest.mark.parametrize("store", [POSTGRESQL], indirect=True)  # SQLite: one writer
async def test_feed_and_event_reads_wait_for_a_slower_commit(gateway: Gateway) -> None:
    service = await gateway.token("service")
    node = await gateway.enroll()
    inserted, release = asyncio.Event(), asyncio.Event()
    stamp = format_timestamp(gateway.clock())

    async def write(entity: str, wait: bool) -> None:
        async with gateway.database.write() as conn:
            await record_change(
                conn,
                tenant_id="t1",
                facility_id=FACILITY,
                aggregate=Aggregate.REGISTRY_ENTRY,
                entity_id=entity,
                op=Op.DELETE,
                data=None,
                stamp=stamp,
            )
            await append_event(conn, "test.v1", "t1", gateway.clock(), {"entity": entity})
            if wait:
                inserted.set()
                await release.wait()

    slow = asyncio.create_task(write("slow", wait=True))  # takes seq 1, commits last
    await inserted.wait()
    await write("fast", wait=False)  # seq 2, committed
    reads = asyncio.gather(
        gateway.signed(node, "GET", f"{PREFIX}/sync/changes?since=0"),
        gateway.client.get(f"{PREFIX}/events?after=0", headers=bearer(service)),
    )
    await asyncio.sleep(0.3)
    assert not reads.done()  # read now, the cursor would pass seq 1 for good
    release.set()
    await slow
    feed, outbox = [await resp.json() for resp in await reads]
    assert [c["id"] for c in feed["changes"]] == ["slow", "fast"] and feed["cursor"] == "2"
    assert [e["data"]["entity"] for e in outbox["events"]] == ["slow", "fast"]

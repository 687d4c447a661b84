"""Flaky WAN: a fault-injecting proxy between the edge node and the gateway (issue 3).

gateway (real aiohttp server on loopback, real SQLite) ← FaultProxy ← edge.
The proxy adds latency, resets connections mid-request (the gateway never
sees the whole batch) and resets them after the gateway has answered but
before the edge reads the answer (the gateway did the work; the edge must
resend the same batch and get an idempotent replay, not a second write).
Short outages at random moments besides drop every live connection, a batch
the gateway is still applying among them: ``TestServer`` cancels the handler
of a client that went away, and a batch cut at its Idempotency-Key's claim
used to stay "in flight" (409 to every resend for two minutes, the whole
outbox stuck behind it) until the gateway's writes learnt to run to their end.

The edge here is the edge node's own code in-process: its tablet API (a real
server, two paired tablets pushing 2,400 numbered transitions over HTTP), its
SQLite store and outbox, and its ``Forwarder`` and ``Puller`` with the real
``GatewayClient`` over a real ``aiohttp`` session through the proxy. Only the
forwarder's clock is injected: when a send fails, the test moves that clock
to the retry time the forwarder chose (its own backoff with jitter) instead
of sleeping, which keeps a run of 240+ batches with hundreds of faults to a
few seconds. ``test_edge_crash.py`` covers ``edgenode run`` as a process with
its real timers.

Signed facility reports ride in the same batches; each must reach the
gateway once and announce itself with exactly one event.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from canaries import patient_ref
from chaos_support import (
    FACILITY,
    LOOPBACK,
    TENANT,
    Pusher,
    Tablet,
    assert_gateway_holds_exactly,
    edge_outbox,
    edge_states,
    edge_transitions,
    gateway_batch_keys,
    gateway_history,
    gateway_report_events,
    gateway_states,
    init_edge,
    integrity,
    outreach_plan,
    wait_for_items,
)
from edgenode.gateway_client import GatewayAnswer, GatewayClient, GatewayUnreachable
from edgenode.http import EDGE_DB
from edgenode.keys import load_key
from edgenode.reports import generate_report
from edgenode.service import create_app as create_edge_app
from edgenode.settings import load_edge_settings
from edgenode.sync import Forwarder, Puller
from faultproxy import FaultPlan, FaultProxy
from gateway.app import create_app as create_gateway_app
from gateway.http import DATABASE
from gateway.outreach import create_item, parse_new_item
from gateway.settings import Settings
from harness import FakeClock
from shared.periods import period_from_key, zone
from shared.values import parse_timestamp

ITEMS = 800  # × 3 transitions
BATCH_MAX_ITEMS = 10
MIN_BATCHES = 200
REPORTS = 12  # daily reports, queued while the tablets push
MAX_FORWARD_CALLS = 5000
TIME_LIMIT = 90.0
MAX_OUTAGES = 1000


class RecordingClient(GatewayClient):
    """The real client, counting what the forwarder heard back."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sends = 0
        self.unreachable = 0
        self.replays = 0
        self.statuses: Counter[int] = Counter()
        self.problems: Counter[str] = Counter()

    async def post_batch_body(self, batch_id: str, body: bytes) -> GatewayAnswer:
        self.sends += 1
        try:
            answer = await super().post_batch_body(batch_id, body)
        except GatewayUnreachable:
            self.unreachable += 1
            raise
        self.statuses[answer.status] += 1
        self.replays += answer.replayed
        if answer.status != 200 and isinstance(answer.document, dict):
            self.problems[str(answer.document.get("code"))] += 1
        return answer


async def drop_links(proxy: FaultProxy, rng: random.Random, outages: list[float]) -> None:
    """Short WAN outages at random moments: the live connections dropped (a batch
    the gateway is still applying among them) and new ones refused for a moment."""
    for _ in range(MAX_OUTAGES):
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        proxy.down = True
        outages.append(rng.uniform(0.0, 0.01))
        await asyncio.sleep(outages[-1])
        proxy.down = False


async def test_flaky_wan_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("PHS_TEST_SEED", random.randrange(2**32)))
    plan_rng = random.Random(seed)
    faults = FaultPlan(
        latency_probability=0.2,
        latency=(0.001, 0.01),
        reset_mid_request=0.12,
        reset_after_response=0.12,
        seed=seed,
    )
    print(f"flaky WAN seed {seed} (PHS_TEST_SEED={seed} to rerun it): {faults}")
    gateway_dir, edge_dir = tmp_path / "gateway", tmp_path / "edge"
    gateway = TestServer(
        create_gateway_app(Settings(data_dir=str(gateway_dir), log_level="WARNING")),
        host=LOOPBACK,
    )
    await gateway.start_server()
    proxy = FaultProxy()
    proxy_port = await proxy.start(LOOPBACK, gateway.port or 0)
    proxy_url = f"http://{LOOPBACK}:{proxy_port}"
    # In a thread: the in-process gateway must keep serving (and committing).
    await asyncio.to_thread(init_edge, edge_dir, gateway_dir, proxy_url)
    settings = load_edge_settings(
        data_dir=str(edge_dir),
        environ={},
        overrides={"batch_max_items": BATCH_MAX_ITEMS, "retry_max_seconds": 8},
    )
    assert settings.gateway_url == proxy_url
    keypair = load_key(settings.key_path)
    edge = TestServer(create_edge_app(settings, keypair, background=False), host=LOOPBACK)
    await edge.start_server()
    edge_url = f"http://{LOOPBACK}:{edge.port}"
    db = edge.app[EDGE_DB]

    tablets = {d: Tablet(d) for d in ("tab-1", "tab-2")}
    plan = outreach_plan(ITEMS, list(tablets), 100, window=100, choose=plan_rng.choice)
    pusher = Pusher(plan, tablets)
    clock = FakeClock(datetime.now(UTC))  # the forwarder's: retry times, batch stamps
    wan = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    lan = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    client = RecordingClient(wan, settings.gateway_url, settings.node_id, keypair)
    forwarder = Forwarder(db, client, settings, clock, random.Random(seed))
    puller = Puller(db, client, clock)
    forward_calls = 0
    outages: list[float] = []
    outage_task: asyncio.Task[None] | None = None
    try:
        # Imported as an upstream system would, in one transaction (not under test here).
        async with gateway.app[DATABASE].write() as gateway_conn:
            for item_id in plan.item_ids:
                fields = parse_new_item(
                    {
                        "id": item_id,
                        "facilityId": FACILITY,
                        "state": "assigned",
                        "patientRef": patient_ref(item_id),
                    }
                )
                await create_item(gateway_conn, TENANT, fields, datetime.now(UTC))
        for tablet in tablets.values():
            await tablet.pair(lan, edge_url, edge_dir)
        proxy.set_plan(faults)
        started = time.monotonic()

        # The change feed comes through the same flaky link; the cursor resumes.
        for _ in range(50):
            if (await puller.pull_once()).error is None:
                break
        await wait_for_items(lan, tablets["tab-1"], edge_url, ITEMS, within=5)

        async def forward_until_idle() -> None:
            """Forward until the outbox is empty, jumping the clock to each retry."""
            nonlocal forward_calls
            while True:
                forward_calls += 1
                assert forward_calls <= MAX_FORWARD_CALLS, "the outbox never drained"
                assert time.monotonic() - started < TIME_LIMIT, "the flaky run took too long"
                summary = await forwarder.forward_once()
                if summary.waiting_until is None:
                    return
                clock.now = max(clock.now, parse_timestamp(summary.waiting_until, "retry"))

        outage_task = asyncio.create_task(drop_links(proxy, random.Random(seed + 1), outages))
        report_days = [date.today() - timedelta(days=n) for n in range(REPORTS, 0, -1)]
        for n in range(len(plan.pushes)):
            await pusher.run(lan, edge_url, 1)
            assert pusher.next_push == n + 1  # the LAN is faithful
            if n % 2 == 0 and report_days:
                async with db.write() as conn:
                    await generate_report(
                        conn,
                        tenant_id=TENANT,
                        node_id=settings.node_id,
                        keypair=keypair,
                        facility_id=FACILITY,
                        period=period_from_key(report_days.pop().isoformat()),
                        tz=zone("UTC"),
                        now=clock(),
                    )
            await forward_until_idle()
        assert not report_days
        outage_task.cancel()
        await asyncio.gather(outage_task, return_exceptions=True)
        await forward_until_idle()
        seconds = time.monotonic() - started
    finally:
        if outage_task is not None:
            outage_task.cancel()
            await asyncio.gather(outage_task, return_exceptions=True)
        await wan.close()
        await lan.close()
        await proxy.stop()
        await edge.close()
        await gateway.close()

    outbox = edge_outbox(edge_dir / "edgenode.db")
    print(
        f"{outbox.done_batches} batches in {seconds:.1f} s over {proxy.requests} requests "
        f"({client.sends} batch sends, {client.unreachable} cut off, {client.replays} "
        f"idempotent replays, answers {dict(client.statuses)}); proxy: "
        f"{proxy.resets_mid_request} resets mid-request, {proxy.resets_after_response} "
        f"after the response, {proxy.delays} delayed chunks, {len(outages)} outages "
        f"({proxy.refused} connections refused), {proxy.connections} connections"
    )
    assert proxy.errors == []
    assert proxy.resets_mid_request > 0
    assert proxy.resets_after_response > 0
    assert proxy.delays > 0
    assert len(outages) > 0
    # A batch whose answer was lost was sent again and the gateway replayed it.
    assert client.replays > 0
    # Besides 200, only "still running, retry later": a resend that overtook
    # the first send of its batch at the gateway.
    assert set(client.statuses) <= {200, 409}
    assert set(client.problems) <= {"idempotency_in_flight"}

    # Outbox drained: every batch answered, every record with the gateway's answer.
    assert outbox.unsent == 0 and outbox.open_batches == 0
    assert outbox.done_batches >= MIN_BATCHES
    rows = edge_transitions(edge_dir / "edgenode.db")
    assert len(rows) == plan.transition_count
    assert {r["gateway_status"] for r in rows} == {"applied"}

    gateway_db = gateway_dir / "gateway.db"
    # One stored answer per batch: every resend was a replay of it.
    keys = gateway_batch_keys(gateway_db)
    assert len(keys) == outbox.done_batches and set(keys.values()) == {"done"}
    assert_gateway_holds_exactly(
        gateway_history(gateway_db), gateway_states(gateway_db), plan, pusher.acknowledged
    )
    # Each report arrived once and announced itself with exactly one event.
    events = gateway_report_events(gateway_db)
    assert len(events) == REPORTS
    assert len({e["reportId"] for e in events}) == REPORTS
    # The tablets' view at the edge ends where the gateway's does.
    assert edge_states(edge_dir / "edgenode.db") == plan.states
    assert integrity(gateway_db) == "ok"
    assert integrity(edge_dir / "edgenode.db") == "ok"

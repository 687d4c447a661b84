"""``GET /metrics`` on both services (docs/metrics.md), read with prometheus_client's
own parser and checked against what the test really did: requests made,
batches and pushes with known dispositions, rows in the store.

The gateway tests run on both stores; ``serve --workers 2`` on PostgreSQL
shows that a scrape, whichever worker answers it, sums every worker's counts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from canaries import MARKER, patient_ref
from edge_harness import EdgeSystem, Tablet, edge_system
from gateway.db.schema import events
from gateway_processes import start_serve
from harness import PREFIX, Gateway, signed_report, transition
from observability.metrics import MULTIPROC_ENV, multiprocess_directory
from shared.values import format_timestamp, parse_timestamp
from stores import postgres_database

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (nothing counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: Any) -> tuple[Samples, str]:
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    return parse(text), text


REQUESTS = "phs_gateway_http_requests_total"
DURATIONS = "phs_gateway_http_request_duration_seconds_count"


async def test_gateway_counts_requests_by_route_pattern_and_code(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    auth = {"Authorization": f"Bearer {admin}"}
    for _ in range(5):
        assert (await gateway.client.get("/healthz")).status == 200
    for n in range(3):  # the problem middleware's 404s, under the route's pattern
        resp = await gateway.client.get(f"{PREFIX}/outreach-items/secret-id-{n}", headers=auth)
        assert resp.status == 404
    assert (await gateway.client.get(f"{PREFIX}/outreach-items/x")).status == 401
    for _ in range(2):
        assert (await gateway.client.get("/no/such/place-42")).status == 404
    assert (await gateway.client.post("/healthz")).status == 405

    samples, text = await scrape(gateway.client)
    item = f"{PREFIX}/outreach-items/{{id}}"
    assert value(samples, REQUESTS, method="GET", route="/healthz", code="200") == 5
    assert value(samples, REQUESTS, method="GET", route=item, code="404") == 3
    assert value(samples, REQUESTS, method="GET", route=item, code="401") == 1
    assert value(samples, REQUESTS, method="GET", route="unmatched", code="404") == 2
    assert value(samples, REQUESTS, method="POST", route="unmatched", code="405") == 1
    assert value(samples, DURATIONS, method="GET", route="/healthz", code="200") == 5
    # 12 requests in all so far; the scrape is counted once it is answered.
    total = sum(v for (name, _), v in samples.items() if name == REQUESTS)
    assert total == 12
    assert value(samples, REQUESTS, method="GET", route="/metrics", code="200") == 0
    # Raw paths hold ids: none reaches a label.
    assert "secret-id" not in text and "place-42" not in text

    samples, _ = await scrape(gateway.client)
    assert value(samples, REQUESTS, method="GET", route="/metrics", code="200") == 1


BATCH_ITEMS = "phs_gateway_batch_items_by_disposition_total"
REJECTED = "phs_gateway_batch_items_rejected_total"


async def test_gateway_counts_batch_items_by_disposition(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await gateway.create_item(admin, "item-1", "assigned")
    report = signed_report(node)
    items = [
        transition("t1", "item-1", "assigned", "in_progress"),
        transition("t1", "item-1", "assigned", "in_progress"),  # the same again
        transition("t2", "item-1", "assigned", "completed"),  # no such edge in the FSM
        {"kind": "facility_report", "id": "r1", **report},
        {"kind": "cohort_membership", "id": "x1"},
        {"kind": "weird-kind-of-node", "id": "x2"},
    ]
    resp = await gateway.post_batch(node, items, batch_id="b-1")
    assert resp.status == 200, await resp.text()
    results = msgpack.unpackb(await resp.read())["results"]
    assert [(r["status"], r.get("code")) for r in results] == [
        ("applied", None),
        ("duplicate", None),
        ("rejected", "fsm_invalid_transition"),
        ("applied", None),
        ("rejected", "policy_server_authoritative"),
        ("rejected", "unknown_kind"),
    ]
    # The same batch again is answered from the idempotency store: counted once.
    again = await gateway.post_batch(node, items, batch_id="b-1")
    assert again.headers["Idempotent-Replayed"] == "true"
    # The report once more, in a batch of its own: a duplicate.
    resp = await gateway.post_batch(node, [{"kind": "facility_report", "id": "r2", **report}])
    assert resp.status == 200

    samples, text = await scrape(gateway.client)
    assert value(samples, "phs_gateway_batch_items_count") == 2
    assert value(samples, "phs_gateway_batch_items_sum") == 7
    assert value(samples, "phs_gateway_batch_items_bucket", le="1.0") == 1
    kinds = {
        ("outreach.transition", "applied"): 1,
        ("outreach.transition", "duplicate"): 1,
        ("outreach.transition", "rejected"): 1,
        ("facility_report", "applied"): 1,
        ("facility_report", "duplicate"): 1,
        ("cohort_membership", "rejected"): 1,
        ("unknown", "rejected"): 1,  # a kind nobody knows is no label of its own
    }
    counted = {
        (dict(labels)["kind"], dict(labels)["disposition"]): v
        for (name, labels), v in samples.items()
        if name == BATCH_ITEMS
    }
    assert counted == kinds
    assert value(samples, REJECTED, kind="outreach.transition", code="fsm_invalid_transition") == 1
    assert value(samples, REJECTED, kind="unknown", code="unknown_kind") == 1
    assert "weird-kind" not in text and "item-1" not in text and "edge-01" not in text
    route = f"{PREFIX}/sync/batches"
    assert value(samples, REQUESTS, method="POST", route=route, code="200") == 3


async def unpublished(gateway: Gateway) -> tuple[int, str | None]:
    async with gateway.database.read() as conn:
        query = sa.select(sa.func.count(), sa.func.min(events.c.time))
        row = (await conn.execute(query.where(events.c.published_at.is_(None)))).one()
    return int(row[0]), row[1]


async def test_gateway_outbox_depth_and_age_are_read_from_the_store(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    revoked = await gateway.enroll("edge-02")
    resp = await gateway.client.delete(
        f"{PREFIX}/admin/nodes/{revoked.node_id}", headers={"Authorization": f"Bearer {admin}"}
    )
    assert resp.status in (200, 204), await resp.text()
    for week in ("2026-W45", "2026-W46", "2026-W47"):  # each stored report is an event
        report = signed_report(node, period_key=week)
        resp = await gateway.post_batch(node, [{"kind": "facility_report", "id": week, **report}])
        assert resp.status == 200, await resp.text()
        gateway.clock.advance(10)
    depth, oldest = await unpublished(gateway)
    assert depth >= 3 and oldest is not None

    samples, _ = await scrape(gateway.client)
    assert value(samples, "phs_gateway_events_outbox_depth") == depth
    age = (gateway.clock() - parse_timestamp(oldest, "oldest")).total_seconds()
    assert age >= 30
    assert value(samples, "phs_gateway_events_outbox_oldest_age_seconds") == pytest.approx(age)
    assert value(samples, "phs_gateway_nodes", status="active") == 1
    assert value(samples, "phs_gateway_nodes", status="revoked") == 1

    # What the relay does once JetStream acknowledged: every event but the last published.
    async with gateway.database.write() as conn:
        last = (await conn.execute(sa.select(sa.func.max(events.c.seq)))).scalar_one()
        await conn.execute(
            events.update()
            .where(events.c.seq < last)
            .values(published_at=format_timestamp(gateway.clock()))
        )
    gateway.clock.advance(5)
    depth, oldest = await unpublished(gateway)
    assert depth == 1 and oldest is not None
    samples, _ = await scrape(gateway.client)
    assert value(samples, "phs_gateway_events_outbox_depth") == 1
    age = (gateway.clock() - parse_timestamp(oldest, "oldest")).total_seconds()
    assert value(samples, "phs_gateway_events_outbox_oldest_age_seconds") == pytest.approx(age)

    async with gateway.database.write() as conn:
        await conn.execute(events.update().values(published_at=format_timestamp(gateway.clock())))
    samples, _ = await scrape(gateway.client)
    assert value(samples, "phs_gateway_events_outbox_depth") == 0
    assert value(samples, "phs_gateway_events_outbox_oldest_age_seconds") == 0


# -- serve --workers: one sum over every process -----------------------------------


def test_multiprocess_directory_is_made_for_the_run_and_removed(tmp_path: Path) -> None:
    assert MULTIPROC_ENV not in os.environ
    with multiprocess_directory() as made:
        assert os.environ[MULTIPROC_ENV] == str(made) and made.is_dir()
        (made / "counter_1.db").write_bytes(b"a worker's counts")
    assert MULTIPROC_ENV not in os.environ and not made.exists()


def test_an_operators_multiprocess_directory_is_emptied_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_4242.db").write_bytes(b"an earlier run's counts")
    (given / "README").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    with multiprocess_directory() as used:
        assert used == given and sorted(p.name for p in given.iterdir()) == ["README"]
    assert given.is_dir() and os.environ[MULTIPROC_ENV] == str(given)


async def fresh_get(port: int, path: str) -> tuple[int, str]:
    # A connection of its own each time, so the kernel may pick either worker.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, await resp.text()


@pytest.mark.postgres
async def test_workers_counts_are_summed_whichever_worker_is_scraped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator's directory (visible to the test), with a file of an earlier
    # run that would break every scrape if it were read.
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_4242.db").write_bytes(b"not a metrics file")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    async with postgres_database() as url:
        gateway = await start_serve(url, tmp_path, 2)
        try:
            assert len(gateway.workers) == 2
            statuses = [(await fresh_get(gateway.port, "/healthz"))[0] for _ in range(20)]
            statuses += [(await fresh_get(gateway.port, "/nowhere"))[0] for _ in range(4)]
            assert statuses == [200] * 20 + [404] * 4
            # Both workers counted some of them: each has files of its own.
            pids = {p.stem.rpartition("_")[2] for p in given.glob("counter_*.db")}
            assert pids == {str(pid) for pid in gateway.workers.values()}, gateway.output()
            for scrapes in range(6):
                status, text = await fresh_get(gateway.port, "/metrics")
                assert status == 200, text
                samples = parse(text)
                assert value(samples, REQUESTS, method="GET", route="/healthz", code="200") == 20
                assert value(samples, DURATIONS, method="GET", route="/healthz", code="200") == 20
                assert value(samples, REQUESTS, method="GET", route="unmatched", code="404") == 4
                # Earlier scrapes, counted once answered, by whichever worker.
                assert (
                    value(samples, REQUESTS, method="GET", route="/metrics", code="200") == scrapes
                )
                assert value(samples, "phs_gateway_events_outbox_depth") == 0
            assert await gateway.stop() == 0
        except BaseException:
            await gateway.kill_all()
            raise


# -- the edge node -----------------------------------------------------------------

EDGE_REQUESTS = "phs_edge_http_requests_total"
RECORDS = "phs_edge_tablet_records_total"


def encounter(eid: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": eid,
        "patientRef": patient_ref("secret-1"),
        "facilityId": "f-001",
        "occurredAt": "2026-11-24T09:00:00.000Z",
        "kind": "screening",
        "screeningDue": True,
        "immunizationDue": False,
        **extra,
    }


def by_labels(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(dict(labels)[k] for k in keys): v for (n, labels), v in samples.items() if n == name
    }


async def edge_counts(system: EdgeSystem) -> Mapping[str, int]:
    async with system.edge_db.read() as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM transitions WHERE forward = 1 AND gateway_status IS NULL)"
            " + (SELECT count(*) FROM reports WHERE gateway_status IS NULL)"
            " + (SELECT count(*) FROM cohort_drafts WHERE gateway_status IS NULL)"
        )
        [(depth,)] = list(await cursor.fetchall())
    return {"depth": int(depth)}


async def test_edge_metrics_match_pushes_store_and_forwarding(tmp_path: Path) -> None:
    async with edge_system(tmp_path) as system:
        await system.create_items(["oi-1", "oi-2"], "assigned")
        await system.pull()
        tablet: Tablet = await system.pair_tablet("tab-a")
        results = await system.push_transitions(
            tablet,
            [
                tablet.transition("t-1", "oi-1", "assigned", "in_progress"),
                tablet.transition("bad-1", "oi-2", "assigned", "completed"),
            ],
        )
        assert [r["status"] for r in results] == ["applied", "rejected"]
        again = await system.push_transitions(
            tablet, [tablet.transition("t-1", "oi-1", "assigned", "in_progress")]
        )
        assert [r["status"] for r in again] == ["duplicate"]
        e = encounter("e-1")
        assert [r["status"] for r in await system.push_encounters(tablet, [e, e])] == [
            "applied",
            "duplicate",
        ]
        # A replayed push is answered from the store: not counted again.
        for _ in range(2):
            await system.push_encounters(tablet, [encounter("e-2")], idempotency_key="k-1")
        unsigned = await system.edge.post(f"{PREFIX}/sync/outreach", json={"transitions": []})
        assert unsigned.status == 401
        system.advance(90)

        samples, text = await scrape(system.edge)
        assert by_labels(samples, RECORDS, "push", "disposition") == {
            ("transitions", "applied"): 1,
            ("transitions", "rejected"): 1,
            ("transitions", "duplicate"): 1,
            ("encounters", "applied"): 2,
            ("encounters", "duplicate"): 1,
        }
        sizes = "phs_edge_tablet_push_records"
        assert value(samples, f"{sizes}_count", push="transitions") == 2
        assert value(samples, f"{sizes}_sum", push="transitions") == 3
        assert value(samples, f"{sizes}_count", push="encounters") == 2
        outreach, encounters = f"{PREFIX}/sync/outreach", f"{PREFIX}/sync/encounters"
        assert value(samples, EDGE_REQUESTS, method="POST", route=outreach, code="200") == 2
        assert value(samples, EDGE_REQUESTS, method="POST", route=outreach, code="401") == 1
        assert value(samples, EDGE_REQUESTS, method="POST", route=encounters, code="200") == 3
        counts = await edge_counts(system)
        assert counts["depth"] == 2  # both transitions are forwarded; encounters stay here
        assert value(samples, "phs_edge_outbox_depth") == counts["depth"]
        assert value(samples, "phs_edge_outbox_records", kind="outreach.transition") == 2
        assert value(samples, "phs_edge_outbox_oldest_age_seconds") == pytest.approx(90)
        assert value(samples, "phs_edge_paired_devices") == 1
        assert value(samples, "phs_edge_transitions", gateway_status="unanswered") == 2
        assert ("phs_edge_last_forward_age_seconds", frozenset()) not in samples  # never yet
        assert MARKER not in text and "oi-1" not in text and "tab-a" not in text

        forwarded, _ = await system.sync()
        assert forwarded.statuses == {"applied": 1, "rejected": 1}
        system.advance(30)
        samples, _ = await scrape(system.edge)
        assert value(samples, "phs_edge_outbox_depth") == 0 == (await edge_counts(system))["depth"]
        assert value(samples, "phs_edge_outbox_oldest_age_seconds") == 0
        assert by_labels(samples, "phs_edge_gateway_dispositions", "kind", "gateway_status") == {
            ("outreach.transition", "applied"): 1,
            ("outreach.transition", "rejected"): 1,
        }
        assert value(samples, "phs_edge_transitions", gateway_status="rejected") == 1
        assert value(samples, "phs_edge_problems") == 1
        assert value(samples, "phs_edge_last_forward_age_seconds") == pytest.approx(30)
        assert value(samples, "phs_edge_last_pull_age_seconds") == pytest.approx(30)

        # The gateway counted the same batch.
        gateway_samples, _ = await scrape(system.gateway.client)
        assert by_labels(gateway_samples, BATCH_ITEMS, "kind", "disposition") == {
            ("outreach.transition", "applied"): 1,
            ("outreach.transition", "rejected"): 1,
        }


async def test_edge_metrics_negotiate_openmetrics(tmp_path: Path) -> None:
    async with edge_system(tmp_path) as system:
        resp = await system.edge.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await resp.text()
        assert text.endswith("# EOF\n") and "phs_edge_outbox_depth 0.0" in text

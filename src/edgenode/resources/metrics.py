"""``GET /metrics``: the edge node's Prometheus metrics (docs/metrics.md).

Open on the office LAN, like the status page: every figure is a count, an
age or a duration, labelled by route pattern, method, status code, push
kind or disposition; never a device, patient or item id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite
from aiohttp import web
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from edgenode.http import edge_db
from edgenode.status import collect_status
from edgenode.store.database import fetch_all
from gateway.http import CLOCK
from observability.metrics import SIZE_BUCKETS, exposition, install
from shared.values import parse_timestamp

NAMESPACE = "phs_edge"
# The tablet pushes, by the field holding their records.
TRANSITIONS, ENCOUNTERS, ITEMS = "transitions", "encounters", "items"


@dataclass(frozen=True)
class PushMetrics:
    """What the edge answered tablets' pushes (the per-record status)."""

    sizes: Histogram
    records: Counter

    @classmethod
    def create(cls, app: web.Application) -> PushMetrics:
        metrics = install(app, NAMESPACE)
        return cls(
            sizes=metrics.histogram(
                "tablet_push_records",
                "Records per tablet push written, by push (transitions, encounters, items).",
                ("push",),
                buckets=SIZE_BUCKETS,
            ),
            records=metrics.counter(
                "tablet_records",
                "Records of tablet pushes, by push and the disposition the edge answered.",
                ("push", "disposition"),
            ),
        )


PUSH_METRICS = web.AppKey("push_metrics", PushMetrics)


def install_metrics(app: web.Application) -> None:
    app[PUSH_METRICS] = PushMetrics.create(app)


def record_push(request: web.Request, push: str, results: Sequence[dict[str, Any]]) -> None:
    """Count a push once its transaction has committed (a replay is not counted)."""
    metrics = request.app[PUSH_METRICS]
    metrics.sizes.labels(push).observe(len(results))
    for result in results:
        metrics.records.labels(push, str(result["status"])).inc()


async def metrics(request: web.Request) -> web.Response:
    async with edge_db(request).read() as conn:
        snapshot = await read_snapshot(conn, request.app[CLOCK]())
    return exposition(request, snapshot)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", documentation, value=value)


def _age(now: datetime, stamp: str | None) -> float | None:
    return (now - parse_timestamp(stamp, "stamp")).total_seconds() if stamp else None


async def read_snapshot(conn: aiosqlite.Connection, now: datetime) -> list[Metric]:
    """The figures read from the node's store at scrape time."""
    status = await collect_status(conn, now)
    seen = status["devicesSeen"]
    families: list[Metric] = [
        _gauge(
            "outbox_depth",
            "Records not yet answered by the gateway (transitions, reports, cohort drafts).",
            status["outboxDepth"],
        ),
        _gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest record not yet answered by the gateway; 0 when none.",
            status["oldestUnsentAgeSeconds"] or 0,
        ),
        _gauge(
            "open_batches",
            "Outbox batches sent or being sent, not yet answered.",
            status["openBatches"],
        ),
        _gauge("problems", "Records the gateway rejected.", status["problems"]),
        _gauge("refused_writes", "Tablet writes the edge refused itself.", status["refusedWrites"]),
        _gauge("paired_devices", "Tablets paired (active).", status["pairedDevices"]),
        _gauge("devices_seen", "Field devices ever seen on the LAN.", len(seen)),
        _gauge(
            "devices_present",
            "Field devices on the LAN now.",
            sum(1 for d in seen if d["present"]),
        ),
        _gauge(
            "devices_seen_paired",
            "Field devices seen on the LAN that are paired.",
            sum(1 for d in seen if d["paired"]),
        ),
        _gauge("reports_generated", "Facility reports generated.", status["reportsGenerated"]),
    ]
    unsent = GaugeMetricFamily(
        f"{NAMESPACE}_outbox_records", "Records not yet answered, by kind.", labels=("kind",)
    )
    unsent.add_metric(("outreach.transition",), status["unsentTransitions"])
    unsent.add_metric(("facility_report",), status["unsentReports"])
    unsent.add_metric(("cohort.draft",), status["unsentCohortDrafts"])
    families.append(unsent)
    for name, key, what in (
        ("last_forward_age_seconds", "lastForwardOk", "forward to the gateway"),
        ("last_pull_age_seconds", "lastPullOk", "pull from the gateway"),
    ):
        age = _age(now, status[key])
        if age is not None:  # absent until the first success
            families.append(_gauge(name, f"Time since the last successful {what}.", age))
    transitions = GaugeMetricFamily(
        f"{NAMESPACE}_transitions",
        "Transitions to forward, by the gateway's disposition (unanswered: not yet).",
        labels=("gateway_status",),
    )
    for disposition, count in sorted(status["gatewayDispositions"].items()):
        transitions.add_metric((disposition,), count)
    families.append(transitions)
    families.append(await _gateway_dispositions(conn))
    return families


async def _gateway_dispositions(conn: aiosqlite.Connection) -> GaugeMetricFamily:
    """Every forwarded record by kind and the gateway's answer to it."""
    family = GaugeMetricFamily(
        f"{NAMESPACE}_gateway_dispositions",
        "Records for the gateway, by kind and the gateway's disposition (unanswered: not yet).",
        labels=("kind", "gateway_status"),
    )
    rows = await fetch_all(
        conn,
        "SELECT 'outreach.transition', gateway_status, count(*) FROM transitions "
        "WHERE forward = 1 GROUP BY gateway_status "
        "UNION ALL SELECT 'facility_report', gateway_status, count(*) FROM reports "
        "GROUP BY gateway_status "
        "UNION ALL SELECT 'cohort.draft', gateway_status, count(*) FROM cohort_drafts "
        "GROUP BY gateway_status",
    )
    for kind, disposition, count in sorted(rows, key=lambda r: (r[0], r[1] or "")):
        family.add_metric((kind, disposition or "unanswered"), int(count))
    return family

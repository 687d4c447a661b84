"""``GET /metrics``: the gateway's Prometheus metrics (docs/metrics.md).

Unauthenticated, like ``/healthz``: every figure is a count or a duration,
labelled by route pattern, method, status code, item kind, disposition or
error code. No tenant, node, patient or item id is ever a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.schema import events, nodes
from gateway.http import database, now
from observability.metrics import SIZE_BUCKETS, ServiceMetrics, exposition, install
from shared.fsm import Transition
from shared.policy import policy_for
from shared.risk import RISK_OVERRIDE_KIND
from shared.values import parse_timestamp
from shared.wire import (
    COHORT_DRAFT_KIND,
    REPORT_KIND,
    TRANSITION_KIND,
    BatchItem,
    CohortDraft,
    OtherItem,
    ReportSubmission,
)

NAMESPACE = "phs_gateway"
NODE_STATUSES = ("active", "revoked")
UNKNOWN_KIND = "unknown"  # a kind no policy names: the node's own string is no label
_ITEM_KINDS = {
    Transition: TRANSITION_KIND,
    ReportSubmission: REPORT_KIND,
    CohortDraft: COHORT_DRAFT_KIND,
}


@dataclass(frozen=True)
class BatchMetrics:
    """What became of the edge nodes' batches (``POST …/sync/batches``)."""

    sizes: Histogram
    items: Counter
    rejected: Counter

    @classmethod
    def create(cls, metrics: ServiceMetrics) -> BatchMetrics:
        return cls(
            sizes=metrics.histogram(
                "batch_items", "Items per batch applied.", buckets=SIZE_BUCKETS
            ),
            items=metrics.counter(
                "batch_items_by_disposition",
                "Batch items applied, by kind and disposition (the item's status).",
                ("kind", "disposition"),
            ),
            rejected=metrics.counter(
                "batch_items_rejected",
                "Rejected batch items, by kind and code (report_conflict, unknown_kind…).",
                ("kind", "code"),
            ),
        )


BATCH_METRICS = web.AppKey("batch_metrics", BatchMetrics)


def install_metrics(app: web.Application) -> None:
    """The gateway's metrics: requests (``observability.metrics``) and batches."""
    app[BATCH_METRICS] = BatchMetrics.create(install(app, NAMESPACE))


def item_kind(item: BatchItem) -> str:
    """A batch item's kind as a label: one of the kinds the gateway knows."""
    if isinstance(item, OtherItem):
        known = item.kind == RISK_OVERRIDE_KIND or policy_for(item.kind) is not None
        return item.kind if known else UNKNOWN_KIND
    return _ITEM_KINDS[type(item)]


def record_batch(
    request: web.Request, items: Sequence[BatchItem], results: Sequence[dict[str, Any]]
) -> None:
    """Count a batch once its transaction has committed (a replay is not counted)."""
    metrics = request.app[BATCH_METRICS]
    metrics.sizes.observe(len(items))
    for item, result in zip(items, results, strict=True):
        kind, status = item_kind(item), str(result["status"])
        metrics.items.labels(kind, status).inc()
        if status == "rejected":
            metrics.rejected.labels(kind, str(result.get("code", ""))).inc()


async def metrics(request: web.Request) -> web.Response:
    async with database(request).read() as conn:
        snapshot = await read_snapshot(conn, now(request))
    return exposition(request, snapshot)


async def read_snapshot(conn: AsyncConnection, moment: datetime) -> list[Metric]:
    """The figures read from the store at scrape time (the same in every worker)."""
    pending = (
        await conn.execute(
            sa.select(sa.func.count(), sa.func.min(events.c.time)).where(
                events.c.published_at.is_(None)
            )
        )
    ).one()
    depth = GaugeMetricFamily(
        f"{NAMESPACE}_events_outbox_depth",
        "Events not yet published by the event relay (published_at unset).",
        value=int(pending[0]),
    )
    oldest = (
        (moment - parse_timestamp(pending[1], "events.time")).total_seconds() if pending[1] else 0.0
    )
    age = GaugeMetricFamily(
        f"{NAMESPACE}_events_outbox_oldest_age_seconds",
        "Age of the oldest event not yet published; 0 when none is pending.",
        value=max(0.0, oldest),
    )
    enrolled = GaugeMetricFamily(
        f"{NAMESPACE}_nodes", "Edge nodes enrolled, by status.", labels=("status",)
    )
    rows = await conn.execute(sa.select(nodes.c.status, sa.func.count()).group_by(nodes.c.status))
    counts = {str(status): int(count) for status, count in rows}
    for status in sorted({*NODE_STATUSES, *counts}):  # both statuses, even at 0
        enrolled.add_metric((status,), counts.get(status, 0))
    return [depth, age, enrolled]

"""Prometheus metrics both services share (docs/metrics.md).

Each app has its own :class:`ServiceMetrics`: a private ``CollectorRegistry``
(tests build many apps in one process, and the global default registry would
refuse the second app's metrics as duplicates). Two kinds of figures go out
on ``/metrics``:

* live counters and histograms, counted as requests happen (the request
  middleware below; batch sizes and dispositions in each service);
* figures read from the database when scraped (outbox depth, devices), which
  the service's ``/metrics`` handler passes to :func:`exposition` as metric
  families. Read at scrape time, they are true whichever process answers.

Several processes (``phs-gateway serve --workers N``). A scrape reaches one
worker at random, so live figures must be summed over all of them:
prometheus_client's multiprocess mode. The supervisor gives its workers a
directory in ``PROMETHEUS_MULTIPROC_DIR`` (:func:`multiprocess_directory`);
prometheus_client, imported with that variable set, keeps every value in a
memory-mapped file there per process, and a scrape merges the files of every
worker, the dead ones too (so a restarted worker's counts are not lost).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED_ROUTE = "unmatched"  # no route matched (404, 405): never the raw path
OTHER_METHOD = "other"
# Methods are labels as they are; any other token a client sends is "other",
# so a scanner cannot make up label values.
_METHODS = frozenset(
    {hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_POST, hdrs.METH_PUT}
    | {hdrs.METH_PATCH, hdrs.METH_DELETE, hdrs.METH_OPTIONS}
)
# Items per batch or push: up to the default limit of 5000 (max_batch_items).
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in files (``PROMETHEUS_MULTIPROC_DIR``
    was set when it was first imported, as in a worker of ``serve --workers``)."""
    return values.ValueClass is not values.MutexValue and bool(os.environ.get(MULTIPROC_ENV))


@dataclass
class ServiceMetrics:
    """The live metrics of one app, named ``<namespace>_…``."""

    namespace: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    multiprocess_dir: str | None = None

    def __post_init__(self) -> None:
        label = ("method", "route", "code")
        self.requests = self.counter("http_requests", "HTTP requests answered.", label)
        self.latency = self.histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer, in seconds.",
            label,
        )

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(f"{self.namespace}_{name}", documentation, labels, registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> Histogram:
        return Histogram(
            f"{self.namespace}_{name}",
            documentation,
            labels,
            registry=self.registry,
            buckets=buckets,
        )

    def live(self) -> Iterable[Metric]:
        """The live figures: this process's, or every worker's summed."""
        if self.multiprocess_dir is not None:
            # prometheus_client's multiprocess module has no type hints.
            collector = MultiProcessCollector(None, self.multiprocess_dir)  # type: ignore[no-untyped-call]
            merged: Iterable[Metric] = collector.collect()  # type: ignore[no-untyped-call]
            return merged
        return self.registry.collect()


METRICS = web.AppKey("metrics", ServiceMetrics)


def install(app: web.Application, namespace: str) -> ServiceMetrics:
    """Give ``app`` its metrics (``app[METRICS]``), shared by every process
    when prometheus_client is in multiprocess mode. The app must also list
    :func:`request_metrics` first among its middlewares."""
    # No ``…_created`` series: multiprocess mode has none either, and they double
    # the output for nothing Prometheus needs (it detects counter resets itself).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    directory = os.environ[MULTIPROC_ENV] if multiprocess_mode() else None
    metrics = ServiceMetrics(namespace, multiprocess_dir=directory)
    app[METRICS] = metrics
    return metrics


def route_label(request: web.Request) -> str:
    """The matched route's pattern (``/v1/outreach-items/{id}``): raw paths hold ids."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def request_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by method, route and status code.

    Listed before the problem middleware, so it sees the status of the
    problem documents that middleware renders (404, 405, 413…)."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # one the problem middleware left as it was
        _observe(request, exc.status, started)
        raise
    except asyncio.CancelledError:  # nobody is answered: nothing to count
        raise
    except Exception:
        _observe(request, 500, started)  # aiohttp answers 500
        raise
    _observe(request, response.status, started)
    return response


def _observe(request: web.Request, status: int, started: float) -> None:
    metrics = request.app[METRICS]
    method = request.method if request.method in _METHODS else OTHER_METHOD
    labels = (method, route_label(request), str(status))
    metrics.requests.labels(*labels).inc()
    metrics.latency.labels(*labels).observe(time.perf_counter() - started)


@dataclass(frozen=True)
class _Scrape:
    """One scrape's figures: the live ones, then those read for it."""

    live: Iterable[Metric]
    snapshot: Sequence[Metric]

    def collect(self) -> Iterator[Metric]:
        yield from self.live
        yield from self.snapshot


def exposition(request: web.Request, snapshot: Sequence[Metric] = ()) -> web.Response:
    """The ``/metrics`` answer: Prometheus text (or OpenMetrics, if asked for)
    of the app's live metrics and ``snapshot``, the families read for this scrape."""
    encode, content_type = choose_encoder(request.headers.get(hdrs.ACCEPT, ""))
    body = encode(_Scrape(request.app[METRICS].live(), snapshot))
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


@contextmanager
def multiprocess_directory() -> Iterator[Path]:
    """The directory for the workers' metric files, set in ``PROMETHEUS_MULTIPROC_DIR``
    while the block runs (processes started in it inherit it).

    An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used, emptied first (the
    files of an earlier run would count again); otherwise a new directory
    under the temporary directory, removed at the end."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="phs-gateway-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(path, ignore_errors=True)

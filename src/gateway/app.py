"""The gateway's aiohttp application: one route table, one error middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.auth import note_node_seen
from gateway.db.database import Database
from gateway.deident_jobs import DEIDENT_JOBS
from gateway.export_jobs import job_runner_context
from gateway.hmis_jobs import HMIS_JOBS
from gateway.http import CLOCK, DATABASE, LIMITS, PREFIX, SETTINGS, Clock, system_clock
from gateway.idempotency import WRITES, finish_writes, purge_expired
from gateway.memberships import daily_recompute
from gateway.middleware import problem_middleware
from gateway.openapi import OPENAPI_PATH
from gateway.resources import (
    admin_node_keys,
    admin_nodes,
    admin_page,
    analytics,
    batches,
    changes,
    cohorts,
    deident_exports,
    events,
    facility_reports,
    health,
    hmis_exports,
    metrics,
    node_keys,
    openapi,
    outreach_items,
    quality_snapshots,
    registry,
    risk_scores,
)
from gateway.serving_lock import ServingLock
from gateway.settings import Settings
from observability.metrics import request_metrics
from shared.encoding import Limits

log = logging.getLogger("gateway")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    r.add_get("/metrics", metrics.metrics)
    r.add_get(OPENAPI_PATH, openapi.read)
    r.add_get("/admin", admin_page.page)
    r.add_post("/admin/login", admin_page.login)
    r.add_post("/admin/logout", admin_page.logout)
    r.add_get("/admin/login", admin_page.to_page)
    r.add_get("/admin/logout", admin_page.to_page)
    r.add_get(f"{PREFIX}/admin/overview", admin_page.overview)
    r.add_post(f"{PREFIX}/admin/nodes", admin_nodes.enroll)
    r.add_get(f"{PREFIX}/admin/nodes/{{nodeId}}", admin_nodes.read)
    r.add_delete(f"{PREFIX}/admin/nodes/{{nodeId}}", admin_nodes.revoke)
    node_keys_path = f"{PREFIX}/admin/nodes/{{nodeId}}/keys"
    r.add_get(node_keys_path, admin_node_keys.list_keys)
    r.add_post(node_keys_path, admin_node_keys.add)
    r.add_post(f"{node_keys_path}/{{keyId}}/retire", admin_node_keys.retire)
    r.add_delete(f"{node_keys_path}/{{keyId}}", admin_node_keys.revoke)
    r.add_post(f"{PREFIX}/outreach-items", outreach_items.create)
    r.add_get(f"{PREFIX}/outreach-items/{{id}}", outreach_items.read)
    r.add_post(f"{PREFIX}/outreach-items/{{id}}/transitions", outreach_items.transition)
    r.add_post(f"{PREFIX}/sync/facility-reports", facility_reports.submit)
    r.add_post(f"{PREFIX}/sync/batches", batches.submit)
    r.add_post(f"{PREFIX}/sync/keys", node_keys.rotate)
    r.add_get(f"{PREFIX}/sync/changes", changes.read)
    r.add_get(f"{PREFIX}/analytics/facility-reports", analytics.read)
    r.add_get(f"{PREFIX}/events", events.read)
    cohort = f"{PREFIX}/cohorts/{{cohortId}}"
    r.add_post(f"{PREFIX}/cohorts", cohorts.create)
    r.add_get(f"{PREFIX}/cohorts", cohorts.list_)
    r.add_get(cohort, cohorts.read)
    for method in ("PUT", "PATCH", "DELETE"):
        r.add_route(method, cohort, cohorts.change_cohort)
    r.add_post(f"{cohort}/drafts", cohorts.draft)
    r.add_get(f"{cohort}/versions/{{version}}", cohorts.read_version)
    for method in ("PUT", "PATCH", "POST", "DELETE"):
        r.add_route(method, f"{cohort}/versions/{{version}}", cohorts.change_version)
    r.add_get(f"{cohort}/members", cohorts.members)
    for method in ("PUT", "PATCH", "POST", "DELETE"):
        r.add_route(method, f"{cohort}/members", cohorts.write_members)
    r.add_put(f"{PREFIX}/registry/entries/{{id}}", registry.put)
    r.add_delete(f"{PREFIX}/registry/entries/{{id}}", registry.delete)
    r.add_get(f"{PREFIX}/registry/entries/{{id}}", registry.read)
    r.add_get(f"{PREFIX}/registry/entries", registry.list_)
    r.add_get(f"{PREFIX}/risk-scores/{{entryId}}", risk_scores.read)
    for method in ("PUT", "PATCH", "DELETE"):
        r.add_route(method, f"{PREFIX}/risk-scores/{{entryId}}", risk_scores.refuse_computed)
    r.add_post(f"{PREFIX}/risk-scores/{{entryId}}/overrides", risk_scores.override)
    snapshot = f"{PREFIX}/quality-snapshots/{{id}}"
    r.add_post(f"{PREFIX}/quality-snapshots", quality_snapshots.create)
    r.add_get(f"{PREFIX}/quality-snapshots", quality_snapshots.list_)
    r.add_get(snapshot, quality_snapshots.read)
    for method in ("PUT", "PATCH", "DELETE"):
        r.add_route(method, snapshot, quality_snapshots.refuse_change)
    r.add_post(f"{PREFIX}/hmis-exports", hmis_exports.create)
    r.add_get(f"{PREFIX}/hmis-exports/{{id}}", hmis_exports.read)
    r.add_get(f"{PREFIX}/hmis-exports/{{id}}/document", hmis_exports.document)
    r.add_post(f"{PREFIX}/deident-exports", deident_exports.create)
    r.add_get(f"{PREFIX}/deident-exports/{{id}}", deident_exports.read)
    r.add_get(f"{PREFIX}/deident-exports/{{id}}/download", deident_exports.download)


def create_app(settings: Settings, clock: Clock = system_clock) -> web.Application:
    # aiohttp refuses larger bodies itself; we translate its 413 into our problem.
    # request_metrics comes first (outermost): it counts the problems rendered.
    app = web.Application(
        middlewares=[request_metrics, problem_middleware], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[WRITES] = set()
    app[LIMITS] = Limits(
        max_body_bytes=settings.max_body_bytes,
        max_depth=settings.max_nesting_depth,
        max_items=settings.max_batch_items,
    )
    metrics.install_metrics(app)
    app.on_response_prepare.append(note_node_seen)  # last seen, clock offset (gateway.auth)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(job_runner_context((HMIS_JOBS, DEIDENT_JOBS)))
    app.cleanup_ctx.append(_purge_expired_keys)
    app.cleanup_ctx.append(daily_recompute)  # cohorts whose members change with the date
    add_routes(app)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    database = Database.for_settings(app[SETTINGS])
    await database.migrate()
    # Before serving: claims a killed gateway left in flight are released (serving_lock).
    serving = ServingLock(database)
    await serving.acquire()
    app[DATABASE] = database
    yield
    await finish_writes(app)
    await serving.release()
    await database.close()


async def _purge_expired_keys(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            purged = await purge_expired(app[DATABASE], app[CLOCK]())
            if purged:
                log.info("purged %d expired idempotency keys", purged)
            await asyncio.sleep(app[SETTINGS].purge_interval_seconds)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

"""``edgenode run``: the tablet API plus the forwarder, puller and report scheduler.

Background loops live in the app's cleanup context, so they start with the
server and stop (cancelled, awaited) with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import aiohttp
from aiohttp import web

from edgenode.gateway_client import GatewayClient
from edgenode.http import EDGE_DB, EDGE_SETTINGS, IN_FLIGHT, NODE_KEY, OUTBOX_WAKE
from edgenode.intake import OUTREACH_INTAKE, OutreachIntake
from edgenode.keys import NodeKeys
from edgenode.lan import LISTEN_PORT, ListenPort, lan_presence
from edgenode.outbox import get_state
from edgenode.reports import generate_report
from edgenode.resources import devices, encounters, items, metrics, outreach, server_data, status
from edgenode.rotation import KeyRotation
from edgenode.scheduler import due_periods
from edgenode.settings import EdgeSettings
from edgenode.store.database import EdgeDatabase
from edgenode.sync import Forwarder, Puller
from gateway.http import CLOCK, LIMITS, PREFIX, Clock, system_clock
from gateway.middleware import problem_middleware
from observability.logs import RequestLog, lifecycle
from observability.metrics import request_metrics
from observability.sdnotify import Notifier, watchdog_running
from shared.encoding import Limits
from shared.periods import zone
from shared.signing import KeyPair
from shared.values import format_timestamp, parse_timestamp

log = logging.getLogger("edgenode")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", status.page)
    r.add_get("/status", status.status_document)
    r.add_get("/healthz", status.healthz)
    r.add_get("/metrics", metrics.metrics)
    r.add_post(f"{PREFIX}/devices/pair", devices.pair)
    r.add_post(f"{PREFIX}/sync/outreach", outreach.push)
    r.add_post(f"{PREFIX}/sync/encounters", encounters.push)
    r.add_get(f"{PREFIX}/outreach-items", outreach.list_items)
    r.add_post(f"{PREFIX}/sync/items", items.push)
    r.add_get(f"{PREFIX}/server-data", server_data.list_records)


def create_app(
    settings: EdgeSettings,
    keypair: KeyPair,
    clock: Clock = system_clock,
    background: bool = True,
    discovery: bool | None = None,
) -> web.Application:
    """The edge app. ``background``: the forwarder, puller and scheduler loops.
    ``discovery`` (default: as ``background``): LAN presence (``edgenode.lan``)
    when the setting ``discovery`` is on too; it advertises once
    ``app[LISTEN_PORT]`` is set to the bound port (``serve`` does)."""
    # request_metrics comes first (outermost): it counts the problems rendered.
    app = web.Application(
        middlewares=[request_metrics, problem_middleware], client_max_size=settings.max_body_bytes
    )
    app[EDGE_SETTINGS] = settings
    app[NODE_KEY] = keypair
    app[CLOCK] = clock
    app[LIMITS] = Limits(max_body_bytes=settings.max_body_bytes, max_items=settings.max_push_items)
    app[IN_FLIGHT] = set()
    app[OUTBOX_WAKE] = asyncio.Event()
    app[LISTEN_PORT] = ListenPort()
    metrics.install_metrics(app)
    app.cleanup_ctx.append(_database)
    if background:
        app.cleanup_ctx.append(_background_loops)
    if (background if discovery is None else discovery) and settings.discovery:
        app.cleanup_ctx.append(lan_presence)
    add_routes(app)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly (``edgenode run``).

    Like ``web.run_app``, except that the bound port is known to the app
    (``LISTEN_PORT``) once the server listens, so ``--port 0`` works and the
    LAN advert carries the port tablets can really reach.

    Under systemd (``Type=notify``, observability.sdnotify): READY=1 once the
    store is migrated and the port listens, WATCHDOG=1 while the store answers,
    STOPPING=1 on the way out."""
    notifier = Notifier.from_environ()
    runner = web.AppRunner(app, handle_signals=False, access_log_class=RequestLog)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1])
        app[LISTEN_PORT].set(bound)
        lifecycle("edgenode.serve").info("======== Running on http://%s:%d ========", host, bound)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        notifier.ready(f"serving tablets on port {bound}")
        async with watchdog_running(notifier, lambda: _store_answers(app[EDGE_DB])):
            await stop.wait()
        notifier.stopping()
    finally:
        await runner.cleanup()


async def _store_answers(db: EdgeDatabase) -> None:
    """The watchdog's check: a trivial read (a wedged store stops the pings)."""
    async with db.read() as conn:
        await conn.execute("SELECT 1")


async def _database(app: web.Application) -> AsyncIterator[None]:
    app[EDGE_DB] = await EdgeDatabase(app[EDGE_SETTINGS].database_path).open()
    app[OUTREACH_INTAKE] = OutreachIntake(
        app[EDGE_DB], app[CLOCK], app[IN_FLIGHT], app[EDGE_SETTINGS].max_push_items
    )
    async with app[EDGE_DB].write() as conn:
        # The node's first start bounds how far the report schedule catches up.
        await conn.execute(
            "INSERT OR IGNORE INTO sync_state (key, value) VALUES (?, ?)",
            ("initialised_at", format_timestamp(app[CLOCK]())),
        )
    yield
    await app[EDGE_DB].close()


async def _loop(name: str, step: Callable[[], Awaitable[float]]) -> None:
    """Run ``step`` forever; it returns how long to wait. Errors are logged, not fatal."""
    while True:
        try:
            delay = await step()
        except Exception:
            log.exception("%s failed; trying again shortly", name)
            delay = 5.0
        await asyncio.sleep(delay)


async def _background_loops(app: web.Application) -> AsyncIterator[None]:
    settings, db, clock = app[EDGE_SETTINGS], app[EDGE_DB], app[CLOCK]
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        keys = NodeKeys(settings.data_path, settings.node_id, app[NODE_KEY])
        current = keys.current()
        client = GatewayClient(
            session, settings.gateway_url, settings.node_id, current.keypair, key_id=current.key_id
        )
        rotation = KeyRotation(client, keys)
        forwarder = Forwarder(db, client, settings, clock, random.Random())
        puller = Puller(db, client, clock)
        wake = app[OUTBOX_WAKE]

        async def forward() -> float:
            wake.clear()
            try:  # a rotation under way, or one the gateway asked for
                await rotation.resume()
            except OSError:  # its key files: logged; records still go with the current key
                log.exception("key rotation failed; trying again next cycle")
            summary = await forwarder.forward_once()
            if summary.waiting_until:  # backing off: tablet pushes do not hurry a retry
                retry_at = parse_timestamp(summary.waiting_until, "waiting_until")
                return max(0.2, (retry_at - clock()).total_seconds())
            with contextlib.suppress(TimeoutError):  # idle: a tablet push wakes us early
                await asyncio.wait_for(wake.wait(), settings.forward_interval_seconds)
            return 0.0

        async def pull() -> float:
            await puller.pull_once()
            return float(settings.pull_interval_seconds)

        async def schedule() -> float:
            if settings.report_schedule:
                # Signed with the key of the day: the gateway takes reports a
                # retired key signed only if made before it retired.
                await generate_due_reports(db, settings, keys.current().keypair, clock)
            await purge_idempotency_keys(db, settings, clock)
            return float(settings.schedule_interval_seconds)

        tasks = [
            asyncio.create_task(_loop(n, s))
            for n, s in (("forwarder", forward), ("puller", pull), ("scheduler", schedule))
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def generate_due_reports(
    db: EdgeDatabase, settings: EdgeSettings, keypair: KeyPair, clock: Clock
) -> int:
    """Make every due report that does not exist yet; returns how many were made."""
    now = clock()
    tz = zone(settings.time_zone)
    async with db.read() as conn:
        started = await get_state(conn, "initialised_at")
    since = parse_timestamp(started, "initialised_at") if started else None
    created = 0
    for period in due_periods(
        now,
        tz,
        settings.daily_report_after_minutes,
        settings.weekly_report_weekday,
        since,
        settings.report_catch_up_periods,
    ):
        for facility in settings.facility_ids:
            async with db.write() as conn:
                report = await generate_report(
                    conn,
                    tenant_id=settings.tenant_id,
                    node_id=settings.node_id,
                    keypair=keypair,
                    facility_id=facility,
                    period=period,
                    tz=tz,
                    now=now,
                )
            if report.created:
                created += 1
                log.info("generated %s report %s for %s", period.type, period.key, facility)
    return created


async def purge_idempotency_keys(db: EdgeDatabase, settings: EdgeSettings, clock: Clock) -> int:
    cutoff = clock() - timedelta(seconds=settings.idempotency_ttl_seconds)
    async with db.write() as conn:
        cursor = await conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?", (format_timestamp(cutoff),)
        )
    return cursor.rowcount or 0

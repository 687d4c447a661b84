"""Export jobs run inside the gateway process, and their downloads audited.

Both kinds (``hmis_export_job``, ``deident_export_job``) are rows created
``queued`` by a request; one ``JobRunner`` per process takes them oldest
first, marks each ``running``, computes it and stores how it ended. A request
that creates a job wakes the runner; it also looks for queued jobs every
``POLL_SECONDS`` (jobs created by another gateway process on a shared
PostgreSQL).

Several processes. A runner claims a job with a conditional update, so two
runners never take the same one; the job then carries the runner's id and a
lease (``LEASE_SECONDS``) that the runner renews while the job runs. A job
found ``running`` with its lease run out was cut off by a crash of its runner
(a graceful stop puts its job back in the queue, below): whichever runner
finds it fails it with reason ``interrupted``, never silently re-run, since
the crash may have been the job's own doing; the admin creates a new one. A
live runner's job is never touched by another. A graceful stop waits
``STOP_GRACE_SECONDS`` for the running job, then puts it back to ``queued``:
nothing of it was stored, and the next start runs it.

Downloads. ``audited_result`` reads a job and records the attempt in
``export_downloads`` in one transaction, whatever its outcome: served (200,
with the size and sha256 of what was served) or refused (the status and code).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.db.database import Database
from gateway.db.schema import export_downloads
from gateway.http import CLOCK, DATABASE, SETTINGS, Clock
from gateway.registry import Role, TokenPrincipal
from gateway.settings import Settings
from shared.audit import Outcome
from shared.errors import ExportNotDownloadable, NotFound, PhsError, RoleForbidden
from shared.values import format_timestamp, is_identifier

log = logging.getLogger("gateway.exports")

POLL_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0
LEASE_SECONDS = 60.0  # renewed every third of it while a job runs

QUEUED = "queued"
RUNNING = "running"
FAILED = "failed"


class JobFailed(Exception):
    """Why a job cannot produce its result; stored as the job's reason."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.reason: dict[str, Any] = {"code": code, "message": message, **extra}


@dataclass(frozen=True)
class Finish:
    """How a job ended: its final state and the columns to store with it."""

    state: str
    values: Mapping[str, Any] = field(default_factory=dict)


RunFn = Callable[[Database, Any, Settings], Awaitable[Finish]]


@dataclass(frozen=True)
class JobKind:
    kind: str  # the policy table's name: hmis_export_job | deident_export_job
    table: sa.Table
    run: RunFn  # computes one job (its row); raises JobFailed


def read_json_file(path: str, what: str, setting: str) -> Any:
    """A configured JSON (or, by its ``.toml`` name, TOML) file, or ``JobFailed``."""
    if not path:
        raise JobFailed(
            f"{what}_not_configured",
            f"the gateway setting {setting} is empty: set it to the {what.replace('_', ' ')} file",
        )
    try:
        raw = Path(path).read_bytes()
        if path.endswith(".toml"):
            return tomllib.loads(raw.decode("utf-8"))
        return json.loads(raw)
    except OSError as err:
        raise JobFailed(
            f"{what}_unreadable", f"cannot read {setting} {path}: {err.strerror or err}"
        ) from err
    except (ValueError, tomllib.TOMLDecodeError) as err:  # JSON, TOML and UTF-8 errors
        raise JobFailed(f"{what}_invalid", f"{setting} {path} is not valid: {err}") from err


class JobRunner:
    """Runs queued export jobs one at a time (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        clock: Clock,
        kinds: Sequence[JobKind],
        *,
        poll_seconds: float = POLL_SECONDS,
        stop_grace_seconds: float = STOP_GRACE_SECONDS,
    ) -> None:
        self._database = database
        self._settings = settings
        self._clock = clock
        self._kinds = tuple(kinds)
        self._poll_seconds = poll_seconds
        self._stop_grace_seconds = stop_grace_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self.runner_id = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"

    def _lease_until(self) -> str:
        return format_timestamp(self._clock() + timedelta(seconds=LEASE_SECONDS))

    def wake(self) -> None:
        self._wake.set()

    async def recover(self) -> int:
        """Fail the running jobs whose runner's lease ran out; returns how many."""
        moment = format_timestamp(self._clock())
        reason = {
            "code": "interrupted",
            "message": "the gateway stopped while the job ran; create a new job",
        }
        failed = 0
        async with self._database.write() as conn:
            for kind in self._kinds:
                table = kind.table
                result = await conn.execute(
                    table.update()
                    .where(
                        table.c.state == RUNNING,
                        sa.or_(table.c.lease_until.is_(None), table.c.lease_until < moment),
                    )
                    .values(state=FAILED, finished_at=moment, reasons=[reason])
                )
                failed += int(result.rowcount or 0)
        if failed:
            log.warning("%d export job(s) were cut off by a stop and are failed", failed)
        return failed

    async def run_pending(self) -> int:
        """Run queued jobs until none is left; returns how many ran."""
        ran = 0
        while not self._stopping:
            claimed = await self._claim()
            if claimed is None:
                break
            await self._run(*claimed)
            ran += 1
        return ran

    async def serve(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.recover()  # any runner's job cut off by a crash, each round
                await self.run_pending()
            except Exception:  # the store is down, say: try again later
                log.exception("export job runner")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Let the running job finish (up to the grace period), then stop."""
        self._stopping = True
        self.wake()
        try:
            await asyncio.wait_for(asyncio.shield(task), self._stop_grace_seconds)
        except TimeoutError:
            task.cancel()  # the job goes back to queued (``_run``)
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _claim(self) -> tuple[JobKind, Any] | None:
        async with self._database.write() as conn:
            for kind in self._kinds:
                table = kind.table
                row = (
                    await conn.execute(
                        sa.select(table)
                        .where(table.c.state == QUEUED)
                        .order_by(table.c.created_at, table.c.id)
                        .limit(1)
                    )
                ).first()
                if row is None:
                    continue
                started = format_timestamp(self._clock())
                taken = await conn.execute(
                    table.update()
                    .where(table.c.id == row.id, table.c.state == QUEUED)
                    .values(
                        state=RUNNING,
                        started_at=started,
                        runner_id=self.runner_id,
                        lease_until=self._lease_until(),
                    )
                )
                if taken.rowcount == 1:  # another process may have taken it first
                    return kind, row
        return None

    async def _run(self, kind: JobKind, row: Any) -> None:
        renewer = asyncio.create_task(self._renew(kind, row.id))
        try:
            await self._compute(kind, row)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew(self, kind: JobKind, job_id: str) -> None:
        """Keep the lease of a running job: other runners leave it alone."""
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await self._set(kind, job_id, {"lease_until": self._lease_until()})
            except Exception:  # the store is down: the next renewal tries again
                log.warning("renewing the lease of export job %s failed", job_id)

    async def _compute(self, kind: JobKind, row: Any) -> None:
        try:
            finish = await kind.run(self._database, row, self._settings)
        except JobFailed as err:
            finish = Finish(FAILED, {"reasons": [err.reason]})
        except asyncio.CancelledError:
            await self._set(
                kind, row.id, {"state": QUEUED, "started_at": None, "lease_until": None}
            )
            raise
        except PhsError as err:
            finish = Finish(FAILED, {"reasons": [{"code": err.code, "message": err.detail}]})
        except Exception:
            log.exception("export job %s failed", row.id)
            reason = {"code": "internal_error", "message": "unexpected error; see the gateway log"}
            finish = Finish(FAILED, {"reasons": [reason]})
        finished = format_timestamp(self._clock())
        await self._set(
            kind, row.id, {"state": finish.state, "finished_at": finished, **finish.values}
        )
        log.info("export job %s %s", row.id, finish.state)

    async def _set(self, kind: JobKind, job_id: str, values: Mapping[str, Any]) -> None:
        async with self._database.write() as conn:
            await conn.execute(
                kind.table.update()
                .where(
                    kind.table.c.id == job_id,
                    kind.table.c.state == RUNNING,
                    kind.table.c.runner_id == self.runner_id,  # ours, not failed since
                )
                .values(**values)
            )


RUNNER: web.AppKey[JobRunner] = web.AppKey("export_runner")


def job_runner_context(
    kinds: Sequence[JobKind],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup context that starts and stops the runner."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        runner = JobRunner(app[DATABASE], app[SETTINGS], app[CLOCK], kinds)
        app[RUNNER] = runner
        task = asyncio.create_task(runner.serve())
        yield
        await runner.stop(task)

    return context


def wake_runner(app: web.Application) -> None:
    runner = app.get(RUNNER)
    if runner is not None:
        runner.wake()


@dataclass(frozen=True)
class Download:
    body: bytes
    media_type: str
    sha256: str


async def audited_result(
    conn: AsyncConnection,
    *,
    principal: TokenPrincipal,
    kind: JobKind,
    job_id: str,
    downloadable: str,
    moment: datetime,
) -> Download:
    """The result of a job in ``downloadable`` state, for an admin; any other
    answer is raised. Either way the attempt is recorded in ``export_downloads``
    (in ``conn``'s transaction: commit it before raising or serving)."""
    table = kind.table
    row = None
    error: PhsError | None = None
    if principal.role is not Role.ADMIN:
        error = RoleForbidden(f"role {principal.role} may not download exports; needs admin")
    else:
        row = (
            await conn.execute(
                sa.select(table).where(
                    table.c.id == job_id, table.c.tenant_id == principal.tenant_id
                )
            )
        ).first()
        if row is None:
            error = NotFound(f"no {kind.kind} {job_id}")
        elif row.state != downloadable or row.result is None:
            error = ExportNotDownloadable(
                f"{kind.kind} {job_id} is {row.state}; only a {downloadable} job can be downloaded",
                state=row.state,
            )
    await conn.execute(
        export_downloads.insert().values(
            tenant_id=principal.tenant_id,
            job_kind=kind.kind,
            job_id=job_id,
            principal=principal.principal,
            downloaded_at=format_timestamp(moment),
            status=200 if error is None else error.status,
            code=None if error is None else error.code,
            result_sha256=None if row is None or error is not None else row.result_sha256,
            bytes=None if row is None or error is not None else len(row.result),
        )
    )
    outcome = Outcome.OK if error is None else audit.outcome_of(error) or Outcome.REFUSED
    entry = audit.Actor.of_token(principal).entry(f"{kind.kind}.download", job_id, outcome, moment)
    await audit.append(conn, [entry], moment)  # last: the chain head's lock until commit
    if error is not None:
        raise error
    assert row is not None
    return Download(bytes(row.result), row.result_media_type, row.result_sha256)


async def serve_download(
    request: web.Request, principal: TokenPrincipal, kind: JobKind, downloadable: str, name: str
) -> web.Response:
    """``GET …/{id}/…``: the stored bytes, exactly as hashed; every attempt audited."""
    job_id = request.match_info["id"]
    if not is_identifier(job_id):
        raise NotFound(f"no {kind.kind} {job_id[:40]!r}")  # cannot name a job: not recorded
    database = request.app[DATABASE]
    moment = request.app[CLOCK]()
    refusal: PhsError | None = None
    async with database.write() as conn:
        try:
            download = await audited_result(
                conn,
                principal=principal,
                kind=kind,
                job_id=job_id,
                downloadable=downloadable,
                moment=moment,
            )
        except PhsError as err:
            refusal = err  # the audit row commits with the transaction
    if refusal is not None:
        raise refusal
    return web.Response(
        body=download.body,
        content_type=download.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{job_id}-{name}.json"',
            "X-Content-SHA256": download.sha256,
        },
    )

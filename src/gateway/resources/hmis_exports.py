"""``…/hmis-exports``: DHIS2 ``dataValueSets`` export jobs (admin tokens).

- ``POST`` ``{periodType, periodKey}`` → 202 the ``queued`` job (``Location``
  names it); the gateway runs it in the background. Other roles: 403
  ``policy_server_authoritative`` (recorded in ``refused_writes``).
- ``GET /{id}``: the job: ``state``, ``skipped`` (succeeded), ``error`` (failed).
- ``GET /{id}/document``: the document of a ``succeeded`` job (409
  ``export_not_downloadable`` with the ``state`` otherwise); every attempt,
  served or refused, is recorded in ``export_downloads``.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.auth import authenticate_token
from gateway.export_jobs import serve_download, wake_runner
from gateway.hmis_jobs import HMIS_JOBS, KIND, SUCCEEDED, create_job, get_job
from gateway.http import PREFIX, database, now, read_document, respond
from gateway.idempotency import Reply, run_write
from gateway.refusals import authenticate_writer
from gateway.registry import Role
from shared.audit import Outcome
from shared.periods import parse_period
from shared.values import only_fields, required

REQUEST_FIELDS = frozenset({"periodType", "periodKey"})


async def create(request: web.Request) -> web.Response:
    principal = await authenticate_writer(request, KIND, None, Role.ADMIN)
    body, doc = await read_document(request)
    only_fields(doc, REQUEST_FIELDS, "HMIS export request")
    period = parse_period(required(doc, "periodType"), required(doc, "periodKey"))

    async def write(conn: AsyncConnection) -> Reply:
        job = await create_job(conn, principal.tenant_id, period, principal.principal, now(request))
        row = audit.Actor.of_token(principal).entry(
            "hmis_export_job.create", job["id"], Outcome.OK, now(request)
        )
        await audit.append(conn, [row], now(request))
        return Reply(202, job, {"Location": f"{PREFIX}/hmis-exports/{job['id']}"})

    response = await run_write(request, principal.principal, body, write)
    wake_runner(request.app)
    return response


async def read(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, Role.ADMIN)
    async with database(request).read() as conn:
        job = await get_job(conn, principal.tenant_id, request.match_info["id"])
    return respond(request, 200, job)


async def document(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, *Role)  # refused roles are audited too
    return await serve_download(request, principal, HMIS_JOBS, SUCCEEDED, "dataValueSets")

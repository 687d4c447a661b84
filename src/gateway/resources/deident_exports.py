"""``…/deident-exports``: de-identified registry extracts (admin tokens).

- ``POST`` ``{cohortId?, asOf?, k?}`` → 202 the ``queued`` job (``Location``
  names it); the gateway runs it in the background. Other roles: 403
  ``policy_server_authoritative`` (recorded in ``refused_writes``).
- ``GET /{id}``: the job: ``state``, ``summary`` and ``reasons``.
- ``GET /{id}/download``: the extract of a ``released`` job (409
  ``export_not_downloadable`` with the ``state`` otherwise: a ``blocked`` job
  has nothing to download); every attempt, served or refused, is recorded in
  ``export_downloads``.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.auth import authenticate_token
from gateway.deident_jobs import DEIDENT_JOBS, KIND, RELEASED, create_job, get_job, parse_request
from gateway.export_jobs import serve_download, wake_runner
from gateway.http import PREFIX, database, now, read_document, respond, settings
from gateway.idempotency import Reply, run_write
from gateway.refusals import authenticate_writer
from gateway.registry import Role
from shared.audit import Outcome


async def create(request: web.Request) -> web.Response:
    principal = await authenticate_writer(request, KIND, None, Role.ADMIN)
    body, doc = await read_document(request)
    moment = now(request)
    params = parse_request(doc, settings(request), moment.date())

    async def write(conn: AsyncConnection) -> Reply:
        job = await create_job(conn, principal.tenant_id, params, principal.principal, moment)
        row = audit.Actor.of_token(principal).entry(
            "deident_export_job.create", job["id"], Outcome.OK, now(request)
        )
        await audit.append(conn, [row], now(request))
        return Reply(202, job, {"Location": f"{PREFIX}/deident-exports/{job['id']}"})

    response = await run_write(request, principal.principal, body, write)
    wake_runner(request.app)
    return response


async def read(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, Role.ADMIN)
    async with database(request).read() as conn:
        job = await get_job(conn, principal.tenant_id, request.match_info["id"])
    return respond(request, 200, job)


async def download(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, *Role)  # refused roles are audited too
    return await serve_download(request, principal, DEIDENT_JOBS, RELEASED, "extract")

"""``…/quality-snapshots``: ask the server for a period's snapshot; read them.

- ``POST`` (admin token) ``{periodType, periodKey}`` → 201 the new snapshot,
  or 200 the stored one when a fresh computation is identical; 409
  ``immutable`` when it is not. Other roles: 403 ``policy_server_authoritative``.
- ``GET ?periodType=&from=&to=&limit=`` and ``GET /{id}`` (admin or analyst).
- ``PUT``, ``PATCH``, ``DELETE /{id}`` (any token): 409 ``immutable`` — or,
  for a snapshot that does not exist, 403 ``policy_server_authoritative`` (a
  client cannot create one either). Every refusal is kept in ``refused_writes``.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.auth import authenticate_token
from gateway.db.schema import refused_writes
from gateway.http import database, now, path_with_query, query_int, read_document, respond
from gateway.idempotency import Reply, run_write
from gateway.quality import (
    KIND,
    create_snapshot,
    get_snapshot_row,
    list_snapshots,
    period_filter,
    snapshot_period,
    snapshot_to_wire,
)
from gateway.refusals import authenticate_writer
from gateway.registry import Role
from shared.errors import Immutable, NotFound, PhsError, PolicyServerAuthoritative
from shared.periods import parse_period
from shared.values import format_timestamp, is_identifier, only_fields, required

REQUEST_FIELDS = frozenset({"periodType", "periodKey"})


async def create(request: web.Request) -> web.Response:
    principal = await authenticate_writer(request, KIND, None, Role.ADMIN)
    body, doc = await read_document(request)
    only_fields(doc, REQUEST_FIELDS, "quality snapshot request")
    period = parse_period(required(doc, "periodType"), required(doc, "periodKey"))

    async def write(conn: AsyncConnection) -> Reply:
        made = await create_snapshot(
            conn, principal.tenant_id, period, principal.principal, now(request)
        )
        return Reply(201 if made.created else 200, made.snapshot)

    return await run_write(request, principal.principal, body, write)


async def list_(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, Role.ADMIN, Role.ANALYST)
    q = request.query
    conditions = period_filter(q.get("periodType"), q.get("from"), q.get("to"))
    limit = query_int(request, "limit", 1000, 1, 10000)
    async with database(request).read() as conn:
        snapshots = await list_snapshots(conn, principal.tenant_id, conditions, limit)
    return respond(request, 200, {"snapshots": snapshots})


async def read(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, Role.ADMIN, Role.ANALYST)
    period = snapshot_period(request.match_info["id"])
    async with database(request).read() as conn:
        row = await get_snapshot_row(conn, principal.tenant_id, period)
    if row is None:
        raise NotFound(f"no quality snapshot {period.key}")
    return respond(request, 200, snapshot_to_wire(row._mapping))


async def refuse_change(request: web.Request) -> web.Response:
    """PUT, PATCH or DELETE of a snapshot: refused, and the attempt recorded."""
    principal = await authenticate_token(request, *Role)
    snapshot_id = request.match_info["id"]
    moment = now(request)
    async with database(request).write() as conn:
        try:
            row = await get_snapshot_row(conn, principal.tenant_id, snapshot_period(snapshot_id))
        except NotFound:
            row = None
        error: PhsError
        if row is None:
            error = PolicyServerAuthoritative(
                f"{KIND} is server-authoritative: ask for one with POST …/quality-snapshots"
            )
        else:
            error = Immutable(
                f"quality snapshot {snapshot_id} is immutable; it cannot be changed or deleted",
                snapshotId=snapshot_id,
            )
        await conn.execute(
            refused_writes.insert().values(
                tenant_id=principal.tenant_id,
                principal=principal.principal,
                method=request.method,
                path=path_with_query(request)[:1000],
                kind=KIND,
                record_id=snapshot_id if is_identifier(snapshot_id) else None,
                code=error.code,
                detail=error.detail,
                received_at=format_timestamp(moment),
            )
        )
    raise error

"""Refused writes to server-authoritative aggregates: recorded, then answered.

Every client write the policy table refuses (CONTRACT section 3) is kept in
``refused_writes`` and answered with ``policy_server_authoritative``: a batch
item in the batch's own transaction, a direct request (which fails with 403,
so nothing of its own commits) in a short transaction of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.auth import authenticate_token
from gateway.db.schema import refused_writes
from gateway.http import database, now, path_with_query
from gateway.registry import Role, TokenPrincipal
from shared.audit import Outcome
from shared.errors import ItemCode, PolicyServerAuthoritative
from shared.values import format_timestamp

CODE = ItemCode.POLICY_SERVER_AUTHORITATIVE.value
MAX_DETAIL = 1000


@dataclass(frozen=True)
class RefusedWrite:
    """What was refused: the aggregate's kind and the record it named."""

    tenant_id: str
    principal: str  # token:<id> | node:<id>
    kind: str
    record_id: str | None
    detail: str
    method: str | None = None  # a direct request
    path: str | None = None
    batch_id: str | None = None  # a batch item
    item_index: int | None = None
    code: str = CODE  # or the code of another refusal of a batch item (kept as well)


async def record_refused(conn: AsyncConnection, refused: RefusedWrite, moment: datetime) -> None:
    await conn.execute(
        refused_writes.insert().values(
            tenant_id=refused.tenant_id,
            principal=refused.principal,
            method=refused.method,
            path=None if refused.path is None else refused.path[:1000],
            batch_id=refused.batch_id,
            item_index=refused.item_index,
            kind=refused.kind,
            record_id=None if refused.record_id is None else refused.record_id[:128],
            code=refused.code,
            detail=refused.detail[:MAX_DETAIL],
            received_at=format_timestamp(moment),
        )
    )


async def authenticate_writer(
    request: web.Request, kind: str, record_id: str | None, *writers: Role
) -> TokenPrincipal:
    """The bearer token's principal if its role may write ``kind``.

    Any other role is refused with 403 ``policy_server_authoritative``, and
    the attempt is recorded first (in its own transaction: the request fails).
    """
    principal = await authenticate_token(request, *Role)
    if principal.role in writers:
        return principal
    detail = f"{kind} is server-authoritative: role {principal.role} may not write it" + (
        f" (only {' or '.join(writers)})" if writers else " (only the server computes it)"
    )
    await _refuse(request, principal, kind, record_id, detail)


async def refuse_write(request: web.Request, kind: str, record_id: str | None) -> NoReturn:
    """A write no client may make (a computed aggregate): recorded, then 403."""
    await authenticate_writer(request, kind, record_id)
    raise AssertionError("unreachable: no role may write " + kind)


async def _refuse(
    request: web.Request,
    principal: TokenPrincipal,
    kind: str,
    record_id: str | None,
    detail: str,
) -> NoReturn:
    refused = RefusedWrite(
        tenant_id=principal.tenant_id,
        principal=principal.principal,
        kind=kind,
        record_id=record_id,
        detail=detail,
        method=request.method,
        path=path_with_query(request),
    )
    entry = audit.Actor.of_token(principal).entry(
        f"{kind}.write", record_id, Outcome.REFUSED, now(request)
    )
    async with database(request).write() as conn:
        await record_refused(conn, refused, now(request))
        await audit.append(conn, [entry], now(request))
    raise PolicyServerAuthoritative(detail)

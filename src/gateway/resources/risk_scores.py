"""``…/risk-scores/{entryId}``: the effective risk score with its source and
audit trail (admin or analyst), and admin overrides (``risk_score.override``).

An override's actor is the admin token's identity (``token:<id>``). Every
attempt is audited, refused ones included; a token of another role is
answered 403 ``forbidden`` after its attempt is audited.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.auth import authenticate_token
from gateway.http import database, now, read_document, respond
from gateway.idempotency import Reply, run_write
from gateway.refusals import refuse_write
from gateway.registry import Role
from gateway.risk_scores import Origin, audit_refusal, read_risk, submit_override
from shared.audit import Outcome
from shared.errors import PhsError, RoleForbidden, ValidationFailed
from shared.values import only_fields

OVERRIDE_FIELDS = frozenset({"id", "value", "reason", "occurredAt"})


async def read(request: web.Request) -> web.Response:
    entry_id = request.match_info["entryId"]
    action = "risk_score.read"
    principal = await audit.authenticate_reader(request, action, entry_id, Role.ADMIN, Role.ANALYST)
    actor = audit.Actor.of_token(principal)
    async with audit.audited(request, actor, action, entry_id) as access:
        async with database(request).read() as conn:
            risk = await read_risk(conn, principal.tenant_id, entry_id)
        access.facility = risk.get("facilityId")
    return respond(request, 200, risk)


async def refuse_computed(request: web.Request) -> web.Response:
    """Any write to a computed score: only the server computes it (refused, recorded)."""
    await refuse_write(request, "risk_score.computed", request.match_info["entryId"])


async def override(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, *Role)
    body, doc = await read_document(request)
    # The path names the entry and the token the actor: the body may not.
    attempt: dict[str, Any] = {
        **doc,
        "entryId": request.match_info["entryId"],
        "actorId": principal.principal,
    }
    origin = Origin(principal.principal)
    refusal: PhsError | None = None
    if principal.role is not Role.ADMIN:
        refusal = RoleForbidden(f"role {principal.role} may not override risk scores; needs admin")
    else:
        try:
            only_fields(doc, OVERRIDE_FIELDS, "risk override")
        except ValidationFailed as err:
            refusal = err
    actor = audit.Actor.of_token(principal)
    entry_id = attempt["entryId"]
    if refusal is not None:
        # Audited in a transaction of its own: the request fails.
        async with database(request).write() as conn:
            await audit_refusal(conn, principal.tenant_id, attempt, origin, refusal, now(request))
            row = actor.entry("risk_score.override", entry_id, Outcome.REFUSED, now(request))
            await audit.append(conn, [row], now(request))
        raise refusal

    async def write(conn: AsyncConnection) -> Reply:
        result, error = await submit_override(
            conn, principal.tenant_id, attempt, origin, now(request)
        )
        facility = (result.get("risk") or {}).get("facilityId")
        row = actor.entry("risk_score.override", entry_id, result["status"], now(request), facility)
        await audit.append(conn, [row], now(request))
        return Reply(200, result) if error is None else Reply.from_error(error)

    return await run_write(request, principal.principal, body, write)

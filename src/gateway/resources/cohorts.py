"""``…/cohorts``: population cohorts, their immutable versions and members.

Admins create cohorts and post drafts (new versions); any other role's write
is refused with 403 ``policy_server_authoritative`` and recorded, as is every
write to a cohort's members (computed by the server alone). A version never
changes: PUT, PATCH, POST or DELETE on it answers 409 ``immutable``, and so
do PUT, PATCH and DELETE on the cohort itself (a change is a new draft).
Admins and analysts of the tenant read.
"""

from __future__ import annotations

import re

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.auth import authenticate_token
from gateway.cohorts import (
    Author,
    create_cohort,
    get_cohort,
    get_members,
    get_version,
    list_cohorts,
    parse_draft,
    parse_new_cohort,
    submit_draft,
)
from gateway.http import database, now, query_int, read_document, respond
from gateway.idempotency import Reply, run_write
from gateway.refusals import authenticate_writer
from gateway.registry import Role
from shared.errors import Immutable, NotFound
from shared.values import identifier

KIND = "population_cohort"
MEMBERSHIP_KIND = "cohort_membership"
DEFAULT_MEMBERS = 1000
MAX_MEMBERS = 5000
_VERSION_RE = re.compile(r"[1-9][0-9]{0,8}")
READERS = (Role.ADMIN, Role.ANALYST)


async def create(request: web.Request) -> web.Response:
    principal = await authenticate_writer(request, KIND, None, Role.ADMIN)
    body, doc = await read_document(request)
    new = parse_new_cohort(doc)
    author = Author(principal.principal, "admin")

    async def write(conn: AsyncConnection) -> Reply:
        return Reply(201, await create_cohort(conn, principal.tenant_id, new, author, now(request)))

    return await run_write(request, principal.principal, body, write)


async def draft(request: web.Request) -> web.Response:
    """A new version (201), or the latest when it already says the same (200)."""
    cohort_id = identifier(request.match_info["cohortId"], "cohortId")
    principal = await authenticate_writer(request, KIND, cohort_id, Role.ADMIN)
    body, doc = await read_document(request)
    definition = parse_draft(doc)
    author = Author(principal.principal, "admin")

    async def write(conn: AsyncConnection) -> Reply:
        outcome = await submit_draft(
            conn, principal.tenant_id, cohort_id, definition, author, now(request)
        )
        return Reply(201 if outcome.created else 200, outcome.version)

    return await run_write(request, principal.principal, body, write)


async def list_(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, *READERS)
    async with database(request).read() as conn:
        found = await list_cohorts(conn, principal.tenant_id)
    return respond(request, 200, {"cohorts": found})


async def read(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, *READERS)
    async with database(request).read() as conn:
        cohort = await get_cohort(conn, principal.tenant_id, request.match_info["cohortId"])
    return respond(request, 200, cohort)


async def read_version(request: web.Request) -> web.Response:
    principal = await authenticate_token(request, *READERS)
    version = _version(request)
    async with database(request).read() as conn:
        found = await get_version(
            conn, principal.tenant_id, request.match_info["cohortId"], version
        )
    return respond(request, 200, found)


async def members(request: web.Request) -> web.Response:
    action = "cohort.members.read"
    cohort_id = request.match_info["cohortId"]
    principal = await audit.authenticate_reader(request, action, f"cohort:{cohort_id}", *READERS)
    q = request.query
    facility = identifier(q["facilityId"], "facilityId") if q.get("facilityId") else None
    after = identifier(q["after"], "after") if q.get("after") else None
    limit = query_int(request, "limit", DEFAULT_MEMBERS, 1, MAX_MEMBERS)
    actor = audit.Actor.of_token(principal)
    # The record: the cohort, then the page's entries once read.
    async with audit.audited(request, actor, action, f"cohort:{cohort_id}", facility) as access:
        async with database(request).read() as conn:
            page = await get_members(
                conn,
                principal.tenant_id,
                cohort_id,
                facility_id=facility,
                after=after,
                limit=limit,
            )
        ids = [member["entryId"] for member in page["members"]]
        if ids:
            access.record = f"cohort:{cohort_id}/{page['version']}:{ids[0]}..{ids[-1]}"
    return respond(request, 200, page)


async def change_version(request: web.Request) -> web.Response:
    """Any write to a stored version: 409 ``immutable`` (404 if there is none)."""
    principal = await authenticate_token(request, *Role)
    version = _version(request)
    cohort_id = request.match_info["cohortId"]
    async with database(request).read() as conn:
        await get_version(conn, principal.tenant_id, cohort_id, version)
    raise Immutable(
        f"version {version} of cohort {cohort_id} is immutable;"
        f" post a draft to …/cohorts/{cohort_id}/drafts for a new version"
    )


async def change_cohort(request: web.Request) -> web.Response:
    """PUT, PATCH or DELETE on a cohort: 409 ``immutable`` (404 if there is none)."""
    principal = await authenticate_token(request, *Role)
    cohort_id = request.match_info["cohortId"]
    async with database(request).read() as conn:
        await get_cohort(conn, principal.tenant_id, cohort_id)
    raise Immutable(
        f"cohort {cohort_id} changes only by new versions:"
        f" post a draft to …/cohorts/{cohort_id}/drafts; versions are never deleted"
    )


async def write_members(request: web.Request) -> web.Response:
    """Memberships are computed by the server: every client write is refused."""
    await authenticate_writer(request, MEMBERSHIP_KIND, request.match_info["cohortId"])
    raise AssertionError("authenticate_writer refuses every role here")  # pragma: no cover


def _version(request: web.Request) -> int:
    raw = request.match_info["version"]
    if _VERSION_RE.fullmatch(raw) is None:
        raise NotFound(f"no version {raw}: versions are numbered 1, 2, 3, …")
    return int(raw)

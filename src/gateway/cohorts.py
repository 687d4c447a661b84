"""Population cohorts (``population_cohort``): named, versioned definitions.

Admins create a cohort (version 1); admins (``…/drafts``) and edge nodes
(``cohort.draft`` batch items) propose new definitions, which the server
validates (``shared.cohorts``) and stores as the next version. The server
alone numbers versions, under a lock on the cohort row (``FOR UPDATE`` on
PostgreSQL; SQLite has one writer), so concurrent drafts get 2, 3, 4, …
with no gap and no repeat. Versions are insert-only: never changed, never
deleted. A draft whose canonical form equals the latest version's stores
nothing and answers that version.

Each new version writes a tenant-wide change-feed row (``population_cohort``,
id the cohort id, the version's document as data) and recomputes the
cohort's memberships (``gateway.memberships``), in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import memberships
from gateway.db.schema import cohort_versions, cohorts
from gateway.feed import Aggregate, Op, record_change
from shared.cohorts import CohortDefinition, canonical_json, parse_cohort, to_wire
from shared.errors import AlreadyExists, CohortInvalid, ItemCode, NotFound, ValidationFailed
from shared.values import format_timestamp, identifier, only_fields, required, text
from shared.wire import CohortDraft

COHORT_FIELDS = frozenset({"cohortId", "name", "definition"})
DRAFT_FIELDS = frozenset({"definition"})
MAX_NAME = 200


@dataclass(frozen=True)
class NewCohort:
    cohort_id: str
    name: str
    definition: CohortDefinition


@dataclass(frozen=True)
class Author:
    """Who stored a version: ``token:<id>`` or ``node:<id>``, and how it came
    (``admin``: the admin API; ``node``: a batch item; ``device``: a batch
    item a tablet wrote)."""

    principal: str
    source: str


@dataclass(frozen=True)
class DraftOutcome:
    created: bool  # False: the latest version already says this (or a re-sent draft)
    version: dict[str, Any]  # the version document the answer carries


def parse_new_cohort(doc: Mapping[str, Any]) -> NewCohort:
    """``{cohortId, name, definition}``; a bad definition raises ``CohortInvalid``."""
    only_fields(doc, COHORT_FIELDS, "cohort")
    name = text(required(doc, "name"), "name", MAX_NAME)
    if not name.strip():
        raise ValidationFailed("name must not be blank", field="name")
    return NewCohort(
        cohort_id=identifier(required(doc, "cohortId"), "cohortId"),
        name=name,
        definition=parse_cohort(required(doc, "definition")),
    )


def parse_draft(doc: Mapping[str, Any]) -> CohortDefinition:
    """``{definition}``; a bad definition raises ``CohortInvalid``."""
    only_fields(doc, DRAFT_FIELDS, "cohort draft")
    return parse_cohort(required(doc, "definition"))


def version_to_wire(name: str, row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "cohortId": row["cohort_id"],
        "name": name,
        "version": row["version"],
        "definition": json.loads(row["canonical"]),
        "createdAt": row["created_at"],
    }


def _version_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "version": row["version"],
        "createdAt": row["created_at"],
        "createdBy": row["created_by"],
        "source": row["source"],
    }


# Writing.


async def create_cohort(
    conn: AsyncConnection, tenant_id: str, new: NewCohort, author: Author, now: datetime
) -> dict[str, Any]:
    """Store a new cohort and its version 1; ``AlreadyExists`` if the id is taken."""
    stamp = format_timestamp(now)
    try:
        async with conn.begin_nested():
            await conn.execute(
                cohorts.insert().values(
                    tenant_id=tenant_id,
                    cohort_id=new.cohort_id,
                    name=new.name,
                    latest_version=1,
                    created_by=author.principal,
                    created_at=stamp,
                    updated_at=stamp,
                )
            )
    except IntegrityError as err:
        raise AlreadyExists(f"cohort {new.cohort_id} already exists") from err
    return await _store_version(
        conn, tenant_id, new.cohort_id, new.name, 1, new.definition, author, None, now
    )


async def submit_draft(
    conn: AsyncConnection,
    tenant_id: str,
    cohort_id: str,
    definition: CohortDefinition,
    author: Author,
    now: datetime,
    draft_id: str | None = None,
) -> DraftOutcome:
    """Store ``definition`` as the cohort's next version, unless the latest
    version already says the same, or ``draft_id`` was stored before (a
    re-sent batch item): then nothing is written and that version answers."""
    locked = (
        await conn.execute(
            sa.select(cohorts.c.name, cohorts.c.latest_version)
            .where(cohorts.c.tenant_id == tenant_id, cohorts.c.cohort_id == cohort_id)
            .with_for_update()  # PostgreSQL: drafts of one cohort are numbered in turn
        )
    ).first()
    if locked is None:
        raise NotFound(f"no cohort {cohort_id}")
    if draft_id is not None:
        seen = await _version_row(conn, tenant_id, cohort_id, draft_id=draft_id)
        if seen is not None:
            return DraftOutcome(False, version_to_wire(locked.name, seen))
    latest = await _version_row(conn, tenant_id, cohort_id, version=locked.latest_version)
    assert latest is not None  # a cohort is stored with its version 1
    if latest["canonical"] == canonical_json(definition):
        return DraftOutcome(False, version_to_wire(locked.name, latest))
    version = locked.latest_version + 1
    await conn.execute(
        cohorts.update()
        .where(cohorts.c.tenant_id == tenant_id, cohorts.c.cohort_id == cohort_id)
        .values(latest_version=version, updated_at=format_timestamp(now))
    )
    stored = await _store_version(
        conn, tenant_id, cohort_id, locked.name, version, definition, author, draft_id, now
    )
    return DraftOutcome(True, stored)


async def _store_version(
    conn: AsyncConnection,
    tenant_id: str,
    cohort_id: str,
    name: str,
    version: int,
    definition: CohortDefinition,
    author: Author,
    draft_id: str | None,
    now: datetime,
) -> dict[str, Any]:
    """Insert the version, announce it, recompute the cohort's members."""
    row: dict[str, Any] = {
        "tenant_id": tenant_id,
        "cohort_id": cohort_id,
        "version": version,
        "definition": to_wire(definition),
        "canonical": canonical_json(definition),
        "created_by": author.principal,
        "source": author.source,
        "draft_id": draft_id,
        "created_at": format_timestamp(now),
    }
    await conn.execute(cohort_versions.insert().values(**row))
    document = version_to_wire(name, row)
    await record_change(
        conn,
        tenant_id=tenant_id,
        facility_id=None,  # tenant-wide: every node of the tenant learns the rule
        aggregate=Aggregate.POPULATION_COHORT,
        entity_id=cohort_id,
        op=Op.UPSERT,
        data=document,
        stamp=row["created_at"],
    )
    await memberships.recompute_cohort(conn, tenant_id, cohort_id, version, definition, now)
    return document


async def apply_draft_item(
    conn: AsyncConnection, tenant_id: str, node_id: str, item: CohortDraft, now: datetime
) -> dict[str, Any]:
    """A ``cohort.draft`` batch item's result: ``applied`` (a new version),
    ``duplicate`` (the latest version, or the one this item id stored before),
    or ``rejected`` (``cohort_invalid`` with ``errors``, or ``not_found``)."""
    result: dict[str, Any] = {"id": item.id, "cohortId": item.cohort_id}
    try:
        definition = parse_cohort(item.definition)
        author = Author(f"node:{node_id}", "node" if item.device_id is None else "device")
        outcome = await submit_draft(
            conn, tenant_id, item.cohort_id, definition, author, now, draft_id=item.id
        )
    except CohortInvalid as err:
        return {
            **result,
            "status": "rejected",
            "code": ItemCode.COHORT_INVALID.value,
            "detail": err.detail,
            "errors": err.errors,
        }
    except NotFound as err:
        detail = f"{err.detail}: only admins create cohorts"
        return {**result, "status": "rejected", "code": ItemCode.NOT_FOUND.value, "detail": detail}
    status = "applied" if outcome.created else "duplicate"
    return {**result, "status": status, "version": outcome.version["version"]}


# Reading.


async def _version_row(
    conn: AsyncConnection,
    tenant_id: str,
    cohort_id: str,
    *,
    version: int | None = None,
    draft_id: str | None = None,
) -> dict[str, Any] | None:
    query = sa.select(cohort_versions).where(
        cohort_versions.c.tenant_id == tenant_id, cohort_versions.c.cohort_id == cohort_id
    )
    if version is not None:
        query = query.where(cohort_versions.c.version == version)
    if draft_id is not None:
        query = query.where(cohort_versions.c.draft_id == draft_id)
    row = (await conn.execute(query.order_by(cohort_versions.c.version).limit(1))).first()
    return None if row is None else dict(row._mapping)


async def _cohort_row(conn: AsyncConnection, tenant_id: str, cohort_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(
            sa.select(cohorts).where(
                cohorts.c.tenant_id == tenant_id, cohorts.c.cohort_id == cohort_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"no cohort {cohort_id}")
    return dict(row._mapping)


async def get_cohort(conn: AsyncConnection, tenant_id: str, cohort_id: str) -> dict[str, Any]:
    """The cohort at its latest version, with the list of its versions."""
    cohort = await _cohort_row(conn, tenant_id, cohort_id)
    rows = (
        await conn.execute(
            sa.select(cohort_versions)
            .where(
                cohort_versions.c.tenant_id == tenant_id, cohort_versions.c.cohort_id == cohort_id
            )
            .order_by(cohort_versions.c.version)
        )
    ).all()
    versions = [dict(r._mapping) for r in rows]
    latest = next(v for v in versions if v["version"] == cohort["latest_version"])
    return {
        **version_to_wire(cohort["name"], latest),
        "updatedAt": cohort["updated_at"],
        "versions": [_version_summary(v) for v in versions],
    }


async def list_cohorts(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    """Every cohort of the tenant at its latest version, in id order."""
    rows = (
        await conn.execute(
            sa.select(cohorts.c.name, cohorts.c.updated_at, cohort_versions)
            .join(
                cohort_versions,
                sa.and_(
                    cohort_versions.c.tenant_id == cohorts.c.tenant_id,
                    cohort_versions.c.cohort_id == cohorts.c.cohort_id,
                    cohort_versions.c.version == cohorts.c.latest_version,
                ),
            )
            .where(cohorts.c.tenant_id == tenant_id)
            .order_by(cohorts.c.cohort_id)
        )
    ).all()
    return [{**version_to_wire(r.name, dict(r._mapping)), "updatedAt": r.updated_at} for r in rows]


async def get_version(
    conn: AsyncConnection, tenant_id: str, cohort_id: str, version: int
) -> dict[str, Any]:
    cohort = await _cohort_row(conn, tenant_id, cohort_id)
    row = await _version_row(conn, tenant_id, cohort_id, version=version)
    if row is None:
        raise NotFound(f"cohort {cohort_id} has no version {version}")
    return {**version_to_wire(cohort["name"], row), **_version_summary(row)}


async def get_members(
    conn: AsyncConnection,
    tenant_id: str,
    cohort_id: str,
    *,
    facility_id: str | None,
    after: str | None,
    limit: int,
) -> dict[str, Any]:
    cohort = await _cohort_row(conn, tenant_id, cohort_id)
    members, more = await memberships.list_members(
        conn, tenant_id, cohort_id, facility_id=facility_id, after=after, limit=limit
    )
    return {
        "cohortId": cohort_id,
        "version": cohort["latest_version"],
        "members": members,
        "cursor": members[-1]["entryId"] if members else after,
        "more": more,
    }

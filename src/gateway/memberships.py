"""Cohort memberships (``cohort_membership``): computed by the server alone.

A cohort's members are the tenant's live registry entries that its *latest*
version selects on the evaluation date (the UTC day of the app clock), with
``shared.cohorts.evaluate``. Only the latest version's members are stored.
They are brought up to date in the transaction of the change that moves them:

- a new cohort version (``recompute_cohort``): every live entry is evaluated
  and the stored rows of that cohort, of any version, are made to match;
- a registry entry upserted or deleted (``recompute_entry``, or
  ``recompute_entries`` for many): that entry is evaluated against the latest
  version of every cohort of its tenant (incremental);
- a new day (``recompute_dated``): the cohorts whose membership depends on
  the date alone (ages, relative dates) are recomputed in full.

Every membership gained or lost writes a change-feed row: id
``<cohortId>/<entryId>`` ("/" never occurs in an identifier), scoped to the
entry's facility, ``upsert`` with ``{cohortId, version, entryId, facilityId,
since}`` or ``delete`` with the same members (``version``: the latest version,
under which the entry is no longer a member). A member kept by a new version
is announced again with the new version; one whose entry moves facility is a
delete for the old facility's nodes and an upsert for the new one's.

On PostgreSQL the two kinds of recomputation never interleave within a
tenant: a cohort's (a new version, the daily one) holds the tenant's
membership lock exclusively, an entry's holds it shared (a transaction-scoped
advisory lock, ``hold_tenant``), each taken before its first read, so
whichever commits second sees the other's writes. A lock on the cohort rows
(``FOR SHARE``) was not enough: under READ COMMITTED the statement that
waited for a new version re-checked the cohort row but joined it to the
version rows of its old snapshot, and evaluated the entry against no version
at all; nor does a row lock see a cohort being created. (SQLite has one
writer; no lock is taken there.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import risk_scores
from gateway.db.database import DAY_CHANGE_LOCK_KEY, one_at_a_time
from gateway.db.schema import (
    changes,
    cohort_memberships,
    cohort_versions,
    cohorts,
    registry_entries,
)
from gateway.feed import Aggregate, Op
from gateway.http import CLOCK, DATABASE
from shared.cohorts import CohortDefinition, depends_on_today, evaluate, parse_cohort
from shared.registry import RegistryEntry, parse_registry_entry
from shared.values import format_timestamp

_CHUNK = 500  # ids per IN (...) query
DAY_CHECK_SECONDS = 60.0  # how often the daily recomputation looks at the clock

log = logging.getLogger("gateway.memberships")


@dataclass(frozen=True)
class LatestVersion:
    """A cohort's latest version, as memberships are computed from it."""

    cohort_id: str
    version: int
    definition: CohortDefinition


@dataclass(frozen=True)
class _Held:
    """A stored membership row."""

    cohort_id: str
    version: int
    entry_id: str
    facility_id: str
    since: str


@dataclass(frozen=True)
class Delta:
    """What one recomputation changed: memberships gained and lost."""

    added: int = 0
    removed: int = 0

    def __add__(self, other: Delta) -> Delta:
        return Delta(self.added + other.added, self.removed + other.removed)


def membership_id(cohort_id: str, entry_id: str) -> str:
    return f"{cohort_id}/{entry_id}"


def membership_to_wire(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "cohortId": row["cohort_id"],
        "version": row["version"],
        "entryId": row["entry_id"],
        "facilityId": row["facility_id"],
        "since": row["since"],
    }


def evaluation_date(moment: datetime) -> date:
    """The day cohorts are evaluated on: the UTC date of ``moment``."""
    return moment.astimezone(UTC).date()


@functools.lru_cache(maxsize=256)
def stored_definition(canonical: str) -> CohortDefinition:
    """A stored version's definition, parsed once per canonical text."""
    return parse_cohort(json.loads(canonical))


# Reading.


def _latest_query(tenant_id: str) -> sa.Select[Any]:
    return (
        sa.select(cohorts.c.cohort_id, cohorts.c.latest_version, cohort_versions.c.canonical)
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


# The advisory lock space of the tenants' membership locks (two int4 keys:
# this class, hashtext(tenant)); apart from the gateway's int8 keys.
MEMBERSHIP_LOCK_CLASS = 0x5048_4D42  # "PHMB"


async def hold_tenant(conn: AsyncConnection, tenant_id: str, *, exclusive: bool) -> None:
    """Take ``tenant_id``'s membership lock until the transaction ends: shared to
    recompute entries, exclusive to recompute a cohort (module docstring)."""
    if conn.dialect.name == "sqlite":
        return  # one writer at a time already
    take = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await conn.execute(
        sa.text(f"SELECT {take}(:lock_class, hashtext(:tenant))"),
        {"lock_class": MEMBERSHIP_LOCK_CLASS, "tenant": tenant_id},
    )


async def latest_versions(conn: AsyncConnection, tenant_id: str) -> list[LatestVersion]:
    """Every cohort of the tenant at its latest version, in id order."""
    rows = (await conn.execute(_latest_query(tenant_id))).all()
    return [
        LatestVersion(r.cohort_id, r.latest_version, stored_definition(r.canonical)) for r in rows
    ]


async def live_entries(conn: AsyncConnection, tenant_id: str) -> list[RegistryEntry]:
    """Every live (not deleted) registry entry of the tenant."""
    rows = await conn.execute(
        sa.select(registry_entries.c.data).where(
            registry_entries.c.tenant_id == tenant_id, registry_entries.c.deleted_at.is_(None)
        )
    )
    return [parse_registry_entry(r.data) for r in rows]


def _held(row: Any) -> _Held:
    return _Held(row.cohort_id, row.version, row.entry_id, row.facility_id, row.since)


async def _held_for_cohort(conn: AsyncConnection, tenant_id: str, cohort_id: str) -> list[_Held]:
    rows = await conn.execute(
        sa.select(cohort_memberships).where(
            cohort_memberships.c.tenant_id == tenant_id,
            cohort_memberships.c.cohort_id == cohort_id,
        )
    )
    return [_held(r) for r in rows]


async def _held_for_entries(
    conn: AsyncConnection, tenant_id: str, entry_ids: Sequence[str]
) -> list[_Held]:
    found: list[_Held] = []
    for start in range(0, len(entry_ids), _CHUNK):
        rows = await conn.execute(
            sa.select(cohort_memberships).where(
                cohort_memberships.c.tenant_id == tenant_id,
                cohort_memberships.c.entry_id.in_(entry_ids[start : start + _CHUNK]),
            )
        )
        found += [_held(r) for r in rows]
    return found


# Planning: pure. ``wanted`` maps (cohortId, entryId) to the (version,
# facilityId) the membership should have; a key that ``held`` has and
# ``wanted`` lacks is a membership lost.


@dataclass
class _Plan:
    delete_rows: list[dict[str, Any]]
    insert_rows: list[dict[str, Any]]
    feed: list[dict[str, Any]]  # change rows, in the order they are announced
    delta: Delta


def _plan(
    tenant_id: str,
    held: Iterable[_Held],
    wanted: Mapping[tuple[str, str], tuple[int, str]],
    latest: Mapping[str, int],
    stamp: str,
) -> _Plan:
    """The rows to delete and insert, and the feed rows announcing them."""
    by_key: dict[tuple[str, str], list[_Held]] = {}
    for row in held:
        by_key.setdefault((row.cohort_id, row.entry_id), []).append(row)
    plan = _Plan([], [], [], Delta())
    for key in sorted(set(wanted) | set(by_key)):
        cohort_id, entry_id = key
        rows = by_key.get(key, [])
        want = wanted.get(key)
        if want is not None and any((r.version, r.facility_id) == want for r in rows):
            stale = [r for r in rows if (r.version, r.facility_id) != want]
            plan.delete_rows += [_key_of(tenant_id, r) for r in stale]  # leftovers only
            continue
        plan.delete_rows += [_key_of(tenant_id, r) for r in rows]
        if want is not None:
            version = want[0]
        else:
            version = latest.get(cohort_id, max(r.version for r in rows))
        kept = {want[1]} if want is not None else set()
        # Nodes of a facility the entry is no longer a member in must forget it
        # (it left the cohort, or moved to another facility: an upsert follows).
        for facility in sorted({r.facility_id for r in rows} - kept):
            was = {
                "cohort_id": cohort_id,
                "version": version,
                "entry_id": entry_id,
                "facility_id": facility,
                "since": min(r.since for r in rows if r.facility_id == facility),
            }
            plan.feed.append(_change(tenant_id, facility, Op.DELETE, was, stamp))
        if want is None:
            plan.delta += Delta(removed=1)
            continue
        new = {
            "tenant_id": tenant_id,
            "cohort_id": cohort_id,
            "version": version,
            "entry_id": entry_id,
            "facility_id": want[1],
            # Still a member (of a newer version, or from another facility): since then.
            "since": min((r.since for r in rows), default=stamp),
        }
        plan.insert_rows.append(new)
        plan.feed.append(_change(tenant_id, want[1], Op.UPSERT, new, stamp))
        if not rows:
            plan.delta += Delta(added=1)
    return plan


def _key_of(tenant_id: str, row: _Held) -> dict[str, Any]:
    return {
        "b_tenant": tenant_id,
        "b_cohort": row.cohort_id,
        "b_version": row.version,
        "b_entry": row.entry_id,
    }


def _change(
    tenant_id: str, facility_id: str, op: Op, row: Mapping[str, Any], stamp: str
) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "facility_id": facility_id,
        "aggregate": Aggregate.COHORT_MEMBERSHIP.value,
        "entity_id": membership_id(row["cohort_id"], row["entry_id"]),
        "op": op.value,
        "data": membership_to_wire(row),
        "committed_at": stamp,
    }


_DELETE = cohort_memberships.delete().where(
    cohort_memberships.c.tenant_id == sa.bindparam("b_tenant"),
    cohort_memberships.c.cohort_id == sa.bindparam("b_cohort"),
    cohort_memberships.c.version == sa.bindparam("b_version"),
    cohort_memberships.c.entry_id == sa.bindparam("b_entry"),
)


async def _apply(conn: AsyncConnection, plan: _Plan) -> Delta:
    # Deletes first: a re-keyed membership is deleted, then inserted again.
    if plan.delete_rows:
        await conn.execute(_DELETE, plan.delete_rows)
    if plan.insert_rows:
        await conn.execute(cohort_memberships.insert(), plan.insert_rows)
    if plan.feed:
        await conn.execute(changes.insert(), plan.feed)
    return plan.delta


# Recomputing.


async def recompute_cohort(
    conn: AsyncConnection,
    tenant_id: str,
    cohort_id: str,
    version: int,
    definition: CohortDefinition,
    moment: datetime,
    entries: Sequence[RegistryEntry] | None = None,
) -> Delta:
    """Make the stored members of ``cohort_id`` those of ``version`` (its new
    latest) over every live entry of the tenant. The caller holds the cohort
    row (``FOR UPDATE``) and has stored ``version``; ``entries``, when given, were
    read under the tenant's exclusive membership lock."""
    if entries is None:
        await hold_tenant(conn, tenant_id, exclusive=True)
        entries = await live_entries(conn, tenant_id)
    today = evaluation_date(moment)
    wanted = {
        (cohort_id, e.id): (version, e.facility_id)
        for e in entries
        if evaluate(definition, e, today)
    }
    held = await _held_for_cohort(conn, tenant_id, cohort_id)
    stamp = format_timestamp(moment)
    return await _apply(conn, _plan(tenant_id, held, wanted, {cohort_id: version}, stamp))


async def recompute_entries(
    conn: AsyncConnection,
    tenant_id: str,
    entries: Mapping[str, RegistryEntry | None],
    moment: datetime,
) -> Delta:
    """Bring the memberships of these entries (id → entry, None: deleted) in
    line with the latest version of every cohort of the tenant."""
    if not entries:
        return Delta()
    await hold_tenant(conn, tenant_id, exclusive=False)
    latest = await latest_versions(conn, tenant_id)
    today = evaluation_date(moment)
    wanted: dict[tuple[str, str], tuple[int, str]] = {}
    for entry_id, entry in entries.items():
        if entry is None:
            continue
        for cohort in latest:
            if evaluate(cohort.definition, entry, today):
                wanted[(cohort.cohort_id, entry_id)] = (cohort.version, entry.facility_id)
    held = await _held_for_entries(conn, tenant_id, sorted(entries))
    versions = {c.cohort_id: c.version for c in latest}
    stamp = format_timestamp(moment)
    return await _apply(conn, _plan(tenant_id, held, wanted, versions, stamp))


async def recompute_entry(
    conn: AsyncConnection,
    tenant_id: str,
    entry_id: str,
    entry: RegistryEntry | None,
    moment: datetime,
) -> Delta:
    """Bring ``entry_id``'s memberships in line with every cohort's latest
    version (``entry`` None: the entry was deleted, it belongs to none)."""
    return await recompute_entries(conn, tenant_id, {entry_id: entry}, moment)


async def recompute_dated(conn: AsyncConnection, moment: datetime) -> Delta:
    """Recompute every cohort, of every tenant, whose latest version depends
    on the evaluation date (run when the day changes)."""
    tenants = (await conn.execute(sa.select(cohorts.c.tenant_id).distinct())).scalars().all()
    delta = Delta()
    for tenant_id in sorted(tenants):
        await hold_tenant(conn, tenant_id, exclusive=True)
        dated = [
            c for c in await latest_versions(conn, tenant_id) if depends_on_today(c.definition)
        ]
        if not dated:
            continue
        entries = await live_entries(conn, tenant_id)
        for cohort in dated:
            locked = (
                await conn.execute(
                    sa.select(cohorts.c.latest_version)
                    .where(
                        cohorts.c.tenant_id == tenant_id, cohorts.c.cohort_id == cohort.cohort_id
                    )
                    .with_for_update()
                )
            ).scalar_one()
            if locked != cohort.version:
                continue  # a new version came in meanwhile, and recomputed it
            delta += await recompute_cohort(
                conn,
                tenant_id,
                cohort.cohort_id,
                cohort.version,
                cohort.definition,
                moment,
                entries,
            )
    return delta


async def list_members(
    conn: AsyncConnection,
    tenant_id: str,
    cohort_id: str,
    *,
    facility_id: str | None,
    after: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], bool]:
    """Stored members of a cohort in entry id order, a page at a time, and
    whether more follow."""
    conditions = [
        cohort_memberships.c.tenant_id == tenant_id,
        cohort_memberships.c.cohort_id == cohort_id,
    ]
    if facility_id is not None:
        conditions.append(cohort_memberships.c.facility_id == facility_id)
    if after is not None:
        conditions.append(cohort_memberships.c.entry_id > after)
    rows = (
        await conn.execute(
            sa.select(cohort_memberships)
            .where(*conditions)
            .order_by(cohort_memberships.c.entry_id)
            .limit(limit + 1)
        )
    ).all()
    return [membership_to_wire(dict(r._mapping)) for r in rows[:limit]], len(rows) > limit


async def daily_recompute(app: web.Application) -> AsyncIterator[None]:
    """The app's cleanup context: ``recompute_dated`` at start, then each time
    the app clock's UTC day changes (looked at every ``DAY_CHECK_SECONDS``).
    Risk scores move with the date too (birthdays, screenings falling
    overdue): they are recomputed in the same transaction."""

    async def loop() -> None:
        done: date | None = None
        while True:
            moment = app[CLOCK]()
            if evaluation_date(moment) != done:
                try:
                    async with app[DATABASE].write() as conn:
                        # Every worker of `serve --workers` does this: one at a
                        # time, the later ones finding nothing left to change.
                        await one_at_a_time(conn, DAY_CHANGE_LOCK_KEY)
                        delta = await recompute_dated(conn, moment)
                        scores = await risk_scores.recompute_all(conn, moment)
                except (SQLAlchemyError, OSError):
                    log.exception("recomputing date-dependent cohorts failed; will retry")
                else:
                    done = evaluation_date(moment)
                    if delta != Delta() or scores:
                        log.info(
                            "day %s: %d memberships gained, %d lost; %d risk scores changed",
                            done,
                            delta.added,
                            delta.removed,
                            scores,
                        )
            await asyncio.sleep(DAY_CHECK_SECONDS)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

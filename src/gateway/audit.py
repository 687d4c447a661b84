"""The audit log's storage: appending in order, reading, verifying (docs/audit.md).

Appends are totally ordered across gateway processes by the row lock on the
one ``audit_head`` row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite has
one writer anyway), held until the appending transaction ends. So that the
lock is held as briefly as possible and taken after every other row lock of
the transaction (no waits in a cycle), :func:`append` is the LAST step of a
write transaction: the operation's own writes first, then its audit rows.

A write's rows are appended in the write's own transaction (a rolled back
write leaves none; a committed one always has its rows). A read or a refusal
commits nothing of its own, so its row gets a short write transaction of its
own (:func:`record`), committed before the answer is sent: if it cannot be
written, the caller gets an error, not the data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.auth import authenticate_token
from gateway.db.database import Database, execute_many
from gateway.db.schema import audit_head, audit_log
from gateway.http import database, now
from gateway.registry import Node, Role, TokenPrincipal
from shared.audit import (
    EMPTY_HEAD,
    MAX_RECORD,
    AuditEntry,
    ChainBreak,
    ChainedRow,
    ChainHead,
    ChainVerifier,
    Outcome,
    check_anchor,
    extend,
)
from shared.errors import Forbidden, NotFound, RoleForbidden
from shared.fsm import Transition
from shared.risk import RISK_OVERRIDE_KIND
from shared.values import format_timestamp
from shared.wire import BatchItem, CohortDraft, OtherItem, ReportSubmission

HEAD_ID = 1
PAGE_ROWS = 1000  # rows per query when walking the chain


@dataclass(frozen=True)
class Actor:
    """Who is acting: a token, a node, or a device (a signed report on its own)."""

    principal: str
    tenant_id: str
    node_id: str | None = None

    @classmethod
    def of_token(cls, principal: TokenPrincipal) -> Actor:
        return cls(principal.principal, principal.tenant_id)

    @classmethod
    def of_node(cls, node: Node) -> Actor:
        return cls(f"node:{node.node_id}", node.tenant_id, node.node_id)

    def entry(
        self,
        action: str,
        record: str | None,
        outcome: str,
        moment: datetime,
        facility: str | None = None,
    ) -> AuditEntry:
        return AuditEntry(
            actor=self.principal,
            node=self.node_id,
            tenant=self.tenant_id,
            facility=facility,
            action=action,
            record=None if record is None else _printable(record)[:MAX_RECORD],
            time=format_timestamp(moment),
            outcome=outcome,
        )


def _printable(text: str) -> str:
    """A record as sent in a path (a miss may name anything): escaped to printable
    ASCII, so that any database stores it (PostgreSQL refuses NUL in text)."""
    if text.isascii() and text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


# INSERT … ON CONFLICT DO NOTHING of the head's first row: two first appends
# on PostgreSQL may race to create it; the loser then waits on its row lock.
_NEW_HEAD: dict[str, Callable[[], sa.Insert]] = {
    "sqlite": lambda: sqlite.insert(audit_head).on_conflict_do_nothing(index_elements=["id"]),
    "postgresql": lambda: postgresql.insert(audit_head).on_conflict_do_nothing(
        index_elements=["id"]
    ),
}


async def _lock_head(conn: AsyncConnection, stamp: str) -> ChainHead:
    query = sa.select(audit_head.c.count, audit_head.c.last_hash).where(audit_head.c.id == HEAD_ID)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        await conn.execute(
            _NEW_HEAD[conn.dialect.name]().values(
                id=HEAD_ID, count=0, last_hash=EMPTY_HEAD.last_hash, updated_at=stamp
            )
        )
        row = (await conn.execute(query)).one()
    return ChainHead(int(row[0]), str(row[1]))  # row.count is tuple.count


async def append(conn: AsyncConnection, entries: Sequence[AuditEntry], moment: datetime) -> None:
    """Chain ``entries`` onto the log in ``conn``'s transaction; its last step
    (module docstring: the head's row lock is held until the commit)."""
    if not entries:
        return
    stamp = format_timestamp(moment)
    head = await _lock_head(conn, stamp)
    rows, new_head = extend(head, entries)
    await execute_many(conn, audit_log.insert(), [_to_columns(row) for row in rows])
    await conn.execute(
        audit_head.update()
        .where(audit_head.c.id == HEAD_ID)
        .values(count=new_head.count, last_hash=new_head.last_hash, updated_at=stamp)
    )


async def record(request: web.Request, *entries: AuditEntry) -> None:
    """Append in a transaction of its own: a read's or a refusal's row."""

    async def work(conn: AsyncConnection) -> None:
        await append(conn, entries, now(request))

    await database(request).transact(work)


def outcome_of(error: Exception) -> str | None:
    """The outcome of an operation that raised ``error`` after authentication
    (None: a malformed request, which touched no record and is not recorded)."""
    if isinstance(error, NotFound):
        return Outcome.NOT_FOUND
    if isinstance(error, Forbidden):
        return Outcome.REFUSED
    return None


@dataclass
class Access:
    """A read being audited; the handler fills in what it learns while reading."""

    actor: Actor
    action: str
    record: str | None
    facility: str | None = None


@asynccontextmanager
async def audited(
    request: web.Request,
    actor: Actor,
    action: str,
    record_ref: str | None = None,
    facility: str | None = None,
    *,
    success: bool = True,
) -> AsyncIterator[Access]:
    """Around a read: one row, ``ok`` once the body ran, ``not_found`` or
    ``refused`` when it raised that (then the error goes on to the caller).
    Around a write (``success=False``), only the refusal: a write that
    succeeds appends its own row in its own transaction."""
    access = Access(actor, action, record_ref, facility)
    try:
        yield access
    except Exception as err:
        outcome = outcome_of(err)
        if outcome is not None:
            await record(request, _entry(request, access, outcome))
        raise
    if success:
        await record(request, _entry(request, access, Outcome.OK))


def _entry(request: web.Request, access: Access, outcome: str) -> AuditEntry:
    return access.actor.entry(access.action, access.record, outcome, now(request), access.facility)


async def authenticate_reader(
    request: web.Request, action: str, record_ref: str | None, *readers: Role
) -> TokenPrincipal:
    """The bearer token's principal if its role is one of ``readers``; any other
    role is recorded as ``refused`` and answered 403 (an unknown token is not
    recorded: there is no actor to name)."""
    principal = await authenticate_token(request, *Role)
    if principal.role in readers:
        return principal
    entry = Actor.of_token(principal).entry(action, record_ref, Outcome.REFUSED, now(request))
    await record(request, entry)
    raise RoleForbidden(f"role {principal.role} may not do this; needs {' or '.join(readers)}")


def span(kind: str, first: str | int | None, last: str | int | None) -> str | None:
    """The record of a page read: ``<kind>:<first>..<last>`` (None: an empty page)."""
    if first is None or last is None:
        return None
    return f"{kind}:{first}..{last}"


def batch_entries(
    actor: Actor,
    items: Sequence[BatchItem],
    results: Sequence[dict[str, Any]],
    moment: datetime,
) -> list[AuditEntry]:
    """One row per batch item (its record and its status as the outcome)."""
    entries: list[AuditEntry] = []
    for item, result in zip(items, results, strict=True):
        status = str(result["status"])
        record_ref: Any
        if isinstance(item, Transition):
            action, record_ref = "outreach_item.transition", item.item_id
        elif isinstance(item, ReportSubmission):
            action, record_ref = "facility_report.submit", result.get("reportId") or item.id
        elif isinstance(item, CohortDraft):
            action, record_ref = "cohort.draft", item.cohort_id
        elif isinstance(item, OtherItem) and item.kind == RISK_OVERRIDE_KIND:
            entry_id = result.get("entryId")
            action, record_ref = "risk_score.override", entry_id if entry_id else item.id
        else:  # a kind nodes may not write, or an unknown one: the item's own id
            action, record_ref = "batch_item.refused", item.id
        record_text = None if record_ref is None else str(record_ref)
        entries.append(actor.entry(action, record_text, status, moment))
    return entries


def _to_columns(row: ChainedRow) -> dict[str, Any]:
    e = row.entry
    return {
        "seq": row.seq,
        "actor": e.actor,
        "node_id": e.node,
        "tenant_id": e.tenant,
        "facility_id": e.facility,
        "action": e.action,
        "record": e.record,
        "time": e.time,
        "outcome": e.outcome,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def _from_columns(row: Any) -> ChainedRow:
    entry = AuditEntry.__new__(AuditEntry)  # as stored: a tampered value must still load
    for name, value in (
        ("actor", row.actor),
        ("node", row.node_id),
        ("tenant", row.tenant_id),
        ("facility", row.facility_id),
        ("action", row.action),
        ("record", row.record),
        ("time", row.time),
        ("outcome", row.outcome),
    ):
        object.__setattr__(entry, name, value)
    return ChainedRow(int(row.seq), entry, str(row.prev_hash), str(row.hash))


async def read_head(conn: AsyncConnection) -> ChainHead | None:
    row = (
        await conn.execute(
            sa.select(audit_head.c.count, audit_head.c.last_hash).where(audit_head.c.id == HEAD_ID)
        )
    ).first()
    return None if row is None else ChainHead(int(row[0]), str(row[1]))


async def read_rows(conn: AsyncConnection, after: int, limit: int) -> list[ChainedRow]:
    rows = await conn.execute(
        sa.select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(limit)
    )
    return [_from_columns(row) for row in rows]


async def last_rows(conn: AsyncConnection, count: int) -> list[ChainedRow]:
    rows = await conn.execute(sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(count))
    return [_from_columns(row) for row in reversed(rows.all())]


@dataclass(frozen=True)
class Verification:
    checked: int  # rows walked
    head: ChainHead  # of the rows walked: count and last hash (to anchor elsewhere)
    stored_head: ChainHead | None  # the audit_head row (None: no row)
    broken: ChainBreak | None  # the first break, None: intact


Progress = Callable[[int], None]


async def verify(
    db: Database,
    *,
    anchor: ChainHead | None = None,
    progress: Progress | None = None,
    every: int = 100_000,
) -> Verification:
    """Walk the whole chain in one snapshot (the head and the rows agree even
    while gateways append), calling ``progress(rows checked)`` every ``every``
    rows; compare with the stored head and an ``anchor`` noted elsewhere."""
    verifier = ChainVerifier()
    hash_at_anchor: str | None = None
    async with db.read() as conn:
        if conn.dialect.name != "sqlite":  # SQLite's read is one snapshot already (WAL)
            await conn.execution_options(isolation_level="REPEATABLE READ")
        stored = await read_head(conn)
        after = 0
        while rows := await read_rows(conn, after, PAGE_ROWS):
            for row in rows:
                verifier.feed(row)
                if anchor is not None and row.seq == anchor.count:
                    hash_at_anchor = row.hash
                if progress is not None and verifier.checked % every == 0:
                    progress(verifier.checked)
            after = rows[-1].seq
    broken = verifier.finish(stored)
    if broken is None and anchor is not None:
        broken = check_anchor(anchor, hash_at_anchor)
    return Verification(verifier.checked, verifier.head, stored, broken)

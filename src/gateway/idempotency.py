"""Idempotency-Key handling for every write endpoint (CONTRACT section 4).

``run_write`` is the only way a handler writes. It claims the key in its own
short transaction (so a concurrent twin sees it in flight), runs the write in
one transaction, and stores a 2xx answer in that same transaction: a crash
can never leave a committed write without its replayable answer.

Once begun, a write runs to its end in its own task, whatever becomes of the
handler: aiohttp cancels a handler whose client went away (with
``handler_cancellation``, as in ``TestServer``) and any handler still running
at shutdown. Cut at its claim's commit, a write would leave the key claimed
but neither completed nor released: every retry would get 409
``idempotency_in_flight`` until ``idempotency_stale_seconds``, holding back an
edge node's whole outbox. Finished, the write keeps its answer for the retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgpack
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.database import Database
from gateway.db.schema import idempotency_keys
from gateway.http import SETTINGS, answer_type, database, now, path_with_query, respond
from shared.errors import IdempotencyInFlight, IdempotencyKeyMismatch, PhsError
from shared.idempotency import request_fingerprint, validate_key
from shared.values import format_timestamp


@dataclass
class Reply:
    """What a write produced; encoded per the caller's Accept."""

    status: int
    document: Any
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_error(cls, error: PhsError) -> Reply:
        """A refusal whose transaction still commits (e.g. a kept conflict copy)."""
        return cls(error.status, error.problem(), error.headers())

    @property
    def is_problem(self) -> bool:
        return self.status >= 400


WriteFn = Callable[[AsyncConnection], Awaitable[Reply]]

DONE = "done"
IN_FLIGHT = "in_flight"
# Writes still running, kept referenced (a handler cancelled mid-write lets go
# of its task) and awaited before the store closes.
WRITES: web.AppKey[set[asyncio.Task[web.Response]]] = web.AppKey("writes")


@dataclass(frozen=True)
class _Claim:
    principal: str
    key: str
    fingerprint: str


async def run_write(
    request: web.Request, principal: str, body: bytes, write: WriteFn
) -> web.Response:
    # Negotiate the answer's type first: a 406 raised after the commit would
    # report as failed a write that happened.
    answer_type(request)
    task = asyncio.create_task(_run_write(request, principal, body, write))
    running = request.app[WRITES]
    running.add(task)
    task.add_done_callback(running.discard)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)  # a cancelled handler leaves the write running


def _retrieve(task: asyncio.Task[web.Response]) -> None:
    """Mark a write's outcome as seen: when its handler is gone, nobody else will."""
    if not task.cancelled():
        task.exception()


async def finish_writes(app: web.Application) -> None:
    """Wait for the writes still running (at shutdown, before the store closes)."""
    await asyncio.gather(*app[WRITES], return_exceptions=True)


async def _run_write(
    request: web.Request, principal: str, body: bytes, write: WriteFn
) -> web.Response:
    key = validate_key(request.headers.get("Idempotency-Key"))
    db = database(request)
    if key is None:
        reply = await db.transact(write)
        return respond(request, reply.status, reply.document, reply.headers, reply.is_problem)

    claim = _Claim(
        principal, key, request_fingerprint(request.method, path_with_query(request), body)
    )
    replay = await _claim(request, db, claim)
    if replay is not None:
        return replay

    async def write_and_complete(conn: AsyncConnection) -> Reply:
        reply = await write(conn)
        if 200 <= reply.status < 300:
            await _complete(conn, claim, reply, now(request))
        return reply

    try:
        reply = await db.transact(write_and_complete)
    except BaseException:
        await _release(db, claim)
        raise
    if not 200 <= reply.status < 300:
        await _release(db, claim)  # only successes are kept; a failure may be retried
    return respond(request, reply.status, reply.document, reply.headers, reply.is_problem)


async def _claim(request: web.Request, db: Database, claim: _Claim) -> web.Response | None:
    """Claim the key, or answer: a replay, a mismatch (422) or in flight (409)."""
    settings = request.app[SETTINGS]
    moment = now(request)
    stamp = format_timestamp(moment)
    stale = format_timestamp(moment - timedelta(seconds=settings.idempotency_stale_seconds))
    where = sa.and_(
        idempotency_keys.c.principal == claim.principal, idempotency_keys.c.key == claim.key
    )
    ttl = timedelta(seconds=settings.idempotency_ttl_seconds)
    claimed = {
        "principal": claim.principal,
        "key": claim.key,
        "fingerprint": claim.fingerprint,
        "state": IN_FLIGHT,
        "claimed_at": stamp,
        "expires_at": format_timestamp(moment + ttl),
    }

    def answer_for(row: sa.Row[Any]) -> web.Response | None:
        """The answer a live row gives (replay, 409, 422), or None when it is
        expired or abandoned and may be taken over."""
        expired = row.state == DONE and row.expires_at <= stamp
        abandoned = row.state == IN_FLIGHT and row.claimed_at <= stale
        if expired or abandoned:
            return None
        if row.fingerprint != claim.fingerprint:
            raise IdempotencyKeyMismatch("this Idempotency-Key was used for a different request")
        if row.state == IN_FLIGHT:
            raise IdempotencyInFlight(
                "the first request with this key is still running", retry_after=1
            )
        document = msgpack.unpackb(row.reply, raw=False)
        return respond(request, row.status_code, document, {"Idempotent-Replayed": "true"})

    # A key seen before is answered from a read: a retry storm (an edge resending
    # after a flaky WAN, many copies at once) then never queues on the writer.
    # A live row's answer cannot go stale under us: answers are stored once and
    # only expiry removes them.
    async with db.read() as conn:
        seen = (await conn.execute(sa.select(idempotency_keys).where(where))).first()
    if seen is not None and (answer := answer_for(seen)) is not None:
        return answer
    async with db.write() as conn:
        # Usually the key is new: one INSERT that skips an existing row claims
        # it, instead of a SELECT and then an INSERT. Only when a row is there
        # is it read, exactly as before.
        fresh = _INSERT_IF_NEW.get(conn.dialect.name)
        if fresh is not None and (await conn.execute(fresh, claimed)).rowcount == 1:
            return None
        row = (await conn.execute(sa.select(idempotency_keys).where(where))).first()
        if row is not None:
            if (answer := answer_for(row)) is not None:
                return answer
            # Only the stale row we read: on PostgreSQL a concurrent request may
            # have replaced it with its own fresh claim since, which must stay.
            await conn.execute(
                idempotency_keys.delete().where(
                    where,
                    idempotency_keys.c.state == row.state,
                    idempotency_keys.c.claimed_at == row.claimed_at,
                    idempotency_keys.c.expires_at == row.expires_at,
                )
            )
        # Taking over an expired or abandoned key (or one just released), a
        # concurrent request on PostgreSQL may take it first: then it is in flight.
        insert = fresh if fresh is not None else idempotency_keys.insert()
        if (await conn.execute(insert, claimed)).rowcount != 1:
            raise IdempotencyInFlight(
                "the first request with this key is still running", retry_after=1
            )
    return None


_KEY_COLUMNS = [idempotency_keys.c.principal, idempotency_keys.c.key]
# INSERT … ON CONFLICT (principal, key) DO NOTHING, for the dialects that have it.
_INSERT_IF_NEW: dict[str, sa.Insert] = {
    "sqlite": sqlite.insert(idempotency_keys).on_conflict_do_nothing(index_elements=_KEY_COLUMNS),
    "postgresql": postgresql.insert(idempotency_keys).on_conflict_do_nothing(
        index_elements=_KEY_COLUMNS
    ),
}


async def _complete(conn: AsyncConnection, claim: _Claim, reply: Reply, moment: datetime) -> None:
    await conn.execute(
        idempotency_keys.update()
        .where(idempotency_keys.c.principal == claim.principal, idempotency_keys.c.key == claim.key)
        .values(
            state=DONE,
            status_code=reply.status,
            reply=msgpack.packb(reply.document, use_bin_type=True),
        )
    )


async def _release(db: Database, claim: _Claim) -> None:
    async with db.write() as conn:
        await conn.execute(
            idempotency_keys.delete().where(
                idempotency_keys.c.principal == claim.principal,
                idempotency_keys.c.key == claim.key,
                idempotency_keys.c.state == IN_FLIGHT,
            )
        )


async def purge_expired(db: Database, moment: datetime) -> int:
    """Delete answers past their time to live; returns how many."""
    async with db.write() as conn:
        result = await conn.execute(
            idempotency_keys.delete().where(
                idempotency_keys.c.state == DONE,
                idempotency_keys.c.expires_at <= format_timestamp(moment),
            )
        )
    return int(result.rowcount or 0)

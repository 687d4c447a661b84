"""Tablet outreach pushes committed together (group commit).

Pushes that arrive while a transaction is being written wait in a queue; the
next transaction takes all of them (up to ``max_items`` transitions). Fifty
tablets pushing at once then cost a few transactions instead of fifty, and a
queued push pays a share of one set of queries and one commit instead of its
own: one push at a time, the write lock was the edge's bottleneck.

What a tablet sees does not change. A push is answered only after the
transaction holding its records has committed. The pushes of a group are
resolved one after another in arrival order, exactly as separate
transactions would resolve them. Idempotency-Keys work as in ``run_write``:
a key in flight is refused, a stored answer is replayed, a new answer is
stored with the records. A transaction that fails fails every push in it,
and stores nothing of any of them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import msgpack
from aiohttp import web

from edgenode.outreach import CHUNK, ingest_transitions
from edgenode.store.database import EdgeDatabase, fetch_all
from gateway.http import Clock
from shared.errors import IdempotencyInFlight
from shared.fsm import Transition
from shared.values import format_timestamp

Pair = tuple[str, str]  # (principal, Idempotency-Key)


@dataclass(frozen=True)
class Answer:
    status: int
    document: Any
    stored: sqlite3.Row | None = None  # an earlier answer under the push's key: replay it


@dataclass(eq=False)
class _Push:
    principal: str
    key: str | None
    fingerprint: str
    transitions: Sequence[Transition]
    answer: asyncio.Future[Answer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class OutreachIntake:
    def __init__(
        self, db: EdgeDatabase, clock: Clock, in_flight: set[Pair], max_items: int
    ) -> None:
        self._db = db
        self._clock = clock
        self._in_flight = in_flight  # shared with ``run_write``: one key, one request at a time
        self._max_items = max_items
        self._queue: deque[_Push] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def submit(
        self, principal: str, key: str | None, fingerprint: str, transitions: Sequence[Transition]
    ) -> Answer:
        """Queue a push; its answer once the transaction holding it has committed."""
        if key is not None:
            if (principal, key) in self._in_flight:
                raise IdempotencyInFlight("the first request with this key is still running")
            # Held until the push's transaction ends, even if its request is
            # cancelled first: a retry must not run beside it.
            self._in_flight.add((principal, key))
        push = _Push(principal, key, fingerprint, transitions)
        self._queue.append(push)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await asyncio.shield(push.answer)

    def _take(self) -> list[_Push]:
        group = [self._queue.popleft()]
        count = len(group[0].transitions)
        while self._queue and count + len(self._queue[0].transitions) <= self._max_items:
            group.append(self._queue.popleft())
            count += len(group[-1].transitions)
        return group

    async def _drain(self) -> None:
        while self._queue:
            group = self._take()
            try:
                async with self._db.write() as conn:
                    answers = await self._write(conn, group)
            except Exception as err:
                for push in group:
                    self._finish(push)
                    if not push.answer.done():
                        push.answer.set_exception(err)
            except BaseException:  # cancelled: nobody will write the rest either
                for push in (*group, *self._queue):
                    self._finish(push)
                    push.answer.cancel()
                self._queue.clear()
                raise
            else:
                for push, answer in zip(group, answers, strict=True):
                    self._finish(push)
                    if not push.answer.done():
                        push.answer.set_result(answer)

    def _finish(self, push: _Push) -> None:
        if push.key is not None:
            self._in_flight.discard((push.principal, push.key))

    async def _write(self, conn: aiosqlite.Connection, group: list[_Push]) -> list[Answer]:
        now = self._clock()
        stored = await _stored_replies(
            conn, [(p.principal, p.key) for p in group if p.key is not None]
        )
        replays = {
            id(p): stored[(p.principal, p.key)]
            for p in group
            if p.key is not None and (p.principal, p.key) in stored
        }
        fresh = [p for p in group if id(p) not in replays]
        results = await ingest_transitions(conn, [t for p in fresh for t in p.transitions], now)
        documents: dict[int, dict[str, Any]] = {}
        keep: list[tuple[Any, ...]] = []
        start = 0
        for push in fresh:
            document = {"results": results[start : start + len(push.transitions)]}
            start += len(push.transitions)
            documents[id(push)] = document
            if push.key is not None:
                reply = msgpack.packb(document, use_bin_type=True)
                keep.append((push.principal, push.key, push.fingerprint, 200, reply))
        stamp = format_timestamp(now)
        await conn.executemany(
            "INSERT INTO idempotency_keys (principal, key, fingerprint, status_code, reply, "
            "created_at) VALUES (?,?,?,?,?,?)",
            [(*row, stamp) for row in keep],
        )
        return [
            Answer(200, documents[id(p)])
            if id(p) in documents
            else Answer(int(replays[id(p)]["status_code"]), None, replays[id(p)])
            for p in group
        ]


async def _stored_replies(conn: aiosqlite.Connection, pairs: list[Pair]) -> dict[Pair, sqlite3.Row]:
    """Stored answers under these keys (the primary key's index answers it)."""
    wanted = set(pairs)
    found: dict[Pair, sqlite3.Row] = {}
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start : start + CHUNK]
        principals = sorted({p for p, _ in chunk})
        keys = sorted({k for _, k in chunk})
        rows = await fetch_all(
            conn,
            "SELECT principal, key, fingerprint, status_code, reply FROM idempotency_keys "
            f"WHERE principal IN ({','.join('?' * len(principals))}) "
            f"AND key IN ({','.join('?' * len(keys))})",
            (*principals, *keys),
        )
        for row in rows:
            if (row["principal"], row["key"]) in wanted:
                found[(row["principal"], row["key"])] = row
    return found


OUTREACH_INTAKE = web.AppKey("outreach_intake", OutreachIntake)

"""Store-and-forward to the gateway: the forwarder and the change-feed puller.

Both are plain objects driven by ``forward_once`` / ``pull_once``; the
service runs them in loops, ``edgenode sync`` once. Clock, randomness and
the HTTP client come from outside, so tests control time and failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from edgenode.gateway_client import GatewayAnswer, GatewayClient, GatewayUnreachable
from edgenode.gateway_items import apply_changes
from edgenode.outbox import (
    BATCH_LIMIT,
    OpenBatch,
    ResultMismatch,
    batch_limit,
    build_batch,
    clear_state,
    get_state,
    oldest_open_batch,
    record_refused,
    record_results,
    record_retry,
    set_state,
    split_refused,
)
from edgenode.server_data import apply_server_changes
from edgenode.settings import EdgeSettings
from edgenode.status import GatewayContact, record_contact
from edgenode.store.database import EdgeDatabase
from shared.values import format_timestamp, parse_timestamp

log = logging.getLogger("edgenode.sync")
Clock = Callable[[], datetime]

# Answers after which the same batch is sent again later. Auth failures are
# retried too: an edge not yet enrolled (or re-enrolled) must not lose records.
RETRY_STATUSES = frozenset({401, 403, 408, 409, 425, 429})


@dataclass
class ForwardSummary:
    batches_sent: int = 0
    items_sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    refused_batches: int = 0  # batches of one record refused for good: problems
    split_batches: int = 0  # batches of several refused as a whole: queued again in halves
    waiting_until: str | None = None  # the next retry, when the outbox is blocked
    error: str | None = None
    unreachable: bool = False  # the error is the network's (no answer), not an HTTP one


@dataclass
class PullSummary:
    changes: int = 0
    cursor: str = "0"
    error: str | None = None
    unreachable: bool = False


class Forwarder:
    def __init__(
        self,
        db: EdgeDatabase,
        client: GatewayClient,
        settings: EdgeSettings,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._client = client
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()

    def backoff(self, attempts: int) -> timedelta:
        """Exponential backoff with full jitter (never zero, never over the cap)."""
        cap = min(
            self._settings.retry_max_seconds,
            self._settings.retry_base_seconds * 2 ** min(attempts, 20),
        )
        return timedelta(seconds=max(0.2, self._rng.uniform(0, cap)))

    async def forward_once(self, ignore_schedule: bool = False) -> ForwardSummary:
        """Send open batches, oldest first, until the outbox is empty or a send fails.

        A batch is sent only once the one before it was accepted, so the
        gateway sees each item's records in order. Once batches flow, while
        one is on its way the next is built (persisted, not sent) and the
        answer to the one before is stored. Answers are stored in order; a batch whose
        answer is not stored yet stays open (after a crash it is sent again,
        and the gateway replays its answer).
        """
        summary = ForwardSummary()
        storing: asyncio.Task[bool] | None = None  # the last accepted batch's answer
        sending: asyncio.Task[GatewayAnswer | None] | None = None
        batch = await self._next_batch(None)
        try:
            while batch is not None:
                due = batch.next_attempt_at
                if not ignore_schedule and due and parse_timestamp(due, "due") > self._clock():
                    summary.waiting_until = due
                    return summary
                sending = asyncio.create_task(self._post(batch, summary))
                # Built ahead once batches flow (not while the gateway may be down).
                following = await self._next_batch(batch.batch_id) if storing else None
                answer, sending = await sending, None
                if storing is not None:
                    stored, storing = await storing, None
                    if not stored:  # kept open for a retry: stop, as after a failed send
                        return summary
                if answer is None:
                    return summary
                if answer.status == 200:
                    storing = asyncio.create_task(self._store(batch, answer, summary))
                    batch = following or await self._next_batch(batch.batch_id)
                elif await self._not_accepted(batch, answer, summary):
                    batch = await self._next_batch(None)
                else:
                    return summary
            return summary
        finally:
            if sending is not None:  # stopped mid-send: the batch stays open, sent again later
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
            if storing is not None:
                await storing

    async def _next_batch(self, after: str | None) -> OpenBatch | None:
        """The oldest open batch (after ``after``), else a new one from the queue."""
        async with self._db.write(urgent=True) as conn:
            batch = await oldest_open_batch(conn, after) or await build_batch(
                conn,
                self._client.node_id,
                self._clock(),
                await batch_limit(conn, self._settings.batch_max_items),
                self._settings.batch_max_bytes,
            )
            if batch is None:  # drained: the next records start at full size
                await clear_state(conn, BATCH_LIMIT)
        return batch

    async def _post(self, batch: OpenBatch, summary: ForwardSummary) -> GatewayAnswer | None:
        """The gateway's answer; None when it was not reached (a retry is scheduled)."""
        try:
            return await self._client.post_batch_body(batch.batch_id, batch.body)
        except GatewayUnreachable as err:
            summary.unreachable = True
            await self._retry(batch, str(err), summary, None)
            return None

    async def _store(
        self, batch: OpenBatch, answer: GatewayAnswer, summary: ForwardSummary
    ) -> bool:
        """Apply a 200 answer's per-item results; False: unusable, retried later."""
        results = answer.document.get("results", []) if isinstance(answer.document, dict) else []
        try:
            async with self._db.write(urgent=True) as conn:
                await record_results(conn, batch.batch_id, results, self._clock())
                await record_contact(conn, GatewayContact("forward", self._clock(), answer.status))
        except (ResultMismatch, KeyError, TypeError) as err:
            await self._retry(batch, f"unusable answer: {err}", summary, answer.status)
            return False
        summary.batches_sent += 1
        summary.items_sent += batch.item_count
        for result in results:
            status = str(result.get("status"))
            summary.statuses[status] = summary.statuses.get(status, 0) + 1
        return True

    async def _not_accepted(
        self, batch: OpenBatch, answer: GatewayAnswer, summary: ForwardSummary
    ) -> bool:
        """A refusal: True when the outbox can go on (the batch was settled)."""
        code, detail = _problem(answer)
        if answer.status >= 500 or answer.status in RETRY_STATUSES:
            error = f"HTTP {answer.status} {code}: {detail}"
            await self._retry(batch, error, summary, answer.status, code)
            return False
        # Any other 4xx is permanent for this exact batch. A batch of several
        # records is split until the refused record is alone; that one is kept
        # as a problem, and the records behind it go.
        log.warning("gateway refused batch %s: %s %s", batch.batch_id, code, detail)
        async with self._db.write(urgent=True) as conn:
            await record_contact(
                conn,
                GatewayContact(
                    "forward",
                    self._clock(),
                    answer.status,
                    code,
                    f"HTTP {answer.status} {code}: {detail}",
                ),
            )
            if batch.item_count > 1:
                await split_refused(
                    conn, batch.batch_id, batch.item_count, code, detail, self._clock()
                )
                summary.split_batches += 1
            else:
                await record_refused(conn, batch.batch_id, code, detail, self._clock())
                summary.refused_batches += 1
        return True

    async def _retry(
        self,
        batch: OpenBatch,
        error: str,
        summary: ForwardSummary,
        status: int | None,
        code: str | None = None,
    ) -> None:
        """Send ``batch`` again later; ``status`` None: the gateway was not reached."""
        when = self._clock() + self.backoff(batch.attempts)
        async with self._db.write(urgent=True) as conn:
            await record_retry(conn, batch.batch_id, error, when)
            contact = GatewayContact("forward", self._clock(), status, code, error)
            await record_contact(conn, contact)
        summary.error = error
        summary.waiting_until = format_timestamp(when)
        log.info(
            "batch %s not delivered (%s); next try at %s",
            batch.batch_id,
            error,
            summary.waiting_until,
        )


class Puller:
    def __init__(
        self, db: EdgeDatabase, client: GatewayClient, clock: Clock, page: int = 1000
    ) -> None:
        self._db = db
        self._client = client
        self._clock = clock
        self._page = page

    async def pull_once(self) -> PullSummary:
        """Read the change feed from the persisted cursor until it has no more."""
        async with self._db.read() as conn:
            cursor = await get_state(conn, "changes_cursor") or "0"
        summary = PullSummary(cursor=cursor)
        while True:
            try:
                answer = await self._client.changes(summary.cursor, self._page)
            except GatewayUnreachable as err:
                summary.error, summary.unreachable = str(err), True
                await self._record(GatewayContact("pull", self._clock(), None, None, str(err)))
                return summary
            if answer.status != 200 or not isinstance(answer.document, dict):
                code, detail = _problem(answer)
                summary.error = f"HTTP {answer.status} {code}: {detail}"
                contact = GatewayContact("pull", self._clock(), answer.status, code, summary.error)
                await self._record(contact)
                return summary
            doc = answer.document
            async with self._db.write() as conn:
                summary.changes += await apply_changes(conn, doc["changes"], self._clock())
                # Every other aggregate, known or not: the server-authoritative projection.
                summary.changes += await apply_server_changes(conn, doc["changes"], self._clock())
                # The cursor commits with the changes it covers: a crash resumes here.
                await set_state(conn, "changes_cursor", str(doc["cursor"]))
                await set_state(conn, "last_pull_ok", format_timestamp(self._clock()))
                await record_contact(conn, GatewayContact("pull", self._clock(), answer.status))
            summary.cursor = str(doc["cursor"])
            if not doc.get("more"):
                return summary

    async def _record(self, contact: GatewayContact) -> None:
        """A failed pull, for the status page (a success is kept with its changes)."""
        async with self._db.write() as conn:
            await record_contact(conn, contact)


def _problem(answer: GatewayAnswer) -> tuple[str, str]:
    doc = answer.document
    if isinstance(doc, dict):
        return str(doc.get("code", "unknown")), str(doc.get("detail", ""))
    return "unknown", ""

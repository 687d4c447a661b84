"""The event relay: the transactional outbox (CONTRACT section 9) published to
NATS JetStream (docs/events.md).

::

    events table ── unpublished, in seq order ──► publish, Nats-Msg-Id = event id
         ▲                                                   │
         └── published_at set ◄── JetStream acknowledged ◄───┘

Each event becomes one message on ``<prefix>.<tenant>.<event type>`` whose
header ``Nats-Msg-Id`` is the event id. An event is marked published (its
``published_at`` set) only after JetStream acknowledged it, in seq order: the
longest acknowledged prefix of a batch. A crash between the acknowledgement
and the mark leaves at most one batch unmarked; the relay publishes it again
when it restarts and the stream's de-duplication window drops the copies.
Marks are per event, not a high-water mark, so an event whose transaction
committed after events with higher seqs (PostgreSQL hands out seqs before
commit) is still found and published.

The pure parts (subjects, messages, the stream's configuration, which prefix
of a batch is acknowledged, back-off) have no I/O; ``EventRelay`` is the loop
around them. NATS and database failures become ``ServiceUnavailable`` and are
retried with jittered exponential back-off. Log lines carry counts, sequence
numbers and error class names only: never an event's data, nor a database
error's text (which may quote the values of a statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.js.api import DiscardPolicy, Header, PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from sqlalchemy.exc import SQLAlchemyError

from gateway.db.database import Database
from gateway.db.schema import events
from gateway.events import event_document
from gateway.relay_lock import RelayLock
from gateway.settings import Settings
from observability.sdnotify import Notifier
from shared.encoding import JSON, encode
from shared.errors import ServiceUnavailable, ValidationFailed
from shared.values import format_timestamp

log = logging.getLogger("gateway.relay")

CONTENT_TYPE = "application/json"
MAX_BATCH_SIZE = 10_000
PROGRESS_LOG_SECONDS = 60.0

# ---------------------------------------------------------------- pure parts

# Characters kept as they are in a subject token; every other byte of the
# UTF-8 text becomes %XX. NATS splits subjects at "." and gives "*", ">" and
# whitespace special meanings; "%" cannot occur in a tenant id (IDENTIFIER_RE).
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-:")
_STREAM_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PREFIX_TOKEN_RE = re.compile(r"[A-Za-z0-9_:-]+")


def _escape(text: str, keep: str = "") -> str:
    out: list[str] = []
    for ch in text:
        if ch in _TOKEN_CHARS or ch in keep:
            out.append(ch)
        else:
            out.extend(f"%{byte:02X}" for byte in ch.encode("utf-8"))
    return "".join(out)


def subject_for(prefix: str, tenant_id: str, event_type: str) -> str:
    """``<prefix>.<tenant>.<event type>``, e.g.
    ``phs.events.t1.population_health.facility_report.synced.v1``.

    The tenant is one token (a "." in it becomes %2E); the event type keeps its
    dotted segments as tokens, so consumers can filter on them
    (``phs.events.*.population_health.facility_report.>``). A type with an
    empty segment is escaped whole into one token.
    """
    segments = event_type.split(".")
    keep = "." if all(segments) else ""
    return f"{prefix}.{_escape(tenant_id) or '%00'}.{_escape(event_type, keep) or '%00'}"


@dataclass(frozen=True)
class OutboundMessage:
    """One event as it goes to NATS."""

    seq: int
    event_id: str
    subject: str
    payload: bytes
    headers: dict[str, str]


def message_for(document: dict[str, Any], prefix: str) -> OutboundMessage:
    """The message of one event document (the shape GET …/events answers)."""
    return OutboundMessage(
        seq=int(document["seq"]),
        event_id=str(document["id"]),
        subject=subject_for(prefix, document["tenantId"], document["type"]),
        payload=encode(document, JSON),
        headers={Header.MSG_ID.value: str(document["id"]), "Content-Type": CONTENT_TYPE},
    )


def acknowledged_prefix(outcomes: Sequence[PubAck | BaseException | None], stream: str) -> int:
    """How many leading messages of a batch JetStream stored in ``stream``.

    An outcome is the message's PubAck, the error its publication raised, or
    None when no answer came in time. A duplicate acknowledgement counts: the
    stream already holds that id. Marking stops at the first miss so marks
    follow seq order; acknowledged messages after it are published again on
    the next round and dropped as duplicates.
    """
    count = 0
    for outcome in outcomes:
        if not isinstance(outcome, PubAck) or outcome.stream != stream:
            break
        count += 1
    return count


@dataclass(frozen=True)
class RelayConfig:
    servers: tuple[str, ...]
    stream: str
    subject_prefix: str
    duplicate_window_seconds: int
    batch_size: int
    poll_interval_seconds: float
    publish_timeout_seconds: float
    max_backoff_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings, nats_url: str | None = None) -> RelayConfig:
        """The relay's settings, checked (``ValidationFailed`` names the bad one)."""
        servers = tuple(
            url.strip() for url in (nats_url or settings.relay_nats_url).split(",") if url.strip()
        )
        if not servers or not all(url.startswith(("nats://", "tls://")) for url in servers):
            raise ValidationFailed("relay_nats_url must be nats://host:port (comma-separated)")
        if not _STREAM_NAME_RE.fullmatch(settings.relay_stream):
            raise ValidationFailed("relay_stream must be 1-64 of A-Z a-z 0-9 _ -")
        tokens = settings.relay_subject_prefix.split(".")
        if not all(_PREFIX_TOKEN_RE.fullmatch(token) for token in tokens):
            raise ValidationFailed(
                "relay_subject_prefix must be dot-separated tokens of A-Z a-z 0-9 _ - :"
            )
        if settings.relay_duplicate_window_seconds < 1:
            raise ValidationFailed("relay_duplicate_window_seconds must be at least 1")
        if not 1 <= settings.relay_batch_size <= MAX_BATCH_SIZE:
            raise ValidationFailed(f"relay_batch_size must be between 1 and {MAX_BATCH_SIZE}")
        for name in (
            "relay_poll_interval_seconds",
            "relay_publish_timeout_seconds",
            "relay_max_backoff_seconds",
        ):
            if getattr(settings, name) <= 0:
                raise ValidationFailed(f"{name} must be positive")
        return cls(
            servers=servers,
            stream=settings.relay_stream,
            subject_prefix=settings.relay_subject_prefix,
            duplicate_window_seconds=settings.relay_duplicate_window_seconds,
            batch_size=settings.relay_batch_size,
            poll_interval_seconds=settings.relay_poll_interval_seconds,
            publish_timeout_seconds=settings.relay_publish_timeout_seconds,
            max_backoff_seconds=settings.relay_max_backoff_seconds,
        )

    @property
    def subjects(self) -> list[str]:
        return [f"{self.subject_prefix}.>"]


def stream_config(config: RelayConfig) -> StreamConfig:
    """The stream the relay creates when it is missing: file storage, kept by
    limits (none set: operators add max_age or max_bytes), the duplicate window."""
    return StreamConfig(
        name=config.stream,
        description="PHS Sync gateway events (transactional outbox, docs/events.md)",
        subjects=config.subjects,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        duplicate_window=float(config.duplicate_window_seconds),
    )


def stream_update(existing: StreamConfig, config: RelayConfig) -> StreamConfig | None:
    """The existing stream's configuration with our subjects and duplicate
    window, or None when it has them already. Everything else the operator
    set (limits, replicas, placement) is kept."""
    subjects = list(existing.subjects or [])
    missing = [subject for subject in config.subjects if subject not in subjects]
    window = float(config.duplicate_window_seconds)
    if not missing and existing.duplicate_window == window:
        return None
    return existing.evolve(subjects=subjects + missing, duplicate_window=window)


class Backoff:
    """Exponential back-off with jitter: 0.2 s, 0.4 s, … up to ``maximum``,
    each drawn uniformly from its upper half so restarts do not synchronise."""

    def __init__(self, maximum: float, rng: random.Random, initial: float = 0.2) -> None:
        self.maximum = maximum
        self.initial = min(initial, maximum)
        self.rng = rng
        self.attempts = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


# ---------------------------------------------------------------- the store


async def unpublished_events(database: Database, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` events not yet published, in seq order (the partial index)."""
    try:
        async with database.read() as conn:
            rows = await conn.execute(
                sa.select(events)
                .where(events.c.published_at.is_(None))
                .order_by(events.c.seq)
                .limit(limit)
            )
            return [event_document(row) for row in rows]
    except (SQLAlchemyError, OSError) as err:
        raise ServiceUnavailable(f"database unreachable ({type(err).__name__})") from err


async def mark_published(database: Database, seqs: Sequence[int], now: datetime) -> None:
    """Record that JetStream holds the events ``seqs`` (one transaction)."""
    try:
        async with database.write() as conn:
            await conn.execute(
                events.update()
                .where(events.c.seq.in_(list(seqs)), events.c.published_at.is_(None))
                .values(published_at=format_timestamp(now))
            )
    except (SQLAlchemyError, OSError) as err:
        raise ServiceUnavailable(f"database unreachable ({type(err).__name__})") from err


@dataclass(frozen=True)
class OutboxPosition:
    """Where the relay stands: every event up to ``last_seq`` is published
    unless counted in ``unpublished``."""

    total: int
    unpublished: int
    last_seq: int
    first_unpublished_seq: int | None


async def outbox_position(database: Database) -> OutboxPosition:
    async with database.read() as conn:
        total, last_seq = (
            await conn.execute(sa.select(sa.func.count(), sa.func.max(events.c.seq)))
        ).one()
        unpublished, first = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.min(events.c.seq)).where(
                    events.c.published_at.is_(None)
                )
            )
        ).one()
    return OutboxPosition(int(total), int(unpublished), int(last_seq or 0), first)


# ---------------------------------------------------------------- the loop

_NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


class EventRelay:
    """Publishes the outbox of ``database`` to JetStream until stopped.

    One relay per gateway database: ``run`` publishes only while it holds the
    relay lock (gateway.relay_lock) and otherwise stands by, taking over when
    the holder stops or dies.
    """

    def __init__(
        self,
        database: Database,
        config: RelayConfig,
        clock: Callable[[], datetime],
        rng: random.Random | None = None,
    ) -> None:
        self.database = database
        self.config = config
        self.clock = clock
        self.backoff = Backoff(config.max_backoff_seconds, rng or random.Random())
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._migrated = False
        self._live = False  # connected, stream verified
        self._last_nats_error: Exception | None = None
        self.published = 0  # events marked published by this process
        self.lock = RelayLock(database)
        self.duplicates = 0  # of those, how many the stream already held

    # -- connections

    async def _nats_error(self, err: Exception) -> None:
        # failed connection attempts report here too; the failure is logged once, by run()
        self._last_nats_error = err
        log.debug("relay: NATS error (%s)", type(err).__name__)

    async def _nats_disconnected(self) -> None:
        if self._live:  # not for a failed attempt, nor for our own close
            self._live = False
            log.warning("relay: disconnected from NATS")

    async def connect(self) -> JetStreamContext:
        """Connected JetStream context, the stream verified (or created)."""
        if self._js is not None and self._nc is not None and self._nc.is_connected:
            return self._js
        await self.disconnect()
        nc = NatsClient()
        self._last_nats_error = None
        self._nc = nc  # closed by disconnect() even when connect fails half-way
        try:
            # No reconnection inside the client: on any failure the relay
            # closes it, backs off and connects again, verifying the stream.
            await nc.connect(
                servers=list(self.config.servers),
                name="phs-gateway-relay",
                allow_reconnect=False,
                # each server tried twice, at once: the relay's back-off does the waiting
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=5,
                error_cb=self._nats_error,
                disconnected_cb=self._nats_disconnected,
            )
        except _NATS_ERRORS as err:
            cause = self._last_nats_error if isinstance(err, nats.errors.NoServersError) else err
            await self.disconnect()
            reason = type(cause or err).__name__
            raise ServiceUnavailable(f"NATS unreachable ({reason})") from err
        js = nc.jetstream(timeout=self.config.publish_timeout_seconds)
        await self._ensure_stream(js)
        self._js = js
        self._live = True
        log.info(
            "relay: connected to NATS; stream %s, subjects %s, duplicate window %d s",
            self.config.stream,
            " ".join(self.config.subjects),
            self.config.duplicate_window_seconds,
        )
        return js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            try:
                info = await js.stream_info(self.config.stream)
            except nats.js.errors.NotFoundError:
                await js.add_stream(stream_config(self.config))
                log.info("relay: created stream %s", self.config.stream)
                return
            update = stream_update(info.config, self.config)
            if update is not None:
                await js.update_stream(update)
                log.info("relay: updated stream %s (subjects, window)", self.config.stream)
        except nats.js.errors.BadRequestError as err:
            # e.g. our subjects overlap another stream's, or the window exceeds max_age
            await self.disconnect()
            raise ValidationFailed(
                f"JetStream refused stream {self.config.stream}: {err.description}"
            ) from err
        except _NATS_ERRORS as err:
            raise ServiceUnavailable(f"JetStream unavailable ({type(err).__name__})") from err

    async def disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._live = False
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(*_NATS_ERRORS):
                await nc.close()

    async def close(self) -> None:
        await self.disconnect()

    # -- one round

    async def publish_batch(self) -> int:
        """Publish up to one batch of unpublished events; return how many were
        marked. Raises ServiceUnavailable (after marking the acknowledged
        prefix) when NATS or the database fails."""
        if not self._migrated:
            try:
                await self.database.migrate()
            except (SQLAlchemyError, OSError) as err:
                raise ServiceUnavailable(f"database unreachable ({type(err).__name__})") from err
            self._migrated = True
        js = await self.connect()
        documents = await unpublished_events(self.database, self.config.batch_size)
        if not documents:
            return 0
        messages = [message_for(doc, self.config.subject_prefix) for doc in documents]
        outcomes = await self._publish(js, messages)
        count = acknowledged_prefix(outcomes, self.config.stream)
        if count:
            await mark_published(self.database, [m.seq for m in messages[:count]], self.clock())
            duplicates = sum(
                1 for ack in outcomes[:count] if isinstance(ack, PubAck) and ack.duplicate
            )
            self.published += count
            self.duplicates += duplicates
            log.debug(
                "relay: published seq %d..%d (%d events, %d already in the stream)",
                messages[0].seq,
                messages[count - 1].seq,
                count,
                duplicates,
            )
            if duplicates:
                log.info("relay: %d events were already in the stream (dropped)", duplicates)
        if count < len(messages):
            failed = outcomes[count]
            reason = "no acknowledgement" if failed is None else type(failed).__name__
            await self.disconnect()
            seq = messages[count].seq
            raise ServiceUnavailable(f"JetStream did not store seq {seq} ({reason})")
        return count

    async def _publish(
        self, js: JetStreamContext, messages: Sequence[OutboundMessage]
    ) -> list[PubAck | BaseException | None]:
        """Send the batch pipelined on one connection (so the stream stores
        it in order), then wait for every acknowledgement up to the timeout."""
        futures: list[asyncio.Future[PubAck]] = []
        failure: BaseException | None = None
        for message in messages:
            try:
                futures.append(
                    await js.publish_async(
                        message.subject,
                        message.payload,
                        stream=self.config.stream,
                        headers=dict(message.headers),
                        wait_stall=self.config.publish_timeout_seconds,
                    )
                )
            except _NATS_ERRORS as err:
                failure = err
                break
        if futures:
            await asyncio.wait(futures, timeout=self.config.publish_timeout_seconds)
        outcomes: list[PubAck | BaseException | None] = []
        for future in futures:
            if not future.done():
                future.cancel()
                outcomes.append(None)
            elif future.cancelled():
                outcomes.append(None)
            else:
                outcomes.append(future.exception() or future.result())
        if failure is not None:
            outcomes.append(failure)
        return outcomes

    # -- the loop

    async def run(self, stop: asyncio.Event, notifier: Notifier | None = None) -> None:
        """Relay until ``stop`` is set; then finish the round and disconnect.

        ``notifier`` (systemd): READY=1 after the first round, published or
        not (the relay waits out outages; a bad configuration fails before),
        and a STATUS line whenever the relay's state changes."""
        notifier = notifier or Notifier()
        told: str | None = None  # the STATUS last sent
        next_progress = asyncio.get_running_loop().time() + PROGRESS_LOG_SECONDS
        standing_by = False
        try:
            while not stop.is_set():
                if not await self.lock.hold():
                    if not standing_by:
                        log.warning("relay: another relay holds this database's outbox; standby")
                        standing_by = True
                    told = _tell(notifier, told, "standby: another relay is publishing")
                    await _wait(stop, self.config.poll_interval_seconds)
                    continue
                if standing_by:
                    log.info("relay: took over the outbox from the relay that held it")
                    standing_by = False
                try:
                    count = await self.publish_batch()
                except ServiceUnavailable as err:
                    delay = self.backoff.next()
                    log.warning("relay: %s; retrying in %.1f s", err.detail, delay)
                    told = _tell(notifier, told, f"waiting: {err.detail}")
                    await _wait(stop, delay)
                    continue
                told = _tell(notifier, told, f"publishing to stream {self.config.stream}")
                self.backoff.reset()
                now = asyncio.get_running_loop().time()
                if now >= next_progress:
                    next_progress = now + PROGRESS_LOG_SECONDS
                    log.info(
                        "relay: %d events published since start (%d were duplicates)",
                        self.published,
                        self.duplicates,
                    )
                if count < self.config.batch_size:
                    await _wait(stop, self.config.poll_interval_seconds)
        finally:
            await self.disconnect()
            await self.lock.release()

    async def drain(self) -> int:
        """Publish until no event is left unpublished, retrying failures with
        back-off (for tests and one-shot runs: bound it with asyncio.timeout).
        It takes no relay lock: don't run it beside a running relay."""
        total = 0
        while True:
            try:
                count = await self.publish_batch()
            except ServiceUnavailable:
                await asyncio.sleep(self.backoff.next())
                continue
            self.backoff.reset()
            total += count
            if count == 0:
                return total


def _tell(notifier: Notifier, told: str | None, status: str) -> str:
    """READY=1 with the first status, then each change of it; returns it."""
    if told is None:
        notifier.ready(status)
    elif status != told:
        notifier.status(status)
    return status


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)

"""The event relay (gateway.relay) against a real NATS server with JetStream.

The server is the one named by ``PHS_TEST_NATS_URL`` (``.ci/run`` sets it to
nats://127.0.0.1:4222 when a server answers there); without it these tests
skip, saying why. Each test publishes to a stream and subject prefix of its own
(a fresh unique name) and deletes that stream after. The store is the
``gateway_settings`` one (SQLite under ``tmp_path``, and PostgreSQL where the
suite runs on it); the late-commit and database-outage tests need PostgreSQL.

The crash test runs ``python -m gateway.cli relay`` as a subprocess and
SIGKILLs it several times while events keep being written; at the end the
stream must hold every event exactly once and nothing may be left unpublished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.js.api import PubAck, RawStreamMsg
from nats.js.client import JetStreamContext
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from canaries import scan_messages
from gateway.cli import main as cli_main
from gateway.db.database import Database
from gateway.db.schema import events
from gateway.events import append_event
from gateway.relay import (
    Backoff,
    EventRelay,
    RelayConfig,
    acknowledged_prefix,
    outbox_position,
    stream_config,
    stream_update,
    subject_for,
)
from gateway.settings import Settings
from shared.errors import ValidationFailed
from stores import postgres_database

NATS_URL = os.environ.get("PHS_TEST_NATS_URL", "")
FACILITY_SYNCED = "population_health.facility_report.synced.v1"
PHI_MARKER = "PHI-DO-NOT-LOG"  # in every test event's data; must never reach a log
TENANTS = ("t1", "district.north", "t:3")  # a "." and a ":" in tenant ids


def fixed_clock() -> datetime:
    return datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


# ----------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("tenant", "event_type", "subject"),
    [
        # the usual case: the type's dotted segments stay tokens
        ("t1", FACILITY_SYNCED, f"phs.events.t1.{FACILITY_SYNCED}"),
        # a "." in a tenant id would split its token: escaped
        ("district.north", "a.b", "phs.events.district%2Enorth.a.b"),
        # ":" "-" "_" are plain subject characters
        ("t:3_x-y", "a", "phs.events.t:3_x-y.a"),
        # wildcards and whitespace never reach a subject
        ("t*", "a >b", "phs.events.t%2A.a%20%3Eb"),
        # an empty segment in a type would make an invalid subject: escaped whole
        ("t1", "a..b", "phs.events.t1.a%2E%2Eb"),
        # non-ASCII as UTF-8 bytes
        ("tö", "x", "phs.events.t%C3%B6.x"),
        # an empty tenant or type still makes a token
        ("", "", "phs.events.%00.%00"),
    ],
)
def test_subject_for(tenant: str, event_type: str, subject: str) -> None:
    assert subject_for("phs.events", tenant, event_type) == subject


def _ack(stream: str, seq: int, duplicate: bool = False) -> PubAck:
    return PubAck(stream=stream, seq=seq, duplicate=duplicate)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([], 0),
        ([_ack("S", 1), _ack("S", 2)], 2),
        ([_ack("S", 1), _ack("S", 1, duplicate=True)], 2),  # a duplicate is stored
        ([_ack("S", 1), None, _ack("S", 3)], 1),  # no answer in time: stop there
        ([nats.errors.TimeoutError(), _ack("S", 2)], 0),  # an error first: nothing
        ([_ack("S", 1), _ack("OTHER", 2)], 1),  # stored elsewhere does not count
    ],
)
def test_acknowledged_prefix(outcomes: list[Any], expected: int) -> None:
    assert acknowledged_prefix(outcomes, "S") == expected


def test_backoff_grows_with_jitter_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(maximum=3.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(8)]
    ceilings = [0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0, 3.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next() <= 0.2


@pytest.mark.parametrize(
    "changes",
    [
        {"relay_stream": "has.dot"},
        {"relay_stream": ""},
        {"relay_subject_prefix": "phs.*"},
        {"relay_subject_prefix": "phs..events"},
        {"relay_nats_url": "http://127.0.0.1:4222"},
        {"relay_batch_size": 0},
        {"relay_duplicate_window_seconds": 0},
        {"relay_poll_interval_seconds": 0.0},
        {"relay_max_backoff_seconds": -1.0},
    ],
)
def test_bad_relay_settings_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed):
        RelayConfig.from_settings(replace(Settings(), **changes))


def test_stream_update_keeps_the_operators_settings() -> None:
    config = RelayConfig.from_settings(Settings())
    assert stream_update(stream_config(config), config) is None
    existing = replace(stream_config(config), duplicate_window=120.0, max_age=86400.0 * 30)
    updated = stream_update(existing, config)
    assert updated is not None
    assert updated.duplicate_window == 7200.0
    assert updated.max_age == 86400.0 * 30  # a limit the operator set stays
    assert updated.subjects == ["phs.events.>"]


def test_cli_refuses_a_bad_nats_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["relay", "--nats", "http://x", "--data-dir", str(tmp_path)])
    assert code == 2
    assert "relay_nats_url" in capsys.readouterr().err


# ----------------------------------------------------------------- NATS fixtures


async def _connect(url: str) -> NatsClient:
    async def quiet(_err: Exception) -> None:
        pass

    nc = NatsClient()
    try:
        # two quick attempts: nats-py would otherwise retry for two minutes
        await nc.connect(
            url,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=3,
            error_cb=quiet,
        )
    except BaseException:
        await nc.close()
        raise
    return nc


@pytest.fixture
async def nats_url() -> str:
    if not NATS_URL:
        pytest.skip(
            "PHS_TEST_NATS_URL is not set: no NATS server to test the relay against "
            "(.ci/run sets nats://127.0.0.1:4222 when a server with JetStream answers there)"
        )
    try:
        nc = await _connect(NATS_URL)
    except (nats.errors.Error, OSError, TimeoutError) as err:
        pytest.skip(f"NATS at PHS_TEST_NATS_URL={NATS_URL} is unreachable: {err!r}")
    try:
        await nc.jetstream().account_info()
    except nats.errors.Error as err:
        pytest.skip(f"NATS at {NATS_URL} has no JetStream (start it with -js): {err!r}")
    finally:
        await nc.close()
    return NATS_URL


@dataclass(frozen=True)
class TestStream:
    __test__ = False
    name: str
    prefix: str
    js: JetStreamContext


@pytest.fixture
async def stream(nats_url: str) -> AsyncIterator[TestStream]:
    """A stream name and subject prefix of this test's own; the stream is deleted after."""
    unique = uuid.uuid4().hex[:12]
    nc = await _connect(nats_url)
    js = nc.jetstream(timeout=10)
    try:
        yield TestStream(f"PHS_TEST_{unique}", f"phstest.{unique}", js)
        # What the relay published, read back for canaries (tests/canaries.py).
        with contextlib.suppress(nats.js.errors.NotFoundError):
            published = await stream_messages(js, f"PHS_TEST_{unique}")
            scan_messages((m.data for m in published), f"NATS stream PHS_TEST_{unique}")
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(f"PHS_TEST_{unique}")
        await nc.close()


def relay_settings(base: Settings, stream: TestStream, **changes: Any) -> Settings:
    defaults: dict[str, Any] = {
        "relay_nats_url": NATS_URL,
        "relay_stream": stream.name,
        "relay_subject_prefix": stream.prefix,
        "relay_poll_interval_seconds": 0.05,
        "relay_publish_timeout_seconds": 5.0,
        "relay_max_backoff_seconds": 1.0,
    }
    return replace(base, **{**defaults, **changes})


@pytest.fixture
async def database(gateway_settings: Settings) -> AsyncIterator[Database]:
    db = Database(gateway_settings.sqlalchemy_url())
    await db.migrate()
    try:
        yield db
    finally:
        await db.close()


async def write_events(database: Database, count: int, per_transaction: int = 1) -> list[str]:
    """``count`` events over the test tenants, ``per_transaction`` in each commit."""
    ids: list[str] = []
    while len(ids) < count:
        async with database.write() as conn:
            for _ in range(min(per_transaction, count - len(ids))):
                n = len(ids)
                ids.append(
                    await append_event(
                        conn,
                        FACILITY_SYNCED,
                        TENANTS[n % len(TENANTS)],
                        fixed_clock(),
                        {"reportId": f"r{n}", "facilityId": "f1", "note": PHI_MARKER},
                    )
                )
    return ids


async def stream_messages(js: JetStreamContext, name: str) -> list[RawStreamMsg]:
    """Every message the stream holds, in stream order."""
    info = await js.stream_info(name)
    if info.state.messages == 0:
        return []
    return [
        await js.get_msg(name, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


def message_ids(messages: list[RawStreamMsg]) -> list[str]:
    out = []
    for message in messages:
        assert message.headers is not None
        out.append(message.headers["Nats-Msg-Id"])
    return out


async def all_event_ids(database: Database) -> list[str]:
    async with database.read() as conn:
        return list((await conn.execute(sa.select(events.c.event_id))).scalars())


# ----------------------------------------------------------------- in-process relay


async def test_relay_publishes_every_event_once_with_its_id(
    database: Database,
    gateway_settings: Settings,
    stream: TestStream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = await write_events(database, 60, per_transaction=4)
    config = RelayConfig.from_settings(
        relay_settings(gateway_settings, stream, relay_batch_size=25)
    )
    relay = EventRelay(database, config, fixed_clock)
    try:
        async with asyncio.timeout(60):
            assert await relay.drain() == 60
    finally:
        await relay.close()

    info = await stream.js.stream_info(stream.name)
    assert info.config.subjects == [f"{stream.prefix}.>"]
    assert info.config.duplicate_window == 7200.0  # the default setting, in seconds
    messages = await stream_messages(stream.js, stream.name)
    assert sorted(message_ids(messages)) == sorted(ids)
    async with database.read() as conn:
        rows = {r.event_id: r for r in await conn.execute(sa.select(events))}
    for message in messages:
        assert message.data is not None and message.headers is not None
        body = json.loads(message.data)
        row = rows[message.headers["Nats-Msg-Id"]]
        # the message is the event as GET …/events gives it
        assert body == {
            "seq": row.seq,
            "id": row.event_id,
            "type": row.type,
            "time": row.time,
            "tenantId": row.tenant_id,
            "data": row.data,
        }
        assert message.subject == subject_for(stream.prefix, row.tenant_id, row.type)
        assert message.headers["Content-Type"] == "application/json"
        assert row.published_at == "2026-11-25T12:00:00.000Z"
    position = await outbox_position(database)
    assert (position.total, position.unpublished) == (60, 0)
    assert PHI_MARKER not in caplog.text


async def test_relay_resumes_after_restart_and_the_window_drops_republished_events(
    database: Database, gateway_settings: Settings, stream: TestStream
) -> None:
    """A relay that died after JetStream's acknowledgement but before its mark
    publishes those events again; the stream keeps each once."""
    config = RelayConfig.from_settings(
        relay_settings(gateway_settings, stream, relay_batch_size=10)
    )
    first = await write_events(database, 40, per_transaction=3)
    relay = EventRelay(database, config, fixed_clock)
    try:
        async with asyncio.timeout(60):
            await relay.drain()
    finally:
        await relay.close()
    # as if the last 15 marks had never been written
    async with database.write() as conn:
        await conn.execute(
            events.update().where(events.c.event_id.in_(first[-15:])).values(published_at=None)
        )
    assert (await outbox_position(database)).unpublished == 15
    second = await write_events(database, 20)

    restarted = EventRelay(database, config, fixed_clock)
    try:
        async with asyncio.timeout(60):
            assert await restarted.drain() == 35
    finally:
        await restarted.close()
    assert restarted.duplicates == 15  # acknowledged as already stored, not stored again
    messages = await stream_messages(stream.js, stream.name)
    assert sorted(message_ids(messages)) == sorted(first + second)
    assert (await outbox_position(database)).unpublished == 0


async def test_relay_recreates_a_deleted_stream(
    database: Database, gateway_settings: Settings, stream: TestStream
) -> None:
    config = RelayConfig.from_settings(relay_settings(gateway_settings, stream))
    relay = EventRelay(database, config, fixed_clock)
    try:
        await write_events(database, 5)
        async with asyncio.timeout(60):
            await relay.drain()
        await stream.js.delete_stream(stream.name)
        ids = await write_events(database, 5)
        async with asyncio.timeout(60):
            await relay.drain()  # the publish fails, the relay reconnects and verifies
    finally:
        await relay.close()
    assert sorted(message_ids(await stream_messages(stream.js, stream.name))) == sorted(ids)


async def test_relay_refuses_a_stream_whose_subjects_another_stream_owns(
    database: Database, gateway_settings: Settings, stream: TestStream
) -> None:
    await stream.js.add_stream(name=stream.name + "_OTHER", subjects=[f"{stream.prefix}.>"])
    try:
        config = RelayConfig.from_settings(relay_settings(gateway_settings, stream))
        relay = EventRelay(database, config, fixed_clock)
        with pytest.raises(ValidationFailed, match="refused stream"):
            await relay.publish_batch()
        await relay.close()
    finally:
        await stream.js.delete_stream(stream.name + "_OTHER")


class TcpProxy:
    """A plain TCP proxy on loopback that can be taken down: live connections
    are reset and new ones refused until it is up again (a NATS or database
    outage as the relay sees it)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.down = False
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            for writer in list(self._writers):
                writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.set_down(True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


async def wait_until_published(database: Database, total: int, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while True:
            position = await outbox_position(database)
            if position.total >= total and position.unpublished == 0:
                return
            await asyncio.sleep(0.05)


async def test_relay_retries_with_back_off_when_nothing_listens(
    database: Database, gateway_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused connection is retried after the relay's own back-off, not after
    nats-py's two minutes of internal attempts; nothing is marked meanwhile."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    settings = replace(
        gateway_settings,
        relay_nats_url=f"nats://127.0.0.1:{port}",
        relay_max_backoff_seconds=0.5,
    )
    await write_events(database, 3)
    relay = EventRelay(database, RelayConfig.from_settings(settings), fixed_clock)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(1.5)
    stop.set()
    async with asyncio.timeout(10):
        await task
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 3
    assert "NATS unreachable (ConnectionRefusedError)" in retries[0].getMessage()
    assert (await outbox_position(database)).unpublished == 3


async def test_relay_backs_off_while_nats_is_down_and_catches_up(
    database: Database,
    gateway_settings: Settings,
    stream: TestStream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = make_url(NATS_URL.replace("nats://", "postgresql://"))  # host and port only
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 4222)
    port = await proxy.start()
    settings = relay_settings(
        gateway_settings, stream, relay_batch_size=7, relay_publish_timeout_seconds=1.0
    )
    config = replace(RelayConfig.from_settings(settings), servers=(f"nats://127.0.0.1:{port}",))
    relay = EventRelay(database, config, fixed_clock)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        ids = await write_events(database, 20)
        await wait_until_published(database, 20, 30)
        proxy.set_down(True)  # the link to NATS breaks, and nothing answers
        ids += await write_events(database, 30, per_transaction=5)
        await asyncio.sleep(1.5)
        assert (await outbox_position(database)).unpublished == 30  # nothing marked
        assert proxy.refused >= 1  # the relay kept trying
        proxy.set_down(False)
        await wait_until_published(database, 50, 30)
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task
        await proxy.stop()
    assert sorted(message_ids(await stream_messages(stream.js, stream.name))) == sorted(ids)
    assert "retrying in" in caplog.text
    assert PHI_MARKER not in caplog.text


# ----------------------------------------------------------------- PostgreSQL only


async def test_an_event_committed_after_a_higher_seq_is_still_published(
    stream: TestStream,
) -> None:
    """On PostgreSQL a seq is taken at insert and becomes visible at commit, so
    a slow transaction can commit seq n after seq n+1 was published; per-event
    marks (not a high-water cursor) publish it all the same."""
    async with postgres_database() as url:
        database = Database(url)
        await database.migrate()
        config = RelayConfig.from_settings(relay_settings(Settings(database_url=url), stream))
        relay = EventRelay(database, config, fixed_clock)
        try:
            engine = create_async_engine(url)
            try:
                async with engine.connect() as slow:
                    transaction = await slow.begin()
                    slow_id = await append_event(slow, "t.slow.v1", "t1", fixed_clock(), {})
                    fast = await write_events(database, 3)  # seqs after the slow one's
                    async with asyncio.timeout(60):
                        assert await relay.drain() == 3
                    await transaction.commit()
            finally:
                await engine.dispose()
            async with asyncio.timeout(60):
                assert await relay.drain() == 1
        finally:
            await relay.close()
            await database.close()
        messages = await stream_messages(stream.js, stream.name)
        assert message_ids(messages) == [*fast, slow_id]


async def test_relay_backs_off_while_the_database_is_down(stream: TestStream) -> None:
    async with postgres_database() as real_url:
        setup = Database(real_url)
        await setup.migrate()
        ids = await write_events(setup, 10)
        url = make_url(real_url)
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
        port = await proxy.start()
        proxied = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        database = Database(proxied)
        config = RelayConfig.from_settings(relay_settings(Settings(database_url=proxied), stream))
        relay = EventRelay(database, config, fixed_clock)
        stop = asyncio.Event()
        proxy.set_down(True)
        task = asyncio.create_task(relay.run(stop))
        try:
            await asyncio.sleep(1.5)
            assert proxy.refused >= 2  # it retried
            assert (await outbox_position(setup)).unpublished == 10
            proxy.set_down(False)
            await wait_until_published(setup, 10, 30)
            proxy.set_down(True)  # down again with connections in the pool
            ids += await write_events(setup, 10)
            await asyncio.sleep(1.0)
            proxy.set_down(False)
            await wait_until_published(setup, 20, 30)
        finally:
            stop.set()
            async with asyncio.timeout(20):
                await task
            await proxy.stop()
            await database.close()
            await setup.close()
        assert sorted(message_ids(await stream_messages(stream.js, stream.name))) == sorted(ids)


# ----------------------------------------------------------------- crash test

CRASH_EVENTS = 1000
CRASH_KILLS = 5


@contextlib.contextmanager
def relay_process(
    settings: Settings, stream: TestStream, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m gateway.cli relay`` on the test's store and stream."""
    env = {
        **os.environ,
        "PHS_GATEWAY_RELAY_STREAM": stream.name,
        "PHS_GATEWAY_RELAY_SUBJECT_PREFIX": stream.prefix,
        "PHS_GATEWAY_RELAY_BATCH_SIZE": "20",
        "PHS_GATEWAY_RELAY_POLL_INTERVAL_SECONDS": "0.05",
        "PHS_GATEWAY_RELAY_MAX_BACKOFF_SECONDS": "1",
        "PHS_GATEWAY_LOG_LEVEL": "DEBUG",
    }
    command = [sys.executable, "-m", "gateway.cli", "relay", "--nats", NATS_URL]
    command += ["--data-dir", settings.data_dir]
    if settings.database_url:
        command += ["--database-url", settings.database_url]
    with log.open("ab") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=sink)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


async def test_relay_killed_mid_stream_publishes_every_event_exactly_once(
    database: Database, gateway_settings: Settings, stream: TestStream, tmp_path: Path
) -> None:
    started = time.monotonic()
    log = tmp_path / "relay.log"
    rng = random.Random(6)
    written: list[str] = []

    async def writer() -> None:
        # about 1000 events over ~12 s, 1-4 per transaction, whatever the relay does
        while len(written) < CRASH_EVENTS:
            written.extend(
                await write_events(database, min(rng.randint(1, 4), CRASH_EVENTS - len(written)))
            )
            await asyncio.sleep(0.03)

    async def stored() -> int:
        return (await stream.js.stream_info(stream.name)).state.messages

    writing = asyncio.create_task(writer())
    kills = 0
    kill_points: list[tuple[int, int]] = []  # (events written, messages stored) at each kill
    try:
        for _ in range(CRASH_KILLS):
            with relay_process(gateway_settings, stream, log) as process:
                # let it get going: the stream must grow by a couple of batches
                async with asyncio.timeout(30):
                    while True:
                        with contextlib.suppress(nats.js.errors.NotFoundError):
                            before = await stored()
                            break
                        await asyncio.sleep(0.05)
                    while await stored() < before + 40:
                        assert process.poll() is None, log.read_text()
                        await asyncio.sleep(0.02)
                await asyncio.sleep(rng.uniform(0, 0.3))  # somewhere in a batch
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
                assert process.returncode == -signal.SIGKILL
                kills += 1
                kill_points.append((len(written), await stored()))
        async with asyncio.timeout(60):
            await writing
        with relay_process(gateway_settings, stream, log) as process:
            await wait_until_published(database, CRASH_EVENTS, 60)
            process.send_signal(signal.SIGTERM)  # a clean stop ends with 0
            assert process.wait(timeout=20) == 0, log.read_text()
    finally:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing

    messages = await stream_messages(stream.js, stream.name)
    published = message_ids(messages)
    assert len(written) == CRASH_EVENTS
    assert len(published) == len(set(published)) == CRASH_EVENTS  # each exactly once
    assert sorted(published) == sorted(await all_event_ids(database)) == sorted(written)
    position = await outbox_position(database)
    assert position.unpublished == 0 and position.first_unpublished_seq is None
    assert position.total == CRASH_EVENTS
    if database.is_sqlite:  # one writer: commit order is seq order, and so is the stream's
        seqs = [json.loads(m.data or b"{}")["seq"] for m in messages]
        assert seqs == sorted(seqs)
    text = log.read_text()
    assert PHI_MARKER not in text
    dropped = sum(
        int(line.split("relay: ")[1].split()[0])
        for line in text.splitlines()
        if "were already in the stream" in line
    )
    print(
        f"\nrelay crash test ({database.dialect}): {CRASH_EVENTS} events, {kills} SIGKILLs, "
        f"{dropped} re-published events dropped by the window, "
        f"{time.monotonic() - started:.1f} s; (written, stored) at the kills: {kill_points}"
    )


# ----------------------------------------------------------------- one relay per database


async def until(condition: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def test_a_second_relay_stands_by_and_takes_over_when_the_first_stops(
    database: Database,
    gateway_settings: Settings,
    stream: TestStream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "gateway.relay")
    config = RelayConfig.from_settings(relay_settings(gateway_settings, stream))
    # Each relay on its own store object, as two processes would be.
    first_db, second_db = (
        Database(database.url.render_as_string(False)),
        Database(database.url.render_as_string(False)),
    )
    first, second = (
        EventRelay(first_db, config, fixed_clock),
        EventRelay(second_db, config, fixed_clock),
    )
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    running_first = asyncio.create_task(first.run(stop_first))
    await until(lambda: first.lock.held, 30)
    running_second = asyncio.create_task(second.run(stop_second))
    try:
        ids = await write_events(database, 40, per_transaction=8)
        await wait_until_published(database, 40, 30)
        assert (first.published, second.published) == (40, 0)
        assert not second.lock.held
        assert "another relay holds this database's outbox" in caplog.text

        stop_first.set()
        await asyncio.wait_for(running_first, 30)
        ids += await write_events(database, 20)
        await wait_until_published(database, 60, 30)
        assert (first.published, second.published) == (40, 20)
        assert "took over the outbox" in caplog.text
    finally:
        stop_first.set()
        stop_second.set()
        await asyncio.wait_for(asyncio.gather(running_first, running_second), 30)
        await first_db.close()
        await second_db.close()
    assert sorted(message_ids(await stream_messages(stream.js, stream.name))) == sorted(ids)


async def test_a_relay_whose_lock_session_dies_loses_the_lock(stream: TestStream) -> None:
    """PostgreSQL: the advisory lock lives in the holder's session. When that
    session is cut (the connection lost, the backend terminated), the server
    frees the lock and the holder stops publishing; whichever relay asks next
    takes it (the standby, or the first on a new session), and only it
    publishes: every event once."""
    async with postgres_database() as url:
        config = RelayConfig.from_settings(relay_settings(Settings(database_url=url), stream))
        first_db, second_db = Database(url), Database(url)
        await first_db.migrate()
        first = EventRelay(first_db, config, fixed_clock)
        second = EventRelay(second_db, config, fixed_clock)
        stops = asyncio.Event(), asyncio.Event()
        running = [asyncio.create_task(first.run(stops[0]))]
        try:
            await until(lambda: first.lock.held, 30)
            running.append(asyncio.create_task(second.run(stops[1])))
            await asyncio.sleep(0.3)
            assert not second.lock.held
            async with first_db.write() as conn:  # cut the holder's lock session
                await conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks"
                        " WHERE locktype = 'advisory' AND granted"
                        " AND pid <> pg_backend_pid()"
                        # this test's database only: other tests run beside it
                        " AND database = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database())"
                    )
                )
            before = first.published
            await until(lambda: first.lock.held != second.lock.held, 30)  # one holds it
            ids = await write_events(first_db, 10)
            await wait_until_published(first_db, 10, 30)
            assert [first.lock.held, second.lock.held].count(True) == 1
            assert (first.published - before) + second.published == 10
            assert sorted(message_ids(await stream_messages(stream.js, stream.name))) == sorted(ids)
        finally:
            for stop in stops:
                stop.set()
            await asyncio.wait_for(asyncio.gather(*running), 30)
            await first_db.close()
            await second_db.close()

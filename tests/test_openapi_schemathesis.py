"""schemathesis against a live gateway, driven by the gateway's own OpenAPI document.

The gateway is the production app on a real TCP port of 127.0.0.1 (SQLite
under ``tmp_path``; PostgreSQL too when ``PHS_TEST_POSTGRES_URL`` is set),
served from an event loop in a thread of its own, because schemathesis sends
its requests with ``requests`` from this one. The document is fetched from
``GET /api/v1/openapi.json`` as any client would.

For every operation, schemathesis generates requests that follow the
document (positive) and requests that break it (negative: wrong types,
missing fields, unknown fields, bad headers), with an admin bearer token
(a service token for the registry's writes). Signed endpoints get no valid
signature, so they must answer a documented 401. Checks: no 5xx, every
status documented for its operation, the answer's content type documented,
and the answer's body valid against the documented schema (problem
documents included: the ``code`` must be one of those the operation lists).
Nothing may log an unhandled error. Bounded: ``EXAMPLES`` cases per operation
and mode, derandomized, so CI repeats the same run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import msgpack
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.http import DATABASE
from gateway.openapi import OPENAPI_PATH
from gateway.registry import create_token
from gateway.settings import Settings
from harness import START

T = TypeVar("T")
# Cases per operation and generation mode: 4 in CI (about 500 requests, ~45 s on
# this 2-core machine, most of it schemathesis generating); more with
# PHS_SCHEMATHESIS_EXAMPLES=50 for the long run (docs/reliability.md).
EXAMPLES = int(os.environ.get("PHS_SCHEMATHESIS_EXAMPLES", "4"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SERVICE_OPERATIONS = {"putRegistryEntry", "deleteRegistryEntry"}


@schemathesis.serializer("application/msgpack")
def _msgpack(_ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """Request bodies in msgpack, as the edge node and tablets send them."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


class LiveGateway:
    """The gateway app on 127.0.0.1, its event loop in a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._app: web.Application | None = None
        self._thread = threading.Thread(target=self._main, name="live-gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(30), "the gateway did not start"

    def stop(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the gateway's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(30)

    def token(self, role: str) -> str:
        async def make() -> str:
            assert self._app is not None
            async with self._app[DATABASE].write() as conn:
                token, _ = await create_token(
                    conn, tenant_id="t1", role=role, label="schemathesis", now=START
                )
            return token

        return self.run(make())

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._app = create_app(self.settings)
        runner = web.AppRunner(self._app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


def modes_for(operation: Any) -> list[schemathesis.GenerationMode]:
    """Positive cases for every operation; negative ones where it takes something
    to get wrong (a body or a parameter: healthz takes nothing)."""
    takes = operation.body or any(
        len(group) for group in (operation.path_parameters, operation.query, operation.headers)
    )
    positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
    return [positive, negative] if takes else [positive]


def exercise(
    operation: Any, mode: schemathesis.GenerationMode, session: requests.Session, auth: str
) -> list[int]:
    """Run ``EXAMPLES`` generated cases of ``operation`` through every check; the
    statuses answered (a failing check raises, naming the case and a curl line)."""
    answered: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        # No shrinking: a failure is reported as found (each shrink step is a
        # request), which keeps a failing run as bounded as a passing one.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(
            session=session, headers={"Authorization": auth}, checks=CHECKS, timeout=10
        )
        answered.append(response.status_code)

    run()
    return answered


@pytest.fixture
def live_gateway(gateway_settings: Settings) -> Iterator[LiveGateway]:
    live = LiveGateway(gateway_settings)
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # bounded: one store in CI
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    live_gateway: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway")
    admin, service = live_gateway.token("admin"), live_gateway.token("service")
    session = requests.Session()
    served = session.get(live_gateway.url + OPENAPI_PATH, timeout=10)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json())
    schema.config.update(base_url=live_gateway.url)

    started = time.monotonic()
    tried: dict[str, int] = {}
    statuses: dict[int, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        token = service if operation.definition.raw["operationId"] in SERVICE_OPERATIONS else admin
        for mode in modes_for(operation):
            try:
                for status in exercise(operation, mode, session, f"Bearer {token}"):
                    tried[operation.label] = tried.get(operation.label, 0) + 1
                    statuses[status] = statuses.get(status, 0) + 1
            except (Exception, BaseExceptionGroup) as failure:  # every operation is tried
                failures.append(f"{operation.label} ({mode.value}): {failure}")
    elapsed = time.monotonic() - started
    print(f"schemathesis: {sum(tried.values())} requests, {len(tried)} operations, {elapsed:.1f} s")
    print("statuses:", dict(sorted(statuses.items())))
    assert not failures, "\n\n".join(failures)
    assert len(tried) >= 55, sorted(tried)
    assert not [r for r in caplog.records if r.getMessage().startswith("unhandled error")]

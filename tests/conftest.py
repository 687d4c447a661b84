from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from harness import FakeClock, Gateway
from netns import netns  # noqa: F401 - a private network namespace per test


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gateway_settings(tmp_path: Any) -> Settings:
    return Settings(data_dir=str(tmp_path / "gateway"))


@pytest.fixture
async def gateway(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],  # type: ignore[type-arg]
    gateway_settings: Settings,
    clock: FakeClock,
) -> Gateway:
    client = await aiohttp_client(create_app(gateway_settings, clock))
    return Gateway(client, clock)

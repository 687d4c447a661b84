"""A caller whose connection breaks mid-body is not a server error.

Found by the chaos run: the fault proxy reset the edge's batch upload while
the gateway read its body; aiohttp raised ``ConnectionResetError`` out of
``request.read()`` and the gateway logged "unhandled error" with a traceback
(an ERROR line per WAN hiccup). Now it is logged at INFO and nothing else
happens: the store is unchanged. A real server on loopback and a raw socket
that sends half a body, then a TCP RST.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

import pytest
import sqlalchemy as sa
from aiohttp import web

from gateway.app import create_app
from gateway.db.schema import idempotency_keys, outreach_items, outreach_transitions
from gateway.http import DATABASE
from gateway.settings import Settings
from harness import PREFIX


def send_half_then_reset(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 4000\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"items": [' + b" " * 100)
        time.sleep(0.2)  # the handler is waiting for the rest of the body
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_body_cut_by_a_reset_is_logged_as_a_lost_connection(
    gateway_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # As ``phs-gateway serve`` runs it (run_app: handlers are not cancelled when
    # their client goes away; aiohttp's TestServer would cancel them instead).
    app = create_app(gateway_settings)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = int(runner.addresses[0][1])
        with caplog.at_level(logging.INFO, logger="gateway.http"):
            # An edge node's batch upload: the body is read before its signature is checked.
            await asyncio.to_thread(send_half_then_reset, port, f"{PREFIX}/sync/batches")
            for _ in range(100):  # bounded: until the handler has seen the reset
                if any("connection lost mid-request" in r.message for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
        async with app[DATABASE].read() as conn:
            written = [
                (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
                for table in (idempotency_keys, outreach_transitions, outreach_items)
            ]
    finally:
        await runner.cleanup()
    lost = [r for r in caplog.records if "connection lost mid-request" in r.message]
    assert len(lost) == 1 and {r.levelno for r in lost} == {logging.INFO}
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert written == [0, 0, 0]

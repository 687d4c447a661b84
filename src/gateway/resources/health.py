"""``GET /healthz`` (the process answers) and ``GET /readyz`` (the store answers)."""

from __future__ import annotations

from aiohttp import web

from gateway.http import database, respond


async def healthz(request: web.Request) -> web.Response:
    return respond(request, 200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    await database(request).ping()  # ServiceUnavailable (503) when it does not
    return respond(request, 200, {"status": "ready"})

"""``GET /`` (status page), ``GET /status`` and ``GET /healthz`` for the office
LAN (``GET /metrics``: resources/metrics.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from edgenode.http import NODE_KEY, edge_db, edge_settings
from edgenode.status import status_document as collect_status_document
from edgenode.status_page import render
from gateway.http import CLOCK, respond
from observability.html_page import SECURITY_HEADERS


async def healthz(request: web.Request) -> web.Response:
    return respond(request, 200, {"status": "ok"})


async def page(request: web.Request) -> web.Response:
    """The status page: HTML for people on the office LAN (``edgenode.status_page``)."""
    now = request.app[CLOCK]()
    doc = await _status_document(request, now)
    return web.Response(text=render(doc, now), content_type="text/html", headers=SECURITY_HEADERS)


async def status_document(request: web.Request) -> web.Response:
    """``GET /status``: the status page's figures as a document (JSON or msgpack)."""
    doc = await _status_document(request, request.app[CLOCK]())
    return respond(request, 200, doc, {"Cache-Control": "no-store"})


async def _status_document(request: web.Request, now: datetime) -> dict[str, Any]:
    async with edge_db(request).read() as conn:
        return await collect_status_document(
            conn, now, edge_settings(request), request.app[NODE_KEY].public_key
        )

"""``GET /api/v1/openapi.json``: the gateway's OpenAPI 3.1 document (no auth).

The document is built once from ``gateway.openapi`` and served as is; it
describes the API, so it is always JSON, whatever the Accept.
"""

from __future__ import annotations

from aiohttp import web

from gateway.openapi import openapi_bytes
from shared.encoding import JSON


async def read(_request: web.Request) -> web.Response:
    return web.Response(body=openapi_bytes(), content_type=JSON)

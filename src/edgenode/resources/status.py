"""``GET /`` (status page) and ``GET /healthz`` for the office LAN
(``GET /metrics``: resources/metrics.py)."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web

from edgenode.http import edge_db, edge_settings
from edgenode.status import collect_status
from gateway.http import CLOCK, respond


async def healthz(request: web.Request) -> web.Response:
    return respond(request, 200, {"status": "ok"})


async def page(request: web.Request) -> web.Response:
    settings = edge_settings(request)
    async with edge_db(request).read() as conn:
        status = await collect_status(conn, request.app[CLOCK]())
    seen = status.pop("devicesSeen")
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in status.items()
    )
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<meta http-equiv='refresh' content='15'>"
        f"<title>Edge node {html.escape(settings.node_id)}</title>"
        "<style>body{font-family:sans-serif;margin:1em}th{text-align:left;padding-right:1em}"
        ".seen td{padding-right:1em}"
        "</style></head><body>"
        f"<h1>Edge node {html.escape(settings.node_id)}</h1>"
        f"<p>Tenant {html.escape(settings.tenant_id)} · facilities "
        f"{html.escape(', '.join(settings.facility_ids))} · gateway "
        f"{html.escape(settings.gateway_url)}</p><table>{rows}</table>"
        f"{_devices_seen(seen)}</body></html>"
    )
    return web.Response(text=body, content_type="text/html")


_SEEN_COLUMNS = (
    ("deviceId", "device"),
    ("present", "present"),
    ("paired", "paired"),
    ("pending", "pending"),
    ("addresses", "addresses"),
    ("port", "port"),
    ("firstSeen", "first seen"),
    ("lastSeen", "last seen"),
    ("lastGatherAt", "last gather"),
    ("lastGatherError", "gather error"),
    ("gatheredRecords", "records gathered"),
)


def _devices_seen(devices: list[dict[str, Any]]) -> str:
    """Field devices seen on the LAN (discovery), one row each."""
    if not devices:
        return "<h2>Devices seen on the LAN</h2><p>none yet</p>"

    def cell(value: Any) -> str:
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        return f"<td>{html.escape('' if value is None else str(value))}</td>"

    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in _SEEN_COLUMNS)
    body = "".join(
        "<tr>" + "".join(cell(d[key]) for key, _ in _SEEN_COLUMNS) + "</tr>" for d in devices
    )
    return f"<h2>Devices seen on the LAN</h2><table class='seen'><tr>{head}</tr>{body}</table>"

"""Text no store can hold: a NUL character (U+0000) or a lone surrogate in a
path parameter, a query string or a body string, on both stores (and at the
edge node, which shares the middleware and the body decoder).

PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded to
UTF-8, so asyncpg raised and ``GET …/outreach-items/%00`` answered 500 on
PostgreSQL (found by the fuzzing of issue 8). Such text is refused where a
request is read, before any handler: in a path or query string 422
``validation_failed`` naming the parameter (``gateway.middleware``); in a body
400 ``malformed_body`` (``shared.encoding.decode_body``). Every route is tried,
listed from the gateway's own router, so a new route cannot miss it.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from edge_harness import edge_system, encode
from harness import PREFIX, Gateway, assert_problem, bearer, signed_report, transition
from shared.signing import KeyPair

PARAMETER = re.compile(r"\{(\w+)\}")
# %00 (NUL), and a lone surrogate's UTF-8 form (aiohttp keeps invalid UTF-8
# percent-encoded in a path, and reads it as U+FFFD in a query: never refused).
NUL = "a%00b"


def routes(gateway: Gateway) -> list[tuple[str, str]]:
    """(method, path template) of every route of the gateway, HEAD left out."""
    found = []
    for route in gateway.client.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path")
        if route.method != "HEAD" and template:
            found.append((route.method, str(template)))
    assert len(found) > 50, found  # the whole table, not a part of it
    return sorted(set(found))


def fill(template: str, value: str) -> str:
    return PARAMETER.sub(value, template)


async def request(
    gateway: Gateway, token: str, method: str, path: str, body: bytes | None = None
) -> Any:
    headers = bearer(token, Accept="application/json")
    if method not in ("GET", "DELETE"):
        headers["Content-Type"] = "application/json"
        body = b"{}" if body is None else body
    return await gateway.client.request(method, path, data=body, headers=headers)


async def test_a_nul_in_any_path_parameter_is_refused(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    await gateway.create_item(admin, "oi-1", "assigned")
    before = await gateway.snapshot()
    tried = 0
    for method, template in routes(gateway):
        names = PARAMETER.findall(template)
        for name in names:
            # One parameter spoilt, the others valid: the spoilt one is named.
            path = PARAMETER.sub(lambda m, n=name: NUL if m.group(1) == n else "x-1", template)
            resp = await request(gateway, admin, method, path)
            problem = await assert_problem(resp, 422, "validation_failed")
            assert problem["field"] == name, (method, path, problem)
            assert "NUL" in problem["detail"], problem
            tried += 1
    assert tried > 30
    assert await gateway.snapshot() == before


@pytest.mark.parametrize(
    "query",
    [
        "facilityId=a%00b",  # a value
        "limit=10&after=%00",  # a value beside a good one
        "a%00=1",  # a name
    ],
)
async def test_a_nul_in_any_query_string_is_refused(gateway: Gateway, query: str) -> None:
    admin = await gateway.token("admin")
    before = await gateway.snapshot()
    for method, template in routes(gateway):
        if method != "GET":
            continue
        resp = await request(gateway, admin, method, f"{fill(template, 'x-1')}?{query}")
        problem = await assert_problem(resp, 422, "validation_failed")
        assert "query" in problem["detail"] and "NUL" in problem["detail"], problem
        assert "\x00" not in json.dumps(problem), problem  # never echoed back
    assert await gateway.snapshot() == before


async def test_the_outreach_item_of_the_report_is_refused_not_a_500(gateway: Gateway) -> None:
    """The request the fuzz found, as sent: ``GET …/outreach-items/%00``."""
    admin = await gateway.token("admin")
    resp = await gateway.client.get(f"{PREFIX}/outreach-items/%00", headers=bearer(admin))
    problem = await assert_problem(resp, 422, "validation_failed")
    assert problem["field"] == "id"


def bodies(node_key: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, a valid document) of writes whose strings reach the store."""
    entry = {
        "facilityId": "f-001",
        "patientRef": "p-1",
        "sex": "female",
        "birthDate": "1970-01-01",
        "conditions": [{"code": "E11", "onsetDate": "2020-03-01"}],
    }
    return [
        ("POST", "outreach-items", {"id": "oi-9", "facilityId": "f-001", "state": "assigned"}),
        (
            "POST",
            "admin/nodes",
            {
                "nodeId": "edge-9",
                "tenantId": "t1",
                "facilityIds": ["f-001"],
                "publicKey": node_key,
            },
        ),
        (
            "POST",
            "cohorts",
            {"cohortId": "c-9", "name": "Diabetics", "definition": {"condition": "E11"}},
        ),
        ("PUT", "registry/entries/e-9", entry),
        (
            "POST",
            "outreach-items/oi-1/transitions",
            {"id": "s-9", "from": "assigned", "to": "cancelled"},
        ),
    ]


def spoil(doc: Any, bad: str) -> list[Any]:
    """``doc`` once per string in it (values and keys, nested too), that string
    with ``bad`` inserted."""
    spoilt: list[Any] = []
    if isinstance(doc, str):
        return [doc[:1] + bad + doc[1:]]
    if isinstance(doc, list):
        for n, child in enumerate(doc):
            spoilt += [[*doc[:n], s, *doc[n + 1 :]] for s in spoil(child, bad)]
    if isinstance(doc, dict):
        for key, child in doc.items():
            spoilt += [{**doc, key: s} for s in spoil(child, bad)]
        first = next(iter(doc))
        spoilt.append({(first + bad if k == first else k): v for k, v in doc.items()})
    return spoilt


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_a_nul_in_any_body_string_is_refused(gateway: Gateway, fmt: str) -> None:
    admin, service = await gateway.token("admin"), await gateway.token("service")
    await gateway.create_item(admin, "oi-1", "assigned")
    before = await gateway.snapshot()
    media = f"application/{fmt}"
    tried = 0
    for method, path, doc in bodies(KeyPair.generate().public_key_b64):
        token = service if path.startswith("registry") else admin
        for bad in spoil(doc, "\x00"):
            resp = await gateway.client.request(
                method,
                f"{PREFIX}/{path}",
                data=encode(bad, fmt),
                headers=bearer(token, **{"Content-Type": media, "Accept": "application/json"}),
            )
            problem = await assert_problem(resp, 400, "malformed_body")
            assert "NUL" in problem["detail"], problem
            tried += 1
    assert tried == 26  # every string, and the first key of each map
    assert await gateway.snapshot() == before


async def test_a_lone_surrogate_in_a_body_is_refused(gateway: Gateway) -> None:
    """JSON can escape one (``"\\ud800"``); msgpack cannot carry one (its
    strings are UTF-8, which has no surrogates)."""
    admin = await gateway.token("admin")
    before = await gateway.snapshot()
    body = b'{"id": "oi-9", "facilityId": "f-001", "state": "assigned", "patientRef": "p\\ud800"}'
    resp = await request(gateway, admin, "POST", f"{PREFIX}/outreach-items", body)
    await assert_problem(resp, 400, "malformed_body")
    assert await gateway.snapshot() == before


async def test_a_nul_in_a_signed_batch_is_refused(gateway: Gateway) -> None:
    """A node's batch and report (msgpack, signed over the bytes sent)."""
    node = await gateway.enroll()
    admin = await gateway.token("admin")
    await gateway.create_item(admin, "oi-1", "assigned")
    before = await gateway.snapshot()
    move = transition("t-1", "oi-1", "assigned", "in_progress", actorId="worker\x00-1")
    resp = await gateway.post_batch(node, [move])
    problem = await assert_problem(resp, 400, "malformed_body")
    assert "NUL" in problem["detail"]
    report = {**signed_report(node), "deviceId": node.node_id + "\x00"}
    body = msgpack.packb(report, use_bin_type=True)
    resp = await gateway.signed(node, "POST", f"{PREFIX}/sync/facility-reports", body)
    await assert_problem(resp, 400, "malformed_body")
    assert await gateway.snapshot() == before


async def raw_request(gateway: Gateway, head: bytes) -> tuple[int, bytes]:
    """A request written byte for byte (aiohttp's client sends only text headers):
    the answer's status and body."""
    port = gateway.client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    ("head", "status", "shows"),
    [
        # aiohttp decodes a header's non-UTF-8 bytes to lone surrogates; a token
        # or session cookie of them was hashed as UTF-8 and answered 500.
        (
            b"GET /api/v1/population-health/outreach-items/oi-1 HTTP/1.1\r\n"
            b"Authorization: Bearer \xff\xfe\r\n",
            401,
            b'"code":"unauthenticated"',
        ),
        (b"GET /admin HTTP/1.1\r\nAuthorization: Bearer \xed\xa0\x80\r\n", 401, b"log in"),
        (b"GET /admin HTTP/1.1\r\nCookie: phs_admin=\xff\xfe\r\n", 401, b"log in"),
        (
            b"POST /admin/logout HTTP/1.1\r\nCookie: phs_admin=\xff\r\nContent-Length: 0\r\n",
            303,
            b"",
        ),
    ],
)
async def test_credentials_that_are_not_utf8_are_unknown_not_a_500(
    gateway: Gateway, head: bytes, status: int, shows: bytes
) -> None:
    await gateway.token("admin")
    before = await gateway.snapshot()
    got, body = await raw_request(gateway, head)
    assert got == status, body[:300]
    assert shows in body
    assert await gateway.snapshot() == before


async def test_the_edge_refuses_the_same_text(tmp_path: Path) -> None:
    async with edge_system(tmp_path) as system:
        await system.create_items(["oi-1"], "assigned")
        await system.pull()
        tablet = await system.pair_tablet("tab-a")
        before = await system.edge_snapshot()
        move = tablet.transition("t-1", "oi-1", "assigned", "in_progress", actorId="w\x00-1")
        for fmt in ("json", "msgpack"):
            resp = await system.tablet_request(
                tablet, "POST", f"{PREFIX}/sync/outreach", {"transitions": [move]}, fmt=fmt
            )
            await assert_problem(resp, 400, "malformed_body")
        resp = await system.tablet_request(tablet, "GET", f"{PREFIX}/outreach-items?since=%00")
        problem = await assert_problem(resp, 422, "validation_failed")
        assert problem["field"] == "since"
        assert await system.edge_snapshot() == before

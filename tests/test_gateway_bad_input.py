"""Bad input on every write endpoint: always a 4xx problem, never a 5xx, and
never a change in any table.

Each endpoint has a valid document (a control test shows it is accepted);
each fault spoils it one way. Authentication is valid throughout (bearer
token, or a signature over the very bytes sent), so the body is what fails.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest

from harness import (
    PREFIX,
    Gateway,
    NodeIdentity,
    assert_problem,
    bearer,
    document,
    signed_report,
    transition,
)
from shared.signing import KeyPair, authorization_header
from shared.values import format_timestamp

JSON = "application/json"
MSGPACK = "application/msgpack"
ENDPOINTS = ["admin/nodes", "outreach-items", "transitions", "facility-reports", "batches"]
PATHS = {
    "admin/nodes": f"{PREFIX}/admin/nodes",
    "outreach-items": f"{PREFIX}/outreach-items",
    "transitions": f"{PREFIX}/outreach-items/item-1/transitions",
    "facility-reports": f"{PREFIX}/sync/facility-reports",
    "batches": f"{PREFIX}/sync/batches",
}
# Per endpoint: a field to give the wrong type, and a required field to drop.
WRONG_TYPE = {
    "admin/nodes": ("facilityIds", "f-001"),  # should be an array of ids, not one string
    "outreach-items": ("state", 3),  # should be a state name
    "transitions": ("to", ["cancelled"]),  # should be a state name
    "facility-reports": ("payload", 12),  # should be bytes (base64 in JSON)
    "batches": ("items", {"0": "x"}),  # should be an array
}
REQUIRED = {
    "admin/nodes": "publicKey",
    "outreach-items": "facilityId",
    "transitions": "from",
    "facility-reports": "signature",
    "batches": "batchId",
}


class Client:
    """Sends a body to an endpoint with valid credentials for it."""

    def __init__(self, gateway: Gateway, admin: str, node: NodeIdentity) -> None:
        self.gateway, self.admin, self.node = gateway, admin, node

    def valid(self, endpoint: str) -> dict[str, Any]:
        if endpoint == "admin/nodes":
            key = KeyPair.generate().public_key_b64
            return {
                "nodeId": "edge-9",
                "tenantId": "t1",
                "facilityIds": ["f-001"],
                "publicKey": key,
            }
        if endpoint == "outreach-items":
            return {"id": "item-9", "facilityId": "f-001", "state": "pending"}
        if endpoint == "transitions":
            return {"id": "s-1", "from": "assigned", "to": "cancelled"}
        if endpoint == "facility-reports":
            return signed_report(self.node)
        return {
            "v": 1,
            "batchId": "b-1",
            "nodeId": self.node.node_id,
            "createdAt": format_timestamp(self.gateway.clock()),
            "items": [transition("t-1", "item-1", "assigned", "in_progress")],
        }

    async def send(self, endpoint: str, body: Any, content_type: str | None, **headers: str) -> Any:
        path = PATHS[endpoint]
        all_headers = dict(headers)
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        if endpoint == "batches":
            all_headers.setdefault("Idempotency-Key", "b-1")
            if isinstance(body, bytes):  # a streamed body is not signed: its 413 comes first
                ts = int(self.gateway.clock().timestamp())
                all_headers["Authorization"] = authorization_header(
                    self.node.keypair, self.node.node_id, "POST", path, body, ts
                )
        elif endpoint != "facility-reports":
            all_headers.update(bearer(self.admin))
        if isinstance(body, bytes) and len(body) > 1024 * 1024:
            body = io.BytesIO(body)  # aiohttp warns about large bytes bodies
        return await self.gateway.client.post(path, data=body, headers=all_headers)


@pytest.fixture
async def client(gateway: Gateway) -> Client:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await gateway.create_item(admin, "item-1", "assigned")
    return Client(gateway, admin, node)


def as_json(doc: Any) -> bytes:
    return json.dumps(doc, default=lambda b: base64.b64encode(b).decode()).encode()


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def too_big(doc: dict[str, Any]) -> bytes:
    return as_json({**doc, "padding": "x" * (4 * 1024 * 1024)})  # just over 4 MiB in all


# (name, build (content type, body) from the valid document, status, code)
Fault = tuple[str, Callable[[str, dict[str, Any]], tuple[str, Any]], int, str]
FAULTS: list[Fault] = [
    ("truncated msgpack", lambda e, d: (MSGPACK, msgpack.packb(d)[:-3]), 400, "malformed_body"),
    ("reserved msgpack byte", lambda e, d: (MSGPACK, b"\xc1"), 400, "malformed_body"),
    (
        "msgpack trailing bytes",
        lambda e, d: (MSGPACK, msgpack.packb(d) + b"\x00"),
        400,
        "malformed_body",
    ),
    ("msgpack int map keys", lambda e, d: (MSGPACK, msgpack.packb({1: 2})), 400, "malformed_body"),
    ("truncated json", lambda e, d: (JSON, as_json(d)[:-2]), 400, "malformed_body"),
    ("json not utf-8", lambda e, d: (JSON, b'{"id": "\xff"}'), 400, "malformed_body"),
    ("json duplicate key", lambda e, d: (JSON, b'{"id": "a", "id": "b"}'), 400, "malformed_body"),
    ("json NaN", lambda e, d: (JSON, b'{"id": NaN}'), 400, "malformed_body"),
    (
        "json huge number",
        lambda e, d: (JSON, b'{"id": ' + b"9" * 5000 + b"}"),
        400,
        "malformed_body",
    ),
    ("json array body", lambda e, d: (JSON, b"[1, 2]"), 400, "malformed_body"),
    ("msgpack string body", lambda e, d: (MSGPACK, msgpack.packb("hi")), 400, "malformed_body"),
    ("empty body", lambda e, d: (JSON, b""), 400, "malformed_body"),
    ("json depth 100", lambda e, d: (JSON, as_json({**d, "x": nested(99)})), 400, "malformed_body"),
    (
        "msgpack depth 100",
        lambda e, d: (MSGPACK, msgpack.packb({**d, "x": nested(99)})),
        400,
        "malformed_body",
    ),
    (
        "wrong type",
        lambda e, d: (MSGPACK, msgpack.packb({**d, WRONG_TYPE[e][0]: WRONG_TYPE[e][1]})),
        422,
        "validation_failed",
    ),
    (
        "missing field",
        lambda e, d: (JSON, as_json({k: v for k, v in d.items() if k != REQUIRED[e]})),
        422,
        "validation_failed",
    ),
    ("unknown field", lambda e, d: (JSON, as_json({**d, "bogus": 1})), 422, "validation_failed"),
    ("text/plain", lambda e, d: ("text/plain", as_json(d)), 415, "unsupported_media_type"),
    (
        "octet-stream",
        lambda e, d: ("application/octet-stream", msgpack.packb(d)),
        415,
        "unsupported_media_type",
    ),
    (
        "json latin-1",
        lambda e, d: (JSON + "; charset=latin-1", as_json(d)),
        415,
        "unsupported_media_type",
    ),
    ("over 4 MiB", lambda e, d: (JSON, too_big(d)), 413, "payload_too_large"),
]


@pytest.mark.parametrize(("name", "build", "status", "code"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_bad_body(
    gateway: Gateway,
    client: Client,
    name: str,
    build: Callable[[str, dict[str, Any]], tuple[str, Any]],
    status: int,
    code: str,
) -> None:
    for endpoint in ENDPOINTS:  # one live gateway per fault, every write endpoint
        content_type, body = build(endpoint, client.valid(endpoint))
        before = await gateway.snapshot()
        resp = await client.send(endpoint, body, content_type)
        assert resp.status == status, (endpoint, await resp.text())
        await assert_problem(resp, status, code)
        assert await gateway.snapshot() == before, endpoint


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("codec", [JSON, MSGPACK])
async def test_valid_document_is_accepted(
    gateway: Gateway, client: Client, endpoint: str, codec: str
) -> None:
    """The control: the unspoilt documents above do get through."""
    doc = client.valid(endpoint)
    body = as_json(doc) if codec == JSON else msgpack.packb(doc)
    resp = await client.send(endpoint, body, codec)
    assert resp.status in (200, 201), await resp.text()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_streamed_body_over_the_limit(
    gateway: Gateway, client: Client, endpoint: str
) -> None:
    """Chunked, with no Content-Length: refused while reading, still a 413 problem."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (1024 * 1024)

    before = await gateway.snapshot()
    resp = await client.send(endpoint, chunks(), JSON)
    await assert_problem(resp, 413, "payload_too_large")
    assert await gateway.snapshot() == before


async def test_batch_of_5001_items(gateway: Gateway, client: Client) -> None:
    items = [transition(f"t-{i}", "item-1", "assigned", "in_progress") for i in range(5001)]
    _, body = gateway.batch(client.node, items, "b-1")
    assert len(body) < 4 * 1024 * 1024  # too many items, not too many bytes
    before = await gateway.snapshot()
    await assert_problem(await client.send("batches", body, MSGPACK), 413, "batch_too_large")
    assert await gateway.snapshot() == before


BATCH_FAULTS = [
    # (what is wrong in the batch, items or top-level changes)
    ("v is 2", {"v": 2}),
    ("createdAt not a time", {"createdAt": "yesterday"}),
    ("item not a map", {"items": ["x"]}),
    ("item without kind", {"items": [{"id": "x"}]}),
    ("item kind not text", {"items": [{"kind": 5, "id": "x"}]}),
    ("other kind without id", {"items": [{"kind": "weird"}]}),
    ("transition bad id", {"items": [transition("t 1", "item-1", "assigned", "in_progress")]}),
    (
        "transition bad time",
        {"items": [transition("t-1", "item-1", "a", "b", at="2026-13-01T00:00:00Z")]},
    ),
    ("transition seq negative", {"items": [transition("t-1", "item-1", "a", "b", seq=-1)]}),
    ("transition server role", {"items": [transition("t-1", "item-1", "a", "b", role="server")]}),
    ("transition role a list", {"items": [transition("t-1", "item-1", "a", "b", role=["worker"])]}),
    (
        "report bytes not bytes",
        {
            "items": [
                {
                    "kind": "facility_report",
                    "id": "r",
                    "deviceId": "edge-01",
                    "payload": 1,
                    "signature": b"",
                }
            ]
        },
    ),
]


@pytest.mark.parametrize(("name", "change"), BATCH_FAULTS, ids=[f[0] for f in BATCH_FAULTS])
async def test_bad_batch_refuses_the_whole_batch(
    gateway: Gateway, client: Client, name: str, change: dict[str, Any]
) -> None:
    # A valid transition first: a malformed batch applies none of its items.
    doc = client.valid("batches")
    doc = {**doc, **change, "items": doc["items"] + change.get("items", [])}
    before = await gateway.snapshot()
    await assert_problem(
        await client.send("batches", msgpack.packb(doc), MSGPACK), 422, "validation_failed"
    )
    assert await gateway.snapshot() == before


@pytest.mark.parametrize(
    "state", [[], ["pending"], {"s": "pending"}], ids=["[]", "[pending]", "map"]
)
async def test_item_state_of_a_container_type(gateway: Gateway, client: Client, state: Any) -> None:
    """``state`` must be a state name; a list or map is no less wrong than a number.

    Open bug (gateway/outreach.py, parse_new_item): ``state not in {...}`` hashes
    the value, so a list or map raises TypeError and the answer is a 500.
    """
    doc = {**client.valid("outreach-items"), "state": state}
    before = await gateway.snapshot()
    resp = await client.send("outreach-items", msgpack.packb(doc), MSGPACK)
    await assert_problem(resp, 422, "validation_failed")
    assert await gateway.snapshot() == before


# --- routes and methods ---------------------------------------------------------------

UNKNOWN_ROUTES = [
    ("GET", "/nope"),
    ("GET", f"{PREFIX}/nope"),
    ("POST", f"{PREFIX}/sync/nope"),
    ("GET", "/api/v2/population-health/events"),
    ("POST", f"{PREFIX}/outreach-items/item-1/transitions/extra"),
]


@pytest.mark.parametrize(("method", "path"), UNKNOWN_ROUTES)
async def test_unknown_route_is_a_404_problem(
    gateway: Gateway, client: Client, method: str, path: str
) -> None:
    before = await gateway.snapshot()
    resp = await gateway.client.request(method, path, json={"id": "x"})
    await assert_problem(resp, 404, "not_found")
    assert await gateway.snapshot() == before


WRONG_METHODS = [
    ("GET", f"{PREFIX}/sync/batches", "POST"),
    ("PUT", f"{PREFIX}/outreach-items", "POST"),
    ("DELETE", f"{PREFIX}/outreach-items/item-1", "GET"),
    ("PATCH", f"{PREFIX}/admin/nodes", "POST"),
    ("POST", f"{PREFIX}/sync/changes", "GET"),
    ("POST", "/healthz", "GET"),
]


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS)
async def test_wrong_method_is_a_405_problem(
    gateway: Gateway, client: Client, method: str, path: str, allowed: str
) -> None:
    before = await gateway.snapshot()
    resp = await gateway.client.request(
        method, path, json={"id": "x"}, headers=bearer(client.admin)
    )
    await assert_problem(resp, 405, "method_not_allowed")
    assert allowed in resp.headers["Allow"]  # RFC 9110: a 405 names the allowed methods
    assert await gateway.snapshot() == before


# --- content negotiation ----------------------------------------------------------------


async def test_problem_in_msgpack_when_asked(gateway: Gateway, client: Client) -> None:
    before = await gateway.snapshot()
    resp = await client.send("outreach-items", b"{", JSON, Accept=MSGPACK)
    assert resp.content_type == MSGPACK
    doc = await assert_problem(resp, 400, "malformed_body")
    assert doc["type"] == "https://phs-sync.org/problems/malformed_body"
    assert await gateway.snapshot() == before


async def test_answers_follow_accept(gateway: Gateway, client: Client) -> None:
    path = f"{PREFIX}/outreach-items/item-1"
    as_msgpack = await gateway.client.get(path, headers=bearer(client.admin, Accept=MSGPACK))
    assert as_msgpack.status == 200 and as_msgpack.content_type == MSGPACK
    as_json_ = await gateway.client.get(path, headers=bearer(client.admin))
    assert as_json_.content_type == JSON  # GET defaults to JSON
    assert await document(as_msgpack) == await document(as_json_)
    # A write answers in the request's type unless Accept says otherwise.
    resp = await client.send("transitions", msgpack.packb(client.valid("transitions")), MSGPACK)
    assert resp.status == 200 and resp.content_type == MSGPACK
    # Bytes are raw bin in msgpack and base64 in JSON (the node's public key).
    node = f"{PREFIX}/admin/nodes/edge-01"
    raw = await document(
        await gateway.client.get(node, headers=bearer(client.admin, Accept=MSGPACK))
    )
    b64 = await document(await gateway.client.get(node, headers=bearer(client.admin)))
    assert raw["publicKey"] == client.node.keypair.public_key
    assert b64["publicKey"] == client.node.keypair.public_key_b64


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_unacceptable_accept_changes_nothing(
    gateway: Gateway, client: Client, endpoint: str
) -> None:
    """A caller that accepts neither JSON nor msgpack gets 406 before any write."""
    before = await gateway.snapshot()
    body = msgpack.packb(client.valid(endpoint))
    resp = await client.send(endpoint, body, MSGPACK, Accept="text/html")
    await assert_problem(resp, 406, "not_acceptable")
    assert await gateway.snapshot() == before

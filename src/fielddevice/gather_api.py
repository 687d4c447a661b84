"""The device's own API, from which its paired edge node gathers (docs/discovery.md).

    GET  {PREFIX}/field/pending?limit=N  -> {deviceId, transitions, encounters, more}
    POST {PREFIX}/field/acks             {transitions: [result], encounters: [result]}
                                         -> {cleared, pending}
    GET  /healthz                        -> {status: "ok", deviceId}

Both ``/field`` endpoints require a request signed by the paired node's key
(``keyId`` = node id, CONTRACT section 2). Their answers are signed with the
device's own key (``PHS-Signature``, ``keyId`` = device id), over the
request's method, path and ``PHS-Nonce`` and the answer's exact body bytes
(``shared.signing.answer_signature_header``), so the node knows the records
come from this device and answer its request. Errors are the services'
problem documents (``gateway.middleware``), unsigned; bad input changes
nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from fielddevice.client import parse_result
from fielddevice.device import FieldDevice
from fielddevice.store import FIELD_OF, KINDS, Kind
from gateway.http import (
    CLOCK,
    LIMITS,
    PREFIX,
    Clock,
    decode_document,
    path_with_query,
    query_int,
    read_body,
    respond,
)
from gateway.middleware import problem_middleware
from shared.encoding import Limits
from shared.errors import BatchTooLarge, UnknownKey, ValidationFailed
from shared.signing import (
    ANSWER_HEADER,
    NONCE_HEADER,
    answer_signature_header,
    is_nonce,
    parse_authorization,
    verify_request,
)
from shared.values import format_timestamp, only_fields

log = logging.getLogger("fielddevice.gather")
DEVICE = web.AppKey("field_device", FieldDevice)
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
MAX_BODY_BYTES = 4 * 1024 * 1024
ACK_FIELDS = frozenset(FIELD_OF.values())


def create_gather_app(device: FieldDevice, clock: Clock | None = None) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=MAX_BODY_BYTES)
    app[DEVICE] = device
    app[CLOCK] = clock or device.clock
    app[LIMITS] = Limits(max_body_bytes=MAX_BODY_BYTES, max_items=MAX_LIMIT)
    app.router.add_get("/healthz", healthz)
    app.router.add_get(f"{PREFIX}/field/pending", pending)
    app.router.add_post(f"{PREFIX}/field/acks", acks)
    return app


async def healthz(request: web.Request) -> web.Response:
    return respond(request, 200, {"status": "ok", "deviceId": request.app[DEVICE].device_id})


async def authenticate_node(request: web.Request, body: bytes) -> str:
    """The paired node that signed this request; 401 for anyone else."""
    auth = parse_authorization(request.headers.get("Authorization"))
    device = request.app[DEVICE]
    pairing = await device.store.pairing()
    if pairing is None or auth.key_id != pairing.node_id:
        raise UnknownKey(f"{auth.key_id} is not the node this device is paired with")
    verify_request(
        auth,
        pairing.node_public_key,
        request.method,
        path_with_query(request),
        body,
        request.app[CLOCK]().timestamp(),
        device.settings.clock_skew_seconds,
    )
    return auth.key_id


def request_nonce(request: web.Request) -> str:
    """The node's ``PHS-Nonce``, which the answer's signature covers ("" if none)."""
    nonce = request.headers.get(NONCE_HEADER, "")
    if not is_nonce(nonce):
        raise ValidationFailed(
            f"{NONCE_HEADER} must be 1-128 characters of [A-Za-z0-9._:-]", field=NONCE_HEADER
        )
    return nonce


def signed_answer(request: web.Request, document: Any, nonce: str) -> web.Response:
    """A 200 answer signed with the device's key over its exact body bytes."""
    response = respond(request, 200, document)
    body = response.body
    assert isinstance(body, bytes)  # respond() encodes the document itself
    device = request.app[DEVICE]
    response.headers[ANSWER_HEADER] = answer_signature_header(
        device.keypair,
        device.device_id,
        request.method,
        path_with_query(request),
        nonce,
        body,
        int(request.app[CLOCK]().timestamp()),
    )
    return response


async def pending(request: web.Request) -> web.Response:
    await authenticate_node(request, await read_body(request))
    nonce = request_nonce(request)
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    device = request.app[DEVICE]
    records, more = await device.store.pending(limit)
    page: dict[str, Any] = {"deviceId": device.device_id, "transitions": [], "encounters": []}
    for record in records:
        page[FIELD_OF[record.kind]].append(record.body)
    page["more"] = more
    return signed_answer(request, page, nonce)


async def acks(request: web.Request) -> web.Response:
    body = await read_body(request)
    node_id = await authenticate_node(request, body)
    nonce = request_nonce(request)
    doc = decode_document(request, body)
    only_fields(doc, ACK_FIELDS, "acknowledgement")
    answered: dict[Kind, list[dict[str, Any]]] = {}
    total = 0
    for kind in KINDS:
        name = FIELD_OF[kind]
        raw = doc.get(name, [])
        if not isinstance(raw, list):
            raise ValidationFailed(f"{name} must be an array", field=name)
        total += len(raw)
        if total > MAX_LIMIT:
            raise BatchTooLarge(f"at most {MAX_LIMIT} results in one acknowledgement")
        answered[kind] = [parse_result(r, f"/{name}/{n}") for n, r in enumerate(raw)]
    device = request.app[DEVICE]
    now = request.app[CLOCK]()
    cleared = await device.store.mark_synced(answered, "gather", now)
    left = await device.store.pending_total()
    await device.store.set_state(
        "last_gather",
        json.dumps({"at": format_timestamp(now), "nodeId": node_id, "cleared": cleared}),
    )
    if cleared:
        log.info("node %s acknowledged %d records; %d pending", node_id, cleared, left)
        device.changed()
    return signed_answer(request, {"cleared": cleared, "pending": left}, nonce)

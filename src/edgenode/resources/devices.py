"""``POST …/devices/pair``: a tablet redeems its one-time pairing code."""

from __future__ import annotations

import aiosqlite
from aiohttp import web

from edgenode.http import NODE_KEY, edge_settings, run_write
from edgenode.pairing import redeem_code
from gateway.http import CLOCK, read_document
from shared.signing import fingerprint, public_key_from
from shared.values import identifier, only_fields, required

PAIR_FIELDS = frozenset({"pairingCode", "deviceId", "publicKey"})


async def pair(request: web.Request) -> web.Response:
    body, doc = await read_document(request)
    only_fields(doc, PAIR_FIELDS, "pairing request")
    device_id = identifier(required(doc, "deviceId"), "deviceId")
    public_key = public_key_from(required(doc, "publicKey"))
    code = required(doc, "pairingCode")
    settings = edge_settings(request)
    node_key = request.app[NODE_KEY]

    async def write(conn: aiosqlite.Connection) -> tuple[int, object]:
        await redeem_code(conn, code, device_id, public_key, request.app[CLOCK]())
        return 201, {
            "nodeId": settings.node_id,
            "tenantId": settings.tenant_id,
            "facilityIds": settings.facility_ids,
            "fp": fingerprint(node_key.public_key),
            # Beyond the contract's answer: the device verifies with it the
            # node's signature when the node gathers from it (docs/discovery.md).
            # Bytes: base64 in JSON, raw bin in msgpack (CONTRACT section 1).
            "publicKey": node_key.public_key,
        }

    return await run_write(request, f"pair:{device_id}", body, write)

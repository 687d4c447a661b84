"""``POST …/sync/keys``: a node rotates its own signing key (docs/key-rotation.md).

Signed with the node's active key (or a retiring one when the node has no
active key left: an admin retired it), the request registers the new public
key the node generated (403 ``forbidden`` from a retiring key while a newer
key is active: a key the node rotated away from may have leaked); the
node switches to it once it has this answer. The new key becomes active and
the node's active keys start their overlap window (``key_overlap_seconds``).

201 with the node's keys when the key is new; 200 and nothing changed when it
is already a key the node may use: a resend after a lost answer, signed with
the old key or the new one, is answered the same way. A key the gateway has
seen in any other state, or for another node, is 409 ``already_exists``.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import key_rotation
from gateway.auth import NODE_CONTACT, authenticate_node
from gateway.http import decode_document, now, read_body, settings
from gateway.idempotency import Reply, run_write
from gateway.node_keys import keys_document
from shared.signing import public_key_from
from shared.values import only_fields, required

FIELDS = frozenset({"publicKey"})


async def rotate(request: web.Request) -> web.Response:
    body = await read_body(request)
    node = await authenticate_node(request, body)  # before decoding: callers are unknown
    doc = decode_document(request, body)
    only_fields(doc, FIELDS, "key")
    public_key = public_key_from(required(doc, "publicKey"))
    overlap = settings(request).key_overlap_seconds  # checked when the settings loaded

    async def write(conn: AsyncConnection) -> Reply:
        moment = now(request)
        principal = f"node:{node.node_id}"
        signer = request[NODE_CONTACT].key
        change = await key_rotation.rotate(
            conn, principal, node, public_key, moment, overlap, signer
        )
        document = await keys_document(conn, node.node_id, moment, change.key.key_id)
        return Reply(201 if change.changed else 200, document)

    return await run_write(request, f"node:{node.node_id}", body, write)

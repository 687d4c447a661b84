"""The key rotation operations of the OpenAPI document (docs/key-rotation.md):
a node's own rotation and the admin's key routes. Merged into the paths of
``gateway.openapi_paths`` by ``gateway.openapi``; apart so that neither
table grows past reading size.
"""

from __future__ import annotations

from typing import Any

from gateway.http import PREFIX
from gateway.openapi import (
    NOT_FOUND,
    SIGNED,
    TOKEN,
    Schema,
    answer,
    array,
    closed,
    merge,
    nullable,
    operation,
    path_parameter,
    ref,
)
from gateway.openapi_paths import NODE_ID
from shared.node_keys import MAX_OVERLAP_SECONDS, KeyStatus

ID, TIME, BYTES = ref("Identifier"), ref("Timestamp"), ref("Bytes")
KEY_ID = path_parameter("keyId")
OVERLAP: Schema = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_OVERLAP_SECONDS,
    "description": "seconds the key is still accepted (0: retired now); "
    "default: the setting key_overlap_seconds",
}
KEY = answer(
    {
        "keyId": ID,
        "nodeId": ID,
        "publicKey": BYTES,
        "fp": {"type": "string"},
        "status": {"enum": [status.value for status in KeyStatus]},
        "createdAt": TIME,
        "retiresAt": nullable(TIME),
        "revokedAt": nullable(TIME),
    }
)
KEY_LIST = answer({"nodeId": ID, "keys": array(KEY)})
KEY_CHANGE = answer({"nodeId": ID, "keyId": ID, "keys": array(KEY)})
CONFLICT: dict[int, list[str]] = {409: ["already_exists"]}

A = PREFIX
KEY_PATHS: dict[str, dict[str, Any]] = {
    f"{A}/sync/keys": {
        "post": operation(
            "rotateOwnKey",
            "A node registers its new signing key, signed with its active key (403 forbidden "
            "from a retiring key while a newer one is active); 201 new, 200 already one of "
            "its usable keys (a resend)",
            tag="sync",
            security="node",
            body=closed({"publicKey": BYTES}, ["publicKey"]),
            ok={201: KEY_CHANGE, 200: KEY_CHANGE},
            problems=merge(SIGNED, CONFLICT, {403: ["forbidden"]}),
        )
    },
    f"{A}/admin/nodes/{{nodeId}}/keys": {
        "parameters": [NODE_ID],
        "get": operation(
            "listNodeKeys",
            "A node's signing keys with their status now",
            tag="admin",
            ok={200: KEY_LIST},
            problems=merge(TOKEN, NOT_FOUND),
        ),
        "post": operation(
            "addNodeKey",
            "Register a node's new key (the node's active keys start their overlap window)",
            tag="admin",
            body=closed({"publicKey": BYTES, "overlapSeconds": OVERLAP}, ["publicKey"]),
            ok={201: KEY_CHANGE, 200: KEY_CHANGE},
            problems=merge(TOKEN, NOT_FOUND, CONFLICT),
        ),
    },
    f"{A}/admin/nodes/{{nodeId}}/keys/{{keyId}}/retire": {
        "parameters": [NODE_ID, KEY_ID],
        "post": operation(
            "retireNodeKey",
            "Retire one key after an overlap window (the node rotates when told)",
            tag="admin",
            body=closed({"overlapSeconds": OVERLAP}, []),
            body_required=False,
            ok={200: KEY_CHANGE},
            problems=merge(TOKEN, NOT_FOUND),
        ),
    },
    f"{A}/admin/nodes/{{nodeId}}/keys/{{keyId}}": {
        "parameters": [NODE_ID, KEY_ID],
        "delete": operation(
            "revokeNodeKey",
            "Revoke one key at once (the node and its other keys stay)",
            tag="admin",
            idempotent_write=True,
            ok={200: KEY_CHANGE},
            problems=merge(TOKEN, NOT_FOUND),
        ),
    },
}

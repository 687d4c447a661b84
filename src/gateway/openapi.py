"""The gateway's OpenAPI 3.1 document, served at ``GET /api/v1/openapi.json``.

Built from Python data, not kept as a JSON file, so that the limits, the
problem codes and the media types are the ones the code uses (one source of
truth), and a helper writes the many repeated parts (problem answers, the
Idempotency-Key header, the two media types) once. The paths themselves are
``gateway.openapi_paths``; this module holds the building blocks and the
components. ``tests/test_openapi_document.py`` checks that every route of
``gateway.app`` is described here and nothing else is, and validates the
document; ``tests/test_openapi_schemathesis.py`` runs schemathesis against
a live gateway with it.

How an operation is described (see :func:`operation`): its success answers,
then for every error status it can answer the problem codes it can give, as
an ``enum`` on the problem document's ``code``, so a client (and the fuzz
tests) can tell a documented refusal from a surprise.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from shared.encoding import JSON, MSGPACK, PROBLEM_JSON
from shared.errors import PROBLEM_TYPE_BASE
from shared.idempotency import KEY_MAX
from shared.values import IDENTIFIER_RE

Schema = dict[str, Any]
Codes = Mapping[int, Iterable[str]]

OPENAPI_PATH = "/api/v1/openapi.json"
HTML = "text/html"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def closed(properties: Mapping[str, Schema], required: Iterable[str] = ()) -> Schema:
    """An object the server refuses any other field of (``only_fields``: 422)."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": sorted(required),
        "additionalProperties": False,
    }


def answer(properties: Mapping[str, Schema], required: Iterable[str] | None = None) -> Schema:
    """An answer document: the members named are always there (unless ``required``
    says otherwise); clients must ignore members added later."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": sorted(properties if required is None else required),
    }


def array(items: Schema, max_items: int | None = None) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


def text(max_length: int, min_length: int = 0) -> Schema:
    schema: Schema = {"type": "string", "maxLength": max_length}
    if min_length:
        schema["minLength"] = min_length
    return schema


# --- the shared pieces of every request and answer -----------------------------------

# Every operation that takes a bearer token.
TOKEN: Codes = {401: ["unauthenticated"], 403: ["forbidden"]}
# A write to a server-authoritative aggregate: other roles are refused and recorded.
WRITER: Codes = {401: ["unauthenticated"], 403: ["policy_server_authoritative"]}
# A signed node request (CONTRACT section 2).
SIGNED: Codes = {
    401: ["unauthenticated", "unknown_key", "bad_signature", "clock_skew", "key_retired"],
    403: ["key_revoked"],
}
# Every write: the body (if any) and Idempotency-Key (CONTRACT sections 1 and 4).
BODY: Codes = {
    400: ["malformed_body", "bad_idempotency_key"],
    409: ["idempotency_in_flight"],
    413: ["payload_too_large"],
    415: ["unsupported_media_type"],
    422: ["validation_failed", "idempotency_key_mismatch"],
}
KEY_ONLY: Codes = {
    400: ["bad_idempotency_key"],
    409: ["idempotency_in_flight"],
    422: ["idempotency_key_mismatch"],
}
NOT_FOUND: Codes = {404: ["not_found"]}
QUERY: Codes = {422: ["validation_failed"]}
# Every operation: a path parameter or a query string holding text no store can
# hold (NUL, a lone surrogate) is refused before any handler (gateway.middleware).
UNSTORABLE_TEXT: Codes = QUERY


def merge(*code_sets: Codes) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for codes in code_sets:
        for status, names in codes.items():
            merged.setdefault(status, [])
            merged[status] += [n for n in names if n not in merged[status]]
    return merged


def problem_answer(status: int, codes: Iterable[str]) -> Schema:
    names = sorted(codes)
    schema: Schema = {
        "allOf": [
            ref("Problem"),
            {"properties": {"status": {"const": status}, "code": {"enum": names}}},
        ]
    }
    return {
        "description": "A problem document (RFC 9457); code one of: " + ", ".join(names),
        "content": {PROBLEM_JSON: {"schema": schema}, MSGPACK: {"schema": schema}},
    }


def documents(schema: Schema) -> dict[str, Schema]:
    """The media types of an answer or request body: JSON and msgpack, same shape."""
    return {JSON: {"schema": schema}, MSGPACK: {"schema": schema}}


def operation(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    ok: Mapping[int, Schema],
    problems: Codes = {},  # noqa: B006 - read only
    security: str | None = "bearer",
    body: Schema | None = None,
    body_required: bool = True,
    parameters: Iterable[Schema] = (),
    idempotent_write: bool = False,
    uses_store: bool = True,
    negotiated: bool = True,
    description: str | None = None,
) -> Schema:
    """One operation. ``ok`` maps success statuses to answer documents (a schema,
    or a full response object when it has a ``description``); ``problems`` the
    error statuses to their codes. A write (``body`` or ``idempotent_write``)
    takes Idempotency-Key and answers the body's and the key's problems. Every
    operation may answer 422 ``validation_failed`` (unstorable text in its path
    or query) and answers in a negotiated type (406 ``not_acceptable``) unless
    ``negotiated`` is false, and 503 ``unavailable`` when ``uses_store`` and the
    database does not answer."""
    params = list(parameters)
    codes: list[Codes] = [problems, UNSTORABLE_TEXT]
    if negotiated:
        codes.append({406: ["not_acceptable"]})
    if uses_store:
        codes.append({503: ["unavailable"]})
    if body is not None or idempotent_write:
        params.append({"$ref": "#/components/parameters/IdempotencyKey"})
        codes.append(BODY if body is not None else KEY_ONLY)
    responses: dict[str, Any] = {}
    for status, schema in ok.items():
        if "description" in schema:
            responses[str(status)] = schema
        else:
            responses[str(status)] = {"description": "Success", "content": documents(schema)}
    for status, names in sorted(merge(*codes).items()):
        responses[str(status)] = problem_answer(status, names)
    op: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "responses": responses,
    }
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": documents(body)}
    if security == "bearer":
        op["security"] = [{"bearerToken": []}]
    elif security == "node":
        op["security"] = [{"nodeSignature": []}]
    else:
        op["security"] = []
    return op


def path_parameter(name: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema or ref("Identifier")}


def query_parameter(name: str, schema: Schema, description: str = "") -> Schema:
    param: Schema = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        param["description"] = description
    return param


def limit_parameter(maximum: int, default: int) -> Schema:
    return query_parameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
        f"at most this many (1..{maximum}; default {default}); outside: 422 validation_failed",
    )


# --- components -------------------------------------------------------------------------

_PROBLEM: Schema = {
    "type": "object",
    "description": "RFC 9457 problem document; extra members where useful.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "pattern": "^" + PROBLEM_TYPE_BASE.replace(".", "\\.")},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "pattern": "^[a-z_]+$"},
        "field": {"type": "string", "description": "the field at fault"},
        "fields": array({"type": "string"}),
        "path": {"type": "string", "description": "a JSON pointer into the body"},
        "reportId": {"type": "string"},
        "serverTime": {"type": "string"},
        "state": {"type": "string"},
        "snapshotId": {"type": "string"},
        "errors": array(answer({"path": {"type": "string"}, "message": {"type": "string"}})),
    },
}

SCHEMAS: dict[str, Schema] = {
    "Problem": _PROBLEM,
    "Identifier": {
        "type": "string",
        "pattern": f"^{IDENTIFIER_RE.pattern}$",
        "description": "1-128 characters of [A-Za-z0-9._:-]",
    },
    "Timestamp": {
        "type": "string",
        "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$",
        "description": "RFC 3339 UTC with Z, e.g. 2026-11-25T09:30:00.000Z",
    },
    "Date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
    "Bytes": {
        "type": "string",
        "contentEncoding": "base64",
        "description": "standard base64 in JSON; raw bin in msgpack",
    },
    "PeriodType": {"type": "string", "enum": ["daily", "weekly"]},
    "PeriodKey": {
        "type": "string",
        "pattern": r"^(\d{4}-\d{2}-\d{2}|\d{4}-W\d{2})$",
        "description": "a day (2026-11-23) or an ISO week (2026-W47)",
    },
    "Period": closed(
        {"periodType": ref("PeriodType"), "periodKey": ref("PeriodKey")},
        ["periodType", "periodKey"],
    ),
}

SECURITY_SCHEMES: dict[str, Schema] = {
    "bearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "A token made by `phs-gateway create-token`, with a tenant and a role "
            "(admin, service, analyst). Stored only as a hash."
        ),
    },
    "nodeSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": (
            "`PHS-Ed25519 keyId=<nodeId>,ts=<unix seconds>,sig=<base64>`: an Ed25519 "
            "signature by an enrolled node over the UTF-8 bytes of "
            "`METHOD \\n PATH_WITH_QUERY \\n ts \\n hex(sha256(body))` (CONTRACT section 2). "
            "Unknown key 401 unknown_key, revoked 403 key_revoked, bad signature 401 "
            "bad_signature, ts more than 300 s off 401 clock_skew (with Date)."
        ),
    },
    "adminSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "phs_admin",
        "description": "The admin page's session cookie, set by POST /admin/login.",
    },
}

PARAMETERS: dict[str, Schema] = {
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": (
            f"1-{KEY_MAX} printable ASCII characters (else 400 bad_idempotency_key). A repeat "
            "within 24 h replays the stored answer (Idempotent-Replayed: true); the same key "
            "with another request is 422 idempotency_key_mismatch; while the first runs, 409 "
            "idempotency_in_flight with Retry-After."
        ),
        "schema": {"type": "string", "pattern": f"^[\\x20-\\x7e]{{1,{KEY_MAX}}}$"},
    },
}


@functools.cache
def openapi_bytes() -> bytes:
    """The whole document, encoded once (it does not change while we run)."""
    # The path tables import the helpers above.
    from gateway.openapi_keys import KEY_PATHS
    from gateway.openapi_paths import PATHS, TAGS

    paths = {**PATHS, **KEY_PATHS}
    for path, item in paths.items():
        if "{" in path:  # a parameter that matches no route (a "/" in it): no such resource
            for method in HTTP_METHODS & set(item):
                item[method]["responses"].setdefault("404", problem_answer(404, ["not_found"]))
    doc: Schema = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "PHS Sync gateway",
            "version": "1",
            "summary": "Offline-first sync for population-health outreach: the central gateway.",
            "description": (
                "The binding wire contract is CONTRACT.md; docs/api.md records the rest. "
                "Every request and answer body may be JSON or msgpack (bytes: base64 in JSON, "
                "raw bin in msgpack); answers follow Accept, else the request's type (JSON for "
                "GET). Every refusal is an RFC 9457 problem document with a stable code. "
                "Limits: request body 4 MiB (413 payload_too_large), 5,000 items a batch "
                "(413 batch_too_large), nesting depth 32 (400 malformed_body); unknown fields "
                "are refused (422 validation_failed)."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": SECURITY_SCHEMES,
            "parameters": PARAMETERS,
        },
    }
    return json.dumps(doc, indent=1, sort_keys=False).encode()


def openapi_document() -> Schema:
    """A fresh copy of the document (callers may change it)."""
    doc: Schema = json.loads(openapi_bytes())
    return doc

"""The gateway's OpenAPI 3.1 document: valid, served, and in step with the code.

- Every route registered by ``gateway.app`` (method and path pattern) is an
  operation of the document, and every operation is a route: the document
  cannot drift from the router.
- ``openapi-spec-validator`` accepts it as OpenAPI 3.1.
- Every problem code it promises for a status is a code of the error tree
  (``shared/errors.py``) with that status, so a client can rely on them.
- ``GET /api/v1/openapi.json`` serves it, without a token.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from gateway.app import add_routes
from gateway.openapi import HTTP_METHODS, OPENAPI_PATH, openapi_document
from harness import Gateway
from shared.errors import ItemCode, PhsError


def routes_of_the_app() -> set[tuple[str, str]]:
    app = web.Application()
    add_routes(app)
    found = set()
    for resource in app.router.resources():
        for route in resource:
            # aiohttp adds a HEAD route beside every GET: not an operation of ours.
            if route.method != "HEAD":
                found.add((route.method, resource.canonical))
    return found


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def error_codes() -> dict[str, set[int]]:
    """Every code of the error tree with the statuses it is raised with."""
    statuses: dict[str, set[int]] = {}
    pending: list[type[PhsError]] = [PhsError]
    while pending:
        cls = pending.pop()
        statuses.setdefault(cls.code, set()).add(cls.status)
        pending.extend(cls.__subclasses__())
    return statuses


def test_every_route_is_documented_and_nothing_else() -> None:
    documented = set(operations(openapi_document()))
    registered = routes_of_the_app()
    assert registered - documented == set(), "routes without an operation in gateway/openapi*.py"
    assert documented - registered == set(), "operations that are no route of gateway/app.py"
    assert len(registered) > 50


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # raises OpenAPIValidationError with the place at fault


def test_promised_problem_codes_are_codes_of_the_error_tree() -> None:
    known = error_codes()
    item_codes = {c.value for c in ItemCode}
    for (method, path), op in operations(openapi_document()).items():
        ids = op["operationId"]
        assert op["responses"], ids
        for status, response in op["responses"].items():
            for media in response.get("content", {}).values():
                schema = media["schema"]
                if "allOf" not in schema:
                    continue
                promised = schema["allOf"][1]["properties"]
                assert promised["status"]["const"] == int(status), (method, path)
                for code in promised["code"]["enum"]:
                    assert int(status) in known.get(code, set()), (ids, status, code)
                    assert code not in item_codes or code in known, (ids, code)


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for op in operations(openapi_document()).values()]
    assert len(ids) == len(set(ids))


def test_write_bodies_are_closed_where_the_server_refuses_unknown_fields() -> None:
    doc = openapi_document()
    bodies = {
        (m, p): op["requestBody"]["content"]["application/json"]["schema"]
        for (m, p), op in operations(doc).items()
        if "requestBody" in op and "application/json" in op["requestBody"]["content"]
    }
    assert len(bodies) >= 12
    for where, schema in bodies.items():
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        assert schema.get("additionalProperties") is False, where
        assert set(schema["required"]) <= set(schema["properties"]), where
        op = operations(doc)[where]
        assert set(op["requestBody"]["content"]) == {"application/json", "application/msgpack"}


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_served_without_a_token(gateway: Gateway) -> None:
    resp = await gateway.client.get(OPENAPI_PATH, headers={"Accept": "application/msgpack"})
    assert resp.status == 200
    assert resp.content_type == "application/json"  # the document is JSON, whatever the Accept
    assert await resp.json() == openapi_document()

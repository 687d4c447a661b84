"""The list items of the admin routes are checked one by one, on both stores.

``POST …/admin/nodes`` took ``capabilities`` as any array: a number, a map or
a list among its items reached ``sorted(set(...))`` and answered 500 (found by
the bad-input fuzzing of issue 8). Each item must be a capability the gateway
knows (CONTRACT section 3: ``risk_override``); anything else is 422
``validation_failed`` naming the item, and nothing is stored. The same holds
for ``facilityIds``, and the admin page's login form takes one token string
whatever else is sent.
"""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from harness import PREFIX, Gateway, assert_problem, bearer, document
from shared.signing import KeyPair


def node(**fields: Any) -> dict[str, Any]:
    return {
        "nodeId": "edge-9",
        "tenantId": "t1",
        "facilityIds": ["f-001"],
        "publicKey": KeyPair.generate().public_key_b64,
        **fields,
    }


async def enroll(gateway: Gateway, token: str, doc: dict[str, Any]) -> Any:
    return await gateway.client.post(f"{PREFIX}/admin/nodes", json=doc, headers=bearer(token))


@pytest.mark.parametrize(
    ("capabilities", "detail"),
    [
        ([1], "capabilities[0] must be one of: risk_override"),  # a number
        ([{"risk_override": True}], "capabilities[0] must be"),  # a map (was a 500)
        (["risk_override", 7], "capabilities[1] must be"),  # a good one, then a number
        ([["risk_override"]], "capabilities[0] must be"),  # nested
        ([None], "capabilities[0] must be"),
        ([True], "capabilities[0] must be"),
        (["risk_override", "admin"], "capabilities[1] must be"),  # unknown
        (["RISK_OVERRIDE"], "capabilities[0] must be"),  # names are exact
        ("risk_override", "capabilities must be an array"),  # not a list at all
        ({"0": "risk_override"}, "capabilities must be an array"),
    ],
)
async def test_capabilities_items_are_checked(
    gateway: Gateway, capabilities: Any, detail: str
) -> None:
    admin = await gateway.token("admin")
    before = await gateway.snapshot()
    resp = await enroll(gateway, admin, node(capabilities=capabilities))
    problem = await assert_problem(resp, 422, "validation_failed")
    assert problem["detail"].startswith(detail), problem
    assert problem["field"] == "capabilities", problem
    assert await gateway.snapshot() == before


@pytest.mark.parametrize(
    ("facilities", "field"),
    [
        ([{"id": "f-001"}], "facilityIds[]"),
        (["f-001", 3], "facilityIds[]"),
        ([["f-001"]], "facilityIds[]"),
        ([], "facilityIds"),
        ("f-001", "facilityIds"),
    ],
)
async def test_facility_items_are_checked(gateway: Gateway, facilities: Any, field: str) -> None:
    admin = await gateway.token("admin")
    before = await gateway.snapshot()
    resp = await enroll(gateway, admin, node(facilityIds=facilities))
    problem = await assert_problem(resp, 422, "validation_failed")
    assert problem["field"] == field, problem
    assert await gateway.snapshot() == before


async def test_known_capabilities_are_stored_once(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    resp = await enroll(gateway, admin, node(capabilities=["risk_override", "risk_override"]))
    assert resp.status == 201, await resp.text()
    assert (await document(resp))["capabilities"] == ["risk_override"]
    resp = await gateway.client.get(f"{PREFIX}/admin/nodes/edge-9", headers=bearer(admin))
    assert (await document(resp))["capabilities"] == ["risk_override"]
    resp = await enroll(gateway, admin, {**node(), "nodeId": "edge-10", "capabilities": []})
    assert resp.status == 201 and (await document(resp))["capabilities"] == []


async def login(gateway: Gateway, data: Any) -> aiohttp.ClientResponse:
    return await gateway.client.post("/admin/login", data=data, allow_redirects=False)


async def test_the_login_form_takes_one_token_string(gateway: Gateway) -> None:
    """Repeated fields, a file in place of the token, a JSON body: the login
    form again (401), never a 500, never a session; of repeated fields the
    first counts."""
    admin = await gateway.token("admin")
    form = aiohttp.FormData()
    form.add_field("token", io.BytesIO(admin.encode()), filename="token.txt")
    attempts: list[Any] = [
        form,
        [("token", "not-a-token"), ("token", admin)],  # the first one counts
        json.dumps({"token": [admin]}),  # not a form: no token in it
    ]
    before = await gateway.snapshot()
    for data in attempts:
        resp = await login(gateway, data)
        assert resp.status == 401, await resp.text()
        assert "not an admin token" in await resp.text()
        assert "Set-Cookie" not in resp.headers
    assert await gateway.snapshot() == before
    resp = await login(gateway, [("token", admin), ("token", "not-a-token")])
    assert resp.status == 303 and "Set-Cookie" in resp.headers

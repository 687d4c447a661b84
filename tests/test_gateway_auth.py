"""Who may talk to the gateway: node signatures, scope and bearer-token roles.

Every refused request must answer a problem document and change nothing
(``snapshot()`` before and after). Signed requests go to ``POST …/sync/batches``
(a write, so "changed nothing" means something) unless noted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import pytest

from gateway.http import http_date
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

BATCHES = f"{PREFIX}/sync/batches"
REPORTS = f"{PREFIX}/sync/facility-reports"
MSGPACK_TYPE = {"Content-Type": "application/msgpack"}


async def refused(
    gateway: Gateway, send: Callable[[], Awaitable[Any]], status: int, code: str
) -> dict[str, Any]:
    """Send, check the problem answer, and check that no table changed."""
    before = await gateway.snapshot()
    resp = await send()
    doc = await assert_problem(resp, status, code)
    if status == 401:  # RFC 9110 section 11.6.1: the schemes this server accepts
        assert resp.headers["WWW-Authenticate"] == (
            'PHS-Ed25519 realm="phs-sync", Bearer realm="phs-sync"'
        )
    assert await gateway.snapshot() == before
    return doc


async def setup(gateway: Gateway) -> tuple[str, NodeIdentity]:
    admin = await gateway.token("admin")
    node = await gateway.enroll("edge-01", "t1", ("f-001",))
    await gateway.create_item(admin, "item-1", "assigned")
    return admin, node


def one_transition(node: NodeIdentity, gateway: Gateway, batch_id: str = "b-1") -> bytes:
    return gateway.batch(node, [transition("t-1", "item-1", "assigned", "in_progress")], batch_id)[
        1
    ]


async def post_raw(
    gateway: Gateway, body: bytes, authorization: str | None, key: str = "b-1"
) -> Any:
    headers = {"Content-Type": "application/msgpack", "Idempotency-Key": key}
    if authorization is not None:
        headers["Authorization"] = authorization
    return await gateway.client.post(BATCHES, data=body, headers=headers)


# --- signatures -----------------------------------------------------------------


async def test_valid_signature_is_accepted(gateway: Gateway) -> None:
    _, node = await setup(gateway)
    resp = await gateway.post_batch(node, [transition("t-1", "item-1", "assigned", "in_progress")])
    assert resp.status == 200, await resp.text()
    [result] = (await document(resp))["results"]
    assert (result["status"], result["state"]) == ("applied", "in_progress")


async def test_tampered_payload_is_refused(gateway: Gateway) -> None:
    _, node = await setup(gateway)
    signed_body = one_transition(node, gateway)
    auth = authorization_header(
        node.keypair, node.node_id, "POST", BATCHES, signed_body, int(gateway.clock().timestamp())
    )
    # Same batch id, but the transition now goes straight to "completed".
    doc = msgpack.unpackb(signed_body)
    doc["items"][0]["to"] = "completed"
    tampered = msgpack.packb(doc)
    await refused(gateway, lambda: post_raw(gateway, tampered, auth), 401, "bad_signature")


async def test_signature_over_another_path_is_refused(gateway: Gateway) -> None:
    _, node = await setup(gateway)
    body = one_transition(node, gateway)
    auth = authorization_header(
        node.keypair, node.node_id, "POST", REPORTS, body, int(gateway.clock().timestamp())
    )
    await refused(gateway, lambda: post_raw(gateway, body, auth), 401, "bad_signature")


async def test_wrong_key_is_refused(gateway: Gateway) -> None:
    _, node = await setup(gateway)
    _, body = gateway.batch(node, [transition("t-1", "item-1", "assigned", "in_progress")], "b-1")

    async def send() -> Any:
        return await gateway.signed(
            node,
            "POST",
            BATCHES,
            body,
            headers={"Idempotency-Key": "b-1"},
            keypair=KeyPair.generate(),
        )

    await refused(gateway, send, 401, "bad_signature")


async def test_revoked_node_is_refused(gateway: Gateway) -> None:
    admin, node = await setup(gateway)
    resp = await gateway.client.delete(
        f"{PREFIX}/admin/nodes/{node.node_id}", headers=bearer(admin)
    )
    assert resp.status == 200, await resp.text()

    async def send() -> Any:
        return await gateway.post_batch(
            node, [transition("t-1", "item-1", "assigned", "in_progress")]
        )

    await refused(gateway, send, 403, "key_revoked")
    # The change feed too: a revoked node reads nothing.
    await refused(
        gateway, lambda: gateway.signed(node, "GET", f"{PREFIX}/sync/changes"), 403, "key_revoked"
    )


async def test_unknown_node_is_refused(gateway: Gateway) -> None:
    await setup(gateway)
    stranger = NodeIdentity("edge-99", "t1", ["f-001"])  # never enrolled

    async def send() -> Any:
        return await gateway.post_batch(
            stranger, [transition("t-1", "item-1", "assigned", "in_progress")]
        )

    await refused(gateway, send, 401, "unknown_key")


async def test_batch_node_id_must_be_the_signer(gateway: Gateway) -> None:
    _, node = await setup(gateway)
    other = await gateway.enroll("edge-02", "t1", ("f-001",))
    # Signed by edge-01, but the batch claims to come from edge-02.
    _, body = gateway.batch(other, [transition("t-1", "item-1", "assigned", "in_progress")], "b-1")

    async def send() -> Any:
        return await gateway.signed(node, "POST", BATCHES, body, headers={"Idempotency-Key": "b-1"})

    await refused(gateway, send, 403, "out_of_scope")


# --- scope --------------------------------------------------------------------------


async def test_out_of_scope_facility_is_rejected_per_item(gateway: Gateway) -> None:
    admin, node = await setup(gateway)
    await gateway.create_item(admin, "item-f2", "assigned", facility="f-002")
    resp = await gateway.post_batch(
        node,
        [
            transition("t-1", "item-f2", "assigned", "in_progress"),
            transition("t-2", "item-1", "assigned", "in_progress"),
        ],
    )
    assert resp.status == 200, await resp.text()
    results = (await document(resp))["results"]
    assert [(r["status"], r.get("code"), r["state"]) for r in results] == [
        ("rejected", "out_of_scope", "assigned"),  # f-002 is not edge-01's facility
        ("applied", None, "in_progress"),  # the rest of the batch still applies
    ]
    resp = await gateway.client.get(f"{PREFIX}/outreach-items/item-f2", headers=bearer(admin))
    item = await resp.json()
    assert item["state"] == "assigned"  # unchanged, and the refusal is on record:
    assert [(h["id"], h["disposition"], h["code"]) for h in item["history"]] == [
        ("t-1", "rejected", "out_of_scope")
    ]


async def test_other_tenants_item_is_unknown_to_a_node(gateway: Gateway) -> None:
    """A node naming another tenant's item learns nothing about it: unknown_item."""
    _, node = await setup(gateway)
    admin2 = await gateway.token("admin", tenant="t2")
    await gateway.create_item(admin2, "item-t2", "assigned")  # tenant t2, same facility name
    resp = await gateway.post_batch(node, [transition("t-1", "item-t2", "assigned", "in_progress")])
    assert resp.status == 200, await resp.text()
    [result] = (await document(resp))["results"]
    assert (result["status"], result["code"], result["state"]) == ("rejected", "unknown_item", None)
    resp = await gateway.client.get(f"{PREFIX}/outreach-items/item-t2", headers=bearer(admin2))
    item = await resp.json()
    assert (item["state"], item["history"]) == ("assigned", [])  # t2's item is untouched


REPORT_SCOPE = [
    ("facility", {"facility": "f-002"}),  # edge-01 is enrolled for f-001 only
    ("tenant", {"tenant": "t2"}),  # edge-01 belongs to t1
    ("device", {"device": "edge-02"}),  # payload names another device than the signer
]


@pytest.mark.parametrize(("what", "overrides"), REPORT_SCOPE, ids=[w for w, _ in REPORT_SCOPE])
async def test_out_of_scope_report_is_refused(
    gateway: Gateway, what: str, overrides: dict[str, str]
) -> None:
    _, node = await setup(gateway)
    await gateway.enroll("edge-02", "t1", ("f-001", "f-002"))
    report = signed_report(node, **overrides)
    await refused(
        gateway,
        lambda: gateway.client.post(REPORTS, data=msgpack.packb(report), headers=MSGPACK_TYPE),
        403,
        "out_of_scope",
    )


# --- clock skew ---------------------------------------------------------------------------

SKEWS = [
    (-301, 401),  # one second too old
    (+301, 401),  # one second too far ahead
    (-300, 200),  # exactly the allowed skew, behind
    (+300, 200),  # exactly the allowed skew, ahead
]


@pytest.mark.parametrize(("offset", "status"), SKEWS, ids=[f"{o:+d}s" for o, _ in SKEWS])
async def test_clock_skew(gateway: Gateway, offset: int, status: int) -> None:
    _, node = await setup(gateway)
    _, body = gateway.batch(node, [transition("t-1", "item-1", "assigned", "in_progress")], "b-1")
    ts = int(gateway.clock().timestamp()) + offset

    async def send() -> Any:
        return await gateway.signed(
            node, "POST", BATCHES, body, headers={"Idempotency-Key": "b-1"}, ts=ts
        )

    if status == 200:
        resp = await send()
        assert resp.status == 200, await resp.text()
        return
    before = await gateway.snapshot()
    resp = await send()
    doc = await assert_problem(resp, 401, "clock_skew")
    # The gateway's own (injected) time, so the node can correct its offset and retry.
    assert resp.headers["Date"] == http_date(gateway.clock())
    assert doc["serverTime"] == int(gateway.clock().timestamp())
    assert await gateway.snapshot() == before


# --- the Authorization header itself ------------------------------------------------------

BAD_AUTHORIZATION = [
    (None, "unauthenticated"),  # no header at all
    ("", "unauthenticated"),  # empty
    ("Bearer phs_abc_def", "unauthenticated"),  # a token where a signature is needed
    ("PHS-Ed25519", "bad_signature"),  # our scheme, no parameters
    ("PHS-Ed25519 keyId=edge-01,ts=1795608000", "bad_signature"),  # sig missing
    ("PHS-Ed25519 keyId=edge-01,ts=soon,sig=AAAA", "bad_signature"),  # ts not digits
    ("PHS-Ed25519 keyId=edge-01,ts=1795608000,sig=!!!", "bad_signature"),  # sig not base64
    ("PHS-Ed25519 keyId=edge-01,ts=1795608000,sig=AAAA", "bad_signature"),  # sig too short
    ("PHS-Ed25519 keyId=edge 01,ts=1795608000,sig=AAAA", "bad_signature"),  # keyId not an id
]


@pytest.mark.parametrize(("header", "code"), BAD_AUTHORIZATION)
async def test_missing_or_malformed_authorization(
    gateway: Gateway, header: str | None, code: str
) -> None:
    _, node = await setup(gateway)
    body = one_transition(node, gateway)
    await refused(gateway, lambda: post_raw(gateway, body, header), 401, code)


# --- bearer tokens and roles ----------------------------------------------------------------

NEW_ITEM = {"id": "item-new", "facilityId": "f-001", "state": "pending"}


def new_node() -> dict[str, Any]:
    return {
        "nodeId": "edge-new",
        "tenantId": "t1",
        "facilityIds": ["f-001"],
        "publicKey": KeyPair.generate().public_key_b64,
    }


ROLE_CASES = [
    # (who, request, status, code)
    ("analyst", "create-item", 403, "forbidden"),  # analysts only read
    ("analyst", "server-transition", 403, "forbidden"),  # nor move items
    ("service", "enroll-node", 403, "forbidden"),  # enrolling is for admins
    ("analyst", "enroll-node", 403, "forbidden"),
    ("unknown", "create-item", 401, "unauthenticated"),  # a token nobody issued
    ("unknown", "enroll-node", 401, "unauthenticated"),
    ("none", "create-item", 401, "unauthenticated"),  # no Authorization at all
    ("admin-t2", "enroll-node", 403, "out_of_scope"),  # t2's admin, a t1 node
]


@pytest.mark.parametrize(("who", "what", "status", "code"), ROLE_CASES)
async def test_bearer_roles(gateway: Gateway, who: str, what: str, status: int, code: str) -> None:
    await setup(gateway)
    headers: dict[str, str] = {}
    if who == "unknown":
        headers = bearer("phs_000000000000_forged")
    elif who == "admin-t2":
        headers = bearer(await gateway.token("admin", tenant="t2"))
    elif who != "none":
        headers = bearer(await gateway.token(who))
    path, body = {
        "create-item": (f"{PREFIX}/outreach-items", NEW_ITEM),
        "server-transition": (
            f"{PREFIX}/outreach-items/item-1/transitions",
            {"id": "s-1", "from": "assigned", "to": "cancelled"},
        ),
        "enroll-node": (f"{PREFIX}/admin/nodes", new_node()),
    }[what]
    await refused(
        gateway, lambda: gateway.client.post(path, json=body, headers=headers), status, code
    )


READ_ROLES = [
    # (path, role, status): who may read what
    ("/outreach-items/item-1", "analyst", 200),  # items: admin, service, analyst
    ("/outreach-items/item-1", "service", 200),
    ("/analytics/facility-reports", "analyst", 200),  # analytics: analyst, admin
    ("/analytics/facility-reports", "service", 403),
    ("/events", "service", 200),  # events: service, admin
    ("/events", "analyst", 403),
    ("/admin/nodes/edge-01", "admin", 200),  # node registry: admin only
    ("/admin/nodes/edge-01", "service", 403),
]


@pytest.mark.parametrize(("path", "role", "status"), READ_ROLES)
async def test_read_roles(gateway: Gateway, path: str, role: str, status: int) -> None:
    await setup(gateway)
    token = await gateway.token(role)
    resp = await gateway.client.get(PREFIX + path, headers=bearer(token))
    if status == 200:
        assert resp.status == 200, await resp.text()
    else:
        await assert_problem(resp, status, "forbidden")


async def test_a_signature_is_no_bearer_token(gateway: Gateway) -> None:
    """Node credentials do not open the token endpoints."""
    _, node = await setup(gateway)
    await refused(
        gateway,
        lambda: gateway.signed(node, "GET", f"{PREFIX}/outreach-items/item-1"),
        401,
        "unauthenticated",
    )


# --- the policy table: who may write which aggregate ---------------------------------------

POLICY_KINDS = [
    # (batch kind, per-item code): nodes write only transitions and facility reports
    ("population_cohort", "policy_server_authoritative"),
    ("cohort_membership", "policy_server_authoritative"),
    ("disease_registry_entry", "policy_server_authoritative"),  # service role only
    ("risk_score.computed", "policy_server_authoritative"),
    ("quality_metric_snapshot", "policy_server_authoritative"),  # and immutable
    ("hmis_export_job", "policy_server_authoritative"),
    ("deident_export_job", "policy_server_authoritative"),
    ("risk_score.override", "policy_server_authoritative"),  # lww, but admin: not via batches here
    ("telemetry.blob", "unknown_kind"),  # in no table
]


async def test_policy_kinds_are_rejected_per_item(gateway: Gateway) -> None:
    _, node = await setup(gateway)
    items = [{"kind": kind, "id": f"x-{n}"} for n, (kind, _) in enumerate(POLICY_KINDS)]
    items.append(transition("t-1", "item-1", "assigned", "in_progress"))
    resp = await gateway.post_batch(node, items)
    assert resp.status == 200, await resp.text()
    results = (await document(resp))["results"]
    assert [(r["status"], r["code"]) for r in results[:-1]] == [
        ("rejected", code) for _, code in POLICY_KINDS
    ]
    assert (results[-1]["status"], results[-1]["state"]) == ("applied", "in_progress")

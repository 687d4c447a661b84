"""The Idempotency-Key layer (CONTRACT section 4) on a live gateway.

Most cases use ``POST …/outreach-items/{id}/transitions`` (admin token): a
repeat that re-executed would show as a second history row, so "changes
nothing" is visible in the item itself as well as in ``snapshot()``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest

from gateway.db.schema import idempotency_keys
from gateway.idempotency import purge_expired
from gateway.registry import find_token
from harness import PREFIX, Gateway, assert_problem, bearer, document, signed_report, transition
from shared.idempotency import request_fingerprint
from shared.signing import KeyPair
from shared.values import format_timestamp

DAY = 24 * 3600
CANCEL = {"id": "s-1", "from": "assigned", "to": "cancelled"}


async def setup(gateway: Gateway) -> str:
    admin = await gateway.token("admin")
    await gateway.create_item(admin, "item-1", "assigned")
    return admin


async def cancel(
    gateway: Gateway, admin: str, key: str | None, body: Any = CANCEL, **h: str
) -> Any:
    headers = bearer(admin, **h)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await gateway.client.post(
        f"{PREFIX}/outreach-items/item-1/transitions", json=body, headers=headers
    )


async def history(gateway: Gateway, admin: str) -> list[tuple[str, str]]:
    resp = await gateway.client.get(f"{PREFIX}/outreach-items/item-1", headers=bearer(admin))
    return [(h["id"], h["disposition"]) for h in (await resp.json())["history"]]


async def test_replay_returns_the_same_answer_and_changes_nothing(gateway: Gateway) -> None:
    admin = await setup(gateway)
    first = await cancel(gateway, admin, "k-1")
    assert first.status == 200 and "Idempotent-Replayed" not in first.headers
    original = await first.json()
    assert (original["status"], original["state"]) == ("applied", "cancelled")
    before = await gateway.snapshot()
    again = await cancel(gateway, admin, "k-1")
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == original  # the original answer, not "duplicate"
    assert await gateway.snapshot() == before
    assert await history(gateway, admin) == [("s-1", "applied")]


async def test_replay_keeps_the_original_status_and_follows_accept(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    body = {"id": "item-9", "facilityId": "f-001", "state": "pending"}
    headers = bearer(admin, **{"Idempotency-Key": "create-9"})
    first = await gateway.client.post(f"{PREFIX}/outreach-items", json=body, headers=headers)
    assert first.status == 201, await first.text()
    again = await gateway.client.post(
        f"{PREFIX}/outreach-items",
        json=body,
        headers={**headers, "Accept": "application/msgpack"},
    )
    assert again.status == 201  # a created item replays as 201 Created
    assert again.content_type == "application/msgpack"  # re-encoded for this caller
    assert again.headers["Idempotent-Replayed"] == "true"
    assert msgpack.unpackb(await again.read()) == await first.json()


async def test_batch_replay(gateway: Gateway) -> None:
    admin = await setup(gateway)
    node = await gateway.enroll()
    _, body = gateway.batch(node, [transition("t-1", "item-1", "assigned", "in_progress")], "b-7")

    async def send() -> Any:
        return await gateway.signed(
            node, "POST", f"{PREFIX}/sync/batches", body, headers={"Idempotency-Key": "b-7"}
        )

    first = await send()
    assert first.status == 200
    before = await gateway.snapshot()
    gateway.clock.advance(60)  # the same bytes signed a minute later: still the same request
    again = await send()
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert await document(again) == await document(first)
    assert await gateway.snapshot() == before
    assert await history(gateway, admin) == [("t-1", "applied")]


async def test_same_key_different_body_is_a_mismatch(gateway: Gateway) -> None:
    admin = await setup(gateway)
    assert (await cancel(gateway, admin, "k-1")).status == 200
    before = await gateway.snapshot()
    other = {**CANCEL, "id": "s-2"}
    await assert_problem(
        await cancel(gateway, admin, "k-1", other), 422, "idempotency_key_mismatch"
    )
    assert await gateway.snapshot() == before


async def test_same_key_other_path_is_a_mismatch(gateway: Gateway) -> None:
    admin = await setup(gateway)
    await gateway.create_item(admin, "item-2", "assigned")
    assert (await cancel(gateway, admin, "k-1")).status == 200
    before = await gateway.snapshot()
    resp = await gateway.client.post(
        f"{PREFIX}/outreach-items/item-2/transitions",
        json=CANCEL,
        headers=bearer(admin, **{"Idempotency-Key": "k-1"}),
    )
    await assert_problem(resp, 422, "idempotency_key_mismatch")
    assert await gateway.snapshot() == before


async def test_keys_are_scoped_per_principal(gateway: Gateway) -> None:
    admin = await setup(gateway)
    await gateway.create_item(admin, "item-2", "assigned")
    # Two nodes, one key (the batch id): neither sees the other's answer.
    node_a = await gateway.enroll("edge-a")
    node_b = await gateway.enroll("edge-b")
    a = await gateway.post_batch(
        node_a, [transition("t-a", "item-1", "assigned", "in_progress")], "b-1"
    )
    b = await gateway.post_batch(
        node_b, [transition("t-b", "item-2", "assigned", "in_progress")], "b-1"
    )
    assert (a.status, b.status) == (200, 200)
    assert "Idempotent-Replayed" not in a.headers and "Idempotent-Replayed" not in b.headers
    assert [r["id"] for r in (await document(b))["results"]] == ["t-b"]
    # Two admin tokens, one key, different bodies: both execute, no mismatch.
    admin2 = await gateway.token("admin")
    one = await cancel(gateway, admin, "same")
    two = await gateway.client.post(
        f"{PREFIX}/outreach-items/item-2/transitions",
        json={"id": "s-2", "from": "in_progress", "to": "cancelled"},
        headers=bearer(admin2, **{"Idempotency-Key": "same"}),
    )
    assert (one.status, two.status) == (200, 200), await two.text()
    assert (await two.json())["status"] == "applied"


async def test_a_failed_request_is_not_stored(gateway: Gateway) -> None:
    admin = await setup(gateway)
    before = await gateway.snapshot()
    bad = {**CANCEL, "to": 7}  # wrong type: 422
    await assert_problem(await cancel(gateway, admin, "k-1", bad), 422, "validation_failed")
    assert await gateway.snapshot() == before  # no key row was kept
    # Retried with the same key and a corrected body: it runs (no mismatch).
    fixed = await cancel(gateway, admin, "k-1")
    assert fixed.status == 200 and "Idempotent-Replayed" not in fixed.headers
    assert (await fixed.json())["status"] == "applied"


async def test_a_failure_inside_the_write_is_not_stored(gateway: Gateway) -> None:
    admin = await setup(gateway)
    body = {"id": "item-1", "facilityId": "f-001", "state": "pending"}  # already exists
    headers = bearer(admin, **{"Idempotency-Key": "create-1"})
    before = await gateway.snapshot()
    for _ in range(2):  # the same failure twice: re-executed, never replayed
        resp = await gateway.client.post(f"{PREFIX}/outreach-items", json=body, headers=headers)
        assert "Idempotent-Replayed" not in resp.headers
        await assert_problem(resp, 409, "already_exists")
    assert await gateway.snapshot() == before


async def test_expiry_after_24_hours(gateway: Gateway) -> None:
    admin = await setup(gateway)
    assert (await cancel(gateway, admin, "k-1")).status == 200
    gateway.clock.advance(DAY - 1)  # still within 24 h: replayed
    resp = await cancel(gateway, admin, "k-1")
    assert resp.headers.get("Idempotent-Replayed") == "true"
    assert (await resp.json())["status"] == "applied"
    gateway.clock.advance(1)  # 24 h after: the key is forgotten and the request runs again
    resp = await cancel(gateway, admin, "k-1")
    assert resp.status == 200 and "Idempotent-Replayed" not in resp.headers
    assert (await resp.json())["status"] == "duplicate"  # the FSM now answers, not the key store
    assert await history(gateway, admin) == [("s-1", "applied"), ("s-1", "duplicate")]


async def test_purge_removes_only_expired_keys(gateway: Gateway) -> None:
    admin = await setup(gateway)
    assert (await cancel(gateway, admin, "old-1")).status == 200
    assert (await cancel(gateway, admin, "old-2")).status == 200
    gateway.clock.advance(12 * 3600)
    assert (await cancel(gateway, admin, "young")).status == 200
    assert (await gateway.table_counts())["idempotency_keys"] == 3
    gateway.clock.advance(12 * 3600)  # old-1 and old-2 are exactly 24 h old now
    assert await purge_expired(gateway.database, gateway.clock()) == 2
    assert (await gateway.table_counts())["idempotency_keys"] == 1  # "young" stays
    assert await purge_expired(gateway.database, gateway.clock()) == 0  # nothing left to do


BAD_KEYS = [
    "",  # empty
    "k" * 256,  # one character too long
    "clé-ünïcode",  # non-ASCII
    "tab\tinside",  # a control character
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=["empty", "256 chars", "non-ascii", "tab"])
@pytest.mark.parametrize(
    "endpoint",
    ["outreach-items", "transitions", "admin/nodes", "revoke", "facility-reports", "batches"],
)
async def test_bad_idempotency_keys(gateway: Gateway, key: str, endpoint: str) -> None:
    admin = await setup(gateway)
    node = await gateway.enroll()
    before = await gateway.snapshot()
    headers = {"Idempotency-Key": key}
    if endpoint == "outreach-items":
        body = {"id": "i-9", "facilityId": "f-001", "state": "pending"}
        resp = await gateway.client.post(
            f"{PREFIX}/outreach-items", json=body, headers=bearer(admin, **headers)
        )
    elif endpoint == "transitions":
        resp = await cancel(gateway, admin, key)
    elif endpoint == "admin/nodes":
        body = {
            "nodeId": "edge-9",
            "tenantId": "t1",
            "facilityIds": ["f-001"],
            "publicKey": KeyPair.generate().public_key_b64,
        }
        resp = await gateway.client.post(
            f"{PREFIX}/admin/nodes", json=body, headers=bearer(admin, **headers)
        )
    elif endpoint == "revoke":
        resp = await gateway.client.delete(
            f"{PREFIX}/admin/nodes/{node.node_id}", headers=bearer(admin, **headers)
        )
    elif endpoint == "facility-reports":
        resp = await gateway.client.post(
            f"{PREFIX}/sync/facility-reports",
            data=msgpack.packb(signed_report(node)),
            headers={"Content-Type": "application/msgpack", **headers},
        )
    else:
        _, body_bytes = gateway.batch(
            node, [transition("t-1", "item-1", "assigned", "in_progress")]
        )
        resp = await gateway.signed(
            node, "POST", f"{PREFIX}/sync/batches", body_bytes, headers=headers
        )
    await assert_problem(resp, 400, "bad_idempotency_key")
    assert await gateway.snapshot() == before


async def test_batch_key_must_be_the_batch_id(gateway: Gateway) -> None:
    await setup(gateway)
    node = await gateway.enroll()
    _, body = gateway.batch(node, [transition("t-1", "item-1", "assigned", "in_progress")])
    before = await gateway.snapshot()
    for headers in ({"Idempotency-Key": "not-the-batch-id"}, {}):  # another key, or none
        resp = await gateway.signed(node, "POST", f"{PREFIX}/sync/batches", body, headers=headers)
        doc = await assert_problem(resp, 422, "validation_failed")
        assert "batchId" in doc["detail"]
    assert await gateway.snapshot() == before


async def test_concurrent_requests_with_one_key(gateway: Gateway) -> None:
    admin = await setup(gateway)
    responses = await asyncio.gather(*(cancel(gateway, admin, "k-1") for _ in range(4)))
    executed, others = [], []
    for resp in responses:
        body = await resp.json()
        if resp.status == 200 and "Idempotent-Replayed" not in resp.headers:
            executed.append(body)
        else:
            others.append((resp, body))
    assert len(executed) == 1 and executed[0]["status"] == "applied"
    for resp, body in others:
        if resp.status == 409:  # the first was still running
            assert body["code"] == "idempotency_in_flight"
            assert int(resp.headers["Retry-After"]) >= 1
        else:  # or it had finished: the replay
            assert resp.status == 200 and resp.headers["Idempotent-Replayed"] == "true"
            assert body == executed[0]
    assert await history(gateway, admin) == [("s-1", "applied")]  # recorded exactly once


async def test_abandoned_in_flight_key_is_taken_over(gateway: Gateway) -> None:
    """A key whose request died mid-way (still marked in flight) answers 409
    until it is stale (idempotency_stale_seconds, 120 s), then runs anew."""
    admin = await setup(gateway)
    async with gateway.database.read() as conn:
        principal = await find_token(conn, admin)
    assert principal is not None
    path = f"{PREFIX}/outreach-items/item-1/transitions"
    body = json.dumps(CANCEL).encode()
    async with gateway.database.write() as conn:
        await conn.execute(
            idempotency_keys.insert().values(
                principal=principal.principal,
                key="k-1",
                fingerprint=request_fingerprint("POST", path, body),
                state="in_flight",
                claimed_at=format_timestamp(gateway.clock()),
                expires_at=format_timestamp(gateway.clock()),
            )
        )

    async def send() -> Any:
        return await gateway.client.post(
            path,
            data=body,
            headers=bearer(admin, **{"Idempotency-Key": "k-1", "Content-Type": "application/json"}),
        )

    resp = await send()
    await assert_problem(resp, 409, "idempotency_in_flight")
    assert resp.headers["Retry-After"] == "1"
    gateway.clock.advance(121)
    resp = await send()
    assert resp.status == 200 and (await resp.json())["status"] == "applied"
    assert await history(gateway, admin) == [("s-1", "applied")]


async def test_abandoned_key_taken_over_by_requests_at_once(gateway: Gateway) -> None:
    """Several resends find the key stale at once: one runs the write, the others
    answer 409 in flight or replay it (on PostgreSQL the losers' insert hit the
    winner's new claim: a 500)."""
    admin = await setup(gateway)
    async with gateway.database.read() as conn:
        principal = await find_token(conn, admin)
    assert principal is not None
    path = f"{PREFIX}/outreach-items/item-1/transitions"
    body = json.dumps(CANCEL).encode()
    async with gateway.database.write() as conn:
        await conn.execute(
            idempotency_keys.insert().values(
                principal=principal.principal,
                key="k-1",
                fingerprint=request_fingerprint("POST", path, body),
                state="in_flight",
                claimed_at=format_timestamp(gateway.clock()),
                expires_at=format_timestamp(gateway.clock()),
            )
        )
    gateway.clock.advance(121)
    headers = bearer(admin, **{"Idempotency-Key": "k-1", "Content-Type": "application/json"})
    answers = await asyncio.gather(
        *(gateway.client.post(path, data=body, headers=headers) for _ in range(6))
    )
    ran = [r for r in answers if r.status == 200 and "Idempotent-Replayed" not in r.headers]
    assert len(ran) == 1 and {r.status for r in answers} <= {200, 409}
    assert await history(gateway, admin) == [("s-1", "applied")]

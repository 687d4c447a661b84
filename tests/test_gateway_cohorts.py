"""Population cohorts on the gateway (issue 5): creation and validation,
server-numbered immutable versions (admin drafts and ``cohort.draft`` batch
items, concurrent drafts included), role checks, memberships computed from
the registry, and the change-feed rows of both."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
import sqlalchemy as sa

from canaries import patient_ref
from gateway import memberships
from gateway.cohorts import Author, submit_draft
from gateway.db.schema import cohort_memberships, cohort_versions, refused_writes
from harness import (
    PREFIX,
    Gateway,
    NodeIdentity,
    assert_problem,
    bearer,
    document,
)
from shared.cohorts import parse_cohort

COHORTS = f"{PREFIX}/cohorts"
ENTRIES = f"{PREFIX}/registry/entries"
CHANGES = f"{PREFIX}/sync/changes"

DIABETIC_WOMEN = {"all": [{"field": "sex", "op": "eq", "value": "female"}, {"condition": "E11"}]}
# The same rule spelled differently: a lower-case code, keys in another order.
DIABETIC_WOMEN_RESPELT = {
    "all": [{"value": "female", "op": "eq", "field": "sex"}, {"condition": "e11"}]
}
WOMEN = {"field": "sex", "op": "eq", "value": "female"}
# docs/cohorts.md's example with four mistakes, and the errors it must give.
FOUR_MISTAKES = {
    "all": [
        {"field": "sex", "op": "eq", "value": "F"},
        {"field": "age", "op": "between", "value": [70, 40]},
        {"condition": "E11", "onsetBefor": "2020-01-01"},
        {"field": "lastScreeningDate", "op": "before", "value": {"daysAgo": "365"}},
    ]
}
FOUR_ERRORS = [
    {"path": "/all/0/value", "message": "must be one of female, male, other, unknown"},
    {"path": "/all/1/value", "message": "must be [low, high] with low <= high"},
    {
        "path": "/all/2/onsetBefor",
        "message": "unknown key; allowed here: condition, onsetBefore, onsetAfter",
    },
    {"path": "/all/3/value/daysAgo", "message": "must be an integer from 0 to 54750"},
]


def canonical(definition: dict[str, Any]) -> dict[str, Any]:
    from shared.cohorts import parse_cohort, to_wire

    return to_wire(parse_cohort(definition))


def entry(
    entry_id: str,
    sex: str = "female",
    codes: tuple[str, ...] = ("E11",),
    facility: str = "f-001",
    birth: str = "1970-05-01",
) -> dict[str, Any]:
    return {
        "id": entry_id,
        "facilityId": facility,
        "patientRef": patient_ref(entry_id),
        "sex": sex,
        "birthDate": birth,
        "conditions": [{"code": c} for c in codes],
    }


async def create(
    gateway: Gateway,
    token: str,
    definition: Any = DIABETIC_WOMEN,
    cohort_id: str = "dm-women",
    name: str = "Women with diabetes",
) -> Any:
    return await gateway.client.post(
        COHORTS,
        json={"cohortId": cohort_id, "name": name, "definition": definition},
        headers=bearer(token),
    )


async def draft(gateway: Gateway, token: str, definition: Any, cohort_id: str = "dm-women") -> Any:
    return await gateway.client.post(
        f"{COHORTS}/{cohort_id}/drafts", json={"definition": definition}, headers=bearer(token)
    )


async def get(gateway: Gateway, token: str, path: str) -> Any:
    resp = await gateway.client.get(path, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def put_entry(gateway: Gateway, service: str, doc: dict[str, Any]) -> None:
    resp = await gateway.client.put(f"{ENTRIES}/{doc['id']}", json=doc, headers=bearer(service))
    assert resp.status in (200, 201), await resp.text()


async def delete_entry(gateway: Gateway, service: str, entry_id: str) -> None:
    resp = await gateway.client.delete(f"{ENTRIES}/{entry_id}", headers=bearer(service))
    assert resp.status == 200, await resp.text()


async def member_ids(gateway: Gateway, token: str, cohort_id: str = "dm-women") -> list[str]:
    doc = await get(gateway, token, f"{COHORTS}/{cohort_id}/members")
    return [m["entryId"] for m in doc["members"]]


async def feed(
    gateway: Gateway, node: NodeIdentity, aggregate: str, since: str = "0"
) -> list[dict[str, Any]]:
    resp = await gateway.signed(node, "GET", f"{CHANGES}?since={since}")
    assert resp.status == 200, await resp.text()
    return [c for c in (await resp.json())["changes"] if c["aggregate"] == aggregate]


async def feed_cursor(gateway: Gateway, node: NodeIdentity) -> str:
    resp = await gateway.signed(node, "GET", f"{CHANGES}?since=0")
    return str((await resp.json())["cursor"])


def draft_item(item_id: str, definition: Any, cohort_id: str = "dm-women", **extra: Any) -> Any:
    return {
        "kind": "cohort.draft",
        "id": item_id,
        "cohortId": cohort_id,
        "definition": definition,
        **extra,
    }


async def batch_results(gateway: Gateway, node: NodeIdentity, items: list[Any]) -> Any:
    resp = await gateway.post_batch(node, items)
    assert resp.status == 200, await resp.text()
    return (await document(resp))["results"]


# Creating and reading.


async def test_create_then_read_list_and_version(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    analyst = await gateway.token("analyst")
    resp = await create(gateway, admin, DIABETIC_WOMEN_RESPELT)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    stamp = "2026-11-25T12:00:00.000Z"  # the fake clock
    assert created == {
        "cohortId": "dm-women",
        "name": "Women with diabetes",
        "version": 1,
        "definition": canonical(DIABETIC_WOMEN),  # stored canonical: E11 upper-case
        "createdAt": stamp,
    }
    cohort = await get(gateway, analyst, f"{COHORTS}/dm-women")
    assert cohort == {
        **created,
        "updatedAt": stamp,
        "versions": [
            {
                "version": 1,
                "createdAt": stamp,
                "createdBy": cohort["versions"][0]["createdBy"],
                "source": "admin",
            }
        ],
    }
    assert cohort["versions"][0]["createdBy"].startswith("token:")
    assert await get(gateway, analyst, COHORTS) == {"cohorts": [{**created, "updatedAt": stamp}]}
    version = await get(gateway, admin, f"{COHORTS}/dm-women/versions/1")
    assert version == {**created, **cohort["versions"][0]}


async def test_an_invalid_definition_lists_every_error_and_stores_nothing(
    gateway: Gateway,
) -> None:
    admin = await gateway.token("admin")
    before = await gateway.snapshot()
    doc = await assert_problem(await create(gateway, admin, FOUR_MISTAKES), 422, "cohort_invalid")
    assert doc["errors"] == FOUR_ERRORS
    assert doc["detail"].startswith("invalid cohort definition: /all/0/value:")
    # A definition that is not an object at all: one error at the root.
    doc = await assert_problem(await create(gateway, admin, [1, 2]), 422, "cohort_invalid")
    assert [e["path"] for e in doc["errors"]] == [""]
    assert await gateway.snapshot() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "definition": WOMEN}, "cohortId"),
        ({"cohortId": "a/b", "name": "x", "definition": WOMEN}, "cohortId"),
        ({"cohortId": "c", "definition": WOMEN}, "name"),
        ({"cohortId": "c", "name": "  ", "definition": WOMEN}, "name"),
        ({"cohortId": "c", "name": "x" * 201, "definition": WOMEN}, "name"),
        ({"cohortId": "c", "name": "x"}, "definition"),
        ({"cohortId": "c", "name": "x", "definition": WOMEN, "version": 3}, None),
    ],
)
async def test_malformed_creation_is_refused(
    gateway: Gateway, body: dict[str, Any], field: str | None
) -> None:
    admin = await gateway.token("admin")
    resp = await gateway.client.post(COHORTS, json=body, headers=bearer(admin))
    doc = await assert_problem(resp, 422, "validation_failed")
    assert doc.get("field") == field or field is None


async def test_a_cohort_id_is_taken_once_per_tenant(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    other = await gateway.token("admin", tenant="t2")
    assert (await create(gateway, admin)).status == 201
    await assert_problem(await create(gateway, admin, WOMEN), 409, "already_exists")
    assert (await create(gateway, other, WOMEN)).status == 201  # t2 has its own ids
    # Each tenant sees only its own.
    assert (await get(gateway, other, f"{COHORTS}/dm-women"))["definition"] == WOMEN
    resp = await gateway.client.get(f"{COHORTS}/nope", headers=bearer(admin))
    await assert_problem(resp, 404, "not_found")


# Versions.


async def test_drafts_get_server_numbered_versions(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    await create(gateway, admin)
    resp = await draft(gateway, admin, WOMEN)
    assert resp.status == 201
    assert (await resp.json())["version"] == 2
    # The same rule again, respelt: no new version, the latest answers (200).
    resp = await draft(gateway, admin, {"value": "female", "field": "sex", "op": "eq"})
    assert resp.status == 200
    assert await resp.json() == {
        "cohortId": "dm-women",
        "name": "Women with diabetes",
        "version": 2,
        "definition": WOMEN,
        "createdAt": "2026-11-25T12:00:00.000Z",
    }
    # Version 1's rule again is a new version: it becomes current again.
    gateway.clock.advance(60)
    resp = await draft(gateway, admin, DIABETIC_WOMEN_RESPELT)
    assert resp.status == 201
    assert (await resp.json())["version"] == 3
    cohort = await get(gateway, admin, f"{COHORTS}/dm-women")
    assert cohort["version"] == 3 and cohort["definition"] == canonical(DIABETIC_WOMEN)
    assert [v["version"] for v in cohort["versions"]] == [1, 2, 3]
    assert cohort["updatedAt"] == "2026-11-25T12:01:00.000Z"
    assert (await get(gateway, admin, f"{COHORTS}/dm-women/versions/2"))["definition"] == WOMEN
    # Invalid drafts and drafts for unknown cohorts store nothing.
    doc = await assert_problem(await draft(gateway, admin, FOUR_MISTAKES), 422, "cohort_invalid")
    assert doc["errors"] == FOUR_ERRORS
    await assert_problem(await draft(gateway, admin, WOMEN, "nope"), 404, "not_found")
    resp = await gateway.client.post(
        f"{COHORTS}/dm-women/drafts",
        json={"definition": WOMEN, "version": 9},
        headers=bearer(admin),
    )
    await assert_problem(resp, 422, "validation_failed")  # a client never names a version
    assert [
        v["version"] for v in (await get(gateway, admin, f"{COHORTS}/dm-women"))["versions"]
    ] == [1, 2, 3]


async def test_concurrent_drafts_are_numbered_without_gaps_or_repeats(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    await create(gateway, admin)
    definitions = [{"field": "age", "op": "ge", "value": n} for n in range(20)]
    responses = await asyncio.gather(*(draft(gateway, admin, d) for d in definitions))
    assert [r.status for r in responses] == [201] * 20
    got = [(await r.json()) for r in responses]
    assert sorted(d["version"] for d in got) == list(range(2, 22))
    # Each answer names the version that holds its own definition.
    for definition, answer in zip(definitions, got, strict=True):
        path = f"{COHORTS}/dm-women/versions/{answer['version']}"
        assert (await get(gateway, admin, path))["definition"] == definition
    cohort = await get(gateway, admin, f"{COHORTS}/dm-women")
    assert [v["version"] for v in cohort["versions"]] == list(range(1, 22))
    assert cohort["version"] == 21


@pytest.mark.parametrize("method", ["PUT", "PATCH", "POST", "DELETE"])
async def test_a_version_is_immutable(gateway: Gateway, method: str) -> None:
    admin = await gateway.token("admin")
    await create(gateway, admin)
    before = await gateway.snapshot()
    path = f"{COHORTS}/dm-women/versions/1"
    resp = await gateway.client.request(
        method, path, json={"definition": WOMEN}, headers=bearer(admin)
    )
    await assert_problem(resp, 409, "immutable")
    if method != "POST":
        resp = await gateway.client.request(method, f"{COHORTS}/dm-women", headers=bearer(admin))
        await assert_problem(resp, 409, "immutable")
    # No such version, or no such cohort: 404; no token: 401.
    resp = await gateway.client.request(
        method, f"{COHORTS}/dm-women/versions/2", headers=bearer(admin)
    )
    await assert_problem(resp, 404, "not_found")
    resp = await gateway.client.request(
        method, f"{COHORTS}/dm-women/versions/x", headers=bearer(admin)
    )
    await assert_problem(resp, 404, "not_found")
    resp = await gateway.client.request(method, f"{COHORTS}/nope/versions/1", headers=bearer(admin))
    await assert_problem(resp, 404, "not_found")
    await assert_problem(await gateway.client.request(method, path), 401, "unauthenticated")
    assert await gateway.snapshot() == before


# Roles.


async def refusals(gateway: Gateway) -> list[tuple[str, str | None, str]]:
    async with gateway.database.read() as conn:
        rows = await conn.execute(sa.select(refused_writes).order_by(refused_writes.c.seq))
        return [(r.kind, r.record_id, r.code) for r in rows]


async def test_only_admins_write_cohorts_and_nobody_writes_members(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    analyst = await gateway.token("analyst")
    service = await gateway.token("service")
    await create(gateway, admin)
    for token in (analyst, service):
        resp = await create(gateway, token, WOMEN, "other")
        await assert_problem(resp, 403, "policy_server_authoritative")
        resp = await draft(gateway, token, WOMEN)
        await assert_problem(resp, 403, "policy_server_authoritative")
    for token in (admin, analyst, service):
        resp = await gateway.client.post(
            f"{COHORTS}/dm-women/members", json={"entryId": "e1"}, headers=bearer(token)
        )
        await assert_problem(resp, 403, "policy_server_authoritative")
    # Every refusal is recorded; nothing else changed.
    assert await refusals(gateway) == [
        ("population_cohort", None, "policy_server_authoritative"),
        ("population_cohort", "dm-women", "policy_server_authoritative"),
        ("population_cohort", None, "policy_server_authoritative"),
        ("population_cohort", "dm-women", "policy_server_authoritative"),
        *[("cohort_membership", "dm-women", "policy_server_authoritative")] * 3,
    ]
    assert [
        v["version"] for v in (await get(gateway, admin, f"{COHORTS}/dm-women"))["versions"]
    ] == [1]
    # Admins and analysts read; a service token does not; no token is a 401.
    for path in (
        COHORTS,
        f"{COHORTS}/dm-women",
        f"{COHORTS}/dm-women/versions/1",
        f"{COHORTS}/dm-women/members",
    ):
        await get(gateway, analyst, path)
        await assert_problem(
            await gateway.client.get(path, headers=bearer(service)), 403, "forbidden"
        )
        await assert_problem(await gateway.client.get(path), 401, "unauthenticated")
    await assert_problem(await create(gateway, "phs_nope", WOMEN, "x"), 401, "unauthenticated")


# Batches.


async def test_cohort_drafts_from_an_edge_node(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await create(gateway, admin)
    results = await batch_results(
        gateway,
        node,
        [
            draft_item("d1", WOMEN, deviceId="tab-a"),
            draft_item("d2", {"field": "sex", "value": "female", "op": "eq"}),  # = latest
            draft_item("d3", FOUR_MISTAKES),
            draft_item("d4", WOMEN, "no-such-cohort"),
            draft_item("d5", DIABETIC_WOMEN),  # version 1's rule again: a new version
        ],
    )
    assert results[0] == {"id": "d1", "status": "applied", "cohortId": "dm-women", "version": 2}
    assert results[1] == {"id": "d2", "status": "duplicate", "cohortId": "dm-women", "version": 2}
    assert results[2]["status"] == "rejected" and results[2]["code"] == "cohort_invalid"
    assert results[2]["errors"] == FOUR_ERRORS and results[2]["detail"]
    assert results[3]["status"] == "rejected" and results[3]["code"] == "not_found"
    assert results[4] == {"id": "d5", "status": "applied", "cohortId": "dm-women", "version": 3}
    # A draft item sent again in a later batch is a duplicate of what it stored.
    results = await batch_results(gateway, node, [draft_item("d1", WOMEN)])
    assert results == [{"id": "d1", "status": "duplicate", "cohortId": "dm-women", "version": 2}]
    cohort = await get(gateway, admin, f"{COHORTS}/dm-women")
    assert [(v["version"], v["createdBy"], v["source"]) for v in cohort["versions"]] == [
        (1, cohort["versions"][0]["createdBy"], "admin"),
        (2, "node:edge-01", "device"),  # d1 carried the tablet's deviceId
        (3, "node:edge-01", "node"),
    ]
    # Another tenant's node does not see (or draft into) t1's cohorts.
    stranger = await gateway.enroll("edge-t2", tenant="t2")
    results = await batch_results(gateway, stranger, [draft_item("x1", WOMEN)])
    assert results[0]["code"] == "not_found"


async def test_nodes_may_not_write_cohorts_or_memberships(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await create(gateway, admin)
    results = await batch_results(
        gateway,
        node,
        [
            {"kind": "population_cohort", "id": "c1", "definition": WOMEN},
            {"kind": "cohort_membership", "id": "m1", "entryId": "e1"},
        ],
    )
    assert [(r["status"], r["code"]) for r in results] == [
        ("rejected", "policy_server_authoritative")
    ] * 2
    assert await refusals(gateway) == [
        ("population_cohort", "c1", "policy_server_authoritative"),
        ("cohort_membership", "m1", "policy_server_authoritative"),
    ]


@pytest.mark.parametrize(
    "item",
    [
        {"kind": "cohort.draft", "id": "d1", "definition": WOMEN},  # no cohortId
        {"kind": "cohort.draft", "id": "d1", "cohortId": "dm-women"},  # no definition
        {"kind": "cohort.draft", "id": "d1", "cohortId": "a b", "definition": WOMEN},
        {"kind": "cohort.draft", "id": "d1", "cohortId": "c", "definition": WOMEN, "v": 2},
        {"kind": "cohort.draft", "id": "d1", "cohortId": "c", "definition": WOMEN, "deviceId": 7},
    ],
)
async def test_a_malformed_draft_item_fails_the_whole_batch(
    gateway: Gateway, item: dict[str, Any]
) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await create(gateway, admin)
    before = await gateway.snapshot()
    resp = await gateway.post_batch(node, [draft_item("ok", WOMEN), item])
    doc = await assert_problem(resp, 422, "validation_failed")
    assert doc["path"].startswith("/items/1")
    assert await gateway.snapshot() == before


# Memberships.


async def test_memberships_follow_registry_inserts_updates_and_deletes(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    service = await gateway.token("service")
    node = await gateway.enroll("edge-01", facilities=("f-001",))
    other = await gateway.enroll("edge-02", facilities=("f-002",))
    await put_entry(gateway, service, entry("e1"))
    await put_entry(gateway, service, entry("e2", sex="male"))
    await put_entry(gateway, service, entry("e3", codes=("E11.9", "I10")))
    await create(gateway, admin)
    assert await member_ids(gateway, admin) == ["e1", "e3"]  # E11 covers E11.9
    start = await feed_cursor(gateway, node)

    await put_entry(gateway, service, entry("e4", codes=("e11",)))  # a new member
    await put_entry(gateway, service, entry("e1", codes=("I10",)))  # no longer diabetic
    await put_entry(gateway, service, entry("e2", sex="female"))  # now a member
    await put_entry(gateway, service, entry("e3", codes=("E11.9", "I10"), birth="1971-01-01"))
    await delete_entry(gateway, service, "e4")
    assert await member_ids(gateway, admin) == ["e2", "e3"]

    changes = await feed(gateway, node, "cohort_membership", start)
    assert [(c["id"], c["op"]) for c in changes] == [
        ("dm-women/e4", "upsert"),
        ("dm-women/e1", "delete"),
        ("dm-women/e2", "upsert"),
        # e3 is updated but stays a member: nothing to announce
        ("dm-women/e4", "delete"),
    ]
    assert changes[0]["data"] == {
        "cohortId": "dm-women",
        "version": 1,
        "entryId": "e4",
        "facilityId": "f-001",
        "since": "2026-11-25T12:00:00.000Z",
    }
    assert changes[1]["data"]["entryId"] == "e1" and changes[1]["data"]["version"] == 1
    assert await feed(gateway, other, "cohort_membership") == []  # f-002's node sees none

    # Moving facility: a delete for f-001's node, an upsert for f-002's.
    start = await feed_cursor(gateway, node)
    await put_entry(gateway, service, entry("e2", facility="f-002"))
    assert [(c["id"], c["op"]) for c in await feed(gateway, node, "cohort_membership", start)] == [
        ("dm-women/e2", "delete")
    ]
    moved = await feed(gateway, other, "cohort_membership")
    assert [(c["id"], c["op"], c["data"]["facilityId"]) for c in moved] == [
        ("dm-women/e2", "upsert", "f-002")
    ]
    page = await get(gateway, admin, f"{COHORTS}/dm-women/members?facilityId=f-002")
    assert page == {
        "cohortId": "dm-women",
        "version": 1,
        "members": [moved[0]["data"]],
        "cursor": "e2",
        "more": False,
    }
    assert await member_ids(gateway, admin) == ["e2", "e3"]


async def test_a_new_version_recomputes_the_cohort(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    service = await gateway.token("service")
    node = await gateway.enroll("edge-01", facilities=("f-001", "f-002"))
    await put_entry(gateway, service, entry("e1"))  # diabetic woman
    await put_entry(gateway, service, entry("e2", codes=()))  # woman
    await put_entry(gateway, service, entry("e3", sex="male"))  # diabetic man
    await create(gateway, admin)
    assert await member_ids(gateway, admin) == ["e1"]
    start = await feed_cursor(gateway, node)
    gateway.clock.advance(3600)

    await draft(gateway, admin, WOMEN)  # version 2: women, diabetic or not
    page = await get(gateway, admin, f"{COHORTS}/dm-women/members")
    assert page["version"] == 2
    assert [(m["entryId"], m["version"], m["since"]) for m in page["members"]] == [
        ("e1", 2, "2026-11-25T12:00:00.000Z"),  # a member since version 1
        ("e2", 2, "2026-11-25T13:00:00.000Z"),
    ]
    changes = await feed(gateway, node, "population_cohort", start)
    assert [(c["id"], c["op"], c["data"]["version"]) for c in changes] == [
        ("dm-women", "upsert", 2)
    ]
    assert changes[0]["data"]["definition"] == WOMEN
    members = await feed(gateway, node, "cohort_membership", start)
    assert [(c["id"], c["op"], c["data"]["version"]) for c in members] == [
        ("dm-women/e1", "upsert", 2),  # still a member, now of version 2
        ("dm-women/e2", "upsert", 2),
    ]

    await draft(gateway, admin, {"field": "sex", "op": "eq", "value": "male"})
    members = await feed(gateway, node, "cohort_membership", str(changes[0]["seq"]))
    assert [(c["id"], c["op"], c["data"]["version"]) for c in members][-3:] == [
        ("dm-women/e1", "delete", 3),
        ("dm-women/e2", "delete", 3),
        ("dm-women/e3", "upsert", 3),
    ]
    # Only the latest version's members are stored.
    async with gateway.database.read() as conn:
        rows = await conn.execute(
            sa.select(cohort_memberships.c.version, cohort_memberships.c.entry_id)
        )
        assert sorted(tuple(r) for r in rows) == [(3, "e3")]


async def test_cohort_changes_reach_every_node_of_the_tenant(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll("edge-01", facilities=("f-009",))
    stranger = await gateway.enroll("edge-t2", tenant="t2")
    await create(gateway, admin)
    [change] = await feed(gateway, node, "population_cohort")
    assert (change["id"], change["op"]) == ("dm-women", "upsert")
    assert change["data"] == {
        "cohortId": "dm-women",
        "name": "Women with diabetes",
        "version": 1,
        "definition": canonical(DIABETIC_WOMEN),
        "createdAt": "2026-11-25T12:00:00.000Z",
    }
    assert await feed(gateway, stranger, "population_cohort") == []


async def test_a_new_day_recomputes_cohorts_that_depend_on_it(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    service = await gateway.token("service")
    await put_entry(gateway, service, entry("e1", birth="1986-11-26"))  # 40 tomorrow
    await put_entry(gateway, service, entry("e2", birth="1990-01-01"))
    await create(gateway, admin, {"field": "age", "op": "ge", "value": 40}, "forty-plus")
    await create(gateway, admin, DIABETIC_WOMEN)  # no date in it: left alone
    assert await member_ids(gateway, admin, "forty-plus") == []
    gateway.clock.advance(24 * 3600)
    async with gateway.database.write() as conn:
        delta = await memberships.recompute_dated(conn, gateway.clock())
    assert delta == memberships.Delta(added=1, removed=0)
    assert await member_ids(gateway, admin, "forty-plus") == ["e1"]
    async with gateway.database.write() as conn:  # again the same day: nothing to do
        assert await memberships.recompute_dated(conn, gateway.clock()) == memberships.Delta()


@pytest.fixture
def fast_day_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The running gateway looks at its clock's day every 10 ms, not every minute."""
    monkeypatch.setattr(memberships, "DAY_CHECK_SECONDS", 0.01)


async def test_the_running_gateway_recomputes_when_its_day_changes(
    fast_day_checks: None, gateway: Gateway
) -> None:
    admin = await gateway.token("admin")
    service = await gateway.token("service")
    await put_entry(gateway, service, entry("e1", birth="1986-11-26"))  # 40 tomorrow
    await create(gateway, admin, {"field": "age", "op": "ge", "value": 40}, "forty-plus")
    assert await member_ids(gateway, admin, "forty-plus") == []
    risk_before = await get(gateway, admin, f"{PREFIX}/risk-scores/e1")
    gateway.clock.advance(12 * 3600)  # midnight UTC
    for _ in range(500):
        if await member_ids(gateway, admin, "forty-plus"):
            break
        await asyncio.sleep(0.01)
    assert await member_ids(gateway, admin, "forty-plus") == ["e1"]
    # The risk score moved with the day in the same transaction: 40s are +5 points.
    risk_after = await get(gateway, admin, f"{PREFIX}/risk-scores/e1")
    assert risk_after["score"] == risk_before["score"] + 5


async def test_the_versions_table_is_insert_only(gateway: Gateway) -> None:
    """Drafts never rewrite a stored version's row."""
    admin = await gateway.token("admin")
    await create(gateway, admin)
    async with gateway.database.read() as conn:
        first = (await conn.execute(sa.select(cohort_versions))).all()
    await draft(gateway, admin, WOMEN)
    await draft(gateway, admin, WOMEN)
    async with gateway.database.read() as conn:
        rows = (await conn.execute(sa.select(cohort_versions).order_by("version"))).all()
    assert rows[:1] == first and len(rows) == 2


async def test_answers_in_msgpack(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    body = msgpack.packb({"cohortId": "c", "name": "n", "definition": WOMEN})
    resp = await gateway.client.post(
        COHORTS,
        data=body,
        headers=bearer(admin, **{"Content-Type": "application/msgpack"}),
    )
    assert resp.status == 201
    assert (await document(resp))["definition"] == WOMEN


# Drafts from admins and a node, and registry writes, all at once (row locks on
# PostgreSQL).


async def test_concurrent_drafts_and_registry_writes(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    service = await gateway.token("service")
    node = await gateway.enroll()
    await create(gateway, admin, WOMEN)
    definitions = [{"field": "age", "op": "ge", "value": n} for n in range(20)]
    entries = [entry(f"e{n}", birth=f"{1950 + n}-01-01") for n in range(10)]
    answers = await asyncio.gather(
        *(draft(gateway, admin, d) for d in definitions),
        *(put_entry(gateway, service, e) for e in entries),
        batch_results(gateway, node, [draft_item("n1", {"field": "age", "op": "ge", "value": 99})]),
    )
    drafted = [await r.json() for r in answers[:20]]
    [node_result] = answers[-1]
    versions = sorted([d["version"] for d in drafted] + [node_result["version"]])
    assert versions == list(range(2, 23))
    cohort = await get(gateway, admin, f"{COHORTS}/dm-women")
    assert [v["version"] for v in cohort["versions"]] == list(range(1, 23))
    # Whatever the interleaving, the members are those of the latest version.
    latest = cohort["definition"]
    expected = sorted(
        e["id"]
        for e in entries
        if 2026 - int(e["birthDate"][:4]) >= latest["value"]  # born 1 January
    )
    assert await member_ids(gateway, admin) == expected


async def test_an_entry_written_while_a_draft_commits_meets_the_new_version(
    gateway: Gateway,
) -> None:
    """The interleaving the test above hits only by chance, forced: an entry is
    written while a new version is stored but not yet committed. Its
    recomputation waits and then evaluates it against the new version. (On
    PostgreSQL a lock on the cohort rows alone evaluated it against the old
    one: the waiting statement joined the re-read cohort row to the versions
    of its old snapshot.)"""
    admin = await gateway.token("admin")
    service = await gateway.token("service")
    await create(gateway, admin, {"field": "sex", "op": "eq", "value": "male"})
    women = parse_cohort(WOMEN)
    async with gateway.database.write() as conn:
        await submit_draft(
            conn, "t1", "dm-women", women, Author("token:test", "admin"), gateway.clock()
        )
        writing = asyncio.create_task(put_entry(gateway, service, entry("e1", sex="female")))
        await asyncio.sleep(0.5)
        assert not writing.done()  # waits for the draft (PostgreSQL: its lock; SQLite: the writer)
    await asyncio.wait_for(writing, 30)
    cohort = await get(gateway, admin, f"{COHORTS}/dm-women")
    assert cohort["definition"] == WOMEN
    assert await member_ids(gateway, admin) == ["e1"]

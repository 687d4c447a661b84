"""The policy table (CONTRACT section 3) walked on the gateway, row by row.

For every aggregate and every writer — admin, service and analyst tokens on
the direct endpoints, an edge node (with and without the ``risk_override``
capability) through a batch, and the server's own computations — the
allowed writes succeed and every other one is refused with its code.
Every refusal of a server-authoritative write is recorded in
``refused_writes``. The tablet path through the edge is walked in
``test_policy_table_edge.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import sqlalchemy as sa

from canaries import patient_ref
from gateway.db.schema import refused_writes
from harness import PREFIX, Gateway, NodeIdentity, bearer, document, signed_report, transition
from shared.policy import POLICY_TABLE

ROLES = ("admin", "service", "analyst")
ENTRY = {
    "id": "e-1",
    "facilityId": "f-001",
    "patientRef": patient_ref(1),
    "sex": "female",
    "birthDate": "1961-03-02",
    "conditions": [{"code": "E11", "onset": "2010-01-01"}],
}
WOMEN = {"field": "sex", "op": "eq", "value": "female"}


@dataclass(frozen=True)
class Direct:
    """One write attempt on a direct endpoint, and the answer per role."""

    aggregate: str
    method: str
    path: str
    body: Any
    expected: dict[str, tuple[int, str | None]]  # role -> (status, code or None)


OK = None
SA = "policy_server_authoritative"
# What each token role may do on the direct endpoints (issue 5; CONTRACT section 3).
DIRECT: list[Direct] = [
    Direct(
        "population_cohort", "POST", "/cohorts",
        {"cohortId": "c-{role}", "name": "women", "definition": WOMEN},
        {"admin": (201, OK), "service": (403, SA), "analyst": (403, SA)},
    ),
    Direct(
        "population_cohort", "POST", "/cohorts/base/drafts", {"definition": {"not": WOMEN}},
        {"admin": (201, OK), "service": (403, SA), "analyst": (403, SA)},
    ),
    Direct(
        "cohort_membership", "POST", "/cohorts/base/members", {"entryId": "e-1"},
        {"admin": (403, SA), "service": (403, SA), "analyst": (403, SA)},
    ),
    Direct(
        "disease_registry_entry", "PUT", "/registry/entries/e-{role}",
        {**ENTRY, "id": "e-{role}"},
        {"admin": (403, SA), "service": (201, OK), "analyst": (403, SA)},
    ),
    Direct(
        "risk_score.computed", "PUT", "/risk-scores/e-1", {"score": 99},
        {"admin": (403, SA), "service": (403, SA), "analyst": (403, SA)},
    ),
    Direct(
        "risk_score.override", "POST", "/risk-scores/e-1/overrides",
        {"id": "o-{role}", "value": 80, "reason": "seen at clinic",
         "occurredAt": "2026-11-25T11:00:00.000Z"},
        {"admin": (200, OK), "service": (403, "forbidden"), "analyst": (403, "forbidden")},
    ),
    Direct(
        "outreach.transition", "POST", "/outreach-items/oi-{role}/transitions",
        {"id": "srv-{role}", "from": "assigned", "to": "cancelled"},  # a server-only move
        {"admin": (200, OK), "service": (200, OK), "analyst": (403, "forbidden")},
    ),
    Direct(
        "quality_metric_snapshot", "POST", "/quality-snapshots",
        {"periodType": "weekly", "periodKey": "2026-W47"},
        {"admin": (201, OK), "service": (403, SA), "analyst": (403, SA)},
    ),
    Direct(
        "hmis_export_job", "POST", "/hmis-exports",
        {"periodType": "weekly", "periodKey": "2026-W47"},
        {"admin": (202, OK), "service": (403, SA), "analyst": (403, SA)},
    ),
    Direct(
        "deident_export_job", "POST", "/deident-exports", {},
        {"admin": (202, OK), "service": (403, SA), "analyst": (403, SA)},
    ),
]  # fmt: skip


def test_every_aggregate_of_the_table_is_walked() -> None:
    walked = {d.aggregate for d in DIRECT} | set(BATCH_KINDS) | {"facility_report"}
    assert walked >= set(POLICY_TABLE)


async def world(gateway: Gateway) -> dict[str, str]:
    tokens = {role: await gateway.token(role) for role in ROLES}
    resp = await gateway.client.put(
        f"{PREFIX}/registry/entries/e-1", json=ENTRY, headers=bearer(tokens["service"])
    )
    assert resp.status == 201, await resp.text()
    resp = await gateway.client.post(
        f"{PREFIX}/cohorts",
        json={"cohortId": "base", "name": "base", "definition": WOMEN},
        headers=bearer(tokens["admin"]),
    )
    assert resp.status == 201, await resp.text()
    for item in ("oi-1", *(f"oi-{role}" for role in ROLES)):
        await gateway.create_item(tokens["admin"], item, "assigned")
    return tokens


def fill(value: Any, role: str) -> Any:
    if isinstance(value, str):
        return value.replace("{role}", role)
    if isinstance(value, dict):
        return {k: fill(v, role) for k, v in value.items()}
    return value


async def refused_count(gateway: Gateway) -> int:
    async with gateway.database.read() as conn:
        return int(
            (
                await conn.execute(sa.select(sa.func.count()).select_from(refused_writes))
            ).scalar_one()
        )


@pytest.mark.parametrize("attempt", DIRECT, ids=lambda d: f"{d.aggregate}-{d.method}-{d.path}")
async def test_direct_writes_by_role(gateway: Gateway, attempt: Direct) -> None:
    tokens = await world(gateway)
    for role in ROLES:
        before = await refused_count(gateway)
        resp = await gateway.client.request(
            attempt.method,
            PREFIX + fill(attempt.path, role),
            json=fill(attempt.body, role),
            headers=bearer(tokens[role]),
        )
        status, code = attempt.expected[role]
        doc = await document(resp)
        assert (resp.status, doc.get("code") if resp.status >= 400 else None) == (status, code), (
            role,
            doc,
        )
        if code is OK and isinstance(doc.get("status"), str):  # a per-record result
            assert doc["status"] == "applied", (role, doc)
        # A refused server-authoritative write is recorded; nothing else is.
        assert await refused_count(gateway) == before + (1 if code == SA else 0), role


# --------------------------------------------------------------------------- batches


def batch_item(kind: str, n: int, actor: bool = False) -> dict[str, Any]:
    """One item of ``kind`` as an edge node would send it."""
    item: dict[str, Any] = {"kind": kind, "id": f"{kind}-{n}"}
    if kind == "cohort.draft":
        item.update(cohortId="base", definition={"not": WOMEN})
    elif kind == "risk_score.override":
        item.update(
            entryId="e-1", value=70, reason="home visit", occurredAt="2026-11-25T11:30:00.000Z"
        )
        if actor:
            item["actorId"] = "token:admin-on-call"
    elif kind == "outreach.transition":
        item = transition(f"t-{n}", "oi-1", "assigned", "in_progress")
    else:  # a server-authoritative aggregate written as if it were the client's
        item.update(facilityId="f-001", data={"anything": n})
    return item


# kind -> (plain node's result, capable node's result): (status, code)
BATCH_KINDS: dict[str, tuple[tuple[str, str | None], tuple[str, str | None]]] = {
    "population_cohort": (("rejected", SA), ("rejected", SA)),
    "cohort.draft": (("applied", None), ("applied", None)),
    "cohort_membership": (("rejected", SA), ("rejected", SA)),
    "disease_registry_entry": (("rejected", SA), ("rejected", SA)),
    "risk_score.computed": (("rejected", SA), ("rejected", SA)),
    "risk_score.override": (("rejected", SA), ("applied", None)),
    "outreach.transition": (("applied", None), ("applied", None)),
    "quality_metric_snapshot": (("rejected", SA), ("rejected", SA)),
    "hmis_export_job": (("rejected", SA), ("rejected", SA)),
    "deident_export_job": (("rejected", SA), ("rejected", SA)),
}


async def batch_results(
    gateway: Gateway, node: NodeIdentity, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    resp = await gateway.post_batch(node, items)
    assert resp.status == 200, await resp.text()
    return list(msgpack.unpackb(await resp.read(), raw=False)["results"])


@pytest.mark.parametrize("capable", [False, True], ids=["node", "node-with-risk_override"])
async def test_batch_items_by_kind(gateway: Gateway, capable: bool) -> None:
    await world(gateway)
    node = await gateway.enroll(
        "edge-cap" if capable else "edge-01",
        capabilities=("risk_override",) if capable else (),
    )
    kinds = list(BATCH_KINDS)
    items = [batch_item(kind, n, actor=capable) for n, kind in enumerate(kinds)]
    items.append({"kind": "facility_report", "id": "report-1", **signed_report(node)})
    before = await refused_count(gateway)
    results = await batch_results(gateway, node, items)
    got = {kind: (r["status"], r.get("code")) for kind, r in zip(kinds, results, strict=False)}
    expected = {kind: pair[1 if capable else 0] for kind, pair in BATCH_KINDS.items()}
    assert got == expected
    assert results[-1]["status"] == "applied"  # the report, from the node that signed it
    refusals = sum(1 for status, code in expected.values() if code == SA)
    assert await refused_count(gateway) == before + refusals


async def test_the_server_writes_what_only_it_may(gateway: Gateway) -> None:
    """Memberships and computed scores exist because the server wrote them."""
    tokens = await world(gateway)
    members = await document(
        await gateway.client.get(
            f"{PREFIX}/cohorts/base/members", headers=bearer(tokens["analyst"])
        )
    )
    assert [m["entryId"] for m in members["members"]] == ["e-1"]
    risk = await document(
        await gateway.client.get(f"{PREFIX}/risk-scores/e-1", headers=bearer(tokens["analyst"]))
    )
    assert risk["source"] == "computed" and risk["score"] > 0


async def test_refused_batch_items_are_kept_whatever_their_code(gateway: Gateway) -> None:
    """Nothing is silently dropped (CONTRACT section 3): a refused draft or an
    unknown kind is recorded with its own code, in the batch's transaction."""
    await world(gateway)
    node = await gateway.enroll()
    items = [
        {"kind": "cohort.draft", "id": "d-bad", "cohortId": "base", "definition": {"all": []}},
        {"kind": "cohort.draft", "id": "d-none", "cohortId": "nope", "definition": WOMEN},
        {"kind": "cohort.draft", "id": "d-ok", "cohortId": "base", "definition": {"not": WOMEN}},
        {"kind": "no_such_kind", "id": "x-1"},
    ]
    results = await batch_results(gateway, node, items)
    assert [(r["status"], r.get("code")) for r in results] == [
        ("rejected", "cohort_invalid"),
        ("rejected", "not_found"),
        ("applied", None),
        ("rejected", "unknown_kind"),
    ]
    async with gateway.database.read() as conn:
        kept = (await conn.execute(sa.select(refused_writes).order_by(refused_writes.c.seq))).all()
    assert [(r.item_index, r.kind, r.record_id, r.code) for r in kept] == [
        (0, "cohort.draft", "d-bad", "cohort_invalid"),
        (1, "cohort.draft", "d-none", "not_found"),
        (3, "no_such_kind", "x-1", "unknown_kind"),
    ]

from __future__ import annotations

import msgpack

from harness import PREFIX, Gateway, signed_report, transition


async def test_batch_and_report_round_trip(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    await gateway.create_item(admin, "item-1", "assigned")
    report = signed_report(node)
    resp = await gateway.post_batch(
        node,
        [
            transition("t1", "item-1", "assigned", "in_progress"),
            {"kind": "facility_report", "id": "r1", **report},
            {"kind": "cohort_membership", "id": "x1"},
            {"kind": "weird", "id": "x2"},
        ],
    )
    assert resp.status == 200, await resp.text()
    doc = msgpack.unpackb(await resp.read())
    statuses = [(r["status"], r.get("code")) for r in doc["results"]]
    assert statuses == [
        ("applied", None),
        ("applied", None),
        ("rejected", "policy_server_authoritative"),
        ("rejected", "unknown_kind"),
    ]
    resp = await gateway.client.get(
        f"{PREFIX}/outreach-items/item-1", headers={"Authorization": f"Bearer {admin}"}
    )
    item = await resp.json()
    assert item["state"] == "in_progress" and len(item["history"]) == 1
    resp = await gateway.signed(node, "GET", f"{PREFIX}/sync/changes?since=0")
    assert resp.status == 200, await resp.text()
    feed = await resp.json()
    assert [c["data"]["state"] for c in feed["changes"]] == ["assigned", "in_progress"]

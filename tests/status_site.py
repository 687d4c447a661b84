"""A district with some history, for the status page and admin page tests.

:func:`busy_site` drives a live :class:`~edge_harness.EdgeSystem` (real
gateway, real edge node on loopback) through real traffic: the enrolled node
pulls items, a paired tablet pushes transitions (one for an item nobody
knows, which the gateway rejects), two reports are generated and forwarded,
a conflicting copy of one arrives, a tablet write is refused by the edge and
a direct write by the gateway, two tablets are seen on the LAN, and one
transition is left waiting in the outbox. The edge clock runs 42 s ahead of
the gateway's, which the gateway records as the node's clock offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from edge_harness import EdgeSystem
from edgenode.devices_seen import record_seen
from harness import PREFIX, NodeIdentity, bearer, document, signed_report
from shared.discovery import FieldAdvert

EDGE_AHEAD_SECONDS = 42
WAITING_SECONDS = 90  # how long the last transition has waited when the pages are read
WEEK, DAY = "2026-W47", "2026-11-24"  # complete periods before START (2026-11-25)


@dataclass(frozen=True)
class Site:
    """What :func:`busy_site` did, to compare the pages with."""

    rejected_transition: str  # refused by the gateway (unknown item)
    refused_item: str  # a tablet write the edge refused
    waiting_transition: str  # still in the outbox


async def busy_site(system: EdgeSystem) -> Site:
    system.edge_clock.advance(EDGE_AHEAD_SECONDS)
    await system.create_items(["oi-1", "oi-2"], "assigned")
    pulled = await system.pull()
    assert pulled.error is None, pulled.error
    tablet = await system.pair_tablet("tab-a")
    results = await system.push_transitions(
        tablet,
        [
            tablet.transition("t-1", "oi-1", "assigned", "in_progress"),
            tablet.transition("t-2", "oi-2", "assigned", "in_progress"),
            tablet.transition("t-404", "oi-404", "assigned", "in_progress"),
        ],
    )
    assert [r["status"] for r in results] == ["applied", "applied", "rejected"]
    for period in (WEEK, DAY):
        assert (await system.generate_report("f-001", period)).created
    forwarded, pulled = await system.sync()
    assert forwarded.error is None and pulled.error is None, (forwarded, pulled)
    assert forwarded.statuses == {"applied": 4, "rejected": 1}, forwarded.statuses

    # A tablet write no tablet may make: refused and recorded by the edge.
    resp = await system.tablet_request(
        tablet, "POST", f"{PREFIX}/sync/items", {"items": [{"kind": "made.up", "id": "r-1"}]}
    )
    assert resp.status == 200, await resp.text()
    # A computed risk score written directly: refused and recorded by the gateway.
    resp = await system.gateway.client.put(
        f"{PREFIX}/risk-scores/e-1", json={"score": 9}, headers=bearer(system.admin_token)
    )
    assert resp.status == 403, await resp.text()
    # Another copy of the weekly report with other figures: a conflict.
    node = NodeIdentity(
        system.edge_settings.node_id,
        system.edge_settings.tenant_id,
        list(system.edge_settings.facility_ids),
        system.node_key,
    )
    resp = await system.gateway.client.post(
        f"{PREFIX}/sync/facility-reports",
        data=msgpack.packb(signed_report(node, period_key=WEEK, patients=50)),
        headers={"Content-Type": "application/msgpack"},
    )
    answer = await document(resp)
    assert (resp.status, answer["code"]) == (409, "report_conflict"), answer

    async with system.edge_db.write() as conn:
        for device, port in (("tab-a", 8470), ("tab-b", 8471)):
            advert = FieldAdvert(f"{device}._phs-field._tcp.local.", device, 3, port, ("10.0.0.7",))
            await record_seen(conn, advert, system.edge_clock())
    waiting = tablet.transition("t-3", "oi-1", "in_progress", "contacted")
    [result] = await system.push_transitions(tablet, [waiting])
    assert result["status"] == "applied"
    system.edge_clock.advance(WAITING_SECONDS)
    return Site(rejected_transition="t-404", refused_item="r-1", waiting_transition="t-3")

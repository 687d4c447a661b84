"""Edge nodes and tablets find each other over real multicast (issue 4).

Each test is a district office in a private network namespace (``netns``):
real ``edgenode run`` and ``phs-field`` processes, multicast only on the
namespace's own loopback. What the test checks it reads from the services'
own ``status`` commands, their SQLite files and the gateway's API.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from chaos_support import PREFIX
from lan_site import INTERFACE, LanSite, eventually
from netns import NetworkNamespace

ITEMS = [f"oi-{n:03d}" for n in range(12)]
WALK = [("assigned", "in_progress"), ("in_progress", "contacted"), ("contacted", "completed")]


def api(port: int) -> str:
    return f"http://127.0.0.1:{port}{PREFIX}"


def edge_transitions(edge_dir: Path) -> list[tuple[str, str, str]]:
    """(transition id, device, local disposition) of every record the edge holds."""
    with sqlite3.connect(edge_dir / "edgenode.db") as conn:
        rows = conn.execute(
            "SELECT transition_id, device_id, local_disposition FROM transitions ORDER BY seq"
        ).fetchall()
    return [tuple(r) for r in rows]


def edge_item_count(edge_dir: Path) -> int:
    with sqlite3.connect(edge_dir / "edgenode.db") as conn:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


def devices_seen(site: LanSite, edge_dir: Path) -> dict[str, dict[str, Any]]:
    return {d["deviceId"]: d for d in site.edge_status(edge_dir)["devicesSeen"]}


def walk(site: LanSite, device_dir: Path, item: str, prefix: str) -> list[str]:
    """Record an item's walk assigned → completed on a device; the transition ids."""
    ids = []
    for n, (frm, to) in enumerate(WALK):
        tid = f"{prefix}-{item}-{n}"
        site.field(
            "record", "--data-dir", str(device_dir), "--item", item,
            "--from", frm, "--to", to, "--id", tid,
        )  # fmt: skip
        ids.append(tid)
    return ids


def init_and_pair(site: LanSite, edge_dir: Path, device_id: str, *extra: str) -> dict[str, Any]:
    """``phs-field init`` and ``pair`` by discovery: the answer of the pairing."""
    device_dir = site.root / device_id
    site.field("init", "--device-id", device_id, "--data-dir", str(device_dir))
    code = site.pairing_code(edge_dir, device_id)
    return site.field(
        "pair", "--code", code, "--data-dir", str(device_dir), "--interface", INTERFACE, *extra
    )


async def test_an_edge_and_three_tablets_find_each_other_push_and_gather(
    netns: NetworkNamespace, tmp_path: Path
) -> None:
    site = LanSite(netns, tmp_path)
    try:
        await site.start_gateway(ITEMS)
        edge_dir = site.init_edge("edge", "edge-01")
        port = netns.port()
        await site.start_edge(site.edge("edge", edge_dir, port), port)
        fp = site.fingerprint(edge_dir)

        async def items_pulled() -> bool:
            return edge_item_count(edge_dir) == len(ITEMS)

        await eventually(items_pulled, "the edge pulling the gateway's items")

        # Pairing finds the edge by its advert and checks the fingerprint.
        tablets = ["tab-1", "tab-2", "tab-3"]
        for device_id in tablets:
            answer = init_and_pair(site, edge_dir, device_id)
            assert answer["paired"]["nodeId"] == "edge-01"
            assert answer["paired"]["fp"] == fp
            assert answer["advert"] == "edge-01._phs-edge._tcp.local."
        serving = {
            d: site.field_service(d, site.root / d, "--port", str(netns.port()), "--no-push")
            for d in tablets
        }
        for svc in serving.values():
            svc.start()

        # The edge sees all three, paired, with nothing pending.
        async def all_seen() -> dict[str, dict[str, Any]] | None:
            seen = devices_seen(site, edge_dir)
            ok = all(d in seen and seen[d]["present"] for d in tablets)
            return seen if ok else None

        seen = await eventually(all_seen, "the edge seeing three tablets")
        for device_id in tablets:
            assert seen[device_id]["paired"] is True
            assert seen[device_id]["pending"] == 0
            assert seen[device_id]["addresses"] == ["127.0.0.1"]

        # tab-1 leaves the office LAN's advert list, works, then pushes by discovery.
        await serving["tab-1"].stop()

        async def tab1_gone() -> bool:
            return devices_seen(site, edge_dir)["tab-1"]["present"] is False

        await eventually(tab1_gone, "tab-1's advert withdrawn at the edge", 10)
        pushed = walk(site, site.root / "tab-1", "oi-000", "t1")
        summary = site.field(
            "sync", "--data-dir", str(site.root / "tab-1"), "--interface", INTERFACE
        )
        assert summary["edge"]["candidates"] == [api(port)]
        assert summary["pushed"]["sent"] == {"transitions": len(pushed), "encounters": 0}
        assert summary["pushed"]["results"] == {"applied": len(pushed)}
        assert summary["pulledItems"] >= len(ITEMS)
        status = site.field("status", "--data-dir", str(site.root / "tab-1"))
        assert status["synced"]["push"] == len(pushed) and status["synced"]["gather"] == 0

        # tab-3 only advertises: the edge gathers its work.
        gathered = walk(site, site.root / "tab-3", "oi-002", "t3")

        async def tab3_gathered() -> dict[str, Any] | None:
            doc = site.field("status", "--data-dir", str(site.root / "tab-3"))
            return doc if doc["synced"]["gather"] == len(gathered) else None

        status = await eventually(tab3_gathered, "the edge gathering tab-3's work")
        assert status["synced"]["push"] == 0
        assert sum(status["pending"].values()) == 0
        assert devices_seen(site, edge_dir)["tab-3"]["gatheredRecords"] == len(gathered)

        held = {
            tid: (device, disposition) for tid, device, disposition in edge_transitions(edge_dir)
        }
        assert {t: held[t] for t in pushed} == {t: ("tab-1", "applied") for t in pushed}
        assert {t: held[t] for t in gathered} == {t: ("tab-3", "applied") for t in gathered}

        # The edge forwards both to the gateway, where the items end completed.
        async def at_gateway() -> list[dict[str, Any]]:
            async def read() -> list[dict[str, Any]]:
                async with aiohttp.ClientSession() as session:
                    out = []
                    for item in ("oi-000", "oi-002"):
                        async with session.get(
                            f"{site.gateway_url}{PREFIX}/outreach-items/{item}",
                            headers={"Authorization": f"Bearer {site.admin}"},
                        ) as resp:
                            out.append(await resp.json())
                    return out

            docs = await netns.acall(read)
            return docs if all(d["state"] == "completed" for d in docs) else []

        docs = await eventually(at_gateway, "both walks completed at the gateway")
        assert [h["id"] for h in docs[0]["history"]] == pushed
        assert [h["id"] for h in docs[1]["history"]] == gathered
    finally:
        site.stop_all()


async def test_a_tablet_syncs_only_with_the_edge_whose_fingerprint_it_paired_with(
    netns: NetworkNamespace, tmp_path: Path
) -> None:
    site = LanSite(netns, tmp_path)
    try:
        real_dir = site.init_edge("real", "edge-01", enroll=False)
        # Another box claiming the same node id, with a key of its own.
        impostor_dir = site.init_edge("impostor", "edge-01", enroll=False)
        real_port, impostor_port = netns.port(), netns.port()
        real = site.edge("real", real_dir, real_port)
        await site.start_edge(real, real_port)
        await site.start_edge(site.edge("impostor", impostor_dir, impostor_port), impostor_port)
        real_fp, impostor_fp = site.fingerprint(real_dir), site.fingerprint(impostor_dir)
        assert real_fp != impostor_fp

        # Two adverts for edge-01: the office pins the fingerprint shown at pairing.
        answer = init_and_pair(site, real_dir, "tab-1", "--expect-fp", real_fp)
        assert answer["paired"]["fp"] == real_fp
        device_dir = site.root / "tab-1"

        recorded = walk(site, device_dir, "oi-000", "t1")
        summary = site.field("sync", "--data-dir", str(device_dir), "--interface", INTERFACE)
        assert summary["edge"]["candidates"] == [api(real_port)]
        refused = summary["edge"]["refused"]
        assert [(r["nodeId"], r["fp"], r["port"]) for r in refused] == [
            ("edge-01", impostor_fp, impostor_port)
        ]
        assert "not the node this device paired with" in refused[0]["reason"]
        assert [t for t, _, _ in edge_transitions(real_dir)] == recorded

        # With the real node gone, the impostor alone is refused: nothing is sent.
        await real.stop()
        site.field(
            "record", "--data-dir", str(device_dir), "--item", "oi-001",
            "--from", "assigned", "--to", "in_progress", "--id", "late",
        )  # fmt: skip
        failed, stderr = site.field_fails(
            "sync", "--data-dir", str(device_dir), "--interface", INTERFACE
        )
        assert [r["fp"] for r in failed["refused"]] == [impostor_fp]
        assert failed["pending"]["transitions"] == 1
        assert "refused" in stderr or "no edge" in stderr
        assert edge_transitions(impostor_dir) == []
    finally:
        site.stop_all()


async def test_an_edge_restart_is_rediscovered_by_edge_and_tablet(
    netns: NetworkNamespace, tmp_path: Path
) -> None:
    site = LanSite(netns, tmp_path)
    try:
        edge_dir = site.init_edge("edge", "edge-01", enroll=False)
        first_port = netns.port()
        edge = site.edge("edge", edge_dir, first_port)
        await site.start_edge(edge, first_port)
        init_and_pair(site, edge_dir, "tab-1")
        device_dir = site.root / "tab-1"
        site.field_service("tab-1", device_dir, "--port", str(netns.port()), "--no-push").start()

        async def seen() -> bool:
            return devices_seen(site, edge_dir).get("tab-1", {}).get("present") is True

        await eventually(seen, "the edge seeing tab-1")

        # The edge goes down; the tablet works on.
        await edge.stop()
        recorded = walk(site, device_dir, "oi-000", "t1")

        # Back on another port: it finds the tablet again and gathers its work.
        second_port = netns.port()
        restarted = site.edge("edge-restarted", edge_dir, second_port)
        await site.start_edge(restarted, second_port)

        async def gathered() -> bool:
            held = [t for t, _, _ in edge_transitions(edge_dir)]
            return held == recorded

        await eventually(gathered, "the restarted edge gathering tab-1's work")

        # And the tablet finds the edge at its new port.
        site.field(
            "record", "--data-dir", str(device_dir), "--item", "oi-001",
            "--from", "assigned", "--to", "in_progress", "--id", "after-restart",
        )  # fmt: skip

        async def synced_after_restart() -> bool:
            held = [t for t, _, _ in edge_transitions(edge_dir)]
            return "after-restart" in held

        summary = site.field("sync", "--data-dir", str(device_dir), "--interface", INTERFACE)
        assert summary["edge"]["candidates"] == [api(second_port)]
        await eventually(synced_after_restart, "the record pushed or gathered after the restart")
    finally:
        site.stop_all()


async def test_simulated_tablets_push_and_are_gathered_over_multicast(
    netns: NetworkNamespace, tmp_path: Path
) -> None:
    """``phs-field simulate --mode mixed``: half the tablets push to the edge they
    find, half only advertise and are gathered; every record reaches the edge."""
    site = LanSite(netns, tmp_path)
    try:
        await site.start_gateway(ITEMS)
        edge_dir = site.init_edge("edge", "edge-01")
        port = netns.port()
        await site.start_edge(site.edge("edge", edge_dir, port), port)

        async def items_pulled() -> bool:
            return edge_item_count(edge_dir) == len(ITEMS)

        await eventually(items_pulled, "the edge pulling the gateway's items")
        summary = site.field(
            "simulate", "--devices", "6", "--transitions", "4", "--mode", "mixed",
            "--edge-data-dir", str(edge_dir), "--data-dir", str(tmp_path / "sim"),
            "--interface", INTERFACE, "--timeout", "60",
            timeout=120,
        )  # fmt: skip
        assert summary["complete"] is True and summary["effectiveMode"] == "mixed"
        assert summary["recorded"] == 6 * 4
        assert summary["synced"]["push"] > 0 and summary["synced"]["gather"] > 0
        assert summary["synced"]["push"] + summary["synced"]["gather"] == 6 * 4
        by_device = {d["deviceId"]: d["mode"] for d in summary["perDevice"]}
        held = edge_transitions(edge_dir)
        assert len(held) == 6 * 4
        assert {device for _, device, _ in held} == set(by_device)
        seen = devices_seen(site, edge_dir)
        gathered = {d for d, mode in by_device.items() if mode == "gather"}
        # (A push-mode tablet also advertises: the edge may gather it before it pushes.)
        assert gathered <= {d for d, s in seen.items() if s["gatheredRecords"] > 0}
    finally:
        site.stop_all()

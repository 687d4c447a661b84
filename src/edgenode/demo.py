"""The main job on embedded defaults (``make demo``).

Starts a real gateway on SQLite as a subprocess, then acts as a district edge
node: enrolls, syncs outreach batches (including offline conflicts), replays
a batch, and syncs a signed weekly facility report computed from encounters.
Everything printed comes from the gateway's answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from edgenode.gateway_client import PREFIX, GatewayClient
from shared.periods import PeriodType, period_containing, utc_bounds, zone
from shared.reports import (
    Encounter,
    EncounterKind,
    FacilityReport,
    compute_metrics,
    encode_report_payload,
)
from shared.signing import KeyPair, fingerprint
from shared.values import format_timestamp

TENANT = "district-1"
FACILITY = "f-001"
NODE_ID = "edge-01"
TIME_ZONE = "Africa/Nairobi"


def say(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_cli(data_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


async def wait_ready(
    session: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the gateway exited during start-up; see its log above")
        try:
            async with session.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the gateway did not become ready within 30 s")


def sample_encounters(rng: random.Random, week_start: datetime) -> list[Encounter]:
    encounters = []
    for n in range(60):
        at = week_start + timedelta(minutes=rng.randrange(7 * 24 * 60))
        kind = rng.choice(list(EncounterKind))
        encounters.append(
            Encounter(
                id=f"enc-{n}",
                patient_ref=f"p-{rng.randrange(40)}",
                facility_id=FACILITY,
                occurred_at=at,
                kind=kind,
                screening_due=rng.random() < 0.4,
                immunization_due=rng.random() < 0.3,
            )
        )
    return encounters


def transition(tid: str, item: str, frm: str, to: str, at: datetime, device: str) -> dict[str, Any]:
    return {
        "kind": "outreach.transition",
        "id": tid,
        "itemId": item,
        "from": frm,
        "to": to,
        "occurredAt": format_timestamp(at),
        "deviceId": device,
        "actorId": "chw-7",
    }


def run(data_dir: Path, items: int) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
    gw_dir = data_dir / "gateway"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    say(f"[1/7] starting the gateway on SQLite ({gw_dir}/gateway.db) at {base}")
    admin_token = gateway_cli(gw_dir, "create-token", "--tenant", TENANT, "--role", "admin")
    service_token = gateway_cli(gw_dir, "create-token", "--tenant", TENANT, "--role", "service")
    with open(data_dir / "gateway.log", "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--data-dir",
                str(gw_dir),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=log,
        )
        try:
            asyncio.run(talk_to_gateway(base, process, admin_token, service_token, items))
        finally:
            process.terminate()
            process.wait(timeout=10)
    say(f"gateway stopped; its database and log stay in {data_dir}")


async def talk_to_gateway(
    base: str, process: subprocess.Popen[bytes], admin_token: str, service_token: str, items: int
) -> None:
    async with aiohttp.ClientSession() as session:
        await wait_ready(session, base, process)
        await demo_sync(session, base, admin_token, service_token, items)


async def demo_sync(
    session: aiohttp.ClientSession, base: str, admin_token: str, service_token: str, items: int
) -> None:
    admin = {"Authorization": f"Bearer {admin_token}"}
    keypair = KeyPair.generate()
    say(
        f"[2/7] enrolling edge node {NODE_ID} (fp {fingerprint(keypair.public_key)}) "
        f"for {TENANT}/{FACILITY}"
    )
    async with session.post(
        f"{base}{PREFIX}/admin/nodes",
        headers=admin,
        json={
            "nodeId": NODE_ID,
            "tenantId": TENANT,
            "facilityIds": [FACILITY],
            "publicKey": keypair.public_key_b64,
        },
    ) as resp:
        assert resp.status == 201, await resp.text()

    say(f"[3/7] importing {items} outreach items (state assigned)")
    for n in range(items):
        async with session.post(
            f"{base}{PREFIX}/outreach-items",
            headers=admin,
            json={
                "id": f"oi-{n:04d}",
                "facilityId": FACILITY,
                "state": "assigned",
                "assigneeId": "chw-7",
                "patientRef": f"p-{n}",
            },
        ) as resp:
            assert resp.status == 201, await resp.text()

    client = GatewayClient(session, base, NODE_ID, keypair)
    now = datetime.now(UTC).replace(microsecond=0)
    day = timedelta(days=1)
    batch: list[dict[str, Any]] = []
    for n in range(items):
        item = f"oi-{n:04d}"
        batch.append(transition(f"{item}-a", item, "assigned", "in_progress", now - day, "tab-a"))
        batch.append(transition(f"{item}-b", item, "in_progress", "contacted", now, "tab-a"))
    # Offline conflicts a district sees: two tablets visited the same patient,
    # a late tablet reports a step the item has passed, and a bad edge.
    batch += [
        transition(
            "late-1", "oi-0000", "in_progress", "unreachable", now + timedelta(minutes=1), "tab-b"
        ),
        transition("stale-1", "oi-0001", "assigned", "in_progress", now - 2 * day, "tab-c"),
        transition("bad-1", "oi-0002", "contacted", "assigned", now, "tab-a"),
        transition("ghost-1", "oi-9999", "assigned", "in_progress", now, "tab-a"),
        {"kind": "cohort_membership", "id": "cm-1"},
    ]
    say(f"[4/7] forwarding batch b-1 with {len(batch)} items (signed msgpack)")
    answer = await client.post_batch("b-1", format_timestamp(now), batch)
    assert answer.status == 200, answer.document
    counts = Counter((r["status"], r.get("code")) for r in answer.document["results"])
    for (status, code), count in sorted(counts.items(), key=lambda kv: -kv[1]):
        say(f"      {count:5d} {status}{' (' + code + ')' if code else ''}")
    again = await client.post_batch("b-1", format_timestamp(now), batch)
    say(
        f"      resent b-1 after a lost answer: HTTP {again.status}, replayed="
        f"{again.replayed}, identical answer={again.document == answer.document}"
    )

    say("[5/7] generating and signing the weekly facility report offline")
    tz = zone(TIME_ZONE)
    period = period_containing((now - 7 * day).astimezone(tz).date(), PeriodType.WEEKLY)
    start, _ = utc_bounds(period, tz)
    encounters = sample_encounters(random.Random(47), start)
    report = FacilityReport(
        TENANT, FACILITY, NODE_ID, period, now, compute_metrics(encounters, period, tz)
    )
    payload = encode_report_payload(report)
    say(f"      {period.key}: {json.dumps(report.metrics)}")
    first = await client.post_report(payload, keypair.sign(payload))
    second = await client.post_report(payload, keypair.sign(payload))
    say(
        f"      sent: HTTP {first.status} {first.document['status']} "
        f"{first.document['reportId']}; sent again: HTTP {second.status} "
        f"{second.document['status']}"
    )

    say("[6/7] pulling the change feed and the event outbox")
    feed = await client.changes("0")
    states = Counter(c["data"]["state"] for c in feed.document["changes"])
    say(
        f"      {len(feed.document['changes'])} changes, cursor {feed.document['cursor']}, "
        f"state of each change: {dict(states)}"
    )
    async with session.get(
        f"{base}{PREFIX}/events", headers={"Authorization": f"Bearer {service_token}"}
    ) as resp:
        events = (await resp.json())["events"]
    for event in events:
        say(f"      event {event['type']} {json.dumps(event['data'])}")

    say("[7/7] the history of oi-0000 as the gateway recorded it")
    async with session.get(f"{base}{PREFIX}/outreach-items/oi-0000", headers=admin) as resp:
        item = await resp.json()
    for h in item["history"]:
        say(
            f"      {h['id']:>12} {h['from']}→{h['to']} from {h['deviceId']}: "
            f"{h['disposition']}{' (' + h['code'] + ')' if h['code'] else ''}"
        )
    say(f"      final state: {item['state']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="demo-data", type=Path)
    parser.add_argument("--items", default=200, type=int)
    args = parser.parse_args()
    run(args.data_dir, args.items)


if __name__ == "__main__":
    main()

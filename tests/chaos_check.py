"""The chaos run's checker (issue 8), read straight from the SQLite files.

As a Jepsen set checker does, it lists every anomaly it finds rather than
stopping at the first: a record acknowledged to a tablet and missing at the
gateway, or there twice; a transition out of its fault-free order or an item
out of its fault-free state; a report whose bytes or metrics differ from what
the edge signed and what the fault-free metrics are; a duplicate event; a
batch key left unfinished; a store that fails ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canaries import scan_output
from chaos_support import (
    REPORT_EVENT,
    edge_states,
    edge_transitions,
    gateway_batch_keys,
    gateway_history,
    gateway_states,
    integrity,
)

if TYPE_CHECKING:
    from chaos_run import FieldDriver, FieldWork


def query(path: Path, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def check_stores(
    work: FieldWork, driver: FieldDriver, gateway_db: Path, edge_db: Path
) -> list[str]:
    """Every anomaly found, as a Jepsen checker lists them (empty: all is well)."""
    anomalies: list[str] = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            anomalies.append(what)

    for name, path in (("gateway", gateway_db), ("edge", edge_db)):
        verdict = integrity(path)
        expect(verdict == "ok", f"{name} store integrity_check: {verdict}")
        bad_keys = query(path, "PRAGMA foreign_key_check")
        expect(not bad_keys, f"{name} store foreign_key_check: {[tuple(r) for r in bad_keys]}")

    # Transitions: every acknowledged one exactly once, in the fault-free order.
    plan = work.plan
    never = work.transition_ids - driver.acknowledged_transitions
    expect(not never, f"transitions never acknowledged: {sorted(never)[:10]}")
    history = gateway_history(gateway_db)
    recorded = Counter(tid for rows in history.values() for tid, _ in rows)
    repeated = sorted(t for t, n in recorded.items() if n > 1)
    expect(not repeated, f"transitions recorded more than once at the gateway: {repeated[:10]}")
    missing = sorted(driver.acknowledged_transitions - set(recorded))
    expect(not missing, f"acknowledged transitions missing at the gateway: {missing[:10]}")
    extra = sorted(set(recorded) - driver.acknowledged_transitions)
    expect(not extra, f"transitions at the gateway never acknowledged: {extra[:10]}")
    states = gateway_states(gateway_db)
    for item in plan.item_ids:
        rows = history.get(item, [])
        if [t for t, _ in rows] != plan.history[item] or {d for _, d in rows} - {"applied"}:
            anomalies.append(f"item {item}: history {rows}, fault-free {plan.history[item]}")
        if states.get(item) != plan.states[item]:
            anomalies.append(
                f"item {item}: state {states.get(item)}, fault-free {plan.states[item]}"
            )
    edge_rows = edge_transitions(edge_db)
    edge_ids = Counter(r["transition_id"] for r in edge_rows)
    expect(
        set(edge_ids) == work.transition_ids and set(edge_ids.values()) == {1},
        f"edge transition log: {len(edge_ids)} ids, repeated "
        f"{sorted(t for t, n in edge_ids.items() if n > 1)[:10]}",
    )
    outcomes = Counter((r["local_disposition"], r["gateway_status"]) for r in edge_rows)
    expect(set(outcomes) == {("applied", "applied")}, f"edge transition outcomes: {outcomes}")
    at_edge = edge_states(edge_db)
    differing = sorted(i for i in plan.states if at_edge.get(i) != plan.states[i])
    expect(
        not differing and set(at_edge) == set(plan.states),
        "the edge's items differ from the fault-free states: "
        + ", ".join(f"{i} {at_edge.get(i)} (fault-free {plan.states[i]})" for i in differing[:10])
        + f"; {len(set(at_edge) - set(plan.states))} items the plan does not have",
    )

    # Encounters stay at the edge: every acknowledged one exactly once, unchanged.
    stored = {
        r["id"]: r
        for r in query(
            edge_db,
            "SELECT id, patient_ref, occurred_at, kind, screening_due, immunization_due "
            "FROM encounters",
        )
    }
    expect(
        set(stored) == driver.acknowledged_encounters == set(work.encounters),
        f"encounters: {len(stored)} stored, {len(driver.acknowledged_encounters)} acknowledged, "
        f"{len(work.encounters)} sent",
    )
    for enc_id, row in stored.items():
        doc = work.encounters.get(enc_id)
        if doc is None or (row["patient_ref"], row["kind"], bool(row["screening_due"])) != (
            doc["patientRef"],
            doc["kind"],
            doc["screeningDue"],
        ):
            anomalies.append(f"encounter {enc_id} stored as {tuple(row)}, sent {doc}")

    # Reports: the edge's signed bytes at the gateway exactly once, fault-free metrics.
    edge_reports = {
        r["period_key"]: r
        for r in query(
            edge_db,
            "SELECT period_key, payload, signature, gateway_status, gateway_report_id FROM reports",
        )
    }
    expect(
        set(edge_reports) == set(work.reports) == driver.reports_made,
        f"reports: edge made {sorted(edge_reports)}, expected {sorted(work.reports)}",
    )
    gateway_reports = query(
        gateway_db,
        "SELECT report_id, period_key, payload, signature, metrics FROM facility_reports",
    )
    per_period = Counter(r["period_key"] for r in gateway_reports)
    expect(
        set(per_period) == set(work.reports) and set(per_period.values()) == {1},
        f"reports at the gateway per period: {dict(per_period)}",
    )
    for row in gateway_reports:
        mine = edge_reports.get(row["period_key"])
        if mine is None:
            continue
        expect(
            bytes(row["payload"]) == bytes(mine["payload"])
            and bytes(row["signature"]) == bytes(mine["signature"]),
            f"report {row['period_key']}: the gateway's bytes are not the edge's",
        )
        expect(
            json.loads(row["metrics"]) == work.reports[row["period_key"]],
            f"report {row['period_key']}: metrics {row['metrics']}, fault-free "
            f"{work.reports[row['period_key']]}",
        )
        expect(
            (mine["gateway_status"], mine["gateway_report_id"]) == ("applied", row["report_id"]),
            f"report {row['period_key']}: edge recorded {mine['gateway_status']} "
            f"{mine['gateway_report_id']}, gateway {row['report_id']}",
        )
    submissions = Counter(
        (r["period_key"], r["disposition"])
        for r in query(gateway_db, "SELECT period_key, disposition FROM report_submissions")
    )
    expect(
        submissions == Counter({(key, "merged"): 1 for key in work.reports}),
        f"report submissions: {dict(submissions)}",
    )

    # Events: unique ids, one synced event per merged report and nothing twice.
    events = query(gateway_db, "SELECT event_id, type, data FROM events")
    ids = Counter(r["event_id"] for r in events)
    expect(set(ids.values()) <= {1}, "duplicate event ids")
    logical = Counter((r["type"], r["data"]) for r in events)
    expect(
        set(logical.values()) <= {1},
        f"duplicate events: {[k for k, n in logical.items() if n > 1][:5]}",
    )
    synced = Counter(json.loads(r["data"])["reportId"] for r in events if r["type"] == REPORT_EVENT)
    expect(
        synced == Counter({r["report_id"]: 1 for r in gateway_reports}),
        f"report synced events: {dict(synced)}",
    )

    # Batches: every resend answered from the one stored answer of its key.
    keys = gateway_batch_keys(gateway_db)
    done_batches = {
        r["batch_id"] for r in query(edge_db, "SELECT batch_id, stage FROM outbox_batches")
    }
    expect(set(keys.values()) <= {"done"}, f"batch keys not done: {Counter(keys.values())}")
    expect(set(keys) == done_batches, "the gateway's batch keys are not the edge's batches")
    stages = Counter(r["stage"] for r in query(edge_db, "SELECT stage FROM outbox_batches"))
    expect(set(stages) == {"done"}, f"edge batch stages: {dict(stages)}")
    return anomalies


def audit_verify(gateway_dir: Path) -> tuple[int, str]:
    """``phs-gateway audit verify``: exit status and output."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "verify", "--data-dir", str(gateway_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    scan_output(done.stderr, "phs-gateway audit verify stderr")  # its log (canaries.py)
    return done.returncode, (done.stdout + done.stderr).strip()


def log_errors(path: Path) -> list[str]:
    """Lines at ERROR or CRITICAL in a service's JSON log (a kill leaves none)."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return [
        line[:600]
        for line in text.splitlines()
        if '"level": "ERROR"' in line
        or '"level":"ERROR"' in line
        or '"level": "CRITICAL"' in line
        or '"level":"CRITICAL"' in line
        or line.startswith("Traceback")
    ]

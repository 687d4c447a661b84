"""The canary check itself (tests/canaries.py): it finds a canary planted in
each sink, leaves alone the tables that hold patient data on purpose, and
fails the test that leaked, naming the sink, or the session when no test did.

The stores here are the real schemas (gateway migrations, edge migrations);
they are made outside ``tmp_path``, or emptied, because the session's own
check would otherwise (rightly) fail these tests for the canaries planted.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from canaries import MARKER, CanaryLogHandler, CanaryPlugin, patient_ref
from canary_sinks import (
    EVENT,
    EXPORT,
    LOG,
    OUTPUT,
    REPORT,
    Finding,
    Needles,
    Tally,
    scan_file,
    scan_postgres,
    scan_sqlite,
    scan_text,
)
from edgenode.store.database import EdgeDatabase
from gateway.db.database import Database
from gateway.db.schema import (
    deident_export_jobs,
    facility_reports,
    outreach_items,
    registry_entries,
)
from gateway.events import append_event
from gateway.settings import Settings
from harness import START
from stores import empty_database

TESTS = Path(__file__).parent
NOW = "2026-11-25T12:00:00.000Z"
BIRTH = "1931-07-19"


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory the session's teardown scan does not read (not ``tmp_path``)."""
    with tempfile.TemporaryDirectory(prefix="canary-selftest-") as directory:
        yield Path(directory)


def test_needles_find_the_marker_either_case_and_nothing_else() -> None:
    needles = Needles("CANARY-0a1b2c3d")
    assert needles.excerpt(b'{"patientRef":"CANARY-0a1b2c3d-PT-7"}') is not None
    assert needles.excerpt("canary-0a1b2c3d-pt-7") is not None  # folded on its way out
    assert needles.excerpt("CANARY-ffffffff-PT-7 p-7 CANARY") is None  # another session's
    text = "x" * 100 + "CANARY-0a1b2c3d-PT-7" + "y" * 100
    assert needles.excerpt(text) == "x" * 40 + "CANARY-0a1b2c3d" + "-PT-7" + "y" * 35


def test_a_canary_is_an_identifier_and_carries_the_session_marker() -> None:
    value = patient_ref("oi-0001")
    assert value.startswith(MARKER) and value == patient_ref("oi-0001")
    assert len(value) <= 128 and all(c.isalnum() or c in "._:-" for c in value)


def test_process_output_and_log_files(outside: Path) -> None:
    needles, tally = Needles(MARKER), Tally()
    text = f'{{"message":"ok"}}\n{{"message":"patient {patient_ref(1)}"}}\n'
    [found] = scan_text(text, "edgenode run stdout", needles, tally)
    assert (found.sink, found.where) == (OUTPUT, "edgenode run stdout, line 2")
    assert tally.output_lines == 2
    (outside / "gateway.log").write_text(text)
    [found] = scan_file(outside / "gateway.log", needles, tally)
    assert found.sink == LOG and found.where.endswith("gateway.log, line 2")
    assert scan_text("all clear\n", "x", needles, tally) == []


async def plant_gateway(url: str) -> None:
    """A canary in each of the gateway's sinks, and in two tables that are not sinks."""
    db = Database(url)
    await db.migrate()
    try:
        async with db.write() as conn:
            await append_event(conn, "test.v1", "t1", START, {"note": patient_ref("event")})
            payload = json.dumps({"patientRef": patient_ref("report")}).encode()
            await conn.execute(
                facility_reports.insert().values(
                    report_id="r-1", tenant_id="t1", facility_id="f-001", period_type="daily",
                    period_key="2026-11-24", device_id="edge-01", payload=payload,
                    signature=b"s", metrics={}, generated_at=NOW, received_at=NOW,
                )
            )  # fmt: skip
            # An export whose rows carry a registry entry's birth date (no marked string).
            rows = {"rows": [{"ageBand": "65+", "born": BIRTH}]}
            await conn.execute(
                deident_export_jobs.insert().values(
                    id="x-1", tenant_id="t1", k=5, params={}, state="released",
                    created_by="token:t", created_at=NOW, result=json.dumps(rows).encode(),
                )
            )  # fmt: skip
            # Patient data where it belongs: never a finding.
            await conn.execute(
                outreach_items.insert().values(
                    id="oi-1", tenant_id="t1", facility_id="f-001", state="assigned",
                    patient_ref=patient_ref("item"), version=1, created_at=NOW, updated_at=NOW,
                )
            )  # fmt: skip
            entry = {"patientRef": patient_ref("entry"), "birthDate": BIRTH}
            await conn.execute(
                registry_entries.insert().values(
                    tenant_id="t1", id="e-1", facility_id="f-001", patient_ref=entry["patientRef"],
                    data=entry, version=1, created_at=NOW, updated_at=NOW,
                )
            )  # fmt: skip
    finally:
        await db.close()


def expect_gateway_findings(found: list[Finding], tally: Tally) -> None:
    by_sink = {(f.sink, f.where.split(", ", 1)[1]) for f in found}
    assert by_sink == {
        (EVENT, "table events, row 1"),
        (REPORT, "table facility_reports, row 1"),
        (EXPORT, "de-identified rows"),  # the birth date
    }, found
    assert not any("item" in f.excerpt or "entry" in f.excerpt for f in found)
    assert (tally.rows[EVENT], tally.rows[REPORT], tally.rows[EXPORT], tally.databases) == (
        1,
        1,
        1,
        1,
    )


async def test_each_gateway_sink_on_sqlite(outside: Path) -> None:
    settings = Settings(data_dir=str(outside))
    await plant_gateway(settings.sqlalchemy_url())
    tally = Tally()
    expect_gateway_findings(scan_sqlite(outside / "gateway.db", Needles(MARKER), tally), tally)


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_each_gateway_sink_on_postgresql(database_url: str) -> None:
    await plant_gateway(database_url)
    tally = Tally()
    try:
        found = await scan_postgres(database_url, Needles(MARKER), tally)
    finally:
        await empty_database(database_url)  # before the session's own scan at teardown
    expect_gateway_findings(found, tally)


async def test_the_edge_report_outbox_and_not_its_projection(outside: Path) -> None:
    db = await EdgeDatabase(outside / "edgenode.db").open()
    try:
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO reports (facility_id, period_type, period_key, payload, signature, "
                "generated_at) VALUES ('f-001', 'daily', '2026-11-24', ?, x'00', ?)",
                (json.dumps({"patientRef": patient_ref("edge-report")}).encode(), NOW),
            )
            await conn.execute(
                "INSERT INTO encounters (id, patient_ref, facility_id, occurred_at, kind, "
                "screening_due, immunization_due, device_id, received_at) "
                "VALUES ('e-1', ?, 'f-001', ?, 'visit', 0, 0, 'tab-a', ?)",
                (patient_ref("encounter"), NOW, NOW),
            )
    finally:
        await db.close()
    tally = Tally()
    [found] = scan_sqlite(outside / "edgenode.db", Needles(MARKER), tally)
    assert found.sink == REPORT and "table reports, row 1" in found.where
    assert "edge-report" in found.excerpt
    assert tally.rows[REPORT] == 1  # reports; outbox_batches is empty


def test_a_log_record_is_scanned_as_a_service_would_write_it() -> None:
    plugin = CanaryPlugin()  # not the session's: its findings stay here
    logger = logging.getLogger("canary-selftest")
    logger.propagate = False  # nor does the record reach the session's handler
    handler = CanaryLogHandler(plugin)
    logger.addHandler(handler)
    try:
        logger.warning("visited %s", patient_ref("log"))
        # A field named as patient data is blanked by the formatter: not written, not found.
        logger.warning("pushed", extra={"patientRef": patient_ref("extra"), "items": 1})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    [(_, found)] = plugin.unreported
    assert (found.sink, found.where) == (LOG, "in-process logger canary-selftest")
    assert "visited" in found.excerpt and plugin.tally.log_records == 2


INNER_TESTS = """
import logging
import sqlite3

from canaries import patient_ref, scan_messages, scan_output

log = logging.getLogger("gateway.selftest")
log.warning("at import %s", patient_ref("import"))  # outside any test: fails the session


def table(path, name, value):
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE {name} (seq INTEGER PRIMARY KEY, data BLOB)")
        conn.execute(f"INSERT INTO {name} (data) VALUES (?)", (value,))
    conn.close()


def test_clean(tmp_path):
    log.info("item %s done", "oi-1")
    table(tmp_path / "gateway.db", "outreach_items", patient_ref("item"))  # not a sink


def test_redacted_extra():
    log.info("pushed", extra={"patientRef": patient_ref("extra")})


def test_log_record():
    log.info("patient %s", patient_ref("log"))


def test_process_output():
    scan_output(b"started\\n" + patient_ref("out").encode() + b"\\n", "edgenode run stdout")


def test_log_file(tmp_path):
    (tmp_path / "edge.log").write_text(f'{{"message": "{patient_ref("file")}"}}\\n')


def test_event(tmp_path):
    table(tmp_path / "gateway.db", "events", patient_ref("event"))


def test_report_payload(tmp_path):
    table(tmp_path / "gateway.db", "report_submissions", patient_ref("report").encode())


def test_edge_outbox(tmp_path):
    (tmp_path / "edge").mkdir()
    table(tmp_path / "edge" / "edgenode.db", "outbox_batches", patient_ref("batch").encode())


def test_export(tmp_path):
    table(tmp_path / "gateway.db", "deident_export_jobs", patient_ref("export").encode())


def test_nats_message():
    scan_messages([b"{}", patient_ref("nats").encode()], "NATS stream PHS_TEST")
"""


def test_a_session_fails_each_leaking_test_at_teardown_and_names_the_sink(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    pytester.makeconftest('pytest_plugins = ["canaries"]\n')
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    # Every test passed its body; the leaking ones failed at teardown, one each.
    result.assert_outcomes(passed=10, errors=8)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    for test, sink in [
        ("test_log_record", "log line in in-process logger gateway.selftest"),
        ("test_process_output", "process output in edgenode run stdout, line 2"),
        ("test_log_file", "log line in file "),
        ("test_event", "event in SQLite "),
        ("test_report_payload", "report payload in SQLite "),
        ("test_edge_outbox", "report payload in SQLite "),
        ("test_export", "export in SQLite "),
        ("test_nats_message", "NATS message in NATS stream PHS_TEST, message 2"),
    ]:
        assert f"ERROR at teardown of {test}" in out, (test, out)
        teardown = out.split(f"ERROR at teardown of {test}", 1)[1].split("\n_", 1)[0]
        assert sink in teardown, (test, sink, teardown)
    assert "canaries found outside a test's teardown" in out
    assert "the session (outside any test): log line in in-process logger" in out
    [summary] = [line for line in result.stdout.lines if line.startswith("canaries: ")]
    assert summary.startswith("canaries: CANARY-") and summary.endswith(": 9 found"), summary

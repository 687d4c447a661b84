"""No PHI and no key material in any log line (issue 7; docs/logging.md).

The end-to-end test runs the real processes: ``phs-gateway serve`` on
SQLite, ``edgenode run`` (no discovery), ``phs-field simulate`` (two
tablets pushing) and ``phs-field serve`` (a tablet with an encounter and a
write the edge rejects), every service at log level DEBUG. Along the way
it sends what tends to end up in logs: a bearer token nobody issued, a
signature that does not verify, a query string, and a request so malformed
that aiohttp reports it as an exception, quoting its raw header. Canary
values ("CANARY-…") stand for the patient data; the test checks they really
travelled (gateway, edge, tablets), then that no line any process wrote
holds a canary, a token, a pairing code, key bytes (hex, base64,
base64url) or a signature, and that every line of a service is one JSON
object. The formatter's own rules are tested in-process first.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.http_exceptions import BadHttpMessage

from canaries import patient_ref, scan_output
from chaos_support import FACILITY, LOOPBACK, NODE_ID, PREFIX, TENANT, Service, free_port
from edgenode.keys import load_key
from edgenode.pairing import issue_code
from edgenode.store.database import EdgeDatabase
from fielddevice.device import FieldDevice
from fielddevice.settings import CONFIG_NAME, CONFIG_TABLE, FieldSettings
from gateway.db.database import Database
from gateway.registry import create_token, enroll_node
from gateway.settings import Settings
from observability.logs import (
    REDACTED,
    JsonFormatter,
    LineHandler,
    MalformedRequestFilter,
    TextFormatter,
    configure_logging,
)
from shared.signing import KeyPair, authorization_header

RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# The session's canaries (tests/canaries.py), so the session-wide scan knows them too.
PATIENTS = [patient_ref(f"{n:04d}") for n in range(1, 7)]  # one per outreach item
ENCOUNTER_PATIENT = patient_ref("ENC-0001")
REGISTRY_PATIENT = patient_ref("REG-0001")
REGISTRY_BIRTH_DATE = "1931-07-19"
QUERY_CANARY = "CANARY-QS-7f3a"
ITEMS = [f"oi-{n:04d}" for n in range(1, 7)]
SIM_DEVICES = ["sim-001", "sim-002"]
TABLET = "tab-017"
DEBUG = "DEBUG"  # every service logs at its most talkative level


# -- the formatter, in-process -------------------------------------------------------------


def _record(msg: str, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("phs.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_time_level_logger_message_fields_and_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = _record("batch %s refused", "b-1", batchId="b-1", items=3)
    record.exc_info = exc_info
    line = JsonFormatter({"pid": 42}).format(record)
    assert "\n" not in line  # one record, one line, traceback included
    doc = json.loads(line)
    assert RFC3339_MS.fullmatch(doc["time"])
    assert (doc["level"], doc["logger"], doc["message"]) == (
        "WARNING",
        "phs.test",
        "batch b-1 refused",
    )
    assert (doc["pid"], doc["batchId"], doc["items"]) == (42, "b-1", 3)
    assert doc["exception"].startswith("Traceback") and "ValueError: boom" in doc["exception"]


def test_sensitive_extra_fields_are_blanked_in_both_formats() -> None:
    record = _record(
        "pushed",
        patientRef="CANARY-PT-X",
        patient_id="CANARY-PT-Y",
        Authorization="Bearer CANARY",
        privateKey="CANARY-KEY",
        signature="CANARY-SIG",
        body=b"CANARY-BODY",
        itemId="oi-1",
        message_count=2,
    )
    doc = json.loads(JsonFormatter().format(record))
    for name in ("patientRef", "patient_id", "Authorization", "privateKey", "signature", "body"):
        assert doc[name] == REDACTED
    assert (doc["itemId"], doc["message_count"]) == ("oi-1", 2)
    text = TextFormatter().format(record)
    assert "CANARY" not in text and "itemId=oi-1" in text


def test_the_four_standard_fields_cannot_be_overridden() -> None:
    doc = json.loads(JsonFormatter({"level": "fixed"}).format(_record("m", logger="x", time=1)))
    assert (doc["level"], doc["logger"]) == ("WARNING", "phs.test")
    assert RFC3339_MS.fullmatch(doc["time"])


def test_a_malformed_request_is_reported_without_its_raw_bytes() -> None:
    try:
        raise BadHttpMessage("Invalid header value char:\n\n  b'Authorization: Bearer CANARY'")
    except BadHttpMessage:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
        ("127.0.0.1",), exc_info,
    )  # fmt: skip
    assert MalformedRequestFilter().filter(record)
    line = JsonFormatter().format(record)
    assert "CANARY" not in line
    doc = json.loads(line)
    assert doc["level"] == "WARNING" and "exception" not in doc
    assert doc["message"] == "malformed HTTP request refused: BadHttpMessage (400)"


def test_configure_logging_replaces_only_its_own_handler_and_holds_aiosqlite_above_debug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    foreign = logging.NullHandler()
    stream = io.StringIO()
    try:
        root.addHandler(foreign)
        configure_logging("INFO", "text", stream=stream)
        configure_logging("debug", "json", stream=stream, fields={"worker": 3})
        assert foreign in root.handlers
        assert sum(isinstance(h, LineHandler) for h in root.handlers) == 1
        logging.getLogger("aiosqlite").debug("executing INSERT (%r,)", "CANARY-PT-Z")
        logging.getLogger("phs.test").debug("kept", extra={"count": 1})
        # Given sys.stdout itself, the handler follows whatever sys.stdout is later.
        configure_logging("INFO", "json", stream=sys.stdout)
        later = io.StringIO()
        monkeypatch.setattr(sys, "stdout", later)
        logging.getLogger("phs.test").info("followed")
    finally:
        root.handlers[:], root.level = saved
    [line] = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert (doc["message"], doc["count"], doc["worker"], doc["pid"]) == ("kept", 1, 3, os.getpid())
    assert json.loads(later.getvalue())["message"] == "followed"
    with pytest.raises(ValueError):
        configure_logging("INFO", "yaml")


def test_warnings_and_an_uncaught_exception_are_json_lines_too() -> None:
    """What Python itself writes (a warning, the traceback that ends a
    process) comes out as lines of the same format, not bare text."""
    script = (
        "import warnings\n"
        "from observability.logs import configure_logging\n"
        "configure_logging('INFO', 'json')\n"
        "warnings.warn('an old call', DeprecationWarning, stacklevel=1)\n"
        "raise RuntimeError('the end')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and done.stderr == "", done.stderr
    warning, uncaught = (json.loads(line) for line in done.stdout.splitlines())
    assert (warning["logger"], warning["level"]) == ("py.warnings", "WARNING")
    assert "an old call" in warning["message"]
    assert (uncaught["logger"], uncaught["level"]) == ("uncaught", "CRITICAL")
    assert uncaught["exception"].endswith("RuntimeError: the end")


# -- the end-to-end run --------------------------------------------------------------------


def key_forms(raw: bytes) -> list[str]:
    """How bytes may be spelt in a line: hex, base64, base64url (padding dropped)."""
    return [
        raw.hex(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


def secret_forms(keypair: KeyPair) -> list[str]:
    return key_forms(keypair.seed) + key_forms(keypair.public_key)


def signature_of(header: str) -> bytes:
    return base64.b64decode(header.rsplit("sig=", 1)[1])


class Run:
    """The run's directories, addresses, processes and the secrets it handed out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gateway_dir = root / "gateway"
        self.edge_dir = root / "edge"
        self.sim_dir = root / "sim"
        self.tablet_dir = root / "tablet"
        self.gateway_url = f"http://{LOOPBACK}:{free_port()}"
        self.edge_port = free_port()
        self.edge_api = f"http://{LOOPBACK}:{self.edge_port}{PREFIX}"
        self.services: list[Service] = []
        self.one_shot_stderr: list[str] = []  # one-shot commands: stdout is their answer
        self.secrets: list[str] = []  # tokens, codes, key and signature bytes

    def service(self, name: str, args: list[str], env: dict[str, str]) -> Service:
        service = Service(name, args, self.root / f"{name}.log", env)
        self.services.append(service)
        service.start()
        return service

    async def one_shot(self, *args: str, env: dict[str, str] | None = None) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        self.one_shot_stderr.append(err.decode())
        scan_output(err, f"{' '.join(args[:2])} stderr")  # the session's canaries too
        assert process.returncode == 0, f"{' '.join(args[:2])} failed:\n{err.decode()}"
        return out.decode()

    def service_lines(self) -> Iterator[tuple[str, str]]:
        for service in self.services:
            text = service.log_path.read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                yield service.name, line


async def set_up_gateway_store(run: Run) -> tuple[str, str]:
    """Admin and service tokens in the gateway's SQLite store (before it serves)."""
    run.gateway_dir.mkdir(parents=True)
    database = Database(Settings(data_dir=str(run.gateway_dir)).sqlalchemy_url())
    try:
        await database.migrate()
        async with database.write() as conn:
            now = datetime.now(UTC)
            admin, _ = await create_token(
                conn, tenant_id=TENANT, role="admin", label="logs", now=now
            )
            service, _ = await create_token(
                conn, tenant_id=TENANT, role="service", label="logs", now=now
            )
    finally:
        await database.close()
    return admin, service


async def enroll_and_mint_codes(run: Run, node_key: KeyPair) -> dict[str, str]:
    database = Database(Settings(data_dir=str(run.gateway_dir)).sqlalchemy_url())
    try:
        async with database.write() as conn:
            await enroll_node(
                conn,
                node_id=NODE_ID,
                tenant_id=TENANT,
                facility_ids=[FACILITY],
                public_key=node_key.public_key,
                capabilities=[],
                now=datetime.now(UTC),
            )
    finally:
        await database.close()
    edge_db = await EdgeDatabase(run.edge_dir / "edgenode.db").open()
    codes: dict[str, str] = {}
    try:
        async with edge_db.write() as conn:
            for device_id in [*SIM_DEVICES, TABLET]:
                codes[device_id], _ = await issue_code(conn, device_id, datetime.now(UTC), 900)
    finally:
        await edge_db.close()
    return codes


async def feed_the_gateway(
    session: aiohttp.ClientSession, run: Run, admin: str, service: str
) -> None:
    for item_id, patient in zip(ITEMS, PATIENTS, strict=True):
        async with session.post(
            f"{run.gateway_url}{PREFIX}/outreach-items",
            headers={"Authorization": f"Bearer {admin}"},
            json={
                "id": item_id,
                "facilityId": FACILITY,
                "state": "assigned",
                "assigneeId": "chw-7",
                "patientRef": patient,
            },
        ) as resp:
            assert resp.status == 201, await resp.text()
    entry = {
        "id": "reg-0001",
        "facilityId": FACILITY,
        "patientRef": REGISTRY_PATIENT,
        "sex": "female",
        "birthDate": REGISTRY_BIRTH_DATE,
        "conditions": [{"code": "E11.9", "onset": "2010-01-01"}],
    }
    async with session.put(
        f"{run.gateway_url}{PREFIX}/registry/entries/reg-0001",
        headers={"Authorization": f"Bearer {service}"},
        json=entry,
    ) as resp:
        assert resp.status in (200, 201), await resp.text()


async def misbehave_at_the_gateway(
    session: aiohttp.ClientSession, run: Run, admin: str, node_key: KeyPair
) -> None:
    """What tends to leak: a stranger's token, a query string, a bad and a good signature."""
    stranger = "phs_c0ffee000000_CANARY-bearer-nobody-issued"
    run.secrets.append(stranger)
    async with session.get(
        f"{run.gateway_url}{PREFIX}/outreach-items/{ITEMS[0]}",
        headers={"Authorization": f"Bearer {stranger}"},
    ) as resp:
        assert resp.status == 401
    async with session.get(
        f"{run.gateway_url}{PREFIX}/analytics/facility-reports?facilityId={QUERY_CANARY}",
        headers={"Authorization": f"Bearer {admin}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
    body = json.dumps({"items": [{"kind": "encounter", "patientRef": PATIENTS[0]}]}).encode()
    ts = int(time.time())
    forged = authorization_header(
        KeyPair.generate(), NODE_ID, "POST", f"{PREFIX}/sync/batches", body, ts
    )
    run.secrets += key_forms(signature_of(forged))
    async with session.post(
        f"{run.gateway_url}{PREFIX}/sync/batches",
        data=body,
        headers={
            "Authorization": forged,
            "Content-Type": "application/json",
            "Idempotency-Key": "b-forged",
        },
    ) as resp:
        assert resp.status == 401, await resp.text()
        assert (await resp.json())["code"] == "bad_signature"
    path = f"{PREFIX}/sync/changes?since=0&limit=1"
    signed = authorization_header(node_key, NODE_ID, "GET", path, b"", int(time.time()))
    run.secrets += key_forms(signature_of(signed))
    async with session.get(f"{run.gateway_url}{path}", headers={"Authorization": signed}) as resp:
        assert resp.status == 200, await resp.text()


async def malformed_request(url: str, header: str) -> bytes:
    """A request aiohttp cannot parse (a control character in a header value):
    it logs an exception whose text quotes that header."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{header}\x01\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(200), 10)
    finally:
        writer.close()


async def prepare_tablet(
    session: aiohttp.ClientSession, run: Run, code: str
) -> tuple[FieldDevice, list[dict[str, Any]]]:
    """Pair the tablet in-process and pull until the edge has the gateway's items."""
    settings = FieldSettings(
        device_id=TABLET,
        data_dir=str(run.tablet_dir),
        edge_url=run.edge_api,
        discovery=False,
        host=LOOPBACK,
    )
    run.tablet_dir.mkdir(parents=True)
    (run.tablet_dir / CONFIG_NAME).write_text(
        f'[{CONFIG_TABLE}]\ndevice_id = "{TABLET}"\nedge_url = "{run.edge_api}"\n',
        encoding="utf-8",
    )
    device = await FieldDevice.open(settings, create=True)
    await device.pair(session, run.edge_api, code)
    client = device.client(session, run.edge_api)
    items: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the edge pulls the gateway's feed every second
        await device.pull(client)
        await device.pull_server_data(client)
        items = await device.store.items()
        if len(items) == len(ITEMS) and await device.store.server_records(None):
            break
        await asyncio.sleep(0.3)
    return device, items


async def forge_at_the_edge(session: aiohttp.ClientSession, run: Run) -> None:
    """A push to the edge signed with a key that is not the tablet's."""
    body = json.dumps({"encounters": [{"id": "enc-forged", "patientRef": PATIENTS[1]}]}).encode()
    path = f"{PREFIX}/sync/encounters"
    forged = authorization_header(KeyPair.generate(), TABLET, "POST", path, body, int(time.time()))
    run.secrets += key_forms(signature_of(forged))
    async with session.post(
        f"http://{LOOPBACK}:{run.edge_port}{path}",
        data=body,
        headers={"Authorization": forged, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 401, await resp.text()
    async with session.get(
        f"http://{LOOPBACK}:{run.edge_port}{PREFIX}/outreach-items?since={QUERY_CANARY}",
    ) as resp:
        assert resp.status in (400, 401), await resp.text()


def read_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return list(conn.execute(sql))


async def until(check: Any, what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what} within {within} s"
        await asyncio.sleep(0.2)


async def test_no_log_line_of_a_whole_run_holds_phi_tokens_keys_or_signatures(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    run = Run(tmp_path)
    device: FieldDevice | None = None
    try:
        # Setup: the gateway's store, the node (``edgenode init``), enrollment, codes.
        (admin, service), _ = await asyncio.gather(
            set_up_gateway_store(run),
            run.one_shot(
                *("edgenode.cli", "init", "--node-id", NODE_ID, "--tenant", TENANT),
                *("--facility", FACILITY, "--gateway-url", run.gateway_url),
                *("--data-dir", str(run.edge_dir)),
            ),
        )
        node_key = load_key(run.edge_dir / "node.key")
        codes = await enroll_and_mint_codes(run, node_key)
        run.secrets += [admin, service, *secret_forms(node_key)]
        run.secrets += [part for code in codes.values() for part in (code, code.replace("-", ""))]
        (run.root / "codes.txt").write_text(
            "".join(f"{d} {codes[d]}\n" for d in SIM_DEVICES), encoding="utf-8"
        )

        gateway = run.service(
            "gateway",
            [
                *("gateway.cli", "serve", "--data-dir", str(run.gateway_dir)),
                *("--host", LOOPBACK, "--port", run.gateway_url.rsplit(":", 1)[1]),
            ],
            {"PHS_GATEWAY_LOG_LEVEL": DEBUG},
        )
        edge = run.service(
            "edge",
            [
                *("edgenode.cli", "run", "--data-dir", str(run.edge_dir), "--no-discovery"),
                *("--host", LOOPBACK, "--port", str(run.edge_port)),
            ],
            {
                "PHS_EDGE_LOG_LEVEL": DEBUG,
                "PHS_EDGE_PULL_INTERVAL_SECONDS": "1",
                "PHS_EDGE_FORWARD_INTERVAL_SECONDS": "1",
                "PHS_EDGE_REPORT_SCHEDULE": "false",
            },
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            await gateway.wait_ready(session, f"{run.gateway_url}/readyz")
            await feed_the_gateway(session, run, admin, service)
            await misbehave_at_the_gateway(session, run, admin, node_key)
            answer = await malformed_request(run.gateway_url, f"Authorization: Bearer {admin}")
            assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.0 400")
            await edge.wait_ready(session, f"http://{LOOPBACK}:{run.edge_port}/healthz")

            # The tablet: pull the canaries, record an encounter and a write the
            # edge rejects (an item it does not know), then push as a service.
            device, items = await prepare_tablet(session, run, codes[TABLET])
            assert sorted(i["patientRef"] for i in items) == PATIENTS  # reached a tablet
            run.secrets += secret_forms(device.keypair)
            await device.record_encounter(
                {
                    "id": "enc-canary",
                    "patientRef": ENCOUNTER_PATIENT,
                    "facilityId": FACILITY,
                    "occurredAt": "2026-01-05T09:00:00.000Z",
                    "kind": "screening",
                    "screeningDue": True,
                    "immunizationDue": False,
                }
            )
            await device.record_transition(
                "oi-ghost", "assigned", "in_progress", None, None, "t-ghost"
            )
            await device.close()
            device = None
            await forge_at_the_edge(session, run)
            answer = await malformed_request(
                run.edge_api, f"Authorization: PHS-Ed25519 keyId={TABLET},ts=1,sig={admin}"
            )
            assert b" 400 " in answer.split(b"\r\n", 1)[0]
            run.service(
                "tablet",
                [
                    *("fielddevice.cli", "serve", "--data-dir", str(run.tablet_dir)),
                    *("--no-discovery", "--host", LOOPBACK, "--port", "0"),
                ],
                {"PHS_FIELD_LOG_LEVEL": DEBUG, "PHS_FIELD_PUSH_INTERVAL_SECONDS": "1"},
            )
            # Two more tablets in one process, walking the items and pushing.
            summary = json.loads(
                await run.one_shot(
                    *("fielddevice.cli", "simulate", "--devices", "2", "--transitions", "4"),
                    *("--codes", str(run.root / "codes.txt"), "--mode", "push"),
                    *("--edge-url", run.edge_api, "--no-discovery", "--timeout", "25"),
                    *("--data-dir", str(run.sim_dir)),
                    env={"PHS_FIELD_LOG_LEVEL": DEBUG},
                )
            )
            assert summary["complete"] and summary["recorded"] == 8, summary
            for device_id in SIM_DEVICES:
                run.secrets += secret_forms(load_key(run.sim_dir / device_id / "device.key"))

            async def forwarded() -> bool:  # sim-001 walked oi-0001 to completed
                async with session.get(
                    f"{run.gateway_url}{PREFIX}/outreach-items/{ITEMS[0]}",
                    headers={"Authorization": f"Bearer {admin}"},
                ) as resp:
                    return (await resp.json())["state"] == "completed"

            async def tablet_pushed() -> bool:
                sql = "SELECT count(*) FROM transitions WHERE transition_id = 't-ghost'"
                return read_rows(run.edge_dir / "edgenode.db", sql) == [(1,)]

            await until(forwarded, "the edge forwarded the tablets' work to the gateway", 20)
            await until(tablet_pushed, "phs-field serve pushed its records", 20)
        for service_ in reversed(run.services):
            await service_.stop()
    finally:
        if device is not None:
            await device.close()
        for service_ in run.services:
            service_.ensure_stopped()

    # The canaries really travelled: the run is not vacuous.
    gateway_db = run.gateway_dir / "gateway.db"
    edge_db = run.edge_dir / "edgenode.db"
    held = read_rows(gateway_db, "SELECT patient_ref FROM outreach_items ORDER BY id")
    assert [ref for (ref,) in held] == PATIENTS
    [(data,)] = read_rows(gateway_db, "SELECT data FROM registry_entries")
    assert REGISTRY_PATIENT in data and REGISTRY_BIRTH_DATE in data
    assert [
        ref for (ref,) in read_rows(edge_db, "SELECT patient_ref FROM items ORDER BY id")
    ] == PATIENTS
    assert read_rows(edge_db, "SELECT patient_ref FROM encounters") == [(ENCOUNTER_PATIENT,)]
    registry = "SELECT data FROM server_records WHERE aggregate = 'disease_registry_entry'"
    [(record,)] = read_rows(edge_db, registry)
    assert REGISTRY_PATIENT in record
    assert read_rows(
        edge_db,
        "SELECT local_disposition, local_code FROM transitions WHERE transition_id = 't-ghost'",
    ) == [("rejected", "unknown_item")]

    # Every line of a service is one JSON object of the documented shape.
    lines = list(run.service_lines())
    names = {name for name, _ in lines}
    assert names == {"gateway", "edge", "tablet"}, names
    for name, line in lines:
        doc = json.loads(line)  # raises on anything that is not JSON
        assert isinstance(doc, dict), (name, line)
        assert RFC3339_MS.fullmatch(doc["time"]), (name, line)
        assert {"level", "logger", "message"} <= doc.keys(), (name, line)
    messages = [(name, json.loads(line)) for name, line in lines]
    # The paths the scan must cover were taken (and logged).
    refused = [d for n, d in messages if n == "gateway" and d.get("status") == 401]
    assert len(refused) >= 2, "the stranger's token and the forged batch"
    for where in ("gateway", "edge"):  # aiohttp's exception report of the malformed request
        assert any(n == where and d["logger"] == "aiohttp.server" for n, d in messages), where
    assert any(n == "gateway" and "Running on" in d["message"] for n, d in messages)

    # And none holds a canary or a secret, in any process's output.
    scanned = [line for _, line in lines] + [
        line for text in run.one_shot_stderr for line in text.splitlines()
    ]
    secrets = sorted(set(run.secrets), key=len)
    assert all(len(s) >= 8 for s in secrets)
    leaks = [
        line
        for line in scanned
        if "CANARY" in line
        or REGISTRY_BIRTH_DATE in line
        or any(s in line or s.lower() in line.lower() for s in secrets)
    ]
    assert not leaks, "\n".join(leaks[:10])
    elapsed = time.monotonic() - started
    print(f"\nlog privacy: {len(lines)} service lines, {len(secrets)} secrets, {elapsed:.1f} s")

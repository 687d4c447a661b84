"""Canaries: patient identifiers that must never leave by a sink (issue 8).

Each session draws a marker, ``CANARY-<8 hex>``, and every identifying value
the shared test data builders make carries it: :func:`patient_ref` is the
``patientRef`` of outreach items (``harness``, ``edge_harness``), encounters,
registry entries, the chaos run, the power-loss run and the demo. So every
test that creates patient data seeds canaries, and a canary is recognisable
wherever it ends up.

This module is also the pytest plugin (``pytest_plugins`` in conftest.py)
that checks, for the whole session, that none reaches a sink
(``canary_sinks``): every log record of the test process (a root handler,
formatting with the services' ``JsonFormatter`` at their default level,
INFO), the output of the processes tests start (:func:`scan_output`, and
every log file under the test's ``tmp_path``), every gateway and edge store
a test leaves under ``tmp_path`` or on PostgreSQL (events, report payloads,
exports), and NATS messages (:func:`scan_messages`). A test that leaked
fails at teardown, naming the sink and the place; anything found outside a
test fails the session. One line at the end says what was scanned.

PYTEST_DONT_REWRITE: conftest.py and the harnesses import this module before
pytest loads it as a plugin, too late to rewrite its asserts (it has none).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import pytest

from canary_sinks import (
    AUDIT,
    EVENT,
    EXPORT,
    LOG,
    MESSAGE,
    REPORT,
    Finding,
    Needles,
    Tally,
    files_under,
    scan_file,
    scan_postgres,
    scan_text,
)
from observability.logs import LIBRARY_LEVELS, JsonFormatter, LineHandler

MARKER = f"CANARY-{secrets.token_hex(4)}"
SESSION = "the session (outside any test)"
# The level the services log at by default (setting log_level): what they
# would write is what is checked.
LEVEL = logging.INFO

_seeded: set[str] = set()  # distinct canary values made, for the summary


def patient_ref(key: object) -> str:
    """A patient reference that is a canary: ``CANARY-<session>-PT-<key>``.

    An identifier of CONTRACT section 1 for any key made of identifier
    characters; equal keys give equal references within a session."""
    value = f"{MARKER}-PT-{key}"
    _seeded.add(value)
    return value


def patient_prefix() -> str:
    """What a process given a prefix (the demo) puts before its patient numbers."""
    return f"{MARKER}-PT-"


class CanaryLogHandler(logging.Handler):
    """On the root logger for the session: each record, formatted as a
    service writes it, is scanned (and nothing is written anywhere)."""

    def __init__(self, plugin: CanaryPlugin) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(JsonFormatter({"pid": os.getpid()}))
        self.plugin = plugin

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a record that cannot be formatted: its raw parts, then
            line = f"{record.msg!r} {record.args!r}"
        self.plugin.tally.log_records += 1
        hit = self.plugin.needles.excerpt(line)
        if hit is not None:
            self.plugin.found(Finding(LOG, f"in-process logger {record.name}", hit))


class CanaryPlugin:
    def __init__(self) -> None:
        self.needles = Needles(MARKER)
        self.tally = Tally()
        self.current = SESSION
        self.findings = 0
        self.unreported: list[tuple[str, Finding]] = []  # (node id or SESSION, finding)
        self.scanned: set[tuple[str, int, int]] = set()  # (path, size, mtime) of files read
        self.roots: set[Path] = set()  # every tmp_path's parent: swept at the end
        self.handler = CanaryLogHandler(self)
        # Under pytest-xdist each worker process draws its own marker and scans
        # its own tests; the controller adds up what the workers report.
        self.worker_markers: list[str] = []
        self.seeded_by_workers = 0

    # -- what the helpers and the hooks call --------------------------------------------

    def found(self, finding: Finding) -> None:
        self.findings += 1
        self.unreported.append((self.current, finding))

    def scan_files(self, root: Path) -> None:
        started = time.perf_counter()
        try:
            self._scan_files(root)
        finally:
            self.tally.seconds += time.perf_counter() - started

    def _scan_files(self, root: Path) -> None:
        for path in files_under(root):
            try:
                stat = path.stat()
            except OSError:
                continue
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            if key in self.scanned:
                continue
            self.scanned.add(key)
            for finding in scan_file(path, self.needles, self.tally):
                self.found(finding)

    # -- hooks ---------------------------------------------------------------------------

    def pytest_configure(self, config: pytest.Config) -> None:
        _production_levels()
        logging.getLogger().addHandler(self.handler)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        logging.getLogger().removeHandler(self.handler)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        self.current = item.nodeid
        _production_levels()
        try:
            return (yield)
        finally:
            self.current = SESSION

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        funcargs: dict[str, Any] = getattr(item, "funcargs", None) or {}
        tmp_path = funcargs.get("tmp_path")
        # Every fixture is finalized by now: processes stopped, stores closed, and
        # the session's PostgreSQL store scanned (conftest.py, postgres_url).
        result = yield
        if isinstance(tmp_path, Path):
            self.roots.add(tmp_path.parent)
            self.scan_files(tmp_path)
        mine = [f for node, f in self.unreported if node == item.nodeid]
        if mine:
            self.unreported = [(n, f) for n, f in self.unreported if n != item.nodeid]
            pytest.fail(report(mine), pytrace=False)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.current = SESSION
        for root in sorted(self.roots):
            self.scan_files(root)  # anything written after its test, or by session fixtures
        if self.unreported and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reports for all
            workeroutput["canaries"] = {
                "marker": MARKER,
                "seeded": len(_seeded),
                "findings": self.findings,
                "tally": dataclasses.asdict(self.tally),
                "late": [(node, f.sink, f.where, f.excerpt) for node, f in self.unreported],
            }

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """pytest-xdist, in the controller: add a finished worker's scan (its
        findings outside a test's teardown fail the session here)."""
        data = getattr(node, "workeroutput", {}).get("canaries")
        if data is None:
            return
        self.worker_markers.append(data["marker"])
        self.seeded_by_workers += data["seeded"]
        self.findings += data["findings"]
        t = data["tally"]
        for name in ("log_records", "output_lines", "log_files", "databases", "messages"):
            setattr(self.tally, name, getattr(self.tally, name) + t[name])
        self.tally.unreadable += t["unreadable"]
        self.tally.seconds += t["seconds"]
        for sink, count in t["rows"].items():
            self.tally.rows[sink] = self.tally.rows.get(sink, 0) + count
        self.unreported += [(n, Finding(sink, where, hit)) for n, sink, where, hit in data["late"]]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        late = self.unreported
        if late:
            terminalreporter.section("canaries found outside a test's teardown", red=True)
            for node, finding in late:
                terminalreporter.line(f"{node}: {finding}")
        terminalreporter.write_line(self.summary())

    def summary(self) -> str:
        t = self.tally
        found = self.findings
        return (
            f"canaries: {', '.join([MARKER, *self.worker_markers])}, "
            f"{len(_seeded) + self.seeded_by_workers:,} patientRef values seeded; scanned "
            f"{t.log_records:,} in-process log records, {t.output_lines:,} lines of process "
            f"output and log files ({t.log_files:,} files), {t.rows[EVENT]:,} events, "
            f"{t.rows[REPORT]:,} report rows, {t.rows[EXPORT]:,} export rows and "
            f"{t.rows[AUDIT]:,} audit rows in "
            f"{t.databases:,} databases ({t.unreadable:,} *.db files unreadable; scans "
            f"{t.seconds:.1f} s), {t.messages:,} NATS messages: "
            + (f"{found} found" if found else "none found")
        )


SHOWN = 20  # findings listed in a failure; the rest are counted


def report(findings: Iterable[Finding]) -> str:
    every = list(findings)
    lines = [
        f"{len(every)} canary value(s) ({MARKER}…) reached a sink; fix the code that wrote "
        "them (tests/canaries.py, docs/reliability.md section Canaries):"
    ]
    lines += [f"  {f}" for f in every[:SHOWN]]
    if len(every) > SHOWN:
        lines.append(f"  … and {len(every) - SHOWN} more")
    return "\n".join(lines)


def _production_levels() -> None:
    """Root at the services' default level, libraries held as the services hold
    them (a test that ran a CLI's main in-process may have changed either).

    The handler such a main left on the root logger goes too: at INFO it would
    write every later test's records into that test's captured output."""
    root = logging.getLogger()
    root.setLevel(LEVEL)
    for handler in [h for h in root.handlers if isinstance(h, LineHandler)]:
        root.removeHandler(handler)
    for name, floor in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(floor)


_plugin: CanaryPlugin | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _plugin
    _plugin = CanaryPlugin()
    config.pluginmanager.register(_plugin, "canary-plugin")


def pytest_unconfigure(config: pytest.Config) -> None:
    global _plugin
    _plugin = None


# -- for the helpers that hold a sink in memory ------------------------------------------


def scan_output(data: bytes | str, source: str) -> None:
    """Output a process wrote (a service's stdout, a command's stderr) that
    no file keeps: scanned now, for the running test."""
    if _plugin is not None:
        for finding in scan_text(data, source, _plugin.needles, _plugin.tally):
            _plugin.found(finding)


def scan_tree(root: Path) -> None:
    """Log files and stores under ``root``, now: for a directory that will be
    gone by teardown (a TemporaryDirectory)."""
    if _plugin is not None:
        _plugin.scan_files(root)


async def scan_postgres_database(url: str) -> None:
    """A PostgreSQL store, now (a test's own before it is dropped; the
    session's before the next test empties it)."""
    if _plugin is not None:
        started = time.perf_counter()
        found = await scan_postgres(url, _plugin.needles, _plugin.tally)
        _plugin.tally.seconds += time.perf_counter() - started
        for finding in found:
            _plugin.found(finding)


def scan_messages(messages: Iterable[bytes | None], source: str) -> None:
    """Message bodies a broker holds (the relay's NATS stream)."""
    if _plugin is None:
        return
    for number, data in enumerate(messages, 1):
        _plugin.tally.messages += 1
        hit = None if data is None else _plugin.needles.excerpt(data)
        if hit is not None:
            _plugin.found(Finding(MESSAGE, f"{source}, message {number}", hit))


__all__ = [
    "MARKER",
    "patient_prefix",
    "patient_ref",
    "scan_messages",
    "scan_output",
    "scan_postgres_database",
    "scan_tree",
]

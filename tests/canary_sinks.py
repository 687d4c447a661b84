"""Where canaries must never land, and how each place is read (tests/canaries.py).

Four sinks, each read as it is kept, with no knowledge of how it was written:

- **log lines**: text (a service's JSON lines, a command's stderr, a log
  file), scanned as bytes;
- **events**: the ``events`` table of a gateway database (what ``GET
  …/events`` serves and the relay publishes), and NATS messages;
- **report payloads**: the gateway's ``facility_reports`` and
  ``report_submissions``, and the edge's outbox: its ``reports`` (the signed
  payloads) and ``outbox_batches`` (the msgpack bodies it sends);
- **exports**: ``deident_export_jobs`` and ``hmis_export_jobs`` (result,
  summary, reasons: what a download serves and what an admin is shown);

and, beyond the four, the gateway's ``audit_log``, whose rows have no place for
a patient identifier.

A database is recognised by its tables, so a SQLite file made by a process a
test started is read like one the test made itself. Tables that hold patient
data on purpose (``outreach_items``, ``registry_entries``, the edge's
projection and encounters) are not sinks and are never read, except to learn
a registry's birth dates, which an export's rows must not carry either.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import make_url

LOG = "log line"
OUTPUT = "process output"
EVENT = "event"
REPORT = "report payload"
EXPORT = "export"
AUDIT = "audit row"
MESSAGE = "NATS message"

#: Sink tables (gateway and edge alike: their names do not overlap) -> sink.
SINK_TABLES: dict[str, str] = {
    "events": EVENT,
    "facility_reports": REPORT,
    "report_submissions": REPORT,
    "reports": REPORT,  # the edge's signed reports (its report outbox)
    "outbox_batches": REPORT,  # the edge's batches: reports and transitions, as sent
    "deident_export_jobs": EXPORT,
    "hmis_export_jobs": EXPORT,
    # Not one of the four, but a log all the same: its rows have no place for a
    # patient identifier (docs/audit.md), so none may appear in one.
    "audit_log": AUDIT,
}
#: Files read as log text, wherever a test or a process it started wrote them.
LOG_SUFFIXES = (".log", ".out", ".err")
DATABASE_SUFFIX = ".db"
EXCERPT = 40  # characters kept either side of a canary in a report


@dataclass(frozen=True)
class Finding:
    """A canary where it must not be: the sink, the place, and the text around it."""

    sink: str
    where: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.sink} in {self.where}: …{self.excerpt}…"


@dataclass
class Tally:
    """What was scanned, for the session's one-line summary."""

    log_records: int = 0  # in-process records, each formatted as a JSON line
    output_lines: int = 0  # lines of processes' output and of log files
    log_files: int = 0
    databases: int = 0
    rows: dict[str, int] = field(default_factory=lambda: {EVENT: 0, REPORT: 0, EXPORT: 0, AUDIT: 0})
    messages: int = 0
    seconds: float = 0.0  # spent scanning files and stores (the log handler is not timed)
    unreadable: int = 0  # *.db files that are no readable SQLite database


class Needles:
    """The marker every canary carries, as bytes (and lower-cased, should a
    value ever be folded on its way out)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self._patterns = tuple({marker.encode(), marker.lower().encode()})

    def excerpt(self, data: bytes | str) -> str | None:
        """The text around the first canary in ``data``, or None."""
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
        for pattern in self._patterns:
            at = raw.find(pattern)
            if at >= 0:
                near = raw[max(0, at - EXCERPT) : at + len(pattern) + EXCERPT]
                return near.decode("utf-8", "replace").replace("\n", "\\n")
        return None


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, dict | list):  # a JSON column decoded by the driver
        return json.dumps(value).encode()
    return None


def scan_rows(
    rows: Iterable[Sequence[Any]], table: str, place: str, needles: Needles, tally: Tally
) -> list[Finding]:
    """Every column of every row of a sink table."""
    sink = SINK_TABLES[table]
    found: list[Finding] = []
    for number, row in enumerate(rows, 1):
        tally.rows[sink] += 1
        for value in row:
            data = _as_bytes(value)
            hit = None if data is None else needles.excerpt(data)
            if hit is not None:
                found.append(Finding(sink, f"{place}, table {table}, row {number}", hit))
                break
    return found


def birth_dates(registry_data: Iterable[Any]) -> set[str]:
    """The birth dates of a registry's entries (their ``data`` column)."""
    dates: set[str] = set()
    for value in registry_data:
        doc = json.loads(value) if isinstance(value, str | bytes) else value
        if isinstance(doc, dict) and isinstance(doc.get("birthDate"), str):
            dates.add(doc["birthDate"])
    return dates


def export_birth_dates(results: Iterable[Any], dates: set[str], place: str) -> list[Finding]:
    """A birth date can be no marked string (it must parse as a date, and
    tests compute ages from it), so an extract's rows are checked against the
    registry's own: rows carry months and age bands, never a whole date."""
    found: list[Finding] = []
    if not dates:
        return found
    for result in results:
        if result is None:
            continue
        rows = json.loads(bytes(result)).get("rows", [])
        text = json.dumps(rows)
        for day in dates:
            if f'"{day}"' in text:
                found.append(Finding(EXPORT, f"{place}, de-identified rows", f"birth date {day}"))
                break
    return found


def scan_sqlite(path: Path, needles: Needles, tally: Tally) -> list[Finding]:
    """The sink tables of one SQLite file (none: not a gateway or edge store).

    Opened read-only, so a scan never checkpoints or otherwise touches a
    store a test may still look at."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        tally.unreadable += 1
        return []
    place = f"SQLite {path}"
    try:
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        sinks = sorted(tables & SINK_TABLES.keys())
        if not sinks:
            return []
        tally.databases += 1
        found: list[Finding] = []
        for table in sinks:
            found += scan_rows(
                conn.execute(f'SELECT * FROM "{table}"'), table, place, needles, tally
            )
        if {"registry_entries", "deident_export_jobs"} <= tables:
            dates = birth_dates(r for (r,) in conn.execute("SELECT data FROM registry_entries"))
            results = (r for (r,) in conn.execute("SELECT result FROM deident_export_jobs"))
            found += export_birth_dates(results, dates, place)
        return found
    except sqlite3.DatabaseError:
        # Not a database after all, or a damaged copy a test made on purpose (the
        # power-loss control's cut images): counted, so a miss cannot go unseen.
        tally.unreadable += 1
        return []
    finally:
        conn.close()


async def scan_postgres(url: str, needles: Needles, tally: Tally) -> list[Finding]:
    """The sink tables of one PostgreSQL database (a gateway store)."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=10)
    place = f"PostgreSQL database {make_url(url).database}"
    try:
        present = {
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        sinks = sorted(present & SINK_TABLES.keys())
        if not sinks:
            return []
        tally.databases += 1
        found: list[Finding] = []
        for table in sinks:
            rows = await conn.fetch(f'SELECT * FROM "{table}"')
            found += scan_rows((tuple(r.values()) for r in rows), table, place, needles, tally)
        if {"registry_entries", "deident_export_jobs"} <= present:
            data = await conn.fetch("SELECT data FROM registry_entries")
            results = await conn.fetch("SELECT result FROM deident_export_jobs")
            found += export_birth_dates(
                (r["result"] for r in results), birth_dates(r["data"] for r in data), place
            )
        return found
    finally:
        await conn.close()


def scan_text(
    data: bytes | str, source: str, needles: Needles, tally: Tally, sink: str = OUTPUT
) -> list[Finding]:
    """Output of a process (or any log text): one finding per line holding a canary."""
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    if not raw:
        return []
    tally.output_lines += raw.count(b"\n") + (not raw.endswith(b"\n"))
    if needles.excerpt(raw) is None:  # the common case: one search over the whole text
        return []
    found = []
    for number, line in enumerate(raw.splitlines(), 1):
        hit = needles.excerpt(line)
        if hit is not None:
            found.append(Finding(sink, f"{source}, line {number}", hit))
    return found


def files_under(root: Path) -> Iterator[Path]:
    """Log files and SQLite files under ``root`` (not following links)."""
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(LOG_SUFFIXES) or name.endswith(DATABASE_SUFFIX):
                yield Path(folder, name)


def scan_file(path: Path, needles: Needles, tally: Tally) -> list[Finding]:
    if path.name.endswith(DATABASE_SUFFIX):
        return scan_sqlite(path, needles, tally)
    try:
        data = path.read_bytes()
    except OSError:
        return []
    tally.log_files += 1
    return scan_text(data, f"file {path}", needles, tally, LOG)

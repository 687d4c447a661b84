"""Power cuts over a logged run: pick the moments, rebuild each disk, check it.

A run of a real service under the shim leaves a log of every change to its
SQLite files and, for each request it answered, the log position at which
the answer was about to leave the process (a SEND record). ``power_cuts``
picks cut moments in that log (right after an answer left, right before and
after a sync, anywhere at random), rebuilds the directory each cut leaves
(``replay.DiskModel``), opens it with the stock sqlite3 module (which runs
SQLite's own recovery: hot journal, WAL replay) and checks that
``PRAGMA integrity_check`` answers ``ok``, ``PRAGMA foreign_key_check``
finds no dangling row, and every record whose answer had left before the cut
is there.
"""

from __future__ import annotations

import bisect
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from powercut.replay import OP_SEND, OP_SYNC, DiskModel, Record, read_log

FOLLOWED = (".db", ".db-wal", ".db-journal")


def followed_files(directory: Path) -> dict[str, bytes]:
    """The directory's files the shim follows, as they are now."""
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name.endswith(FOLLOWED)
    }


@dataclass(frozen=True)
class Shim:
    """The environment that puts a process under the shim."""

    library: Path
    log: Path
    directory: Path
    skip_syncs: bool = False  # the negative control: syncs do nothing (powercut.c)

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.library),
            "PHS_POWERCUT_LOG": str(self.log),
            "PHS_POWERCUT_DIR": str(self.directory.resolve()),
            "PHS_POWERCUT_SKIP_SYNCS": "1" if self.skip_syncs else "0",
        }

    def position(self) -> int:
        """The log's size now: a request sent after this is answered after it."""
        return self.log.stat().st_size if self.log.exists() else 0


@dataclass(frozen=True)
class Ack:
    """A request the service answered with ``status``: the records it stored
    (values of ``column`` in ``table``) must survive any later cut."""

    log_position: int  # the log's size just before the request was sent
    status: int
    table: str
    column: str
    keys: tuple[str, ...]


# A separate connection that checkpoints at random moments, so that cuts land
# in checkpoints and WAL restarts too: the services checkpoint only every
# 1,000 WAL pages, which a short run reaches rarely. It is SQLite's own
# checkpoint, run under the shim like the service.
CHECKPOINTER = """
import random, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
rng = random.Random(int(sys.argv[2]))
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    time.sleep(rng.uniform(0.1, 0.4))
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
"""


def start_checkpointer(db: Path, shim: Shim, seed: int, within: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHECKPOINTER, str(db), str(seed), str(within)],
        env={**os.environ, **shim.env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def ack_markers(records: Sequence[Record], acks: Sequence[Ack]) -> list[tuple[int, Ack]]:
    """Each ack with the index of the SEND record of its answer: the first
    answer of its status that left after the request was sent."""
    sends = [r for r in records if r.op == OP_SEND]
    offsets = [r.offset for r in sends]
    out: list[tuple[int, Ack]] = []
    for ack in acks:
        code = str(ack.status).encode()
        start = bisect.bisect_left(offsets, ack.log_position)
        marker = next((r for r in sends[start:] if r.payload[9:12] == code), None)
        assert marker is not None, f"no {ack.status} answer logged for {ack.keys[:3]}"
        out.append((marker.index, ack))
    return out


@dataclass
class CutSummary:
    cuts: int = 0
    clean: int = 0
    torn: int = 0
    at_answers: int = 0  # cuts just after an answer left
    at_syncs: int = 0  # cuts just before or after a sync
    checked_acks: int = 0  # (cut, acknowledged request) pairs checked
    clean_after_answers: int = 0  # clean cuts with at least one answer before them
    clean_losing: int = 0  # clean cuts that lost an acknowledged record
    corrupt: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        return (
            f"{self.cuts} cuts ({self.clean} clean, {self.torn} torn; {self.at_answers} just "
            f"after an answer, {self.at_syncs} at a sync), {self.checked_acks} acknowledged "
            f"requests checked, {len(self.corrupt)} corrupt, {len(self.lost)} with lost "
            f"records, in {self.seconds:.1f} s"
        )


def _choose_cuts(
    records: Sequence[Record], markers: Sequence[int], count: int, rng: random.Random
) -> dict[int, str]:
    """``count`` cut moments (a moment is how many records had happened) and why each."""
    syncs = [r.index for r in records if r.op == OP_SYNC]
    pools = {
        "answer": sorted({m + 1 for m in markers}),
        "sync": sorted({i for s in syncs for i in (s, s + 1)}),
    }
    chosen: dict[int, str] = {}
    for kind, pool in pools.items():
        for moment in rng.sample(pool, min(len(pool), count // 3)):
            chosen.setdefault(moment, kind)
    tries = 0
    while len(chosen) < count and tries < 100 * count:
        tries += 1
        chosen.setdefault(rng.randint(0, len(records)), "random")
    return chosen


def _check_image(
    files: Mapping[str, bytes], directory: Path, db_name: str, due: Sequence[Ack]
) -> tuple[str | None, list[str]]:
    """(what is wrong with the file or None, the acknowledged keys it lacks)."""
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    if db_name not in files:
        return None, [k for ack in due for k in ack.keys]
    try:
        conn = sqlite3.connect(directory / db_name, isolation_level=None)
    except sqlite3.DatabaseError as err:
        return f"open: {err}", []
    try:
        verdict = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        if verdict != ["ok"]:
            return f"integrity_check: {verdict[:5]}", []
        dangling = conn.execute("PRAGMA foreign_key_check").fetchall()
        if dangling:  # a row whose parent the cut lost: a torn transaction
            return f"foreign_key_check: {[tuple(r) for r in dangling[:5]]}", []
        wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
        for ack in due:
            wanted[(ack.table, ack.column)].update(ack.keys)
        missing: list[str] = []
        for (table, column), keys in wanted.items():
            # table and column are the test's own constants, never input
            present = {str(r[0]) for r in conn.execute(f"SELECT {column} FROM {table}")}
            missing.extend(sorted(keys - present))
        return None, missing
    except sqlite3.DatabaseError as err:
        return f"query: {err}", []
    finally:
        conn.close()


def power_cuts(
    log: Path,
    baseline: Mapping[str, bytes],
    final: Mapping[str, bytes],
    acks: Sequence[Ack],
    db_name: str,
    count: int,
    rng: random.Random,
    scratch: Path,
) -> CutSummary:
    """``count`` cuts over the logged run; ``final`` is the directory as the run
    left it, which the replayed log must rebuild byte for byte (nothing missed)."""
    started = time.monotonic()
    records = read_log(log)
    markers = ack_markers(records, acks)
    moments = _choose_cuts(records, [m for m, _ in markers], count, rng)
    summary = CutSummary()
    model = DiskModel(baseline)
    applied = 0
    for moment in sorted(moments):
        while applied < moment:
            model.apply(records[applied])
            applied += 1
        torn = rng.random() < 0.5
        files = model.image(rng if torn else None)
        due = [ack for m, ack in markers if m < moment]
        where = scratch / f"cut-{moment:07d}-{'torn' if torn else 'clean'}"
        wrong, missing = _check_image(files, where, db_name, due)
        summary.cuts += 1
        summary.torn += torn
        summary.clean += not torn
        summary.at_answers += moments[moment] == "answer"
        summary.at_syncs += moments[moment] == "sync"
        summary.checked_acks += len(due)
        if wrong is not None:
            summary.corrupt.append(f"{where.name}: {wrong}")
        summary.clean_after_answers += not torn and bool(due)
        summary.clean_losing += not torn and bool(missing)
        if missing:
            summary.lost.append(f"{where.name}: {len(missing)} lost, e.g. {missing[:5]}")
        if wrong is None and not missing:
            shutil.rmtree(where)  # failures stay for a post-mortem
    for rec in records[applied:]:
        model.apply(rec)
    rebuilt = model.page_cache()
    differ = sorted(n for n in set(rebuilt) | set(final) if rebuilt.get(n) != final.get(n))
    assert not differ, f"the log does not rebuild these files of the run: {differ}"
    summary.seconds = time.monotonic() - started
    return summary

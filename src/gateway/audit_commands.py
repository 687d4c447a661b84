"""``phs-gateway audit verify | tail``: the audit log from the command line.

    phs-gateway audit verify [--anchor COUNT:HASH] [--progress-every N]
    phs-gateway audit tail [-n N]

``verify`` walks the whole chain and prints the rows checked, the head
(``COUNT:HASH``, to note somewhere the database's writers cannot reach: a
later ``verify --anchor`` with it shows whether the chain up to there was
rewritten since), and ``OK`` or the first broken row and why. Exit status 0
when intact, 1 when broken. Progress goes to stderr every N rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.audit import last_rows, verify
from gateway.db.database import Database
from shared.audit import ChainedRow, ChainHead, parse_anchor

DEFAULT_PROGRESS_EVERY = 100_000


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``audit`` and its subcommands, on phs-gateway's subparsers ``sub``."""
    audit = sub.add_parser("audit", help="verify or show the audit log")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    check = actions.add_parser(
        "verify", parents=[common], help="walk the hash chain; exit 1 if it is broken"
    )
    check.add_argument(
        "--anchor", type=parse_anchor, help="COUNT:HASH printed by an earlier verify"
    )
    check.add_argument(
        "--progress-every",
        type=int,
        default=DEFAULT_PROGRESS_EVERY,
        help=f"a progress line on stderr every N rows (default {DEFAULT_PROGRESS_EVERY})",
    )
    tail = actions.add_parser("tail", parents=[common], help="print the last rows as JSON lines")
    tail.add_argument("-n", "--rows", type=int, default=20, help="how many (default 20)")


def head_text(head: ChainHead) -> str:
    return f"{head.count}:{head.last_hash}"


async def run(args: argparse.Namespace, database: Database) -> int:
    if args.audit_command == "tail":
        async with database.read() as conn:
            for row in await last_rows(conn, max(args.rows, 0)):
                print(json.dumps(row_document(row), sort_keys=True))
        return 0

    def progress(checked: int) -> None:
        print(f"checked {checked} rows…", file=sys.stderr, flush=True)

    every = max(args.progress_every, 1)
    result = await verify(database, anchor=args.anchor, progress=progress, every=every)
    print(f"rows checked: {result.checked}")
    print(f"head: {head_text(result.head)}")
    if result.broken is None:
        print("OK")
        return 0
    broken = result.broken
    print(f"BROKEN at row {broken.seq} ({broken.kind}): {broken.reason}")
    return 1


def row_document(row: ChainedRow) -> dict[str, Any]:
    e = row.entry
    return {
        "seq": row.seq,
        "actor": e.actor,
        "node": e.node,
        "tenant": e.tenant,
        "facility": e.facility,
        "action": e.action,
        "record": e.record,
        "time": e.time,
        "outcome": e.outcome,
        "hash": row.hash,
    }

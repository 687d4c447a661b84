"""The audit log's rows and their hash chain, with no I/O (docs/audit.md).

A row says who (``actor``: ``token:<id>``, ``node:<id>`` or ``device:<id>``;
``node``: the edge node that made the request, if one did), in which
``tenant`` and ``facility``, did what (``action``, e.g. ``registry.entry.put``)
to which ``record`` (a record's reference: an item, entry, report or job id,
or a range of them; never a patient identifier), when (``time``, the gateway's
RFC 3339 clock) and with what ``outcome`` (``ok``, ``refused``, ``not_found``,
or a batch item's status).

The chain: row ``n`` (``seq`` 1, 2, 3, … without gaps) stores
``hash_n = SHA-256(hash_{n-1} ‖ canonical_bytes(row_n))``, ``hash_0`` being
:data:`GENESIS_HASH`, and it stores ``hash_{n-1}`` too (``prev_hash``), so a
verifier tells an edited row (its own hash no longer matches) from a broken
link (a row deleted, inserted or moved before it). The head (how many rows,
the last hash) is kept apart, so that deleting the last rows shows as well.

The canonical bytes are the row's JSON with sorted keys, no whitespace,
ASCII only (``\\uXXXX`` escapes), UTF-8: ``{"action":…,"actor":…,
"facility":…,"node":…,"outcome":…,"record":…,"seq":…,"tenant":…,"time":…,
"v":1}``, absent values as ``null``. ``seq`` is inside, so a row moved to
another place no longer matches; ``v`` names this encoding.

:class:`ChainVerifier` checks rows fed in sequence order one at a time (a
log of millions is walked in pages) and keeps the first break it finds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from shared.errors import ValidationFailed

ENCODING_VERSION = 1
GENESIS_HASH = "00" * 32  # hash_0: what the first row chains from (hex)
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_TOKEN_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}")  # action and outcome names

# Column widths (gateway.db.schema.audit_log): longer values are refused here,
# before hashing, so a stored row always reads back as it was hashed.
MAX_ACTOR = 160
MAX_ID = 128
MAX_RECORD = 300
MAX_TIME = 32


class Outcome(StrEnum):
    """The outcomes of whole operations; a batch item's row has its item status."""

    OK = "ok"
    REFUSED = "refused"  # the caller's role, scope or the policy table said no
    NOT_FOUND = "not_found"  # includes another tenant's record (existence is not leaked)


@dataclass(frozen=True)
class AuditEntry:
    """What one operation did, before it has a place in the chain."""

    actor: str
    node: str | None
    tenant: str
    facility: str | None
    action: str
    record: str | None
    time: str
    outcome: str

    def __post_init__(self) -> None:
        _check_text(self.actor, "actor", MAX_ACTOR)
        _check_text(self.tenant, "tenant", MAX_ID)
        _check_text(self.time, "time", MAX_TIME)
        for name, value, limit in (
            ("node", self.node, MAX_ID),
            ("facility", self.facility, MAX_ID),
            ("record", self.record, MAX_RECORD),
        ):
            if value is not None:
                _check_text(value, name, limit)
        for name, value in (("action", self.action), ("outcome", self.outcome)):
            if _TOKEN_RE.fullmatch(value) is None:
                raise ValidationFailed(f"audit {name} {value!r} is not a lower-case name")


@dataclass(frozen=True)
class ChainedRow:
    """An entry at its place in the chain, as stored."""

    seq: int
    entry: AuditEntry
    prev_hash: str  # hex
    hash: str  # hex: SHA-256(prev_hash ‖ canonical_bytes(seq, entry))


@dataclass(frozen=True)
class ChainHead:
    """How many rows the chain has and its last hash (GENESIS_HASH when empty)."""

    count: int
    last_hash: str


EMPTY_HEAD = ChainHead(0, GENESIS_HASH)


def _check_text(value: str, name: str, limit: int) -> None:
    if not value or len(value) > limit:
        raise ValidationFailed(f"audit {name} must be 1-{limit} characters")


def canonical_bytes(seq: int, entry: AuditEntry) -> bytes:
    """The row's deterministic encoding (module docstring): what its hash covers."""
    document = {
        "v": ENCODING_VERSION,
        "seq": seq,
        "actor": entry.actor,
        "node": entry.node,
        "tenant": entry.tenant,
        "facility": entry.facility,
        "action": entry.action,
        "record": entry.record,
        "time": entry.time,
        "outcome": entry.outcome,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def link_hash(prev_hash: str, seq: int, entry: AuditEntry) -> str:
    """SHA-256 of the previous hash's 32 bytes followed by the row's canonical bytes."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_bytes(seq, entry)).hexdigest()


def extend(head: ChainHead, entries: Iterable[AuditEntry]) -> tuple[list[ChainedRow], ChainHead]:
    """The rows that append ``entries`` to a chain at ``head``, and the new head."""
    rows: list[ChainedRow] = []
    count, last = head.count, head.last_hash
    for entry in entries:
        count += 1
        digest = link_hash(last, count, entry)
        rows.append(ChainedRow(count, entry, last, digest))
        last = digest
    return rows, ChainHead(count, last)


class BreakKind(StrEnum):
    EDITED = "edited"  # the row's stored hash is not the hash of its content
    GAP = "sequence_gap"  # a row is missing before this one (deleted)
    LINK = "broken_link"  # prev_hash is not the previous row's hash: deleted, inserted, moved
    BAD_HASH = "malformed_hash"  # a stored hash is not 64 lower-case hex digits
    TRUNCATED = "truncated"  # the head counts rows that are gone (the last ones deleted)
    BEYOND_HEAD = "beyond_head"  # rows after the head's count: appended without the head
    HEAD_MISMATCH = "head_mismatch"  # the head's last hash is not the last row's
    ANCHOR_MISMATCH = "anchor_mismatch"  # the chain disagrees with a head noted elsewhere


@dataclass(frozen=True)
class ChainBreak:
    seq: int  # the first row found wrong (for a truncation: the first missing one)
    kind: BreakKind
    reason: str


class ChainVerifier:
    """Feed rows in sequence order with :meth:`feed`, then :meth:`finish` with the
    stored head. The first break is kept in :attr:`broken`; later rows are
    still counted but no longer checked (one broken link breaks all after it)."""

    def __init__(self) -> None:
        self.checked = 0
        self.head = EMPTY_HEAD  # of the rows fed so far
        self.broken: ChainBreak | None = None

    def feed(self, row: ChainedRow) -> ChainBreak | None:
        self.checked += 1
        if self.broken is None:
            self.broken = self._check(row)
        self.head = ChainHead(row.seq, row.hash)
        return self.broken

    def _check(self, row: ChainedRow) -> ChainBreak | None:
        expected_seq = self.head.count + 1
        if row.seq != expected_seq:
            return ChainBreak(
                expected_seq,
                BreakKind.GAP,
                f"row {expected_seq} is missing: the next row is {row.seq} (rows deleted)",
            )
        if _HASH_RE.fullmatch(row.prev_hash) is None or _HASH_RE.fullmatch(row.hash) is None:
            return ChainBreak(row.seq, BreakKind.BAD_HASH, f"row {row.seq} has a malformed hash")
        if row.prev_hash != self.head.last_hash:
            return ChainBreak(
                row.seq,
                BreakKind.LINK,
                f"row {row.seq} does not chain from row {row.seq - 1}'s hash "
                "(a row before it deleted, inserted or moved)",
            )
        if link_hash(row.prev_hash, row.seq, row.entry) != row.hash:
            return ChainBreak(
                row.seq, BreakKind.EDITED, f"row {row.seq}'s content does not match its hash"
            )
        return None

    def finish(self, stored: ChainHead | None) -> ChainBreak | None:
        """Compare what was walked with the stored head (None: no head kept, which
        is right only for an empty log)."""
        if self.broken is not None:
            return self.broken
        stored = EMPTY_HEAD if stored is None and self.checked == 0 else stored
        if stored is None:
            self.broken = ChainBreak(
                1, BreakKind.HEAD_MISMATCH, "the chain head is missing but rows exist"
            )
        elif stored.count > self.head.count:
            self.broken = ChainBreak(
                self.head.count + 1,
                BreakKind.TRUNCATED,
                f"the head counts {stored.count} rows but the log ends at row "
                f"{self.head.count} (the last rows deleted)",
            )
        elif stored.count < self.head.count:
            self.broken = ChainBreak(
                stored.count + 1,
                BreakKind.BEYOND_HEAD,
                f"rows {stored.count + 1}..{self.head.count} are beyond the head's count "
                f"{stored.count} (appended outside the gateway)",
            )
        elif stored.last_hash != self.head.last_hash:
            self.broken = ChainBreak(
                self.head.count,
                BreakKind.HEAD_MISMATCH,
                f"the head's last hash is not row {self.head.count}'s hash",
            )
        return self.broken


def check_anchor(anchor: ChainHead, hash_at: str | None) -> ChainBreak | None:
    """An anchor noted elsewhere (count and hash, from an earlier verify or the
    event stream) against ``hash_at``: the stored hash of row ``anchor.count``
    as walked (None: the log does not reach it)."""
    if anchor.count == 0:
        return None
    if hash_at is None:
        return ChainBreak(
            anchor.count,
            BreakKind.ANCHOR_MISMATCH,
            f"the anchor names row {anchor.count} but the log ends before it",
        )
    if hash_at != anchor.last_hash:
        return ChainBreak(
            anchor.count,
            BreakKind.ANCHOR_MISMATCH,
            f"row {anchor.count}'s hash differs from the anchor's: the chain was rewritten",
        )
    return None


def parse_anchor(text: str) -> ChainHead:
    """``<count>:<hash>``, as ``phs-gateway audit verify`` prints the head."""
    count, sep, digest = text.partition(":")
    if not sep or not count.isascii() or not count.isdigit() or _HASH_RE.fullmatch(digest) is None:
        raise ValidationFailed("an anchor is <count>:<64 hex digits>, as verify prints it")
    return ChainHead(int(count), digest)

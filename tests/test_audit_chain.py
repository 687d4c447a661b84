"""The audit log's pure core (shared.audit): encoding, chain, verifier."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.audit import (
    EMPTY_HEAD,
    GENESIS_HASH,
    AuditEntry,
    BreakKind,
    ChainedRow,
    ChainHead,
    ChainVerifier,
    canonical_bytes,
    check_anchor,
    extend,
    link_hash,
    parse_anchor,
)
from shared.errors import ValidationFailed

ENTRY = AuditEntry(
    actor="token:abc",
    node="edge-01",
    tenant="t1",
    facility="f-001",
    action="registry.entry.put",
    record="e-1",
    time="2026-03-01T10:00:00Z",
    outcome="ok",
)


def entries(count: int) -> list[AuditEntry]:
    return [dataclasses.replace(ENTRY, record=f"e-{n}") for n in range(1, count + 1)]


def chain(count: int) -> tuple[list[ChainedRow], ChainHead]:
    return extend(EMPTY_HEAD, entries(count))


def verify(rows: list[ChainedRow], head: ChainHead | None) -> tuple[int, BreakKind] | None:
    verifier = ChainVerifier()
    for row in rows:
        verifier.feed(row)
    broken = verifier.finish(head)
    return None if broken is None else (broken.seq, broken.kind)


def test_canonical_bytes_are_sorted_compact_ascii_json() -> None:
    # Keys sorted, no spaces, absent values null; "v" names the encoding.
    assert canonical_bytes(1, ENTRY) == (
        b'{"action":"registry.entry.put","actor":"token:abc","facility":"f-001",'
        b'"node":"edge-01","outcome":"ok","record":"e-1","seq":1,"tenant":"t1",'
        b'"time":"2026-03-01T10:00:00Z","v":1}'
    )
    bare = dataclasses.replace(ENTRY, node=None, facility=None, record="é")
    # Non-ASCII as \u escapes, so the bytes do not depend on a normalisation.
    assert b'"node":null' in canonical_bytes(7, bare)
    assert b'"record":"\\u00e9"' in canonical_bytes(7, bare)
    assert b'"seq":7' in canonical_bytes(7, bare)


def test_link_hash_is_sha256_of_previous_hash_bytes_then_row() -> None:
    expected = hashlib.sha256(bytes(32) + canonical_bytes(1, ENTRY)).hexdigest()
    assert link_hash(GENESIS_HASH, 1, ENTRY) == expected
    # Pinned: a change of encoding must be a new "v", never a silent change.
    assert expected == "5703bc52d3ee801b457f2c3975298ca4124e99b2dcfc15184cccf39988a864cb"


def test_extend_numbers_rows_and_links_each_to_the_previous() -> None:
    rows, head = chain(3)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == GENESIS_HASH
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert head == ChainHead(3, rows[2].hash)
    more, head5 = extend(head, entries(2))  # appending later continues the same chain
    assert [r.seq for r in more] == [4, 5] and more[0].prev_hash == rows[2].hash
    assert head5.count == 5
    # The same entries appended at once give the same rows.
    whole, whole_head = extend(EMPTY_HEAD, [*entries(3), *entries(2)])
    assert whole == rows + more and whole_head == head5
    assert extend(head, []) == ([], head)


def test_an_intact_chain_and_an_empty_log_verify() -> None:
    rows, head = chain(5)
    assert verify(rows, head) is None
    assert verify([], None) is None  # no row yet, no head yet
    assert verify([], EMPTY_HEAD) is None


def test_an_edited_row_is_named() -> None:
    rows, head = chain(5)
    rows[2] = dataclasses.replace(rows[2], entry=dataclasses.replace(rows[2].entry, outcome="x"))
    assert verify(rows, head) == (3, BreakKind.EDITED)


def test_an_edited_row_with_its_hash_recomputed_breaks_the_next_link() -> None:
    rows, head = chain(5)
    edited = dataclasses.replace(rows[2].entry, actor="token:someone-else")
    rows[2] = dataclasses.replace(
        rows[2], entry=edited, hash=link_hash(rows[2].prev_hash, 3, edited)
    )
    assert verify(rows, head) == (4, BreakKind.LINK)


def test_a_deleted_middle_row_is_a_gap_at_its_place() -> None:
    rows, head = chain(5)
    del rows[1]
    assert verify(rows, head) == (2, BreakKind.GAP)
    rows, head = chain(5)
    del rows[0]  # the first row too
    assert verify(rows, head) == (1, BreakKind.GAP)


def test_deleted_and_renumbered_rows_break_the_link() -> None:
    rows, head = chain(5)
    del rows[1]
    rows = [dataclasses.replace(r, seq=n) for n, r in enumerate(rows, start=1)]
    assert verify(rows, head) == (2, BreakKind.LINK)


def test_swapped_rows_break_at_the_first_of_them() -> None:
    rows, head = chain(5)
    rows[1], rows[2] = (
        dataclasses.replace(rows[2], seq=2),
        dataclasses.replace(rows[1], seq=3),
    )
    assert verify(rows, head) == (2, BreakKind.LINK)


def test_an_inserted_row_breaks_the_chain() -> None:
    rows, head = chain(4)
    forged = ChainedRow(3, dataclasses.replace(ENTRY, record="forged"), rows[1].hash, "ab" * 32)
    spliced = rows[:2] + [forged] + [dataclasses.replace(r, seq=r.seq + 1) for r in rows[2:]]
    assert verify(spliced, head) == (3, BreakKind.EDITED)
    # Even a forged row hashed correctly: the next row no longer links to it.
    good = dataclasses.replace(forged, hash=link_hash(rows[1].hash, 3, forged.entry))
    spliced[2] = good
    assert verify(spliced, head) == (4, BreakKind.LINK)


def test_deleted_last_rows_show_against_the_head() -> None:
    rows, head = chain(5)
    assert verify(rows[:3], head) == (4, BreakKind.TRUNCATED)


def test_rows_appended_past_the_head_are_named() -> None:
    rows, _ = chain(5)
    assert verify(rows, ChainHead(3, rows[2].hash)) == (4, BreakKind.BEYOND_HEAD)


def test_a_head_whose_hash_differs_or_is_missing() -> None:
    rows, _ = chain(3)
    assert verify(rows, ChainHead(3, "cd" * 32)) == (3, BreakKind.HEAD_MISMATCH)
    assert verify(rows, None) == (1, BreakKind.HEAD_MISMATCH)


def test_a_malformed_stored_hash() -> None:
    rows, head = chain(3)
    rows[1] = dataclasses.replace(rows[1], hash="not hex")
    assert verify(rows, head) == (2, BreakKind.BAD_HASH)


def test_a_chain_rewritten_whole_passes_alone_but_not_against_an_anchor() -> None:
    rows, _ = chain(5)
    anchor = ChainHead(3, rows[2].hash)  # noted elsewhere by an earlier verify
    rewritten, new_head = extend(
        EMPTY_HEAD, [dataclasses.replace(e, outcome="refused") for e in entries(5)]
    )
    assert verify(rewritten, new_head) is None  # full write access rewrites consistently
    broken = check_anchor(anchor, rewritten[2].hash)
    assert broken is not None and (broken.seq, broken.kind) == (3, BreakKind.ANCHOR_MISMATCH)
    assert check_anchor(anchor, rows[2].hash) is None
    assert check_anchor(anchor, None) is not None  # the log no longer reaches the anchor
    assert check_anchor(EMPTY_HEAD, None) is None


def test_verifier_keeps_the_first_break_and_counts_every_row() -> None:
    rows, _ = chain(6)
    rows[1] = dataclasses.replace(rows[1], entry=dataclasses.replace(rows[1].entry, tenant="t2"))
    rows[4] = dataclasses.replace(rows[4], entry=dataclasses.replace(rows[4].entry, tenant="t2"))
    verifier = ChainVerifier()
    for row in rows:
        verifier.feed(row)
    assert verifier.checked == 6
    assert verifier.broken is not None and verifier.broken.seq == 2


def test_parse_anchor() -> None:
    assert parse_anchor("12:" + "ab" * 32) == ChainHead(12, "ab" * 32)
    for bad in (
        "12",
        "x:" + "ab" * 32,
        "12:" + "AB" * 32,
        "12:abc",
        "-1:" + "ab" * 32,
        "²:" + "ab" * 32,
    ):
        with pytest.raises(ValidationFailed):
            parse_anchor(bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("actor", ""),
        ("actor", "x" * 161),
        ("tenant", ""),
        ("record", "r" * 301),
        ("action", "Registry Put"),
        ("outcome", ""),
        ("time", ""),
    ],
)
def test_an_entry_refuses_values_its_column_cannot_hold(field: str, value: str) -> None:
    with pytest.raises(ValidationFailed):
        dataclasses.replace(ENTRY, **{field: value})


FIELDS = ("actor", "node", "tenant", "facility", "action", "record", "time", "outcome")


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 12),
    data=st.data(),
)
def test_any_single_field_edit_is_found_at_its_row(count: int, data: st.DataObject) -> None:
    rows, head = chain(count)
    index = data.draw(st.integers(0, count - 1))
    field = data.draw(st.sampled_from(FIELDS))
    old = getattr(rows[index].entry, field)
    new = data.draw(st.text(min_size=1, max_size=20).filter(lambda v: v != old))
    entry = dataclasses.replace(rows[index].entry)
    object.__setattr__(entry, field, new)  # unchecked, as a tampered row loads
    rows[index] = dataclasses.replace(rows[index], entry=entry)
    assert verify(rows, head) == (index + 1, BreakKind.EDITED)

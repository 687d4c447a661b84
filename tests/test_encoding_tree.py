"""shared.encoding: the quick tree check passes exactly the trees the full
walk passes (the full walk then words any refusal)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import msgpack

from shared.encoding import MSGPACK, _check_tree, _is_clean, _may_hold_unstorable_text
from shared.errors import MalformedBody

LEAVES: list[Any] = [
    0, 1, True, None, b"x", "x", "a\ud800b", "a\x00b", 1.5, math.nan, math.inf, -math.inf,
    msgpack.Timestamp(1, 0), (1, 2),
]  # fmt: skip


def random_tree(rng: random.Random, depth: int) -> Any:
    if depth > 6 or rng.random() < 0.35:
        return rng.choice(LEAVES)
    if rng.random() < 0.5:
        return [random_tree(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = rng.sample(["a", "b", "c", "\udc00", "\x00", "d"], rng.randint(0, 4))
    return {key: random_tree(rng, depth + 1) for key in keys}


def passes(obj: Any, max_depth: int, check_text: bool) -> bool:
    try:
        _check_tree(obj, max_depth, check_text)
    except MalformedBody:
        return False
    return True


def test_quick_check_never_passes_what_the_walk_refuses() -> None:
    rng = random.Random(5)
    clean = 0
    for _ in range(20000):
        tree = random_tree(rng, 0)
        max_depth = rng.randint(0, 7)
        check_text = rng.random() < 0.5
        if _is_clean(tree, max_depth, check_text):
            clean += 1
            assert passes(tree, max_depth, check_text), (tree, max_depth, check_text)
    assert clean > 1000  # the quick path is taken for ordinary trees


def test_quick_check_passes_ordinary_batches() -> None:
    item = {"id": "t", "seq": 1, "at": "2026-11-25T09:30:00Z", "x": None, "b": b"", "f": 0.5}
    body = {"v": 1, "items": [dict(item) for _ in range(500)]}
    assert _is_clean(body, 32, check_text=True)
    assert not _is_clean(body, 2, check_text=False)
    assert passes(body, 2, False) is False


TEXT = ["a", "\x00", "\ud800", "\udfff", "\\", "u0000", "\\u0000", "é", "\u2028", "\x01", "D800"]


def test_the_byte_precheck_never_misses_unstorable_text() -> None:
    """``decode_body`` searches strings for a NUL or a lone surrogate only when
    the body's bytes may hold one: every body that does must say so, in JSON
    (escaped or not) and msgpack (which cannot carry surrogates)."""
    rng = random.Random(7)
    found = 0
    for _ in range(5000):
        words = ["".join(rng.choices(TEXT, k=rng.randint(0, 4))) for _ in range(rng.randint(1, 4))]
        tree = {words[0]: words[1:], "n": rng.randint(0, 2)}
        unstorable = not passes(tree, 32, True)
        bodies = [(json.dumps(tree).encode(), "application/json")]  # surrogates escaped
        if not any("\ud800" <= c <= "\udfff" for w in words for c in w):
            # Raw surrogates are not UTF-8: such bodies are refused before this check.
            bodies.append((json.dumps(tree, ensure_ascii=False).encode(), "application/json"))
            bodies.append((msgpack.packb(tree, use_bin_type=True), MSGPACK))
        for body, codec in bodies:
            if unstorable:
                found += 1
                assert _may_hold_unstorable_text(body, codec), (tree, body)
    assert found > 1000

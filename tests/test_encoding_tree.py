"""shared.encoding: the quick tree check passes exactly the trees the full
walk passes (the full walk then words any refusal)."""

from __future__ import annotations

import math
import random
from typing import Any

import msgpack

from shared.encoding import _check_tree, _is_clean
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


def passes(obj: Any, max_depth: int) -> bool:
    try:
        _check_tree(obj, max_depth)
    except MalformedBody:
        return False
    return True


def test_quick_check_never_passes_what_the_walk_refuses() -> None:
    rng = random.Random(5)
    clean = 0
    for _ in range(20000):
        tree = random_tree(rng, 0)
        max_depth = rng.randint(0, 7)
        if _is_clean(tree, max_depth):
            clean += 1
            assert passes(tree, max_depth), (tree, max_depth)
    assert clean > 1000  # the quick path is taken for ordinary trees


def test_quick_check_passes_ordinary_batches() -> None:
    item = {"id": "t", "seq": 1, "at": "2026-11-25T09:30:00Z", "x": None, "b": b"", "f": 0.5}
    body = {"v": 1, "items": [dict(item) for _ in range(500)]}
    assert _is_clean(body, 32)
    assert not _is_clean(body, 2)
    assert passes(body, 2) is False

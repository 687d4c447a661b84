"""Loads the shared test vectors (``shared/vectors/*.json``).

The vectors live in the ``shared/`` folder that sits next to this repository
(``../shared/vectors/`` from the repo root), both in a work tree and in CI, so
the gateway and edge tests check the same worked cases as every other tier.
A versioned copy sits in ``tests/vector_files/`` for a clone without
``shared/`` beside it; ``test_vector_copies_match`` keeps it identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS_DIR = Path(__file__).resolve().parents[2] / "shared" / "vectors"
COPIES_DIR = Path(__file__).resolve().parent / "vector_files"


def load_vector(name: str) -> Any:
    """The decoded JSON of vector file ``name`` (e.g. ``"outreach_fsm.json"``).

    A missing file fails the calling test with the path it looked at, rather
    than a bare FileNotFoundError, so a misplaced checkout is obvious.
    """
    path = VECTORS_DIR / name
    if not path.is_file():
        path = COPIES_DIR / name
    if not path.is_file():
        pytest.fail(
            f"test vector {name!r} not found at {path}: the shared/ folder must sit "
            "next to the repository (../shared/vectors/ from the repo root) or be copied "
            "into tests/vector_files/",
            pytrace=False,
        )
    with path.open(encoding="utf-8") as file:
        return json.load(file)

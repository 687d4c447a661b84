"""The versioned vector copies in tests/vector_files/ equal ../shared/vectors/."""

from __future__ import annotations

import pytest

from vectors import COPIES_DIR, VECTORS_DIR


@pytest.mark.parametrize("name", sorted(p.name for p in COPIES_DIR.glob("*.json")))
def test_vector_copies_match(name: str) -> None:
    shared = VECTORS_DIR / name
    if not shared.is_file():
        pytest.skip(f"{VECTORS_DIR} is not beside this clone; the copy is used as is")
    assert (COPIES_DIR / name).read_bytes() == shared.read_bytes()


def test_every_shared_vector_has_a_copy() -> None:
    if not VECTORS_DIR.is_dir():
        pytest.skip(f"{VECTORS_DIR} is not beside this clone")
    assert {p.name for p in VECTORS_DIR.glob("*.json")} <= {
        p.name for p in COPIES_DIR.glob("*.json")
    }

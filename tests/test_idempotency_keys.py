"""shared.idempotency: Idempotency-Key validation and request fingerprints."""

from __future__ import annotations

import hashlib
import re

import pytest

from shared.errors import BadIdempotencyKey
from shared.idempotency import KEY_MAX, request_fingerprint, validate_key

VALID_KEYS: list[tuple[str | None, str | None]] = [
    (None, None),  # header absent: no idempotency
    ("a", "a"),  # one character is enough
    ("batch-2026-11-25-0001", "batch-2026-11-25-0001"),  # an edge batch id
    ("with space and ~!@#$%^&*()", "with space and ~!@#$%^&*()"),  # 0x20-0x7E all allowed
    ("k" * 255, "k" * 255),  # exactly KEY_MAX
]


@pytest.mark.parametrize(("value", "expected"), VALID_KEYS)
def test_validate_key_accepts(value: str | None, expected: str | None) -> None:
    assert validate_key(value) == expected


INVALID_KEYS: list[str] = [
    "",  # empty: at least one character
    "k" * 256,  # one past KEY_MAX
    "a\tb",  # tab is not printable
    "a\nb",  # newline (header injection)
    "a\rb",  # carriage return
    "\x7f",  # DEL is not printable
    "\x00",  # NUL
    "clé",  # non-ASCII
    "ключ",  # non-ASCII
]


@pytest.mark.parametrize("value", INVALID_KEYS)
def test_validate_key_refuses(value: str) -> None:
    with pytest.raises(BadIdempotencyKey):
        validate_key(value)


def test_key_max() -> None:
    assert KEY_MAX == 255  # CONTRACT section 4


BASE = ("POST", "/api/v1/population-health/sync/batches", b'{"v":1}')

DIFFERENT: list[tuple[str, str, bytes]] = [
    ("PUT", BASE[1], BASE[2]),  # another method
    (BASE[0], BASE[1] + "?x=1", BASE[2]),  # a query string
    (BASE[0], "/api/v1/population-health/sync/facility-reports", BASE[2]),  # another path
    (BASE[0], BASE[1], b'{"v":2}'),  # another body
    (BASE[0], BASE[1], b""),  # no body
    (BASE[0], BASE[1], BASE[2] + b" "),  # one trailing byte
]


def test_fingerprint_is_stable_and_documented() -> None:
    fp = request_fingerprint(*BASE)
    assert re.fullmatch(r"[0-9a-f]{64}", fp)  # hex sha256
    assert request_fingerprint(*BASE) == fp  # deterministic
    body_digest = hashlib.sha256(BASE[2]).hexdigest()
    material = f"POST\n{BASE[1]}\n{body_digest}".encode()
    assert fp == hashlib.sha256(material).hexdigest()  # the construction in the docstring


def test_fingerprint_method_is_case_insensitive() -> None:
    assert request_fingerprint("post", BASE[1], BASE[2]) == request_fingerprint(*BASE)


@pytest.mark.parametrize(("method", "path", "body"), DIFFERENT)
def test_fingerprint_differs(method: str, path: str, body: bytes) -> None:
    assert request_fingerprint(method, path, body) != request_fingerprint(*BASE)


def test_fingerprint_refuses_non_token_method() -> None:
    with pytest.raises(ValueError):
        request_fingerprint("PO\nST", "/x", b"")  # a newline would make fields ambiguous

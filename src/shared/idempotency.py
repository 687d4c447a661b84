"""Idempotency-Key rules of CONTRACT section 4 (pure; storage lives in the services).

A repeat with the same key replays the stored answer only if it is the same
request; :func:`request_fingerprint` is what "same request" means.
"""

from __future__ import annotations

import hashlib
import re

from shared.errors import BadIdempotencyKey

KEY_MAX = 255

# Printable ASCII, space included (0x20-0x7E); no tabs, newlines or non-ASCII.
_KEY_RE = re.compile(rf"[\x20-\x7e]{{1,{KEY_MAX}}}")
# An HTTP method is a token (RFC 9110 section 9.1): never a newline, which
# keeps the fingerprint's fields unambiguous.
_METHOD_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def validate_key(value: str | None) -> str | None:
    """The Idempotency-Key header value, None when absent, else BadIdempotencyKey."""
    if value is None:
        return None
    if _KEY_RE.fullmatch(value) is None:
        raise BadIdempotencyKey(
            f"Idempotency-Key must be 1-{KEY_MAX} printable ASCII characters (0x20-0x7E)"
        )
    return value


def request_fingerprint(method: str, path_with_query: str, body: bytes) -> str:
    """Hex sha256 identifying a request for Idempotency-Key comparison.

    Construction::

        sha256(UTF-8(METHOD + "\\n" + PATH_WITH_QUERY + "\\n" + hex(sha256(body))))

    with METHOD upper-cased — the signing string of CONTRACT section 2 without
    ``ts``, so a retry signed at a later time still matches. It is unambiguous:
    METHOD is a token (no newline) and the body digest is 64 hex characters at
    the end, so the path is whatever lies between.
    """
    if _METHOD_RE.fullmatch(method) is None:
        raise ValueError(f"not an HTTP method: {method!r}")
    body_digest = hashlib.sha256(body).hexdigest()
    material = f"{method.upper()}\n{path_with_query}\n{body_digest}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()

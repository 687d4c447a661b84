"""Node signing keys and their rotation, with no I/O (docs/key-rotation.md).

A node signs its requests to the gateway with one of several keys, each with
its own ``keyId`` and a stored status:

- ``active``: accepted;
- ``retiring``: accepted until ``retires_at`` (the end of the overlap window
  a rotation opens), then treated as ``retired`` without anyone writing it;
- ``retired``: refused with 401 ``key_retired`` (the node is still trusted:
  its newer key works);
- ``revoked``: refused at once with 403 ``key_revoked``.

The key a node was enrolled with has the node id as its ``keyId`` (CONTRACT
section 2, unchanged); a key added by a rotation has :func:`key_id_for`, which
the node and the gateway both compute, so a resent rotation names the same key.

Status changes only ever go towards refusal: active → retiring → retired, any
→ revoked; a retiring window may shrink, never grow (:func:`retire`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from shared.errors import KeyRetired, KeyRevoked, PhsError, ValidationFailed
from shared.signing import fingerprint
from shared.values import format_timestamp, parse_timestamp

# Longest overlap window an admin may ask for: a year. Longer would be no
# rotation at all, and an int this size is safe on every store.
MAX_OVERLAP_SECONDS = 366 * 24 * 3600
# On the answer to a request signed with a retiring key: when it stops being
# accepted (RFC 3339). The edge node rotates when it sees it (edgenode.rotation).
KEY_RETIRES_HEADER = "PHS-Key-Retires-At"
_FP_CHARS = 16  # shared.signing.fingerprint
_ID_CHARS = 128  # the longest identifier (shared.values.IDENTIFIER_RE)


class KeyStatus(StrEnum):
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"
    REVOKED = "revoked"


def key_id_for(node_id: str, public_key: bytes) -> str:
    """The ``keyId`` of a key added to ``node_id`` by a rotation:
    ``<nodeId>.<fp>`` (the node id cut so that the whole stays an identifier
    of at most 128 characters; the fingerprint keeps it unique)."""
    room = _ID_CHARS - 1 - _FP_CHARS
    return f"{node_id[:room]}.{fingerprint(public_key)}"


def overlap_seconds(value: Any, field: str = "overlapSeconds") -> int:
    """A window length from a request or a command line: 0 … a year."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationFailed(f"{field} must be an integer", field=field)
    if not 0 <= value <= MAX_OVERLAP_SECONDS:
        raise ValidationFailed(
            f"{field} must be between 0 and {MAX_OVERLAP_SECONDS} seconds", field=field
        )
    return value


@dataclass(frozen=True)
class NodeKey:
    """One key of a node, as stored."""

    key_id: str
    node_id: str
    public_key: bytes
    status: KeyStatus  # stored; see status_at for what it means now
    created_at: str
    retires_at: str | None = None  # retiring/retired: the end of its window
    revoked_at: str | None = None

    def status_at(self, now: datetime) -> KeyStatus:
        """The key's status at ``now``: a retiring key whose window is over is retired."""
        if self.status is KeyStatus.RETIRING and self.retires_at is not None:
            if parse_timestamp(self.retires_at, "retiresAt") <= now:
                return KeyStatus.RETIRED
        return self.status

    def usable_at(self, now: datetime) -> bool:
        return self.status_at(now) in (KeyStatus.ACTIVE, KeyStatus.RETIRING)

    def refusal(self, now: datetime) -> PhsError | None:
        """The answer to a request signed with this key at ``now`` (None: accepted)."""
        status = self.status_at(now)
        if status is KeyStatus.REVOKED:
            return KeyRevoked(f"key {self.key_id} is revoked")
        if status is KeyStatus.RETIRED:
            return KeyRetired(
                f"key {self.key_id} retired at {self.retires_at}; sign with the node's newer key"
            )
        return None

    def to_wire(self, now: datetime) -> dict[str, Any]:
        return {
            "keyId": self.key_id,
            "nodeId": self.node_id,
            "publicKey": self.public_key,
            "fp": fingerprint(self.public_key),
            "status": self.status_at(now).value,
            "createdAt": self.created_at,
            "retiresAt": self.retires_at,
            "revokedAt": self.revoked_at,
        }


def retire(key: NodeKey, now: datetime, overlap: int) -> NodeKey:
    """``key`` accepted for ``overlap`` more seconds (0: retired now).

    An earlier end already set is kept (a window never grows: an admin who
    shortens it means it); a retired or revoked key stays as it is.
    """
    status = key.status_at(now)
    if status in (KeyStatus.RETIRED, KeyStatus.REVOKED):
        return key
    end = now + timedelta(seconds=overlap)
    if key.retires_at is not None:
        end = min(end, parse_timestamp(key.retires_at, "retiresAt"))
    stored = KeyStatus.RETIRED if end <= now else KeyStatus.RETIRING
    return replace(key, status=stored, retires_at=format_timestamp(end))


def revoke(key: NodeKey, now: datetime) -> NodeKey:
    """``key`` refused from ``now`` on (a revoked key stays as it was revoked)."""
    if key.status is KeyStatus.REVOKED:
        return key
    return replace(key, status=KeyStatus.REVOKED, revoked_at=format_timestamp(now))


def earliest_start(day: date) -> datetime:
    """The first instant ``day`` is a local date anywhere (UTC+14)."""
    return datetime.combine(day, time.min, tzinfo=UTC) - timedelta(hours=14)


def signs_report(
    key: NodeKey, generated_at: datetime, period_start: date, now: datetime
) -> PhsError | None:
    """Whether a facility report signed with ``key`` is accepted at ``now``
    (None: it is). A report is signed when it is made, often long before it
    reaches the gateway (offline-first): one a retired key signed before its
    window ended is still the node's; one dated later is refused, so a retired
    key cannot sign new reports. ``generatedAt`` is the signer's own word, so
    it must also fall after its period began (``period_start`` anywhere on
    earth): a holder of a leaked retired key cannot backdate a report of a
    period that began after the key retired. A revoked key signs nothing."""
    refusal = key.refusal(now)
    if isinstance(refusal, KeyRetired) and key.retires_at is not None:
        retired_at = parse_timestamp(key.retires_at, "retiresAt")
        if earliest_start(period_start) <= generated_at < retired_at:
            return None
    return refusal

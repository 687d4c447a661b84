"""The outreach item FSM and its conflict resolution (CONTRACT.md section 5).

``resolve(current, incoming, now)`` is the whole rule set as one pure
function. The gateway and the edge node both call it, so their answers
cannot drift; storage code only loads ``current`` and writes the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from shared.errors import ItemCode


class State(StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    CONTACTED = "contacted"
    COMPLETED = "completed"
    DECLINED = "declined"
    UNREACHABLE = "unreachable"
    CANCELLED = "cancelled"


RANK: Mapping[State, int] = MappingProxyType(
    {
        State.PENDING: 0,
        State.ASSIGNED: 1,
        State.IN_PROGRESS: 2,
        State.CONTACTED: 3,
        State.COMPLETED: 4,
        State.DECLINED: 4,
        State.UNREACHABLE: 4,
        State.CANCELLED: 4,
    }
)
TERMINAL: frozenset[State] = frozenset(s for s, rank in RANK.items() if rank == 4)


class Role(StrEnum):
    """Who performs a transition."""

    WORKER = "worker"  # a field worker, via an edge node
    SUPERVISOR = "supervisor"  # an edge supervisor (assigns work at the office)
    SERVER = "server"  # the gateway itself, or an admin/service token


_FIELD = frozenset({Role.WORKER})
_TRANSITIONS: dict[tuple[State, State], frozenset[Role]] = {
    (State.PENDING, State.ASSIGNED): frozenset({Role.SERVER, Role.SUPERVISOR}),
    (State.ASSIGNED, State.IN_PROGRESS): _FIELD,
    (State.IN_PROGRESS, State.CONTACTED): _FIELD,
    (State.IN_PROGRESS, State.UNREACHABLE): _FIELD,
    (State.IN_PROGRESS, State.DECLINED): _FIELD,
    (State.CONTACTED, State.DECLINED): _FIELD,
    (State.CONTACTED, State.COMPLETED): _FIELD,
}
for _state in State:
    if _state not in TERMINAL:
        _TRANSITIONS[(_state, State.CANCELLED)] = frozenset({Role.SERVER})

#: (from, to) -> the roles that may perform it.
ALLOWED: Mapping[tuple[State, State], frozenset[Role]] = MappingProxyType(_TRANSITIONS)
#: Transitions only the server may make; a worker's sibling never supersedes them.
SERVER_ONLY: frozenset[tuple[State, State]] = frozenset(
    edge for edge, roles in ALLOWED.items() if roles == frozenset({Role.SERVER})
)

#: An occurredAt further ahead of the receiver's clock than this is clamped.
FUTURE_TOLERANCE = timedelta(minutes=5)


class Disposition(StrEnum):
    """What became of an incoming transition. ``superseded`` is only ever
    written later, onto a previously applied transition that lost LWW."""

    APPLIED = "applied"
    NOOP = "noop"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Transition:
    id: str
    item_id: str
    from_state: str  # kept as sent: an unknown state name is a rejection, not a crash
    to_state: str
    occurred_at: datetime
    device_id: str
    actor_id: str
    role: Role = Role.WORKER
    seq: int | None = None

    @property
    def edge(self) -> tuple[State, State] | None:
        try:
            return _EDGE_OF.get((self.from_state, self.to_state))
        except TypeError:  # not a string (e.g. unhashable): not a state either
            return None

    def lww_key(self) -> tuple[datetime, str, str]:
        """Last-write-wins order, with times at the wire's millisecond precision.

        Times are stored and sent with milliseconds (CONTRACT section 1), so a
        finer comparison would let the same two siblings resolve one way in
        one batch and the other way once the first was stored and reloaded.
        """
        at = self.occurred_at
        return (at.replace(microsecond=at.microsecond // 1000 * 1000), self.device_id, self.id)


@dataclass(frozen=True)
class ItemState:
    """What resolution needs to know about an item."""

    state: State
    last: Transition | None  # the applied transition that produced ``state``
    # Disposition recorded for ``incoming.id`` if this item saw it before.
    seen: Disposition | None = None


@dataclass(frozen=True)
class Resolution:
    disposition: Disposition  # applied | noop | duplicate | rejected
    code: ItemCode | None
    state: State | None  # the item's authoritative state after it (None: unknown item)
    transition: Transition  # as recorded (occurred_at possibly clamped)
    clock_adjusted: bool = False
    superseded: Transition | None = None  # the previous last, when LWW replaced it
    recorded: Disposition | None = None  # for duplicates: the first disposition

    @property
    def changed_state(self) -> bool:
        return self.disposition is Disposition.APPLIED


#: Every (from, to) pair of state names, mapped to its State pair: Transition.edge
#: runs for every transition, and State(name) costs far more than a dict lookup.
#: StrEnum members hash and compare as their names, so a State is found too.
_EDGE_OF: dict[tuple[str, str], tuple[State, State]] = {
    (a.value, b.value): (a, b) for a in State for b in State
}
_NO_ROLES: frozenset[Role] = frozenset()


def is_allowed(edge: tuple[State, State], role: Role) -> bool:
    return role in _TRANSITIONS.get(edge, _NO_ROLES)


def clamp(transition: Transition, now: datetime) -> tuple[Transition, bool]:
    """Clamp an occurredAt too far in the future to ``now``."""
    if transition.occurred_at > now + FUTURE_TOLERANCE:
        return replace(transition, occurred_at=now), True
    return transition, False


def resolve(current: ItemState | None, incoming: Transition, now: datetime) -> Resolution:
    """Apply the rules of CONTRACT section 5, first match wins.

    ``current`` is None for an unknown item (rule 1).
    """
    # clamp() inlined: this runs for every incoming transition.
    if incoming.occurred_at > now + FUTURE_TOLERANCE:
        t, adjusted = replace(incoming, occurred_at=now), True
    else:
        t, adjusted = incoming, False

    if current is None:  # rule 1
        return Resolution(Disposition.REJECTED, ItemCode.UNKNOWN_ITEM, None, t, adjusted)
    state = current.state
    if current.seen is not None:  # rule 2
        return Resolution(Disposition.DUPLICATE, None, state, t, adjusted, recorded=current.seen)
    edge = t.edge
    if edge is None or t.role not in _TRANSITIONS.get(edge, _NO_ROLES):  # rule 3
        return Resolution(Disposition.REJECTED, ItemCode.FSM_INVALID_TRANSITION, state, t, adjusted)
    if state == edge[0]:  # rule 4
        return Resolution(Disposition.APPLIED, None, edge[1], t, adjusted)
    last = current.last
    if last is not None and last.from_state == t.from_state and last.edge not in SERVER_ONLY:
        # rule 5: t and last are concurrent siblings; last write wins.
        if t.lww_key() > last.lww_key():
            return Resolution(Disposition.APPLIED, None, edge[1], t, adjusted, superseded=last)
        return Resolution(Disposition.NOOP, ItemCode.SUPERSEDED_BY_NEWER, state, t, adjusted)
    if RANK[state] >= RANK[edge[1]]:  # rule 6: already past it
        return Resolution(Disposition.NOOP, ItemCode.SERVER_ADVANCED, state, t, adjusted)
    return Resolution(Disposition.REJECTED, ItemCode.FSM_GAP, state, t, adjusted)  # rule 7

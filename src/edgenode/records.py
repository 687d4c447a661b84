"""Checks of a field device's records, shared by its push and the node's gather.

A tablet's records reach the edge two ways: it pushes them (``POST
…/sync/outreach``, ``POST …/sync/encounters``) or the edge gathers them from
the tablet's own API (``edgenode.gather``). Both read each record with these
functions, so a record is accepted or refused the same way whichever way it
came. A push is refused whole at its first bad record; a gather answers each
bad record ``rejected`` and stores the rest.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from shared.errors import OutOfScope, ValidationFailed
from shared.fsm import Transition
from shared.reports import Encounter, parse_encounter
from shared.wire import parse_transition


def check_transition_device(t: Transition, device_id: str) -> Transition:
    """A device records only its own transitions."""
    if t.device_id != device_id:
        raise OutOfScope(f"transition {t.id} names device {t.device_id}, not the signer")
    return t


def device_transition(obj: Any, device_id: str, where: str) -> Transition:
    """One transition of ``device_id``'s, read and checked."""
    return check_transition_device(parse_transition(obj, where), device_id)


def device_transitions(raw: Sequence[Any], device_id: str) -> list[Transition]:
    """A pushed list: every record is read, then every one's device is checked."""
    transitions = [parse_transition(t, f"/transitions/{n}") for n, t in enumerate(raw)]
    return [check_transition_device(t, device_id) for t in transitions]


def parse_device_encounter(obj: Any, where: str) -> Encounter:
    try:
        return parse_encounter(obj)
    except ValidationFailed as err:
        raise ValidationFailed(f"{where}: {err.detail}", path=where) from err


def check_encounter_scope(e: Encounter, facility_ids: Collection[str]) -> Encounter:
    """An encounter of a facility this node serves."""
    if e.facility_id not in facility_ids:
        raise OutOfScope(f"encounter {e.id}: facility {e.facility_id} is not served here")
    return e


def device_encounter(obj: Any, facility_ids: Collection[str], where: str) -> Encounter:
    """One encounter, read and checked."""
    return check_encounter_scope(parse_device_encounter(obj, where), facility_ids)


def device_encounters(raw: Sequence[Any], facility_ids: Collection[str]) -> list[Encounter]:
    """A pushed list: every record is read, then every one's facility is checked."""
    encounters = [parse_device_encounter(e, f"/encounters/{n}") for n, e in enumerate(raw)]
    return [check_encounter_scope(e, facility_ids) for e in encounters]

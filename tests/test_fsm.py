"""The pure FSM resolution against CONTRACT section 5 and its vectors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ItemCode
from shared.fsm import (
    ALLOWED,
    RANK,
    SERVER_ONLY,
    Disposition,
    ItemState,
    Role,
    State,
    Transition,
    resolve,
)
from shared.values import parse_timestamp
from vectors import load_vector

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FSM_CASES = load_vector("outreach_fsm.json")["cases"]


class Item:
    """A minimal in-memory item driven only by ``resolve``, as a store would be."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.last: Transition | None = None
        self.log: dict[str, Disposition] = {}
        self.history: list[tuple[str, Disposition]] = []

    def apply(self, t: Transition, now: datetime = NOW) -> Any:
        r = resolve(ItemState(self.state, self.last, self.log.get(t.id)), t, now)
        self.history.append((t.id, r.disposition))
        if r.disposition is not Disposition.DUPLICATE:
            self.log[t.id] = r.disposition
        if r.superseded is not None:
            self.log[r.superseded.id] = Disposition.SUPERSEDED
        if r.changed_state:
            assert r.state is not None
            self.state, self.last = r.state, r.transition
        return r


def transition_from_step(step: dict[str, Any]) -> Transition:
    return Transition(
        id=step["id"],
        item_id="item-1",
        from_state=step["from"],
        to_state=step["to"],
        occurred_at=parse_timestamp(step["occurredAt"], "occurredAt"),
        device_id=step["deviceId"],
        actor_id="actor",
        role=Role.SERVER if step["writer"] == "server" else Role.WORKER,
    )


@pytest.mark.parametrize("case", FSM_CASES, ids=[c["name"] for c in FSM_CASES])
def test_vector_case(case: dict[str, Any]) -> None:
    item = Item(State(case["initial"]))
    for step in case["steps"]:
        r = item.apply(transition_from_step(step))
        expect = step["expect"]
        assert r.disposition == expect["status"], step["id"]
        assert r.state == expect["state"], step["id"]
        assert (r.code.value if r.code else None) == expect.get("code"), step["id"]


def t(
    tid: str, frm: str, to: str, minute: int = 0, device: str = "tab-a", role: Role = Role.WORKER
) -> Transition:
    return Transition(
        tid, "item-1", frm, to, NOW + timedelta(minutes=minute), device, "actor", role
    )


def test_unknown_item_is_rejected_without_state() -> None:
    r = resolve(None, t("x", "assigned", "in_progress"), NOW)
    assert (r.disposition, r.code, r.state) == (Disposition.REJECTED, ItemCode.UNKNOWN_ITEM, None)


def test_unknown_state_names_are_invalid_transitions() -> None:
    # "teleported" is no state at all: rule 3, not a crash.
    r = resolve(ItemState(State.ASSIGNED, None), t("x", "assigned", "teleported"), NOW)
    assert r.code is ItemCode.FSM_INVALID_TRANSITION


def test_supervisor_assigns_but_worker_cannot() -> None:
    ok = resolve(
        ItemState(State.PENDING, None), t("a", "pending", "assigned", role=Role.SUPERVISOR), NOW
    )
    refused = resolve(ItemState(State.PENDING, None), t("b", "pending", "assigned"), NOW)
    assert ok.disposition is Disposition.APPLIED  # supervisors assign (table row 1)
    assert refused.code is ItemCode.FSM_INVALID_TRANSITION  # workers do not


def test_future_occurred_at_is_clamped_and_flagged() -> None:
    r = resolve(ItemState(State.ASSIGNED, None), t("x", "assigned", "in_progress", 6), NOW)
    assert r.clock_adjusted and r.transition.occurred_at == NOW
    within = resolve(ItemState(State.ASSIGNED, None), t("y", "assigned", "in_progress", 5), NOW)
    assert not within.clock_adjusted  # exactly 5 minutes ahead is tolerated


def test_sibling_tie_on_time_breaks_by_device_then_id() -> None:
    item = Item(State.IN_PROGRESS)
    item.apply(t("a", "in_progress", "contacted", device="tab-a"))
    r = item.apply(t("b", "in_progress", "unreachable", device="tab-b"))
    assert r.disposition is Disposition.APPLIED  # same time, "tab-b" > "tab-a"
    assert item.log["a"] is Disposition.SUPERSEDED


def test_duplicate_reports_first_disposition() -> None:
    item = Item(State.ASSIGNED)
    item.apply(t("x", "contacted", "completed"))  # fsm_gap
    r = item.apply(t("x", "contacted", "completed"))
    assert (r.disposition, r.recorded) == (Disposition.DUPLICATE, Disposition.REJECTED)


def test_cancel_is_the_only_server_only_transition() -> None:
    assert all(to is State.CANCELLED for _, to in SERVER_ONLY)
    assert len(SERVER_ONLY) == 4  # from each of the four non-terminal states


states = st.sampled_from(list(State))
steps = st.lists(
    st.tuples(
        st.sampled_from(sorted(ALLOWED, key=str)) | st.tuples(states, states),
        st.integers(-30, 30),
        st.sampled_from(["tab-a", "tab-b", "server"]),
        st.sampled_from(list(Role)),
        st.integers(0, 12),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(initial=states, sequence=steps)
def test_random_sequences_keep_a_valid_state_and_record_everything(
    initial: State, sequence: list[Any]
) -> None:
    item = Item(initial)
    for (frm, to), minute, device, role, n in sequence:
        before = item.state
        r = item.apply(t(f"t{n}", frm, to, minute, device, role))
        assert item.state in RANK
        if r.disposition is Disposition.APPLIED:
            # Only allowed edges are ever taken, and a terminal state is left only
            # by LWW between siblings that started from the same state.
            assert (State(frm), State(to)) in ALLOWED
            assert r.state == State(to)
        else:
            assert item.state == before
    assert len(item.history) == len(sequence)  # every incoming transition recorded

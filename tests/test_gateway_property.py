"""Property: whatever transitions arrive, in whatever batches, the gateway
agrees with the pure ``shared.fsm.resolve`` replayed in arrival order.

Hypothesis draws three items in random states and a random stream of
transitions: valid and invalid edges (and an unknown state name), worker,
supervisor and server writers, two devices, times two hours back and
up to six minutes ahead (past the 5-minute clamp), sub-millisecond times,
exact resends of earlier transitions, transitions for an unknown item, and
random cuts into batches. Server transitions go through
``POST …/outreach-items/{id}/transitions``; the rest as signed batches.

After every request each result must equal the model's; at the end every
item must be in a valid FSM state equal to the model's, and its history must
list every incoming transition exactly once (resends as their own rows) with
the model's disposition, the state being the target of the last row still
``applied``.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from canaries import scan_postgres_database, scan_tree
from gateway.app import create_app
from gateway.settings import Settings
from harness import PREFIX, START, FakeClock, Gateway, bearer, document, transition
from shared.fsm import ALLOWED, Disposition, ItemState, Role, State, Transition, resolve
from shared.values import format_timestamp, parse_timestamp
from stores import empty_database

ITEMS = ["item-a", "item-b", "item-c"]
GHOST = "item-ghost"  # never created: rule 1
STATE_NAMES = [s.value for s in State] + ["archived"]  # "archived" is no state of ours
DEVICES = ["tab-a", "tab-b"]
WRITERS = ["worker", "supervisor", "server"]
WRITER_OF = {Role.WORKER: "worker", Role.SUPERVISOR: "supervisor", Role.SERVER: "server"}
# Start states where siblings race most (the worker edges fan out from these).
INITIAL = [State.IN_PROGRESS, State.IN_PROGRESS, State.CONTACTED, State.ASSIGNED]
EDGES = st.sampled_from(sorted(ALLOWED))


@dataclass(frozen=True)
class Op:
    id: str
    item: str
    frm: str
    to: str
    at: str
    device: str
    writer: str

    def transition(self) -> Transition:
        """As the gateway will see it (the server endpoint sets device and role)."""
        server = self.writer == "server"
        return Transition(
            id=self.id,
            item_id=self.item,
            from_state=self.frm,
            to_state=self.to,
            occurred_at=parse_timestamp(self.at, "at"),
            device_id="server" if server else self.device,
            actor_id="x",
            role=Role.SERVER if server else Role(self.writer),
        )


@dataclass
class ModelItem:
    state: State
    last: Transition | None = None
    seen: dict[str, Disposition] = field(default_factory=dict)
    history: list[list[Any]] = field(default_factory=list)  # [id, disposition, code]


class Model:
    """Items driven only by ``resolve``, keeping what a store keeps."""

    def __init__(self, initial: dict[str, State]) -> None:
        self.items = {item_id: ModelItem(state) for item_id, state in initial.items()}

    def apply(self, t: Transition) -> tuple[str, str | None, str | None]:
        item = self.items.get(t.item_id)
        current = None if item is None else ItemState(item.state, item.last, item.seen.get(t.id))
        r = resolve(current, t, START)
        code = None if r.code is None else r.code.value
        if item is not None:
            item.history.append([t.id, r.disposition.value, code])
            if r.disposition is not Disposition.DUPLICATE:
                item.seen[t.id] = r.disposition
            if r.superseded is not None:
                item.seen[r.superseded.id] = Disposition.SUPERSEDED
                for row in item.history:
                    if row[0] == r.superseded.id and row[1] == "applied":
                        row[1] = "superseded"
            if r.changed_state:
                assert r.state is not None
                item.state, item.last = r.state, r.transition
        return r.disposition.value, code, None if r.state is None else r.state.value


# Few distinct minutes, so siblings often tie and the device and id decide;
# sub-millisecond parts (more digits than the wire's milliseconds) often
# differ inside one millisecond. +6 minutes lies past the 5-minute clamp.
MINUTES = [-120, -5, 0, 0, 6]
MICROS = [0, 300, 700, 1_000]


def time_text(minute: int, micro: int) -> str:
    moment = START + timedelta(minutes=minute, microseconds=micro)
    if micro % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return format_timestamp(moment)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, State], list[Op], list[bool]]:
    initial = {i: draw(st.sampled_from([*INITIAL, *State])) for i in ITEMS}
    ops: list[Op] = []
    for n in range(draw(st.integers(1, 20))):
        if ops and draw(st.integers(0, 4)) == 0:  # an exact resend of an earlier one
            ops.append(draw(st.sampled_from(ops)))
            continue
        item = draw(st.sampled_from([*ITEMS, *ITEMS, GHOST]))
        if draw(st.integers(0, 3)):  # mostly an edge of the FSM by a writer it allows,
            # often one leaving the item's first state, where siblings race
            start = initial.get(item)
            siblings = [e for e in ALLOWED if e[0] is start]
            edge = (
                draw(st.sampled_from(siblings)) if siblings and draw(st.booleans()) else draw(EDGES)
            )
            frm, to = edge[0].value, edge[1].value
            roles = ALLOWED[edge]
            writer = draw(st.sampled_from(sorted(WRITER_OF[r] for r in roles)))
        else:  # else anything at all
            frm, to = draw(st.sampled_from(STATE_NAMES)), draw(st.sampled_from(STATE_NAMES))
            writer = draw(st.sampled_from(WRITERS))
        ops.append(
            Op(
                id=f"t-{n}",
                item=item,
                frm=frm,
                to=to,
                at=time_text(draw(st.sampled_from(MINUTES)), draw(st.sampled_from(MICROS))),
                device=draw(st.sampled_from(DEVICES)),
                writer=writer,
            )
        )
    cuts = [draw(st.integers(0, 3)) == 0 for _ in ops]  # end a batch after this op?
    return initial, ops, cuts


async def run_scenario(
    initial: dict[str, State], ops: list[Op], cuts: list[bool], data_dir: str, postgres_url: str
) -> None:
    clock = FakeClock()
    if postgres_url:
        await empty_database(postgres_url)
    settings = Settings(data_dir=data_dir, database_url=postgres_url)
    async with TestClient(TestServer(create_app(settings, clock))) as client:
        gateway = Gateway(client, clock)
        admin = await gateway.token("admin")
        node = await gateway.enroll()
        for item_id, state in initial.items():
            await gateway.create_item(admin, item_id, state.value)
        model = Model(initial)

        pending: list[Op] = []

        async def flush() -> None:
            if not pending:
                return
            resp = await gateway.post_batch(
                node,
                [
                    transition(o.id, o.item, o.frm, o.to, o.at, o.device, role=o.writer)
                    for o in pending
                ],
            )
            assert resp.status == 200, await resp.text()
            results = (await document(resp))["results"]
            for op, result in zip(pending, results, strict=True):
                got = (result["status"], result.get("code"), result["state"])
                event(f"{got[0]} {got[1]}")
                assert got == model.apply(op.transition()), op
            pending.clear()

        for op, cut in zip(ops, cuts, strict=True):
            if op.writer == "server":
                await flush()
                resp = await client.post(
                    f"{PREFIX}/outreach-items/{op.item}/transitions",
                    json={"id": op.id, "from": op.frm, "to": op.to, "occurredAt": op.at},
                    headers=bearer(admin),
                )
                assert resp.status == 200, await resp.text()
                result = await resp.json()
                got = (result["status"], result.get("code"), result["state"])
                event(f"{got[0]} {got[1]}")
                assert got == model.apply(op.transition()), op
                continue
            pending.append(op)
            if cut:
                await flush()
        await flush()

        for item_id in ITEMS:
            resp = await client.get(f"{PREFIX}/outreach-items/{item_id}", headers=bearer(admin))
            item = await resp.json()
            expected = model.items[item_id]
            assert item["state"] in STATE_NAMES[:-1]  # a valid FSM state
            assert item["state"] == expected.state.value
            history = [[h["id"], h["disposition"], h["code"]] for h in item["history"]]
            assert history == expected.history
            sent = [o.id for o in ops if o.item == item_id]
            assert [h["id"] for h in item["history"]] == sent  # each arrival once, in order
            applied = [h for h in item["history"] if h["disposition"] == "applied"]
            assert item["state"] == (applied[-1]["to"] if applied else initial[item_id].value)
    # Each example's store, for canaries, before the next one replaces it (tests/canaries.py).
    if postgres_url:
        await scan_postgres_database(postgres_url)
    scan_tree(Path(data_dir))


# ``postgres_url`` is the same for every example: each empties its database first.
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(scenarios())
def test_gateway_agrees_with_resolve(
    postgres_url: str, scenario: tuple[dict[str, State], list[Op], list[bool]]
) -> None:
    initial, ops, cuts = scenario
    with tempfile.TemporaryDirectory() as data_dir:  # a fresh store per example
        asyncio.run(run_scenario(initial, ops, cuts, data_dir, postgres_url))

"""The edge's puller and forwarder racing on one item (issue 8, found by the
power-loss run at scale, seed 14202566).

The puller fetches a page of the change feed, then applies it; the forwarder
sends a batch, then stores the gateway's answer. Both run at once in
``edgenode run``, so either can carry an older state of an item than the one
already in the projection. These tests force each interleaving with a real
gateway and a real edge (``edge_harness``): a client of the node's key that
holds a fetched page, or a received answer, until the other side has gone
first. Nothing here is faked but the moment: both answers are the gateway's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from edge_harness import EdgeSystem, edge_system
from edgenode.gateway_client import GatewayAnswer, GatewayClient
from edgenode.gateway_items import GatewayWord, adopt_gateway_states, apply_changes, newest_word
from edgenode.store.database import EdgeDatabase, SQLiteStore, fetch_all, fetch_one
from edgenode.store.migrations import MIGRATIONS

WAIT = 10.0  # seconds: a held request that is never released fails the test, not hangs it


class HeldClient(GatewayClient):
    """The node's real client; ``hold_changes`` / ``hold_batches`` make a page
    or a batch answer wait, once received, until ``release`` is set."""

    def __init__(self, session: aiohttp.ClientSession, system: EdgeSystem) -> None:
        super().__init__(
            session,
            system.gateway_url,
            system.edge_settings.node_id,
            system.node_key,
            clock=lambda: system.edge_clock().timestamp(),
        )
        self.hold_changes = False
        self.hold_batches = False
        self.received = asyncio.Event()
        self.release = asyncio.Event()

    async def _held(self, answer: GatewayAnswer) -> GatewayAnswer:
        self.received.set()
        await asyncio.wait_for(self.release.wait(), WAIT)
        return answer

    async def changes(self, since: str, limit: int = 5000) -> GatewayAnswer:
        answer = await super().changes(since, limit)
        return await self._held(answer) if self.hold_changes else answer

    async def post_batch_body(self, batch_id: str, body: bytes) -> GatewayAnswer:
        answer = await super().post_batch_body(batch_id, body)
        return await self._held(answer) if self.hold_batches else answer


@asynccontextmanager
async def held_client(system: EdgeSystem) -> AsyncIterator[HeldClient]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield HeldClient(session, system)


async def edge_item(system: EdgeSystem, item_id: str) -> tuple[str, int | None]:
    """The edge projection's state of the item and the gateway version it knows."""
    async with system.edge_db.read() as conn:
        row = await fetch_one(
            conn, "SELECT state, gateway_version FROM items WHERE id = ?", (item_id,)
        )
    assert row is not None
    return str(row[0]), row[1]


async def test_a_page_fetched_before_an_answer_does_not_undo_it(tmp_path: Path) -> None:
    """The power-loss run's case. The page that says ``in_progress`` left the
    gateway before the batch moving the item to ``contacted`` reached it, and
    the forwarder stored that batch's answer before the puller applied the page.
    The edge went back to ``in_progress`` and refused the tablet's next move,
    ``contacted → completed``, as ``fsm_gap``, though the gateway applied it."""
    async with edge_system(tmp_path) as system:
        await system.create_items(["oi-1"], "assigned")
        await system.pull()
        tablet = await system.pair_tablet("tab-a")
        moves = [
            tablet.transition(f"t-{n}", "oi-1", frm, to, f"2026-11-25T11:0{n}:00.000Z")
            for n, (frm, to) in enumerate(
                [
                    ("assigned", "in_progress"),
                    ("in_progress", "contacted"),
                    ("contacted", "completed"),
                ]
            )
        ]
        [first] = await system.push_transitions(tablet, moves[:1])
        assert first["status"] == "applied"
        await system.forward()  # the gateway: in_progress (version 2), in the feed
        [second] = await system.push_transitions(tablet, moves[1:2])
        assert (second["status"], second["state"]) == ("applied", "contacted")

        async with held_client(system) as client:
            client.hold_changes = True
            pulling = asyncio.create_task(system.puller(client).pull_once())
            await asyncio.wait_for(client.received.wait(), WAIT)  # the page: in_progress
            forwarded = await system.forward()  # the gateway: contacted, answer stored
            assert forwarded.statuses == {"applied": 1}
            client.release.set()
            pulled = await pulling
        assert pulled.error is None and pulled.changes == 1

        # The page was older than the answer: the projection keeps the answer.
        assert await edge_item(system, "oi-1") == ("contacted", 3)
        [third] = await system.push_transitions(tablet, moves[2:])
        assert (third["status"], third.get("code"), third["state"]) == (
            "applied",
            None,
            "completed",
        )
        await system.sync()
        item = await system.gateway_item("oi-1")
        assert item["state"] == "completed"
        assert [h["disposition"] for h in item["history"]] == ["applied"] * 3
        assert await edge_item(system, "oi-1") == ("completed", 4)
        problems = await system.edge_problems()
        assert problems == []


async def test_an_answer_stored_after_a_newer_page_does_not_undo_it(tmp_path: Path) -> None:
    """The same race the other way round. The gateway applied the batch, then a
    server-side cancel; the puller applied the page with both while the batch's
    answer was still on its way (so the edge kept its local move, as it should);
    then the answer, older than the cancel, was stored. The edge kept
    ``in_progress`` for good: the feed had nothing newer to correct it."""
    async with edge_system(tmp_path) as system:
        await system.create_items(["oi-2"], "assigned")
        await system.pull()
        tablet = await system.pair_tablet("tab-a")
        move = tablet.transition("t-a", "oi-2", "assigned", "in_progress")
        [result] = await system.push_transitions(tablet, [move])
        assert result["status"] == "applied"

        async with held_client(system) as client:
            client.hold_batches = True
            forwarding = asyncio.create_task(system.forwarder(client).forward_once())
            await asyncio.wait_for(client.received.wait(), WAIT)  # applied: in_progress, v2
            await system.server_transition("oi-2", "cancel-1", "in_progress", "cancelled")
            pulled = await system.pull()  # v2 and v3 (cancelled); the move is unanswered
            assert pulled.changes == 2
            assert await edge_item(system, "oi-2") == ("in_progress", 3)
            client.release.set()
            forwarded = await forwarding
        assert forwarded.statuses == {"applied": 1}

        # The answer (version 2) is older than what the feed said (version 3).
        assert await edge_item(system, "oi-2") == ("cancelled", 3)
        assert (await system.tablet_view(tablet))["oi-2"]["state"] == "cancelled"
        await system.pull()
        assert await edge_item(system, "oi-2") == ("cancelled", 3)


W = GatewayWord


@pytest.mark.parametrize(
    ("held", "incoming", "kept"),
    [
        # newer or equal versions replace what is held (equal: the same change again)
        (W("in_progress", 2), W("contacted", 3), W("contacted", 3)),
        (W("contacted", 3), W("contacted", 3), W("contacted", 3)),
        # an older version is news the edge already has: ignored
        (W("contacted", 3), W("in_progress", 2), W("contacted", 3)),
        # no version with the answer (an older gateway): taken, as before; the
        # version known does not go back
        (W("contacted", 3), W("in_progress", None), W("in_progress", 3)),
        # a row kept before states were (store version 4): the answer's state,
        # the higher version
        (W(None, 3), W("in_progress", 2), W("in_progress", 3)),
        (W(None, None), W("assigned", 1), W("assigned", 1)),
    ],
)
def test_the_newest_word_is_kept(
    held: GatewayWord, incoming: GatewayWord, kept: GatewayWord
) -> None:
    assert newest_word(held, incoming) == kept


async def test_migration_5_keeps_items_and_learns_their_gateway_state(tmp_path: Path) -> None:
    """A version-4 store's items keep their state; the gateway state they did
    not keep is NULL until the next answer or change, and a page older than
    that answer is then passed over as on a new store."""
    path = tmp_path / "edgenode.db"
    old = await SQLiteStore(path, MIGRATIONS[:4]).open()  # the store as released
    async with old.write() as conn:
        await conn.execute(
            "INSERT INTO items (id, facility_id, state, gateway_version, local_seq, updated_at) "
            "VALUES ('oi-1', 'f-001', 'in_progress', 2, 1, '2026-11-25T11:00:00.000Z')"
        )
    await old.close()
    db = await EdgeDatabase(path).open()
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    try:
        assert await db.schema_version() == MIGRATIONS[-1][0]  # 5 and any later step
        async with db.read() as conn:
            rows = await fetch_all(
                conn, "SELECT id, state, gateway_state, gateway_version FROM items"
            )
        assert [tuple(r) for r in rows] == [("oi-1", "in_progress", None, 2)]
        async with db.write() as conn:  # an answer: contacted at version 3 ...
            await adopt_gateway_states(conn, {"oi-1": (GatewayWord("contacted", 3), 1)}, "s")
            stale = {"id": "oi-1", "facilityId": "f-001", "state": "in_progress", "version": 2}
            page = [{"aggregate": "outreach_item", "op": "upsert", "data": stale}]
            assert await apply_changes(conn, page, now) == 1  # ... then an older page
        async with db.read() as conn:
            rows = await fetch_all(conn, "SELECT state, gateway_state, gateway_version FROM items")
        assert [tuple(r) for r in rows] == [("contacted", "contacted", 3)]
    finally:
        await db.close()

"""The forwarder builds the next batch while one is on its way: a batch the
gateway then refuses as a whole (and that is split) must not let the batch
built behind it overtake its records."""

from __future__ import annotations

import itertools
from pathlib import Path

import sqlalchemy as sa

from edge_harness import edge_system
from edgenode.store.database import fetch_all
from gateway.db.schema import outreach_transitions as log

FULL_PATH = ("pending", "assigned", "in_progress", "contacted", "completed")
ITEMS = 500  # four moves each: 2,000 records, four batches of 500 without a refusal


async def test_split_batch_withdraws_the_batch_built_behind_it(tmp_path: Path) -> None:
    async with edge_system(tmp_path) as system:
        items = [f"bulk-{n:04d}" for n in range(ITEMS)]
        await system.create_items(items, "pending", bulk=True)
        await system.create_items(["legacy-item"], "assigned")
        tablet = await system.pair_tablet("tab-a")
        await system.pull()
        ids: list[str] = []
        for n, (frm, to) in enumerate(itertools.pairwise(FULL_PATH)):
            if n == 2:
                # Two batches in, a record an older release accepted (an actor id
                # with a space): the third batch is refused as a whole (422),
                # while the fourth was already built.
                async with system.edge_db.write() as conn:
                    await conn.execute(
                        "INSERT INTO transitions (transition_id, item_id, from_state, to_state, "
                        "occurred_at, device_id, actor_id, role, received_at, "
                        "local_disposition, forward) VALUES ('legacy-1', 'legacy-item', "
                        "'assigned', 'in_progress', '2026-11-25T11:00:00.000Z', 'tab-a', "
                        "'chw 7', 'worker', '2026-11-25T11:00:00.000Z', 'applied', 1)"
                    )
            extra = {"role": "supervisor"} if to == "assigned" else {}
            batch = [tablet.transition(f"{i}-{to}", i, frm, to, **extra) for i in items]
            results = await system.push_transitions(tablet, batch, fmt="msgpack")
            assert {r["status"] for r in results} == {"applied"}
            ids += [t["id"] for t in batch]

        forwarded = await system.forward()

        # Halved until the legacy record is alone (500, 250, 125, 62, 31, 15, 7
        # and 3 split), then refused on its own; every other record delivered.
        assert (forwarded.error, forwarded.split_batches, forwarded.refused_batches) == (
            None,
            8,
            1,
        )
        assert forwarded.statuses == {"applied": 4 * ITEMS}
        async with system.gateway.database.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(log.c.transition_id, log.c.disposition).order_by(log.c.seq)
                )
            ).all()
        assert [tid for tid, disposition in rows if disposition == "applied"] == ids
        async with system.edge_db.read() as conn:
            stages = await fetch_all(
                conn, "SELECT stage, count(*) FROM outbox_batches GROUP BY stage"
            )
        counts = {row[0]: row[1] for row in stages}
        # The batch built behind the first split one was withdrawn, never sent.
        assert counts["withdrawn"] == 1 and counts["split"] == 8 and counts["refused"] == 1
        status = await system.edge_status()
        assert status["outboxDepth"] == 0 and status["problems"] == 1
        assert status["openBatches"] == 0

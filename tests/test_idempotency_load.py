"""Idempotency under concurrency at scale (issue 8): 200 keys × 50 identical
requests, all in flight together.

Each key carries a transition of its own item, so an execution is visible as a
history row: exactly one per key. Every other copy is answered either 409
``idempotency_in_flight`` (with Retry-After) while the first runs, or the
stored answer as a replay, byte for byte. ``PHS_IDEMPOTENCY_KEYS`` and
``PHS_IDEMPOTENCY_COPIES`` change the scale (defaults: 200 and 50). The
smaller cases (two principals, one key; expiry at 24 h on a frozen clock) are
in test_gateway_idempotency.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

from harness import PREFIX, Gateway, bearer

KEYS = int(os.environ.get("PHS_IDEMPOTENCY_KEYS", "200"))
COPIES = int(os.environ.get("PHS_IDEMPOTENCY_COPIES", "50"))
IN_FLIGHT = 250  # requests open at once: enough to overlap, within the server's pool


async def test_every_key_executes_once_among_its_concurrent_copies(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    for k in range(KEYS):
        await gateway.create_item(admin, f"item-{k}", "assigned")
    # All copies of all keys, shuffled: copies of one key race each other and
    # the other keys' copies.
    requests = [k for k in range(KEYS) for _ in range(COPIES)]
    random.Random(KEYS * COPIES).shuffle(requests)
    answers: list[tuple[int, int, dict[str, str], bytes]] = []
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def send(k: int) -> None:
        async with gate:
            resp = await gateway.client.post(
                f"{PREFIX}/outreach-items/item-{k}/transitions",
                json={"id": f"s-{k}", "from": "assigned", "to": "cancelled"},
                headers=bearer(admin, **{"Idempotency-Key": f"key-{k}"}),
            )
            answers.append((k, resp.status, dict(resp.headers), await resp.read()))

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(send(k) for k in requests)), 600)
    elapsed = time.monotonic() - started
    print(f"{len(requests)} requests in {elapsed:.1f} s")

    executed: dict[int, bytes] = {}
    kinds: Counter[str] = Counter()
    for k, status, headers, body in answers:
        if status == 200 and "Idempotent-Replayed" not in headers:
            assert k not in executed, f"key-{k} executed twice"
            executed[k] = body
            kinds["executed"] += 1
        elif status == 409:
            assert b"idempotency_in_flight" in body and int(headers["Retry-After"]) >= 1
            kinds["in flight"] += 1
        else:
            assert status == 200 and headers["Idempotent-Replayed"] == "true", (status, body)
            kinds["replayed"] += 1
    assert sorted(executed) == list(range(KEYS))
    for k, _status, headers, body in answers:
        if headers.get("Idempotent-Replayed") == "true":
            assert body == executed[k]  # the stored answer, byte for byte
    assert kinds["executed"] == KEYS and sum(kinds.values()) == KEYS * COPIES
    print(dict(kinds))

    # And the store agrees: one history row per item, applied.
    async def history(k: int) -> list[Any]:
        resp = await gateway.client.get(f"{PREFIX}/outreach-items/item-{k}", headers=bearer(admin))
        return [(h["id"], h["disposition"]) for h in (await resp.json())["history"]]

    for k in range(KEYS):
        assert await history(k) == [(f"s-{k}", "applied")]

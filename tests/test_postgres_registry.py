"""Registry entries and risk overrides on PostgreSQL, concurrent writers included.

Skips unless PHS_TEST_POSTGRES_URL names a server (``.ci/run`` sets it).
"""

from __future__ import annotations

import asyncio

import pytest

from harness import PREFIX, Gateway, bearer
from test_gateway_registry import entry, feed, put
from test_postgres_smoke import pg_gateway  # noqa: F401 - the fixture

pytestmark = pytest.mark.postgres


async def test_concurrent_writes_of_one_entry_on_postgres(pg_gateway: Gateway) -> None:  # noqa: F811
    gateway = pg_gateway
    service = await gateway.token("service")
    admin = await gateway.token("admin")
    node = await gateway.enroll()
    # Two first writes of one id at once: one creates it, the other updates it.
    first, second = await asyncio.gather(
        put(gateway, service, entry("e-1")),
        put(gateway, service, entry("e-1", lastScreeningDate="2026-11-20")),
    )
    assert sorted([first.status, second.status]) == [200, 201]
    # Overrides at once: each is resolved against the other's result.
    overrides = [
        {
            "id": f"ov-{n}",
            "value": 10 * n,
            "reason": "r",
            "occurredAt": f"2026-11-25T0{n}:00:00.000Z",
        }
        for n in range(1, 6)
    ]
    answers = await asyncio.gather(
        *(
            gateway.client.post(
                f"{PREFIX}/risk-scores/e-1/overrides", json=body, headers=bearer(admin)
            )
            for body in overrides
        )
    )
    assert all(a.status == 200 for a in answers)
    resp = await gateway.client.get(f"{PREFIX}/risk-scores/e-1", headers=bearer(admin))
    doc = await resp.json()
    assert (doc["score"], doc["override"]["id"]) == (50, "ov-5")  # the latest occurredAt
    assert len(doc["audit"]) == 5
    kinds = {c[0] for c in await feed(gateway, node)}
    assert kinds == {"disease_registry_entry", "risk_score"}

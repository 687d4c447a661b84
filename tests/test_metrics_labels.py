"""The gateway's request metrics keep a fixed set of series, whatever callers send.

Every label set of ``http_requests`` is a child kept for the process's life,
so a label taken from a raw path or a made-up method would grow memory with
each new value a caller invents (the bad-input fuzz checks memory as a whole;
this pins the cause it would most likely have). Labels are the route's
pattern (``unmatched`` when none matched), the method (``other`` unless
standard) and the status.
"""

from __future__ import annotations

import pytest

from harness import PREFIX, Gateway
from test_metrics import REQUESTS, scrape

ODD_METHODS = ("PROPFIND", "LINK", "PURGE", "MKCOL", "SEARCH")
REQUESTS_EACH = 700  # of each kind below: 2,100 requests with a new path or method each


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # metrics are the store's no matter
async def test_new_paths_and_methods_add_no_series(gateway: Gateway) -> None:
    auth = {"Authorization": f"Bearer {await gateway.token('admin')}"}
    client = gateway.client

    async def one_of_each(n: int) -> None:
        resp = await client.get(f"/no/such/place-{n}")
        assert resp.status == 404
        resp = await client.get(f"{PREFIX}/outreach-items/never-{n}", headers=auth)
        assert resp.status == 404
        # aiohttp's parser (llhttp) refuses methods it does not know (400, before
        # any middleware); those it knows beyond the standard ones are "other".
        resp = await client.request(ODD_METHODS[n % len(ODD_METHODS)], "/healthz")
        assert resp.status == 405

    await one_of_each(0)  # each kind's series exists from here on
    await scrape(client)  # and the scrape's own
    before, _ = await scrape(client)
    for n in range(1, REQUESTS_EACH):
        await one_of_each(n)
    after, text = await scrape(client)

    series = {labels for name, labels in after if name == REQUESTS}
    assert series == {labels for name, labels in before if name == REQUESTS}
    item = f"{PREFIX}/outreach-items/{{id}}"
    counted = {
        (dict(labels)["method"], dict(labels)["route"], dict(labels)["code"]): after[
            (REQUESTS, labels)
        ]
        for labels in series
    }
    assert counted[("GET", "unmatched", "404")] == REQUESTS_EACH
    assert counted[("GET", item, "404")] == REQUESTS_EACH
    assert counted[("other", "unmatched", "405")] == REQUESTS_EACH  # no route for the method
    assert "place-" not in text and "never-" not in text and "PROPFIND" not in text

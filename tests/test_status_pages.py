"""The status pages without a browser: what they show, and who may see it.

Edge node (``GET /``, ``GET /status``): reachability and enrollment as the
forwarder's and puller's last exchanges found them, kept across the gateway
going down and coming back; values escaped. Gateway (``/admin``,
``GET …/admin/overview``, on both stores): no figure without an admin of
the tenant; the login form's session cookie, its expiry and logout; a node's
last seen and clock offset from its successful requests only, written at
most every 30 s unless the offset moved; the report grid's periods.
(The browser's view of both pages: test_browser_pages.py.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import date
from typing import Any

import msgpack
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from edge_harness import edge_system
from edgenode.status_page import render
from gateway.admin_overview import grid_periods
from gateway.app import create_app
from gateway.db.schema import admin_sessions
from gateway.settings import Settings
from harness import PREFIX, FakeClock, Gateway, assert_problem, bearer, document, transition
from shared.periods import PeriodType
from shared.values import format_timestamp

OVERVIEW = f"{PREFIX}/admin/overview"
CHANGES = f"{PREFIX}/sync/changes"


def data_value(html: str, element_id: str) -> str:
    """The ``data-value`` of the element with ``id=element_id``."""
    found = re.search(rf'id="{re.escape(element_id)}" data-value="([^"]*)"', html)
    assert found is not None, element_id
    return found[1]


# --- the edge node -------------------------------------------------------------------


async def test_edge_status_follows_the_gateway_going_down_and_back(tmp_path: Any) -> None:
    async with edge_system(tmp_path) as system:
        before = await (await system.edge.get("/status")).json()
        assert before["gateway"] == {
            "reachable": None,  # never tried
            "enrolled": None,
            "lastAnswerAt": None,
            "lastAnswer": None,
            "lastUnreachableAt": None,
            "lastUnreachableError": None,
        }
        page = await (await system.edge.get("/")).text()
        assert data_value(page, "health") == "attention"  # no contact yet
        assert data_value(page, "gateway-reachable") == ""

        await system.stop_gateway()
        tablet = await system.pair_tablet("tab-a")
        await system.push_transitions(
            tablet, [tablet.transition("t-1", "oi-9", "assigned", "in_progress")]
        )
        system.advance(5)
        forwarded, pulled = await system.sync()
        assert forwarded.unreachable and pulled.unreachable
        down = await (await system.edge.get("/status")).json()
        assert down["gateway"]["reachable"] is False
        assert down["gateway"]["lastUnreachableAt"] == format_timestamp(system.edge_clock())
        assert down["lastForwardOk"] is None and down["lastPullOk"] is None
        assert "sync/batches" in down["lastForwardError"]
        assert "sync/changes" in down["lastPullError"]
        assert down["outboxDepth"] == 1
        page = await (await system.edge.get("/")).text()
        assert data_value(page, "health") == "problem"
        assert "the gateway is unreachable" in page
        assert data_value(page, "gateway-reachable") == "false"

        await system.start_gateway()
        system.advance(5)
        forwarded, pulled = await system.sync()
        assert forwarded.error is None and pulled.error is None
        back = await (await system.edge.get("/status")).json()
        assert back["gateway"]["reachable"] is True and back["gateway"]["enrolled"] is True
        assert back["gateway"]["lastAnswer"] == "200"
        assert back["lastForwardOk"] == back["lastPullOk"] == format_timestamp(system.edge_clock())
        assert back["lastForwardError"] is None and back["lastPullError"] is None
        assert back["gateway"]["lastUnreachableAt"] == down["gateway"]["lastUnreachableAt"]
        # The one record reached the gateway, which did not know its item: a problem.
        assert (back["outboxDepth"], back["problems"]) == (0, 1)


async def test_edge_status_says_when_the_gateway_refuses_the_key(tmp_path: Any) -> None:
    async with edge_system(tmp_path, enroll=False) as system:
        pulled = await system.pull()
        assert pulled.error is not None and "unknown_key" in pulled.error
        status = await (
            await system.edge.get("/status", headers={"Accept": "application/msgpack"})
        ).read()
        doc = msgpack.unpackb(status)
        assert doc["gateway"]["reachable"] is True  # it answered ...
        assert doc["gateway"]["enrolled"] is False  # ... that it does not know this key
        assert doc["gateway"]["lastAnswer"] == "401 unknown_key"
        page = await (await system.edge.get("/")).text()
        assert data_value(page, "node-enrolled") == "false"
        assert data_value(page, "health") == "problem"

        await system.enroll_edge()
        assert (await system.pull()).error is None
        doc = await (await system.edge.get("/status")).json()
        assert doc["gateway"]["enrolled"] is True


async def test_edge_page_escapes_every_value(tmp_path: Any) -> None:
    """Tablets' kinds and ids are checked before they are stored, but an error
    text comes from the gateway or the network: every value goes through escaping."""
    hostile = "<script>alert(1)</script>"
    async with edge_system(tmp_path) as system:
        tablet = await system.pair_tablet("tab-a")
        resp = await system.tablet_request(
            tablet, "POST", f"{PREFIX}/sync/items", {"items": [{"kind": "made.up", "id": "r-1"}]}
        )
        assert resp.status == 200
        resp = await system.edge.get("/")
        assert "<script" not in await resp.text()  # no script of its own
        csp = resp.headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'none'") and "script-src" not in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        page = await resp.text()
        assert '<meta http-equiv="refresh" content="15">' in page
        assert '<meta name="viewport"' in page

        doc = await (await system.edge.get("/status")).json()
        doc["lastForwardError"] = doc["gateway"]["lastAnswer"] = hostile
        doc["recentRefusedWrites"][0]["detail"] = hostile
        page = render(doc, system.edge_clock())
        assert "<script" not in page
        # The two figures show it and carry it in data-value; the table shows it.
        assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 5


# --- the gateway: who may see the admin page ----------------------------------------------


async def login(gateway: Gateway, token: str) -> Any:
    return await gateway.client.post("/admin/login", data={"token": token}, allow_redirects=False)


async def test_admin_page_shows_nothing_without_an_admin(gateway: Gateway) -> None:
    await gateway.enroll("edge-01", "t1")
    analyst = await gateway.token("analyst", "t1")
    for headers in (
        {},
        bearer("phs_nope_0000"),
        bearer(analyst),  # a real token, not an admin's
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Cookie": "phs_admin=not-a-session"},
    ):
        resp = await gateway.client.get("/admin", headers=headers)
        page = await resp.text()
        assert (resp.status, resp.content_type) == (401, "text/html"), headers
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="phs-sync"'
        assert 'id="token"' in page and "edge-01" not in page and "nodes-table" not in page
    resp = await gateway.client.get("/admin", headers={"Cookie": "phs_admin=not-a-session"})
    assert "Your session has ended" in await resp.text()
    assert resp.cookies["phs_admin"].value == ""  # the stale cookie is cleared

    resp = await gateway.client.get("/admin", headers=bearer(await gateway.token("admin", "t1")))
    assert resp.status == 200 and 'data-key="edge-01"' in await resp.text()
    other = await gateway.token("admin", "t2")  # another tenant's admin sees none of t1
    resp = await gateway.client.get("/admin", headers=bearer(other))
    assert resp.status == 200 and "edge-01" not in await resp.text()


async def test_admin_login_session_expiry_and_logout(gateway: Gateway) -> None:
    await gateway.enroll("edge-01", "t1")
    admin = await gateway.token("admin", "t1")
    for wrong in ("phs_nope_0000", await gateway.token("service", "t1"), "", "x" * 5000):
        resp = await login(gateway, wrong)
        assert resp.status == 401 and 'id="login-error"' in await resp.text()
        assert "phs_admin" not in resp.cookies

    resp = await login(gateway, admin)
    assert (resp.status, resp.headers["Location"]) == (303, "/admin")
    cookie = resp.cookies["phs_admin"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/admin"
    assert cookie["max-age"] == str(8 * 3600)
    session = cookie.value
    assert admin not in session and len(session) >= 40
    async with gateway.database.read() as conn:
        [row] = (await conn.execute(sa.select(admin_sessions))).all()
    # Only the session's hash is kept, tied to the token's hash.
    assert row.session_hash == hashlib.sha256(session.encode()).hexdigest()
    assert row.token_hash == hashlib.sha256(admin.encode()).hexdigest()

    with_cookie = {"Cookie": f"phs_admin={session}"}
    resp = await gateway.client.get("/admin", headers=with_cookie)
    page = await resp.text()
    assert resp.status == 200 and 'data-key="edge-01"' in page and 'id="logout"' in page
    assert "Cache-Control" in resp.headers and resp.headers["Cache-Control"] == "no-store"

    gateway.clock.advance(8 * 3600)  # the session's whole life
    resp = await gateway.client.get("/admin", headers=with_cookie)
    assert resp.status == 401 and "edge-01" not in await resp.text()

    session = (await login(gateway, admin)).cookies["phs_admin"].value
    with_cookie = {"Cookie": f"phs_admin={session}"}
    async with gateway.database.read() as conn:  # the expired one was cleared at this login
        assert len((await conn.execute(sa.select(admin_sessions))).all()) == 1
    resp = await gateway.client.post("/admin/logout", headers=with_cookie, allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/admin")
    assert resp.cookies["phs_admin"].value == ""
    async with gateway.database.read() as conn:
        assert (await conn.execute(sa.select(admin_sessions))).all() == []
    resp = await gateway.client.get("/admin", headers=with_cookie)
    assert resp.status == 401  # the old cookie opens nothing any more


async def test_overview_needs_an_admin_token(gateway: Gateway) -> None:
    resp = await gateway.client.get(OVERVIEW)
    await assert_problem(resp, 401, "unauthenticated")
    resp = await gateway.client.get(OVERVIEW, headers=bearer(await gateway.token("analyst")))
    await assert_problem(resp, 403, "forbidden")


# --- the gateway: what the admin page shows -------------------------------------------------


async def overview(gateway: Gateway, admin: str) -> dict[str, Any]:
    resp = await gateway.client.get(OVERVIEW, headers=bearer(admin))
    assert resp.status == 200, await resp.text()
    return dict(await document(resp))


async def test_last_seen_and_clock_offset_from_successful_requests(gateway: Gateway) -> None:
    admin = await gateway.token("admin", "t1")
    node = await gateway.enroll("edge-01", "t1")
    [fresh] = (await overview(gateway, admin))["nodes"]
    assert (fresh["lastSeenAt"], fresh["clockOffsetSeconds"]) == (None, None)

    async def pull(offset: int) -> int:
        ts = int(gateway.clock().timestamp()) + offset
        return int((await gateway.signed(node, "GET", CHANGES, ts=ts)).status)

    def seen(doc: dict[str, Any]) -> tuple[str | None, float | None]:
        [n] = doc["nodes"]
        return n["lastSeenAt"], n["clockOffsetSeconds"]

    assert await pull(+7) == 200
    first = format_timestamp(gateway.clock())
    assert seen(await overview(gateway, admin)) == (first, 7.0)

    gateway.clock.advance(10)
    assert await pull(+400) == 401  # clock_skew: refused, so nothing is written
    assert await pull(+8) == 200  # within 30 s and the offset moved under 2 s: not written
    assert seen(await overview(gateway, admin)) == (first, 7.0)
    gateway.clock.advance(10)
    assert await pull(-3) == 200  # the clock moved: written at once
    assert seen(await overview(gateway, admin)) == (format_timestamp(gateway.clock()), -3.0)
    gateway.clock.advance(31)
    assert await pull(-3) == 200  # 30 s on: written again
    assert seen(await overview(gateway, admin)) == (format_timestamp(gateway.clock()), -3.0)

    # The page shows the same, as the grid and tables of the tenant.
    page = await (await gateway.client.get("/admin", headers=bearer(admin))).text()
    assert 'data-field="clockOffsetSeconds" data-value="-3.0"' in page
    assert f'data-field="lastSeenAt" data-value="{format_timestamp(gateway.clock())}"' in page


async def test_rejected_submissions_are_listed_escaped_and_by_tenant(gateway: Gateway) -> None:
    admin = await gateway.token("admin", "t1")
    node = await gateway.enroll("edge-01", "t1")
    resp = await gateway.post_batch(
        node,
        [
            transition("t-1", "oi-404", "assigned", "in_progress"),  # nobody knows this item
            {"kind": "<script>alert(1)</script>", "id": "r-1"},
        ],
    )
    assert resp.status == 200, await resp.read()
    doc = await overview(gateway, admin)
    rejected = doc["rejected"]
    assert rejected["transitionsTotal"] == 1
    assert [(t["transitionId"], t["code"]) for t in rejected["transitions"]] == [
        ("t-1", "unknown_item")
    ]
    assert [(w["kind"], w["recordId"], w["code"]) for w in rejected["refusedWrites"]] == [
        ("<script>alert(1)</script>", "r-1", "unknown_kind")
    ]
    page = await (await gateway.client.get("/admin", headers=bearer(admin))).text()
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert data_value(page, "rejected-transitions-count") == "1"
    assert data_value(page, "refused-writes-count") == "1"

    other = await overview(gateway, await gateway.token("admin", "t2"))
    assert other["nodes"] == [] and other["recentEvents"] == []
    assert (other["rejected"]["transitionsTotal"], other["rejected"]["refusedWritesTotal"]) == (
        0,
        0,
    )


GRID_PERIODS = [
    # today, type, count -> the complete periods before today's, oldest first
    (date(2026, 11, 25), PeriodType.DAILY, 3, ["2026-11-22", "2026-11-23", "2026-11-24"]),
    (date(2026, 11, 25), PeriodType.WEEKLY, 2, ["2026-W46", "2026-W47"]),  # today is in W48
    # 2026-W01 starts on 2025-12-29: the weeks before it are 2025's.
    (date(2026, 1, 2), PeriodType.WEEKLY, 3, ["2025-W50", "2025-W51", "2025-W52"]),
    (date(2026, 3, 1), PeriodType.DAILY, 2, ["2026-02-27", "2026-02-28"]),  # no 29th in 2026
]


@pytest.mark.parametrize(("today", "period_type", "count", "keys"), GRID_PERIODS)
def test_grid_periods(today: date, period_type: PeriodType, count: int, keys: list[str]) -> None:
    assert [p.key for p in grid_periods(today, period_type, count)] == keys


async def test_admin_cookie_is_secure_behind_a_tls_proxy_when_set(
    gateway_settings: Settings, clock: FakeClock
) -> None:
    """A TLS-terminating proxy talks plain HTTP to the gateway: the request is
    not ``secure``, so the cookie would go without ``Secure`` unless
    ``admin_cookie_secure`` says the page is only ever reached over HTTPS."""
    for setting_on in (False, True):
        settings = dataclasses.replace(gateway_settings, admin_cookie_secure=setting_on)
        async with TestClient(TestServer(create_app(settings, clock))) as client:
            gateway = Gateway(client, clock)
            admin = await gateway.token("admin", "t1")
            cookie = (await login(gateway, admin)).cookies["phs_admin"]
            assert bool(cookie["secure"]) is setting_on

"""Hypothesis-generated bad input against every write endpoint of both services.

``test_gateway_bad_input.py`` walks a fixed list of faults; this file draws
them. For every write route of the gateway and the edge node (listed from the
two apps' routers: a route without an entry here fails the test), a valid
document is spoilt one way — random bytes, truncated or garbled JSON and
msgpack, wrong types, deep nesting, huge strings, unknown and missing
fields, wrong content types, bad Idempotency-Keys — and sent with valid
credentials (a bearer token of a role that may write, or a device or node
signature over the very bytes sent), so the body is what fails.

Every answer must be a 4xx problem document whose code the gateway's OpenAPI
document lists for that operation and status (for the edge: a code of the
error tree with that status); no unhandled error may be logged; and nothing
may change in either database, except where a refused write is recorded on
purpose: one ``refused_writes`` row per request to a server-computed
aggregate (risk scores, cohort members, quality snapshots), one
``risk_override_audit`` row per override attempt whose body decoded. Both
services run in process (aiohttp test servers on loopback, SQLite). A write
is spotted by ``PRAGMA data_version`` on a connection of the test's own (it
moves whenever another connection commits), and only then are the tables
compared.

Memory: after the first third of the requests, the process's live RSS
(``rss.live_rss``) may grow by less than ``RSS_GROWTH_BOUND``. Two things in
the test itself grow with the number of requests and would hide a server's
leak, so they are kept out: aiohttp's ``TestClient`` keeps every response it
made until it is closed (about 15 KB each: 7,000 requests made the 109 MiB
once recorded as "growth"), so requests go through its session, which keeps
none; and Hypothesis keeps every choice of a run until the run ends (about
4 KB an example), so the examples are drawn in runs of ``ROUND``, each with
its own seed, and RSS is sampled between runs.

``PHS_FUZZ_EXAMPLES`` sets the examples (default 10,000 in all: 7,000 gateway,
3,000 edge); the seeds are fixed, so CI repeats the same run.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from canaries import patient_ref
from edge_harness import EdgeSystem, Tablet, edge_system
from edgenode.service import add_routes as add_edge_routes
from gateway.app import add_routes as add_gateway_routes
from gateway.openapi import openapi_document
from harness import PREFIX, signed_report, transition
from rss import live_rss
from shared.errors import PhsError
from shared.signing import KeyPair, authorization_header

JSON, MSGPACK = "application/json", "application/msgpack"
TOTAL = int(os.environ.get("PHS_FUZZ_EXAMPLES", "10000"))
ROUND = 500  # examples per Hypothesis run: what it keeps is freed when the run ends
# Live RSS growth allowed from the end of the first third of the runs to the end.
# What still grows then is caches warming, each bounded (SQLAlchemy's compiled
# statements, a metric series per route and status, SQLite's page cache): +0.0 to
# +2.3 MiB measured (docs/reliability.md). A leak of 4 KB a request (4,500 gateway
# requests after the first third) would pass 16 MiB; of 0.4 KB at 100,000 examples.
RSS_GROWTH_BOUND = 16 * 2**20
COUNTED = ("refused_writes", "risk_override_audit")  # refusals kept on purpose
# The hash-chained audit log (tests/test_audit_log.py checks its rows): a
# refusal of an authenticated caller may append its one row, nothing more.
AUDIT = ("audit_log", "audit_head")
WOMEN = {"field": "sex", "op": "eq", "value": "female"}
NEVER = "no-such-id"  # path ids that name nothing: a DELETE there is refused


@dataclass(frozen=True)
class Endpoint:
    """A write route, a valid document for it, and what a refusal may leave."""

    method: str
    route: str  # the router's pattern
    path: str  # what is sent
    auth: str  # admin | service | node | device | none | form
    valid: dict[str, Any] | None  # None: the handler reads no document
    strict: tuple[str, ...] = ()  # fields any other JSON type makes invalid
    refusal_rows: str | None = None  # table of the row every request records
    audited: bool = False  # a decoded body is audited (risk overrides)
    all_optional: bool = False  # no field is required: dropping one spoils nothing


def gateway_endpoints(node: str, item: str, cohort: str, report: dict[str, Any]) -> list[Endpoint]:
    key = base64.b64encode(KeyPair.generate().public_key).decode()
    p = PREFIX
    e = Endpoint
    docs = [
        e("POST", "/admin/login", "/admin/login", "form", None),
        e("POST", "/admin/logout", "/admin/logout", "none", None),
        e("POST", f"{p}/admin/nodes", f"{p}/admin/nodes", "admin",
          {"nodeId": "edge-9", "tenantId": "t1", "facilityIds": ["f-001"], "publicKey": key},
          ("nodeId", "tenantId", "facilityIds", "publicKey")),
        e("DELETE", f"{p}/admin/nodes/{{nodeId}}", f"{p}/admin/nodes/{NEVER}", "admin", None),
        e("POST", f"{p}/admin/nodes/{{nodeId}}/keys", f"{p}/admin/nodes/{NEVER}/keys", "admin",
          {"publicKey": key, "overlapSeconds": 60}, ("publicKey", "overlapSeconds")),
        e("POST", f"{p}/admin/nodes/{{nodeId}}/keys/{{keyId}}/retire",
          f"{p}/admin/nodes/{node}/keys/{NEVER}/retire", "admin", {"overlapSeconds": 0},
          ("overlapSeconds",), all_optional=True),
        e("DELETE", f"{p}/admin/nodes/{{nodeId}}/keys/{{keyId}}",
          f"{p}/admin/nodes/{node}/keys/{NEVER}", "admin", None),
        e("POST", f"{p}/sync/keys", f"{p}/sync/keys", "node", {"publicKey": key}, ("publicKey",)),
        e("POST", f"{p}/outreach-items", f"{p}/outreach-items", "admin",
          {"id": "item-9", "facilityId": "f-001", "state": "pending"},
          ("id", "facilityId", "state")),
        e("POST", f"{p}/outreach-items/{{id}}/transitions",
          f"{p}/outreach-items/{item}/transitions", "admin",
          {"id": "s-1", "from": "assigned", "to": "cancelled"}, ("id", "from", "to")),
        e("POST", f"{p}/sync/facility-reports", f"{p}/sync/facility-reports", "none", report,
          ("deviceId", "payload", "signature")),
        e("POST", f"{p}/sync/batches", f"{p}/sync/batches", "node",
          {"v": 1, "batchId": "b-1", "nodeId": node, "createdAt": "2026-11-25T12:00:00.000Z",
           "items": [transition("t-1", item, "assigned", "in_progress")]},
          ("batchId", "nodeId", "createdAt", "items")),
        e("POST", f"{p}/cohorts", f"{p}/cohorts", "admin",
          {"cohortId": "c-9", "name": "Women", "definition": WOMEN},
          ("cohortId", "name", "definition")),
        e("POST", f"{p}/cohorts/{{cohortId}}/drafts", f"{p}/cohorts/{cohort}/drafts", "admin",
          {"definition": {"all": [WOMEN, {"condition": "E11"}]}}, ("definition",)),
        e("PUT", f"{p}/registry/entries/{{id}}", f"{p}/registry/entries/e-9", "service",
          {"id": "e-9", "facilityId": "f-001", "patientRef": patient_ref(9), "sex": "female",
           "birthDate": "1960-01-01"}, ("id", "facilityId", "patientRef", "sex", "birthDate")),
        e("DELETE", f"{p}/registry/entries/{{id}}", f"{p}/registry/entries/{NEVER}", "service",
          None),
        e("POST", f"{p}/risk-scores/{{entryId}}/overrides", f"{p}/risk-scores/e-1/overrides",
          "admin", {"id": "o-1", "value": 50, "reason": "seen", "occurredAt":
                    "2026-11-25T11:00:00.000Z"}, ("id", "reason", "occurredAt"), audited=True),
        e("POST", f"{p}/quality-snapshots", f"{p}/quality-snapshots", "admin",
          {"periodType": "weekly", "periodKey": "2026-W40"}, ("periodType", "periodKey")),
        e("POST", f"{p}/hmis-exports", f"{p}/hmis-exports", "admin",
          {"periodType": "weekly", "periodKey": "2026-W40"}, ("periodType", "periodKey")),
        e("POST", f"{p}/deident-exports", f"{p}/deident-exports", "admin", {"k": 5}, ("k",),
          all_optional=True),
    ]  # fmt: skip
    for method in ("PUT", "PATCH", "DELETE"):
        docs.append(e(method, f"{p}/cohorts/{{cohortId}}", f"{p}/cohorts/{cohort}", "admin", None))
        docs += [
            e(method, f"{p}/risk-scores/{{entryId}}", f"{p}/risk-scores/e-1", "admin", None,
              refusal_rows="refused_writes"),
            e(method, f"{p}/quality-snapshots/{{id}}", f"{p}/quality-snapshots/2026-W40", "admin",
              None, refusal_rows="refused_writes"),
        ]  # fmt: skip
    for method in ("PUT", "PATCH", "POST", "DELETE"):
        docs += [
            e(method, f"{p}/cohorts/{{cohortId}}/versions/{{version}}",
              f"{p}/cohorts/{cohort}/versions/1", "admin", None),
            e(method, f"{p}/cohorts/{{cohortId}}/members", f"{p}/cohorts/{cohort}/members",
              "admin", None, refusal_rows="refused_writes"),
        ]  # fmt: skip
    return docs


def edge_endpoints(device: str) -> list[Endpoint]:
    p = PREFIX
    key = base64.b64encode(KeyPair.generate().public_key).decode()
    t = Tablet(device).transition("t-1", "item-1", "assigned", "in_progress")
    encounter = {
        "id": "en-1", "patientRef": patient_ref(1), "facilityId": "f-001",
        "occurredAt": "2026-11-25T10:00:00.000Z", "kind": "visit",
        "screeningDue": False, "immunizationDue": False,
    }  # fmt: skip
    draft = {"kind": "cohort.draft", "id": "d-1", "cohortId": "c-1", "definition": WOMEN}
    return [
        Endpoint("POST", f"{p}/devices/pair", f"{p}/devices/pair", "none",
                 {"pairingCode": "000000", "deviceId": "tab-9", "publicKey": key},
                 ("deviceId", "publicKey")),
        Endpoint("POST", f"{p}/sync/outreach", f"{p}/sync/outreach", "device",
                 {"transitions": [t]}, ("transitions",)),
        Endpoint("POST", f"{p}/sync/encounters", f"{p}/sync/encounters", "device",
                 {"encounters": [encounter]}, ("encounters",)),
        Endpoint("POST", f"{p}/sync/items", f"{p}/sync/items", "device", {"items": [draft]},
                 ("items",)),
    ]  # fmt: skip


def write_routes(add_routes: Callable[[web.Application], None]) -> set[tuple[str, str]]:
    app = web.Application()
    add_routes(app)
    return {
        (route.method, resource.canonical)
        for resource in app.router.resources()
        for route in resource
        if route.method not in ("GET", "HEAD")
    }


# --- spoiling a document -----------------------------------------------------------------

PACKABLE_INTS = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
WRONG_VALUES = st.one_of(
    PACKABLE_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(PACKABLE_INTS, max_size=3),
    st.dictionaries(st.text(max_size=3), PACKABLE_INTS, max_size=2),
    st.none(),
)


def nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def encode(doc: Any, codec: str) -> bytes:
    if codec == JSON:
        return json.dumps(doc, default=lambda b: base64.b64encode(b).decode()).encode()
    return bytes(msgpack.packb(doc, use_bin_type=True))


def decodes_to_map(body: bytes, codec: str) -> bool:
    """Whether ``body`` is a whole map in ``codec``. Where every field is
    optional, random bytes can be a valid document: ``\\x80`` is msgpack's
    empty map (drawn at PHS_FUZZ_EXAMPLES=100000, and answered 202)."""
    try:
        doc = json.loads(body) if codec == JSON else msgpack.unpackb(body)
    except Exception:  # random bytes fail to decode in many ways: not a map, then
        return False
    return isinstance(doc, dict)


@dataclass(frozen=True)
class Spoilt:
    how: str
    body: bytes
    content_type: str | None
    key: str | None = None  # Idempotency-Key

    def __repr__(self) -> str:  # the body may be megabytes: show its start
        start = self.body[:80]
        size = len(self.body)
        return f"Spoilt({self.how!r}, {size} bytes {start!r}…, {self.content_type!r}, {self.key!r})"


@st.composite
def spoilt(draw: st.DrawFn, endpoint: Endpoint) -> Spoilt:
    """One bad request body for ``endpoint`` (bad by construction, whatever is drawn)."""
    codec = draw(st.sampled_from([JSON, MSGPACK]))
    doc = endpoint.valid
    ways = ["random bytes", "truncated", "trailing bytes", "invalid utf-8", "content type"]
    if doc is not None:
        ways += ["wrong type", "deep nesting", "huge string", "unknown field", "bad key"]
        if endpoint.strict and not endpoint.all_optional:
            ways.append("missing field")
    how = draw(st.sampled_from(ways))
    base = doc if doc is not None else {"x": 1}
    good = encode(base, codec)
    if how == "random bytes":
        noise = st.binary(max_size=300)
        if endpoint.all_optional:  # a whole map may be a valid document there
            noise = noise.filter(lambda b: not decodes_to_map(b, codec))
        return Spoilt(how, draw(noise), codec)
    if how == "truncated":
        return Spoilt(how, good[: draw(st.integers(0, len(good) - 1))], codec)
    if how == "trailing bytes":
        return Spoilt(how, good + draw(st.binary(min_size=1, max_size=8)), MSGPACK)
    if how == "invalid utf-8":
        cut = draw(st.integers(0, len(good)))
        return Spoilt(how, good[:cut] + b"\xff\xfe" + good[cut:], JSON)
    if how == "content type":
        media = draw(
            st.sampled_from(["text/plain", "application/xml", "application/octet-stream",
                             "multipart/form-data", "application/json; charset=latin-1", None])
        )  # fmt: skip
        return Spoilt(how, good, media)
    assert doc is not None
    fields = list(endpoint.strict) or sorted(doc)
    spoilt_doc = dict(doc)
    if how == "wrong type":
        name = draw(st.sampled_from(endpoint.strict or ("__missing__",)))
        # Another type; not null where every field may be null (absent).
        value = draw(
            WRONG_VALUES.filter(
                lambda v: (
                    type(v) is not type(doc.get(name)) and not (endpoint.all_optional and v is None)
                )
            )
        )
        spoilt_doc[name] = value
    elif how == "deep nesting":
        spoilt_doc[draw(st.sampled_from(fields))] = nest(0, draw(st.integers(33, 200)))
    elif how == "huge string":
        spoilt_doc[draw(st.sampled_from(fields))] = "x" * draw(st.integers(100_000, 4_300_000))
    elif how == "unknown field":
        name = draw(st.text(min_size=1, max_size=20).filter(lambda n: n not in doc))
        spoilt_doc[name] = draw(WRONG_VALUES)
    elif how == "missing field":
        del spoilt_doc[draw(st.sampled_from(endpoint.strict))]
    elif how == "bad key":
        key = draw(st.sampled_from(["", "x" * 256, "a\tb", " " * 300, "é"]))
        return Spoilt(how, good, codec, key)
    return Spoilt(how, encode(spoilt_doc, codec), codec)


# --- the services ----------------------------------------------------------------------------


class Watch:
    """Spots any commit to one SQLite file, and compares its tables when one came."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.version = self._data_version()
        self.tables = [
            name
            for (name,) in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        self.rows = self.snapshot()

    def _data_version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def snapshot(self) -> dict[str, Any]:
        """Every row of every table; of the refusal tables only their counts."""
        self.db.rollback()
        rows: dict[str, Any] = {}
        for table in self.tables:
            if table in COUNTED or table in AUDIT:
                rows[table] = self.db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            else:
                found = self.db.execute(f'SELECT * FROM "{table}"').fetchall()
                rows[table] = sorted(repr(r) for r in found)
        return rows

    def check(self, added: dict[str, int], what: str) -> None:
        """Nothing committed, or only ``added`` rows to the refusal tables."""
        version = self._data_version()
        if version == self.version and not added:
            return
        self.version = version
        now = self.snapshot()
        expected = dict(self.rows)
        for table, count in added.items():
            expected[table] += count
        if "audit_log" in now:  # at most one audit row a request; the head stays one row
            assert now["audit_log"] - self.rows["audit_log"] in (0, 1), what
            assert now["audit_head"] <= 1, what
            expected["audit_log"], expected["audit_head"] = now["audit_log"], now["audit_head"]
        changed = sorted(t for t in now if now[t] != expected.get(t))
        assert not changed, f"{what}: tables changed: " + ", ".join(
            f"{t} {expected.get(t) if t in COUNTED else ''}->{now[t] if t in COUNTED else ''}"
            for t in changed
        )
        self.rows = now


@dataclass
class Sender:
    system: EdgeSystem
    loop: asyncio.AbstractEventLoop
    tokens: dict[str, str]
    tablet: Tablet

    def send(self, service: str, endpoint: Endpoint, bad: Spoilt) -> tuple[int, str, bytes]:
        return self.loop.run_until_complete(self._send(service, endpoint, bad))

    async def _send(self, service: str, endpoint: Endpoint, bad: Spoilt) -> tuple[int, str, bytes]:
        headers: dict[str, str] = {}
        if bad.content_type is not None:
            headers["Content-Type"] = bad.content_type
        if bad.key is not None:
            headers["Idempotency-Key"] = bad.key
        ts = int(self.system.gateway_clock().timestamp())
        if endpoint.auth in ("admin", "service"):
            headers["Authorization"] = f"Bearer {self.tokens[endpoint.auth]}"
        elif endpoint.auth == "node":
            node = self.system.edge_settings.node_id
            headers["Authorization"] = authorization_header(
                self.system.node_key, node, endpoint.method, endpoint.path, bad.body, ts
            )
            headers.setdefault("Idempotency-Key", "b-1")
        elif endpoint.auth == "device":
            headers["Authorization"] = authorization_header(
                self.tablet.keypair, self.tablet.device_id, endpoint.method, endpoint.path,
                bad.body, ts,
            )  # fmt: skip
        client = self.system.gateway.client if service == "gateway" else self.system.edge
        # aiohttp warns about large bytes bodies: a stream of the same bytes.
        data: Any = io.BytesIO(bad.body) if len(bad.body) > 1024 * 1024 else bad.body
        # The test client's own session (same cookies and connections): the
        # client's request() would keep every response until the test ends.
        url = client.make_url(endpoint.path)
        async with client.session.request(endpoint.method, url, data=data, headers=headers) as resp:
            return resp.status, resp.content_type, await resp.read()


def documented_codes() -> dict[tuple[str, str], dict[int, set[str]]]:
    """(METHOD, path pattern) → status → the problem codes the document promises."""
    found: dict[tuple[str, str], dict[int, set[str]]] = {}
    for path, item in openapi_document()["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            codes: dict[int, set[str]] = {}
            for status, response in op["responses"].items():
                for media in response.get("content", {}).values():
                    if "allOf" in media["schema"]:
                        codes[int(status)] = set(
                            media["schema"]["allOf"][1]["properties"]["code"]["enum"]
                        )
            found[(method.upper(), path)] = codes
    return found


def tree_codes() -> dict[int, set[str]]:
    statuses: dict[int, set[str]] = {}
    pending: list[type[PhsError]] = [PhsError]
    while pending:
        cls = pending.pop()
        statuses.setdefault(cls.status, set()).add(cls.code)
        pending.extend(cls.__subclasses__())
    return statuses


def check_answer(
    service: str,
    endpoint: Endpoint,
    status: int,
    media: str,
    raw: bytes,
    allowed: dict[int, set[str]],
) -> None:
    what = f"{service} {endpoint.method} {endpoint.path}"
    if endpoint.route in ("/admin/login", "/admin/logout") and media != "application/problem+json":
        # The page's form posts: the login form again (no admin token, no session),
        # or to the page; never a session.
        assert status in (303, 401), (what, status)
        return
    assert 400 <= status < 500, (what, status, raw[:300])
    assert media in ("application/problem+json", MSGPACK), (what, media)
    doc = json.loads(raw) if media != MSGPACK else msgpack.unpackb(raw)
    assert doc["status"] == status and doc["type"].endswith("/" + doc["code"]), (what, doc)
    assert doc["code"] in allowed.get(status, set()), (what, status, doc["code"], allowed)


# --- the tests ---------------------------------------------------------------------------------


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Sender]:
    loop = asyncio.new_event_loop()
    context = edge_system(tmp_path)
    system = loop.run_until_complete(context.__aenter__())
    try:
        tokens = {
            "admin": system.admin_token,
            "service": loop.run_until_complete(system.gateway.token("service")),
        }
        tablet = loop.run_until_complete(system.pair_tablet("tab-a"))
        loop.run_until_complete(system.create_items(["item-1"], "assigned"))
        yield Sender(system, loop, tokens, tablet)
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


@pytest.mark.parametrize(("service", "share"), [("gateway", 0.7), ("edge", 0.3)])
def test_bad_input_is_refused_and_changes_nothing(
    services: Sender, service: str, share: float, caplog: pytest.LogCaptureFixture
) -> None:
    system, loop = services.system, services.loop
    node = system.edge_settings.node_id
    if service == "gateway":
        from harness import NodeIdentity

        identity = NodeIdentity(node, "t1", ["f-001"], system.node_key)
        loop.run_until_complete(_seed_cohort(services))
        endpoints = gateway_endpoints(node, "item-1", "c-1", signed_report(identity))
        routes = write_routes(add_gateway_routes)
        watch = Watch(Path(system.gateway_settings.data_dir) / "gateway.db")
        promised = documented_codes()
    else:
        endpoints = edge_endpoints(services.tablet.device_id)
        routes = write_routes(add_edge_routes)
        watch = Watch(Path(system.edge_settings.database_path))
        promised = {}
    assert {(e.method, e.route) for e in endpoints} == routes, "a write route is not fuzzed"
    fallback = tree_codes()
    caplog.set_level(logging.ERROR, logger="gateway.http")
    examples = max(1, int(TOTAL * share))
    counts = {"sent": 0}
    started = time.monotonic()

    def fuzz(data: st.DataObject) -> None:
        endpoint = data.draw(st.sampled_from(endpoints))
        bad = data.draw(spoilt(endpoint))
        status, media, raw = services.send(service, endpoint, bad)
        what = f"{bad.how} -> {endpoint.method} {endpoint.path}: {status} {raw[:200]!r}"
        allowed = promised.get((endpoint.method, endpoint.route), fallback)
        check_answer(service, endpoint, status, media, raw, allowed)
        added: dict[str, int] = {}
        if endpoint.refusal_rows:
            added[endpoint.refusal_rows] = 1
        if endpoint.audited and status in (404, 422):
            added["risk_override_audit"] = 1
        watch.check(added, what)
        errors = [r for r in caplog.records if r.getMessage().startswith("unhandled error")]
        assert not errors, what
        counts["sent"] += 1

    rounds = math.ceil(examples / ROUND)
    third = math.ceil(rounds / 3)
    rss: dict[int, int] = {}  # requests sent -> live RSS
    for number in range(rounds):
        run = settings(
            max_examples=min(ROUND, examples - number * ROUND),
            deadline=None,
            database=None,
            phases=[Phase.generate],  # bounded: a failure is reported as found, unshrunk
            suppress_health_check=list(HealthCheck),
        )(given(data=st.data())(fuzz))
        seed(number)(run)()  # a fixed seed per run: CI repeats the same requests
        if number + 1 in (third, rounds):
            rss[counts["sent"]] = live_rss()
    elapsed = time.monotonic() - started
    (at_third, first), (at_end, last) = min(rss.items()), max(rss.items())
    growth = last - first
    print(
        f"\n{service}: {counts['sent']} bad requests over {len(endpoints)} write routes in "
        f"{elapsed:.1f} s; live RSS {first / 2**20:.1f} MiB after {at_third}, "
        f"{last / 2**20:.1f} MiB after {at_end}: growth {growth / 2**20:+.1f} MiB "
        f"(bound {RSS_GROWTH_BOUND / 2**20:.0f} MiB)"
    )
    assert growth < RSS_GROWTH_BOUND, "memory grows with bad requests"


async def _seed_cohort(services: Sender) -> None:
    resp = await services.system.gateway.client.post(
        f"{PREFIX}/cohorts",
        json={"cohortId": "c-1", "name": "Women", "definition": WOMEN},
        headers={"Authorization": f"Bearer {services.tokens['admin']}"},
    )
    assert resp.status == 201, await resp.text()

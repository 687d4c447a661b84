"""A live gateway on a real SQLite file, driven over loopback HTTP.

Tests talk to the gateway only through HTTP (and read its tables to prove
that a refused request changed nothing); time is an injected ``FakeClock``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import sqlalchemy as sa
from aiohttp.test_utils import TestClient

from canaries import patient_ref
from gateway.db.schema import audit_head, audit_log, metadata
from gateway.http import DATABASE
from gateway.registry import create_token, enroll_node
from shared.periods import parse_period
from shared.reports import FacilityReport, encode_report_payload
from shared.signing import KeyPair, authorization_header
from shared.values import format_timestamp

PREFIX = "/api/v1/population-health"
START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
AUDIT_TABLES = frozenset({audit_log.name, audit_head.name})  # left out of snapshot()


class FakeClock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class NodeIdentity:
    node_id: str
    tenant_id: str
    facility_ids: list[str]
    keypair: KeyPair = field(default_factory=KeyPair.generate)


@dataclass
class Gateway:
    client: TestClient  # type: ignore[type-arg]
    clock: FakeClock
    _batch_counter: int = 0

    @property
    def database(self) -> Any:
        return self.client.app[DATABASE]

    async def token(self, role: str, tenant: str = "t1") -> str:
        async with self.database.write() as conn:
            token, _ = await create_token(
                conn, tenant_id=tenant, role=role, label="test", now=self.clock()
            )
        return token

    async def enroll(
        self,
        node_id: str = "edge-01",
        tenant: str = "t1",
        facilities: tuple[str, ...] = ("f-001",),
        capabilities: tuple[str, ...] = (),
    ) -> NodeIdentity:
        node = NodeIdentity(node_id, tenant, list(facilities))
        async with self.database.write() as conn:
            await enroll_node(
                conn,
                node_id=node_id,
                tenant_id=tenant,
                facility_ids=facilities,
                public_key=node.keypair.public_key,
                capabilities=list(capabilities),
                now=self.clock(),
            )
        return node

    async def create_item(
        self, token: str, item_id: str, state: str, facility: str = "f-001", **extra: Any
    ) -> Any:
        """``POST …/outreach-items``; the item's patientRef is a canary unless given."""
        resp = await self.client.post(
            f"{PREFIX}/outreach-items",
            json={
                "id": item_id,
                "facilityId": facility,
                "state": state,
                **item_fields(item_id, extra),
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status == 201, await resp.text()
        return await resp.json()

    async def signed(
        self,
        node: NodeIdentity,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str = "application/msgpack",
        headers: Mapping[str, str] | None = None,
        ts: int | None = None,
        keypair: KeyPair | None = None,
    ) -> Any:
        stamp = int(self.clock().timestamp()) if ts is None else ts
        auth = authorization_header(
            keypair or node.keypair, node.node_id, method, path, body, stamp
        )
        all_headers = {"Authorization": auth, "Content-Type": content_type, **(headers or {})}
        return await self.client.request(method, path, data=body, headers=all_headers)

    def batch(
        self, node: NodeIdentity, items: list[dict[str, Any]], batch_id: str | None = None
    ) -> tuple[str, bytes]:
        if batch_id is None:
            self._batch_counter += 1
            batch_id = f"b-{node.node_id}-{self._batch_counter}"
        doc = {
            "v": 1,
            "batchId": batch_id,
            "nodeId": node.node_id,
            "createdAt": format_timestamp(self.clock()),
            "items": items,
        }
        return batch_id, msgpack.packb(doc, use_bin_type=True)

    async def post_batch(
        self, node: NodeIdentity, items: list[dict[str, Any]], batch_id: str | None = None
    ) -> Any:
        batch_id, body = self.batch(node, items, batch_id)
        return await self.signed(
            node,
            "POST",
            f"{PREFIX}/sync/batches",
            body,
            headers={"Idempotency-Key": batch_id, "Accept": "application/msgpack"},
        )

    async def table_counts(self) -> dict[str, int]:
        counts = {}
        async with self.database.read() as conn:
            for table in metadata.sorted_tables:
                counts[table.name] = (
                    await conn.execute(sa.select(sa.func.count()).select_from(table))
                ).scalar_one()
        return counts

    async def snapshot(self) -> dict[str, list[Any]]:
        """Every row of every table but the audit log's: proof that a refused
        request changed nothing. The audit tables are left out on purpose: a
        refusal of an authenticated caller is itself recorded there (one row,
        docs/audit.md), which tests/test_audit_log.py checks row by row."""
        rows = {}
        async with self.database.read() as conn:
            for table in metadata.sorted_tables:
                if table.name in AUDIT_TABLES:
                    continue
                result = await conn.execute(sa.select(table))
                rows[table.name] = sorted(repr(tuple(r)) for r in result)
        return rows


def item_fields(item_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """An outreach item's optional fields: a canary patientRef (tests/canaries.py)
    unless the caller gives one (``patientRef=None`` for an item without)."""
    return {"patientRef": patient_ref(item_id), **fields}


def transition(
    tid: str,
    item: str,
    frm: str,
    to: str,
    at: str = "2026-11-25T11:00:00.000Z",
    device: str = "tab-a",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "kind": "outreach.transition",
        "id": tid,
        "itemId": item,
        "from": frm,
        "to": to,
        "occurredAt": at,
        "deviceId": device,
        "actorId": "worker-1",
        **extra,
    }


def signed_report(
    node: NodeIdentity,
    period_type: str = "weekly",
    period_key: str = "2026-W47",
    facility: str | None = None,
    patients: int = 41,
    keypair: KeyPair | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    metrics = {
        "patientCount": patients,
        "encounterCount": 57,
        "screening": {"due": 20, "done": 15, "rate": 0.75},
        "immunization": {"due": 12, "given": 9, "rate": 0.75},
    }
    report = FacilityReport(
        tenant_id=overrides.get("tenant", node.tenant_id),
        facility_id=facility or node.facility_ids[0],
        device_id=overrides.get("device", node.node_id),
        period=parse_period(period_type, period_key),
        generated_at=START,
        metrics=metrics,
    )
    payload = encode_report_payload(report)
    return {
        "deviceId": node.node_id,
        "payload": payload,
        "signature": (keypair or node.keypair).sign(payload),
    }


def json_body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def bearer(token: str, **headers: str) -> dict[str, str]:
    """Headers of a bearer-token request (extra headers as keyword arguments)."""
    return {"Authorization": f"Bearer {token}", **headers}


PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code"}


async def assert_problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Check an RFC 9457 problem answer (JSON or msgpack) and return its document."""
    text = await resp.read()
    assert resp.status == status, text[:500]
    if resp.content_type == "application/msgpack":
        doc = msgpack.unpackb(text)
    else:
        assert resp.content_type == "application/problem+json", resp.content_type
        doc = json.loads(text)
    assert PROBLEM_MEMBERS <= set(doc), doc
    assert doc["status"] == status and doc["code"] == code, doc
    assert doc["type"].endswith("/" + code) and doc["title"] and doc["detail"], doc
    return doc


async def document(resp: Any) -> Any:
    """The decoded answer, whichever of JSON or msgpack it came in."""
    raw = await resp.read()
    if resp.content_type == "application/msgpack":
        return msgpack.unpackb(raw)
    return json.loads(raw)


def report_metrics(
    patients: int, encounters: int, screening: tuple[int, int], immunization: tuple[int, int]
) -> dict[str, Any]:
    """A report's metrics from its counts: ``screening`` is (due, done),
    ``immunization`` (due, given); rates as the edge computes them."""

    def rate(due: int, done: int) -> float | None:
        return None if due == 0 else round(done / due, 4)

    return {
        "patientCount": patients,
        "encounterCount": encounters,
        "screening": {"due": screening[0], "done": screening[1], "rate": rate(*screening)},
        "immunization": {
            "due": immunization[0],
            "given": immunization[1],
            "rate": rate(*immunization),
        },
    }


async def submit_report(
    gateway: Gateway,
    node: NodeIdentity,
    facility: str,
    period_key: str,
    metrics: dict[str, Any],
    period_type: str = "weekly",
) -> str:
    """A report signed by ``node``, through ``POST …/sync/facility-reports``
    as an edge node sends it; returns the stored reportId."""
    payload = encode_report_payload(
        FacilityReport(
            tenant_id=node.tenant_id,
            facility_id=facility,
            device_id=node.node_id,
            period=parse_period(period_type, period_key),
            generated_at=START,
            metrics=metrics,
        )
    )
    doc = {"deviceId": node.node_id, "payload": payload, "signature": node.keypair.sign(payload)}
    resp = await gateway.client.post(
        f"{PREFIX}/sync/facility-reports",
        data=msgpack.packb(doc),
        headers={"Content-Type": "application/msgpack"},
    )
    assert resp.status == 201, await resp.text()
    return str((await document(resp))["reportId"])


def token_principal(token: str) -> str:
    """The principal of a bearer token (``phs_<tokenId>_<secret>``)."""
    return "token:" + token.split("_")[1]

"""The device's client of the edge's tablet API (CONTRACT sections 2, 11).

It receives its ``aiohttp.ClientSession`` and clock from outside. Requests
are signed with the device key (``keyId`` = device id); on ``clock_skew``
the client learns its offset from the edge's ``Date`` header and retries
once. Pairing is the one unsigned call: its answer must carry the node's
public key, whose fingerprint must be the ``fp`` it states (and the one the
caller expects, if any) before anything is stored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import msgpack

from shared.discovery import DEFAULT_PATH
from shared.encoding import MSGPACK
from shared.errors import ValidationFailed
from shared.signing import KeyPair, authorization_header, fingerprint, public_key_from
from shared.values import identifier

log = logging.getLogger("fielddevice.client")

RESULT_STATUSES = frozenset({"applied", "noop", "duplicate", "rejected"})
#: Statuses of a ``POST …/sync/items`` result (docs/api.md).
ITEM_STATUSES = frozenset({"accepted", "duplicate", "rejected"})
SERVER_OPS = frozenset({"upsert", "delete"})


class EdgeUnreachable(Exception):
    """No answer from the edge (down, wrong address, network gone)."""


class EdgeRefused(Exception):
    """The edge answered with an error (a problem document)."""

    def __init__(self, status: int, code: str | None, detail: str) -> None:
        super().__init__(f"{status} {code or 'error'}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class PairingRefused(Exception):
    """The pairing answer does not prove the node's identity; nothing was stored."""


@dataclass(frozen=True)
class PairAnswer:
    node_id: str
    tenant_id: str
    facility_ids: tuple[str, ...]
    fingerprint: str
    public_key: bytes


def api_base(url: str) -> str:
    """``http://host:port`` or a full API base, as the API base (no trailing slash)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationFailed(f"edge URL {url!r} must be http://host:port[/path]")
    path = parts.path.rstrip("/") or DEFAULT_PATH
    return f"{parts.scheme}://{parts.netloc}{path}"


def origin_of(base: str) -> str:
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"


async def _exchange(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
) -> tuple[int, Any, float | None, bool]:
    """One request: status, decoded answer, the edge's Date (unix s), replayed."""
    try:
        async with session.request(method, url, data=body, headers=headers) as resp:
            raw = await resp.read()
            date = resp.headers.get("Date")
            document = msgpack.unpackb(raw, raw=False) if raw else None
            stamp = parsedate_to_datetime(date).timestamp() if date else None
            return resp.status, document, stamp, resp.headers.get("Idempotent-Replayed") == "true"
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise EdgeUnreachable(f"{method} {url}: {err or type(err).__name__}") from err
    except (msgpack.UnpackException, ValueError, TypeError) as err:
        raise EdgeUnreachable(f"{method} {url}: unreadable answer: {err}") from err


def _refused(status: int, document: Any) -> EdgeRefused:
    if isinstance(document, Mapping):
        return EdgeRefused(status, document.get("code"), str(document.get("detail", "")))
    return EdgeRefused(status, None, "no problem document")


async def pair(
    session: aiohttp.ClientSession,
    base_url: str,
    code: str,
    device_id: str,
    public_key: bytes,
    expect_fp: str | None = None,
) -> PairAnswer:
    """Redeem a pairing code; the answer is checked before the caller stores it."""
    body = msgpack.packb(
        {"pairingCode": code, "deviceId": device_id, "publicKey": public_key},
        use_bin_type=True,
    )
    headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
    status, doc, _, _ = await _exchange(
        session, "POST", f"{api_base(base_url)}/devices/pair", body, headers
    )
    if status != 201:
        raise _refused(status, doc)
    return check_pair_answer(doc, expect_fp)


def check_pair_answer(doc: Any, expect_fp: str | None) -> PairAnswer:
    if not isinstance(doc, Mapping):
        raise PairingRefused("the pairing answer is not an object")
    if "publicKey" not in doc:
        raise PairingRefused(
            "the pairing answer carries no publicKey: this edge node cannot be verified "
            "(it is older than docs/discovery.md); nothing was stored"
        )
    try:
        node_key = public_key_from(doc["publicKey"])
        facilities = doc.get("facilityIds")
        if not isinstance(facilities, list):
            raise ValidationFailed("facilityIds must be an array")
        answer = PairAnswer(
            node_id=identifier(doc.get("nodeId"), "nodeId"),
            tenant_id=identifier(doc.get("tenantId"), "tenantId"),
            facility_ids=tuple(identifier(f, "facilityIds") for f in facilities),
            fingerprint=str(doc.get("fp")),
            public_key=node_key,
        )
    except ValidationFailed as err:
        raise PairingRefused(f"the pairing answer is malformed: {err.detail}") from err
    actual = fingerprint(node_key)
    if answer.fingerprint != actual:
        raise PairingRefused(
            f"the edge states fp {answer.fingerprint} but its public key has fp {actual}: "
            "refused, nothing was stored"
        )
    if expect_fp is not None and actual != expect_fp.lower():
        raise PairingRefused(
            f"the edge's fp is {actual}, not the expected {expect_fp}: refused, nothing was stored"
        )
    return answer


class EdgeClient:
    """Signed requests of one device to one edge node's API base."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        device_id: str,
        keypair: KeyPair,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self.base_url = api_base(base_url)
        self._origin = origin_of(self.base_url)
        self._prefix = self.base_url[len(self._origin) :]
        self.device_id = device_id
        self._keypair = keypair
        self._clock = clock
        self.clock_offset = 0.0  # edge time minus ours, learned from clock_skew

    async def request(
        self, method: str, path: str, document: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any, bool]:
        """Status, answer and whether it was replayed; after one clock_skew answer
        the offset is corrected from the edge's Date header and the request resent."""
        body = b"" if document is None else msgpack.packb(document, use_bin_type=True)
        status, doc, date, replayed = await self._send(method, path, body, headers or {})
        if status == 401 and _code(doc) == "clock_skew" and date is not None:
            self.clock_offset = date - self._clock()
            status, doc, _, replayed = await self._send(method, path, body, headers or {})
        return status, doc, replayed

    async def _send(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Any, float | None, bool]:
        full_path = self._prefix + path
        ts = int(self._clock() + self.clock_offset)
        all_headers = {
            "Authorization": authorization_header(
                self._keypair, self.device_id, method, full_path, body, ts
            ),
            "Accept": MSGPACK,
            **headers,
        }
        if body:
            all_headers["Content-Type"] = MSGPACK
        return await _exchange(self._session, method, self._origin + full_path, body, all_headers)

    async def push(
        self, field: str, records: Sequence[Mapping[str, Any]], idempotency_key: str
    ) -> list[dict[str, Any]]:
        """``POST …/sync/outreach`` (field ``transitions``) or ``…/sync/encounters``."""
        resource = "outreach" if field == "transitions" else "encounters"
        status, doc, _ = await self.request(
            "POST",
            f"/sync/{resource}",
            {field: list(records)},
            {"Idempotency-Key": idempotency_key},
        )
        if status != 200:
            raise _refused(status, doc)
        return results_of(doc, {str(r["id"]) for r in records})

    async def items(self, since: str, limit: int = 1000) -> tuple[list[dict[str, Any]], str, bool]:
        """One page of ``GET …/outreach-items``: items, next cursor, more."""
        query = urlencode({"since": since, "limit": limit})
        status, doc, _ = await self.request("GET", f"/outreach-items?{query}")
        if status != 200:
            raise _refused(status, doc)
        if not isinstance(doc, Mapping) or not isinstance(doc.get("items"), list):
            raise EdgeRefused(status, None, "the items answer has no items list")
        items = [dict(i) for i in doc["items"] if isinstance(i, Mapping) and "id" in i]
        return items, str(doc.get("cursor", since)), bool(doc.get("more"))

    async def server_data(
        self, since: str, limit: int = 1000
    ) -> tuple[list[dict[str, Any]], str, bool]:
        """One page of ``GET …/server-data``: records, next cursor, more. A
        record this device cannot read (no aggregate or id, an op other than
        upsert/delete, no integer seq) is skipped and logged, as the edge
        skips feed entries it cannot keep."""
        query = urlencode({"since": since, "limit": limit})
        status, doc, _ = await self.request("GET", f"/server-data?{query}")
        if status != 200:
            raise _refused(status, doc)
        if not isinstance(doc, Mapping) or not isinstance(doc.get("records"), list):
            raise EdgeRefused(status, None, "the server-data answer has no records list")
        records = [r for r in (server_record(obj) for obj in doc["records"]) if r is not None]
        return records, str(doc.get("cursor", since)), bool(doc.get("more"))

    async def push_items(
        self, items: Sequence[Mapping[str, Any]], idempotency_key: str
    ) -> list[dict[str, Any]]:
        """``POST …/sync/items``: one result per item, each checked."""
        status, doc, _ = await self.request(
            "POST", "/sync/items", {"items": list(items)}, {"Idempotency-Key": idempotency_key}
        )
        if status != 200:
            raise _refused(status, doc)
        results = doc.get("results") if isinstance(doc, Mapping) else None
        if not isinstance(results, list):
            raise EdgeRefused(200, None, "the answer has no results list")
        try:
            out = [parse_item_result(result) for result in results]
        except ValidationFailed as err:
            raise EdgeRefused(200, None, f"a result is malformed: {err.detail}") from err
        unexpected = {r["id"] for r in out} - {str(i["id"]) for i in items}
        if unexpected:
            raise EdgeRefused(200, None, f"results for items not sent: {sorted(unexpected)[:3]}")
        return out


def server_record(obj: Any) -> dict[str, Any] | None:
    """One ``{aggregate, id, op, data, seq}`` record as given, or None (logged)."""
    if not isinstance(obj, Mapping):
        log.warning("server-data record that is not an object skipped")
        return None
    aggregate, entity_id, op, seq = (
        obj.get("aggregate"),
        obj.get("id"),
        obj.get("op"),
        obj.get("seq"),
    )
    data = obj.get("data")
    readable = (
        isinstance(aggregate, str)
        and aggregate
        and isinstance(entity_id, str)
        and entity_id
        and op in SERVER_OPS
        and isinstance(seq, int)
        and not isinstance(seq, bool)
    )
    if readable:
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError):
            readable = False
    if not readable:
        # Never the record itself: its data may be a registry entry (PHI).
        log.warning(
            "server-data record %.60r/%.130r (seq %.40r) skipped", aggregate, entity_id, seq
        )
        return None
    return {"aggregate": aggregate, "id": entity_id, "op": op, "data": data, "seq": seq}


def parse_item_result(obj: Any, where: str = "result") -> dict[str, Any]:
    """One ``POST …/sync/items`` result: ``{id, kind, status, code?, detail?,
    errors?, ...}``, kept whole once its id, status and code check."""
    if not isinstance(obj, Mapping):
        raise ValidationFailed(f"{where} must be an object")
    status = obj.get("status")
    if not isinstance(status, str) or status not in ITEM_STATUSES:
        raise ValidationFailed(f"{where}: status must be one of {', '.join(sorted(ITEM_STATUSES))}")
    result = {str(k): v for k, v in obj.items()}
    result["id"] = identifier(obj.get("id"), f"{where}.id")
    code = obj.get("code")
    if code is not None and (not isinstance(code, str) or len(code) > 64):
        raise ValidationFailed(f"{where}: code must be a short string")
    errors = obj.get("errors")
    if errors is not None and not (
        isinstance(errors, list)
        and all(
            isinstance(e, Mapping)
            and isinstance(e.get("path"), str)
            and isinstance(e.get("message"), str)
            for e in errors
        )
    ):
        raise ValidationFailed(f"{where}: errors must be a list of {{path, message}}")
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValidationFailed(f"{where} is not plain JSON") from err
    return result


def results_of(doc: Any, expected: set[str] | None = None) -> list[dict[str, Any]]:
    """The per-record results of a push answer or an acknowledgement, checked."""
    results = doc.get("results") if isinstance(doc, Mapping) else None
    if not isinstance(results, list):
        raise EdgeRefused(200, None, "the answer has no results list")
    try:
        out = [parse_result(result) for result in results]
    except ValidationFailed as err:
        raise EdgeRefused(200, None, f"a result is malformed: {err.detail}") from err
    if expected is not None:
        unexpected = {r["id"] for r in out} - expected
        if unexpected:
            raise EdgeRefused(200, None, f"results for records not sent: {sorted(unexpected)[:3]}")
    return out


def parse_result(obj: Any, where: str = "result") -> dict[str, Any]:
    """One ``{id, status, code?, state?}`` result; ``ValidationFailed`` if malformed."""
    if not isinstance(obj, Mapping):
        raise ValidationFailed(f"{where} must be an object")
    status = obj.get("status")
    if not isinstance(status, str) or status not in RESULT_STATUSES:
        raise ValidationFailed(
            f"{where}: status must be one of {', '.join(sorted(RESULT_STATUSES))}"
        )
    result: dict[str, Any] = {"id": identifier(obj.get("id"), f"{where}.id"), "status": status}
    for name in ("code", "state"):
        value = obj.get(name)
        if value is not None:
            if not isinstance(value, str) or len(value) > 64:
                raise ValidationFailed(f"{where}: {name} must be a short string")
            result[name] = value
    return result


def _code(doc: Any) -> str | None:
    return doc.get("code") if isinstance(doc, Mapping) else None

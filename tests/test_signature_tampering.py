"""Tampered and replayed signed requests change nothing (issue 8, signatures).

* Random single-bit flips in a signed batch's body, its signature or its key
  id, and in a signed facility report's payload, signature or device id: every
  one is refused (401 ``bad_signature`` or ``unknown_key``; 422 when a flipped
  device id is no longer an identifier) and the store is row-for-row what it
  was. Key ids one bit away from the
  signer's name other enrolled nodes, so a flipped key id meets a real key.
* Every valid request captured in a run, replayed many times: the answers are
  the first answer again (idempotent replays) and nothing changes; replayed
  after a 25-hour clock jump (past the signature window and the 24 h
  idempotency TTL) they are refused with 401 ``clock_skew``, nothing changes.

The flips are seeded; a failure prints the seed and the flip that got through.
``PHS_TAMPER_FLIPS`` sets how many (10,000 on SQLite, the CI default; a tenth
of that on PostgreSQL, where each refusal still reads the node's key).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
from dataclasses import dataclass
from typing import Any

import msgpack

from gateway.http import PREFIX
from harness import Gateway, NodeIdentity, signed_report, transition
from shared.signing import authorization_header
from stores import SQLITE

FLIPS = int(os.environ.get("PHS_TAMPER_FLIPS", "10000"))
CONCURRENCY = 32  # requests in flight at once
BATCH_PATH = f"{PREFIX}/sync/batches"
REPORT_PATH = f"{PREFIX}/sync/facility-reports"


@dataclass(frozen=True)
class Sent:
    """One request exactly as it went on the wire."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def _printable_flips(text: str) -> list[str]:
    """Every one-bit change of ``text`` that is still a printable header value."""
    out = []
    for bit in range(len(text) * 7):  # 7 bits: an 8th would leave ASCII
        changed = _flip(text.encode("ascii"), bit + bit // 7).decode("latin-1")
        if changed.isprintable() and " " not in changed and "," not in changed:
            out.append(changed)
    return out


async def _nodes(gateway: Gateway) -> tuple[NodeIdentity, list[NodeIdentity]]:
    """The signer, and enrolled nodes whose ids are one bit from its own."""
    signer = await gateway.enroll("edge-01")
    neighbours = [
        await gateway.enroll(node_id)
        for node_id in ("edge-00", "edge-03", "edge-05", "edge-11", "edge-21")
    ]
    return signer, neighbours


def _signed_batch(gateway: Gateway, node: NodeIdentity, n: int) -> Sent:
    items = [transition(f"tr-{n}-{i}", f"item-{i}", "assigned", "in_progress") for i in range(3)]
    batch_id, body = gateway.batch(node, items, batch_id=f"b-tamper-{n}")
    stamp = int(gateway.clock().timestamp())
    headers = {
        "Authorization": authorization_header(
            node.keypair, node.node_id, "POST", BATCH_PATH, body, stamp
        ),
        "Content-Type": "application/msgpack",
        "Idempotency-Key": batch_id,
    }
    return Sent("POST", BATCH_PATH, headers, body)


def _tampered_batch(original: Sent, rng: random.Random) -> tuple[str, Sent]:
    where = rng.choice(("payload", "signature", "key id"))
    auth = original.headers["Authorization"]
    if where == "payload":
        bit = rng.randrange(len(original.body) * 8)
        return f"payload bit {bit}", Sent(
            "POST", BATCH_PATH, original.headers, _flip(original.body, bit)
        )
    scheme, _, params = auth.partition(" ")
    fields = dict(part.split("=", 1) for part in params.split(","))
    if where == "signature":
        raw = base64.b64decode(fields["sig"])
        bit = rng.randrange(len(raw) * 8)
        fields["sig"] = base64.b64encode(_flip(raw, bit)).decode("ascii")
        what = f"signature bit {bit}"
    else:
        fields["keyId"] = rng.choice(_printable_flips(fields["keyId"]))
        what = f"key id {fields['keyId']!r}"
    header = f"{scheme} " + ",".join(f"{k}={v}" for k, v in fields.items())
    return what, Sent(
        "POST", BATCH_PATH, {**original.headers, "Authorization": header}, original.body
    )


def _tampered_report(report: dict[str, Any], rng: random.Random) -> tuple[str, Sent]:
    where = rng.choice(("payload", "signature", "device id"))
    doc = dict(report)
    if where == "device id":
        doc["deviceId"] = rng.choice(_printable_flips(doc["deviceId"]))
        what = f"device id {doc['deviceId']!r}"
    else:
        field = "payload" if where == "payload" else "signature"
        bit = rng.randrange(len(doc[field]) * 8)
        doc[field] = _flip(doc[field], bit)
        what = f"{field} bit {bit}"
    body = msgpack.packb(doc, use_bin_type=True)
    return what, Sent("POST", REPORT_PATH, {"Content-Type": "application/msgpack"}, body)


async def _send(gateway: Gateway, sent: Sent) -> tuple[int, Any]:
    resp = await gateway.client.request(
        sent.method, sent.path, data=sent.body, headers=sent.headers
    )
    body = await resp.read()
    if resp.content_type == "application/problem+json":
        return resp.status, (await resp.json())["code"]
    if resp.status >= 400 and resp.content_type == "application/msgpack":
        return resp.status, msgpack.unpackb(body)["code"]  # the problem, in msgpack
    return resp.status, body


async def test_random_bit_flips_are_all_refused_and_change_nothing(
    gateway: Gateway, store: str
) -> None:
    seed = random.randrange(2**32)
    print(f"tamper seed {seed}")  # shown by pytest when the test fails
    rng = random.Random(seed)
    flips = FLIPS if store == SQLITE else max(1, FLIPS // 10)
    admin = await gateway.token("admin")
    signer, _ = await _nodes(gateway)
    for i in range(3):
        await gateway.create_item(admin, f"item-{i}", "assigned")
    originals = [_signed_batch(gateway, signer, n) for n in range(8)]
    reports = [signed_report(signer, period_key=f"2026-W{40 + n}") for n in range(4)]
    before = await gateway.snapshot()

    refused: dict[str, int] = {}
    queue = [
        _tampered_batch(rng.choice(originals), rng)
        if rng.random() < 0.75
        else _tampered_report(rng.choice(reports), rng)
        for _ in range(flips)
    ]

    async def worker() -> None:
        while queue:
            what, sent = queue.pop()
            status, code = await _send(gateway, sent)
            expected = {
                BATCH_PATH: {(401, "bad_signature"), (401, "unknown_key")},
                # A flipped device id that is no longer an identifier fails validation.
                REPORT_PATH: {
                    (401, "bad_signature"),
                    (401, "unknown_key"),
                    (422, "validation_failed"),
                },
            }[sent.path]
            assert (status, code) in expected, f"seed {seed}: {what} got {status} {code!r}"
            refused[f"{status} {code}"] = refused.get(f"{status} {code}", 0) + 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), 600)
    assert sum(refused.values()) == flips
    assert await gateway.snapshot() == before, f"seed {seed}: a tampered request changed the store"
    # And the untampered originals still go through: the refusals were the flips.
    for sent in originals[:2]:
        status, _ = await _send(gateway, sent)
        assert status == 200


async def test_captured_requests_replayed_change_nothing_and_expire(gateway: Gateway) -> None:
    admin = await gateway.token("admin")
    signer, _ = await _nodes(gateway)
    for i in range(3):
        await gateway.create_item(admin, f"item-{i}", "assigned")
    captured = [_signed_batch(gateway, signer, n) for n in range(4)]
    report = signed_report(signer)
    captured.append(
        Sent(
            "POST",
            REPORT_PATH,
            {"Content-Type": "application/msgpack"},
            msgpack.packb(report, use_bin_type=True),
        )
    )
    first = [await _send(gateway, sent) for sent in captured]
    assert [status for status, _ in first[:4]] == [200] * 4
    assert first[4][0] == 201
    after_first = await gateway.snapshot()

    replays = await asyncio.gather(*(_send(gateway, sent) for sent in captured * 25))
    for i, (status, body) in enumerate(replays):
        original_status, original_body = first[i % len(captured)]
        if captured[i % len(captured)].path == BATCH_PATH:
            assert (status, body) == (original_status, original_body)  # the stored answer
        else:
            assert status == 200  # the same report again: deduplicated, not stored twice
    assert await gateway.snapshot() == after_first

    gateway.clock.advance(25 * 3600)
    late = [await _send(gateway, sent) for sent in captured[:4]]
    assert late == [(401, "clock_skew")] * 4
    assert await gateway.snapshot() == after_first

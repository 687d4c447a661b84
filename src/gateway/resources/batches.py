"""``POST …/sync/batches``: an edge node's signed msgpack batch (CONTRACT section 7).

The whole batch is checked structurally first (a malformed one changes
nothing); then every item is applied in order in one transaction, and the
answer carries one result per item with the authoritative state after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit
from gateway.auth import authenticate_node
from gateway.cohorts import apply_draft_item
from gateway.http import LIMITS, decode_document, now, read_body
from gateway.idempotency import Reply, run_write
from gateway.outreach import Scope, Source, apply_transitions, lock_items
from gateway.refusals import RefusedWrite, record_refused
from gateway.registry import Node
from gateway.reports import store_report, verified_report
from gateway.resources.metrics import record_batch
from gateway.risk_scores import Origin, submit_override
from shared.errors import ItemCode, OutOfScope, PhsError, ValidationFailed
from shared.fsm import Transition
from shared.idempotency import validate_key
from shared.policy import SERVER_AUTHORITATIVE_KINDS, policy_for
from shared.risk import RISK_OVERRIDE_KIND
from shared.wire import BatchItem, CohortDraft, OtherItem, ReportSubmission, parse_batch


async def submit(request: web.Request) -> web.Response:
    body = await read_body(request)
    node = await authenticate_node(request, body)  # before decoding: callers are unknown
    doc = decode_document(request, body)
    batch = parse_batch(doc, request.app[LIMITS])
    raw_items = doc["items"]  # as sent, one per parsed item: kinds parsed here read them
    if batch.node_id != node.node_id:
        raise OutOfScope(f"batch nodeId {batch.node_id} is not the signing node")
    # A malformed key is a 400 bad_idempotency_key, as on every write endpoint.
    if validate_key(request.headers.get("Idempotency-Key")) != batch.batch_id:
        raise ValidationFailed("Idempotency-Key must be the batchId", field="Idempotency-Key")

    written: list[list[dict[str, Any]]] = []  # the results of this request's own write

    async def write(conn: AsyncConnection) -> Reply:
        results = await apply_batch(conn, node, batch.batch_id, batch.items, raw_items, request)
        moment = now(request)
        entries = audit.batch_entries(audit.Actor.of_node(node), batch.items, results, moment)
        await audit.append(conn, entries, moment)  # last: the chain head's lock until commit
        written.append(results)
        return Reply(200, {"batchId": batch.batch_id, "results": results})

    response = await run_write(request, f"node:{node.node_id}", body, write)
    if written:  # committed (run_write raises otherwise); a replayed answer is not counted
        record_batch(request, batch.items, written[-1])
    return response


async def apply_batch(
    conn: AsyncConnection,
    node: Node,
    batch_id: str,
    items: Sequence[BatchItem],
    raw_items: Sequence[Any],
    request: web.Request,
) -> list[dict[str, Any]]:
    moment = now(request)
    transitions = [item.item_id for item in items if isinstance(item, Transition)]
    if transitions and len(transitions) < len(items):
        # Other items split the transitions into several runs, each locking its
        # items: lock them all first, in id order, as a batch of one run does.
        await lock_items(conn, transitions)
    scope = Scope(node.tenant_id, node.facility_ids)
    source = Source(f"node:{node.node_id}", batch_id)
    results: list[dict[str, Any]] = []
    run: list[Transition] = []  # consecutive transitions are applied as one set

    async def flush() -> None:
        if run:
            results.extend(await apply_transitions(conn, run, scope, source, moment))
            run.clear()

    for index, item in enumerate(items):
        if isinstance(item, Transition):
            run.append(item)
            continue
        await flush()
        if isinstance(item, ReportSubmission):
            results.append(await _report_result(conn, node, item, request))
        elif isinstance(item, CohortDraft):
            result = await apply_draft_item(conn, node.tenant_id, node.node_id, item, moment)
            if result["status"] == "rejected":  # nothing else keeps a refused draft
                await _record_rejected(conn, node, batch_id, index, "cohort.draft", result, moment)
            results.append(result)
        elif isinstance(item, OtherItem):
            if item.kind == RISK_OVERRIDE_KIND:
                origin = Origin(f"node:{node.node_id}", batch_id, node, index)
                result, _ = await submit_override(
                    conn, node.tenant_id, raw_items[index], origin, moment
                )
                results.append(result)
            else:
                results.append(await _refused_kind(conn, node, batch_id, index, item, moment))
    await flush()
    return results


async def _report_result(
    conn: AsyncConnection, node: Node, item: ReportSubmission, request: web.Request
) -> dict[str, Any]:
    try:
        report = await verified_report(conn, item, now(request), node.tenant_id)
    except PhsError as err:
        return {"id": item.id, "status": "rejected", "code": err.code, "detail": err.detail}
    outcome = await store_report(conn, item, report, now(request))
    result: dict[str, Any] = {"id": item.id, "reportId": outcome.report_id}
    if outcome.status == "conflict":
        result.update(
            status="rejected",
            code=ItemCode.REPORT_CONFLICT.value,
            detail="a different report for this facility, period and device is already stored",
        )
    else:
        result["status"] = "applied" if outcome.status == "merged" else "duplicate"
    return result


async def _refused_kind(
    conn: AsyncConnection,
    node: Node,
    batch_id: str,
    index: int,
    item: OtherItem,
    moment: datetime,
) -> dict[str, Any]:
    """An unknown kind, or one nodes may not write: either is recorded."""
    policy = policy_for(item.kind)
    if item.kind in SERVER_AUTHORITATIVE_KINDS:
        code, detail = (
            ItemCode.POLICY_SERVER_AUTHORITATIVE,
            (f"{item.kind} is server-authoritative; nodes may not write it"),
        )
    elif policy is not None:
        code, detail = (
            ItemCode.POLICY_SERVER_AUTHORITATIVE,
            (f"{item.kind} is not accepted from edge nodes by this gateway"),
        )
    else:
        code, detail = ItemCode.UNKNOWN_KIND, f"unknown kind {item.kind}"
    result = {"id": item.id, "status": "rejected", "code": code.value, "detail": detail}
    await _record_rejected(conn, node, batch_id, index, item.kind, result, moment)
    return result


async def _record_rejected(
    conn: AsyncConnection,
    node: Node,
    batch_id: str,
    index: int,
    kind: str,
    result: dict[str, Any],
    moment: datetime,
) -> None:
    """Keep a refused item no other table records (CONTRACT section 3: nothing is
    silently dropped), in the batch's transaction."""
    refused = RefusedWrite(
        tenant_id=node.tenant_id,
        principal=f"node:{node.node_id}",
        kind=kind[:64],
        record_id=str(result["id"]),
        detail=str(result.get("detail", "")),
        batch_id=batch_id,
        item_index=index,
        code=str(result["code"]),
    )
    await record_refused(conn, refused, moment)

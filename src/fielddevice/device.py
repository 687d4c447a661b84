"""One field device: its key, its store, and what it does with them.

Recording validates a record with the same readers the edge uses
(``shared.wire``, ``shared.fsm``, ``shared.reports``, ``shared.cohorts``)
and queues it. Syncing pushes the queue to the edge in signed, idempotent
pushes and marks each record synced with the edge's result, sends the queued
cohort drafts (``POST …/sync/items``) the same way, then pulls the outreach
items and the server data (``GET …/server-data``), each from its cursor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgpack

from edgenode.keys import create_key, load_key
from fielddevice.client import EdgeClient, EdgeUnreachable, PairAnswer, PairingRefused, pair
from fielddevice.finder import Plan, reach
from fielddevice.settings import FieldSettings
from fielddevice.store import FIELD_OF, Draft, FieldStore, Kind, Pairing, Record
from shared.cohorts import validate_cohort
from shared.errors import AlreadyExists, CohortInvalid, OutOfScope, ValidationFailed
from shared.fsm import Role, is_allowed
from shared.reports import parse_encounter
from shared.signing import KeyPair, fingerprint
from shared.values import format_timestamp, identifier
from shared.wire import COHORT_DRAFT_KIND, parse_cohort_draft, parse_transition

log = logging.getLogger("fielddevice")
PUSH_CHUNK = 500
ITEMS_PAGE = 1000
SERVER_DATA_PAGE = 1000

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class PushSummary:
    sent: dict[str, int] = field(default_factory=lambda: {"transitions": 0, "encounters": 0})
    results: Counter[str] = field(default_factory=Counter)
    cleared: int = 0

    def describe(self) -> dict[str, Any]:
        return {"sent": dict(self.sent), "results": dict(self.results), "cleared": self.cleared}


@dataclass
class DraftSummary:
    sent: int = 0
    results: Counter[str] = field(default_factory=Counter)
    cleared: int = 0

    def describe(self) -> dict[str, Any]:
        return {"sent": self.sent, "results": dict(self.results), "cleared": self.cleared}


def push_key(body: bytes) -> str:
    """The Idempotency-Key of a push: a resend of the same records replays."""
    return "push-" + hashlib.sha256(body).hexdigest()[:40]


class FieldDevice:
    def __init__(
        self,
        settings: FieldSettings,
        store: FieldStore,
        keypair: KeyPair,
        clock: Clock = system_clock,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keypair = keypair
        self.clock = clock
        self._listeners: list[Callable[[], None]] = []

    @property
    def device_id(self) -> str:
        return self.settings.device_id

    @classmethod
    async def open(
        cls, settings: FieldSettings, clock: Clock = system_clock, create: bool = False
    ) -> FieldDevice:
        """Open the device's store and key (``create``: make the key if it is missing)."""
        if not settings.device_id:
            raise ValidationFailed(
                f"no device configured in {settings.data_dir}: run phs-field init"
            )
        if not settings.key_path.exists():
            if not create:
                raise ValidationFailed(f"no device key in {settings.data_dir}: run phs-field init")
            keypair = create_key(settings.key_path)
        else:
            keypair = load_key(settings.key_path)
        store = await FieldStore(settings.database_path).open()
        return cls(settings, store, keypair, clock)

    async def close(self) -> None:
        await self.store.close()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever records are added or marked synced here."""
        self._listeners.append(listener)

    def changed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- recording -----------------------------------------------------------------

    async def record_transition(
        self,
        item_id: str,
        from_state: str,
        to_state: str,
        at: datetime | None = None,
        actor_id: str | None = None,
        record_id: str | None = None,
    ) -> Record:
        doc = {
            "id": record_id or f"t-{uuid.uuid4().hex}",
            "itemId": item_id,
            "from": from_state,
            "to": to_state,
            "occurredAt": format_timestamp(at or self.clock()),
            "deviceId": self.device_id,
            "actorId": actor_id or self.device_id,
        }
        transition = parse_transition(doc)
        edge = transition.edge
        if edge is None or not is_allowed(edge, Role.WORKER):
            raise ValidationFailed(
                f"{from_state} -> {to_state} is not a field worker's transition (CONTRACT 5)"
            )
        record = await self.store.add_record("transition", transition.id, doc, self.clock())
        self.changed()
        return record

    async def record_encounter(self, doc: Mapping[str, Any]) -> Record:
        encounter = parse_encounter(doc)
        pairing = await self.store.pairing()
        if pairing is not None and encounter.facility_id not in pairing.facility_ids:
            raise OutOfScope(
                f"facility {encounter.facility_id} is not served by node {pairing.node_id} "
                f"({', '.join(pairing.facility_ids)})"
            )
        record = await self.store.add_record("encounter", encounter.id, doc, self.clock())
        self.changed()
        return record

    async def draft_cohort(
        self, cohort_id: str, definition: Any, draft_id: str | None = None
    ) -> Draft:
        """Queue a ``cohort.draft`` for ``cohort_id``: its envelope read as the
        edge and the gateway read it, its definition validated with
        ``shared.cohorts`` (``CohortInvalid`` carrying every error's path)."""
        item = {
            "kind": COHORT_DRAFT_KIND,
            "id": draft_id or f"d-{uuid.uuid4().hex}",
            "cohortId": cohort_id,
            "definition": definition,
        }
        draft = parse_cohort_draft(item)
        errors = validate_cohort(definition)
        if errors:
            listed = "; ".join(f"{e.path or '/'}: {e.message}" for e in errors)
            raise CohortInvalid(
                f"invalid cohort definition ({len(errors)} errors): {listed}"
                if len(errors) > 1
                else f"invalid cohort definition: {listed}",
                errors=[e.to_wire() for e in errors],
            )
        stored = await self.store.add_draft(draft.id, draft.cohort_id, definition, self.clock())
        self.changed()
        return stored

    # -- pairing -----------------------------------------------------------------------

    async def pair(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        code: str,
        expect_fp: str | None = None,
        advert_fp: str | None = None,
        advert_node: str | None = None,
    ) -> Pairing:
        """Redeem ``code`` at ``base_url``; store the pairing once the node's
        key, its ``fp`` (and the advert's, if it was discovered) agree."""
        identifier(self.device_id, "device id")
        answer = await pair(
            session, base_url, code, self.device_id, self.keypair.public_key, expect_fp
        )
        check_advert(answer, advert_node, advert_fp)
        existing = await self.store.pairing()
        if existing is not None and (
            existing.node_id != answer.node_id or existing.fingerprint != answer.fingerprint
        ):
            raise AlreadyExists(
                f"this device is paired with node {existing.node_id} (fp {existing.fingerprint}); "
                f"refusing to re-pair with {answer.node_id} (fp {answer.fingerprint}): "
                "start over with a new data directory"
            )
        pairing = Pairing(
            node_id=answer.node_id,
            tenant_id=answer.tenant_id,
            facility_ids=answer.facility_ids,
            fingerprint=answer.fingerprint,
            node_public_key=answer.public_key,
            edge_url=base_url,
            paired_at=format_timestamp(self.clock()),
        )
        await self.store.save_pairing(pairing)
        log.info("paired with node %s (fp %s)", pairing.node_id, pairing.fingerprint)
        return pairing

    # -- sync -------------------------------------------------------------------------------

    def client(self, session: aiohttp.ClientSession, base_url: str) -> EdgeClient:
        return EdgeClient(
            session,
            base_url,
            self.device_id,
            self.keypair,
            clock=lambda: self.clock().timestamp(),
        )

    async def push(self, client: EdgeClient) -> PushSummary:
        """Push every unsynced record, oldest first, in pushes of at most PUSH_CHUNK."""
        summary = PushSummary()
        while True:
            records, _ = await self.store.pending(PUSH_CHUNK)
            if not records:
                return summary
            cleared_before = summary.cleared
            by_kind: dict[Kind, list[Record]] = {"transition": [], "encounter": []}
            for record in records:
                by_kind[record.kind].append(record)
            for kind, group in by_kind.items():
                if not group:
                    continue
                name = FIELD_OF[kind]
                docs = [r.body for r in group]
                key = push_key(msgpack.packb({name: docs}, use_bin_type=True))
                results = await client.push(name, docs, key)
                summary.sent[name] += len(docs)
                summary.results.update(r["status"] for r in results)
                summary.cleared += await self.store.mark_synced(
                    {kind: results}, "push", self.clock()
                )
                self.changed()
            if summary.cleared == cleared_before:
                # Nothing answered for what was sent: stop rather than loop.
                log.warning("the edge answered no result for %d pushed records", len(records))
                return summary

    async def push_drafts(self, client: EdgeClient) -> DraftSummary:
        """Send every unsent cohort draft, oldest first, PUSH_CHUNK at a time,
        and keep each result (accepted, duplicate, or rejected with its code
        and errors)."""
        summary = DraftSummary()
        while True:
            drafts = await self.store.pending_drafts(PUSH_CHUNK)
            if not drafts:
                return summary
            items = [d.item() for d in drafts]
            key = push_key(msgpack.packb({"items": items}, use_bin_type=True))
            results = await client.push_items(items, key)
            summary.sent += len(items)
            summary.results.update(r["status"] for r in results)
            cleared = await self.store.mark_drafts_synced(results, self.clock())
            summary.cleared += cleared
            self.changed()
            if not cleared:
                log.warning("the edge answered no result for %d cohort drafts", len(items))
                return summary

    async def pull(self, client: EdgeClient) -> int:
        """Pull every outreach item changed since the stored cursor."""
        since = await self.store.state("items_cursor") or "0"
        pulled = 0
        while True:
            items, cursor, more = await client.items(since, ITEMS_PAGE)
            await self.store.save_items(items, cursor, self.clock())
            pulled += len(items)
            if not more or cursor == since:
                return pulled
            since = cursor

    async def pull_server_data(self, client: EdgeClient) -> int:
        """Pull every server record changed since the stored cursor, page by
        page, each page applied with its cursor in one transaction."""
        since = await self.store.state("server_data_cursor") or "0"
        pulled = 0
        while True:
            records, cursor, more = await client.server_data(since, SERVER_DATA_PAGE)
            pulled += await self.store.save_server_records(records, cursor, self.clock())
            if not more or cursor == since:
                return pulled
            since = cursor

    async def sync(self, session: aiohttp.ClientSession, plan: Plan) -> dict[str, Any]:
        """Reach the planned edge, push everything pending, send the cohort
        drafts, pull the items, then the server data.

        The summary is stored as the last sync; EdgeUnreachable / EdgeRefused
        propagate after what was done so far is kept (records already answered
        stay synced)."""
        base = await reach(session, plan.candidates)
        if base is None:
            raise EdgeUnreachable(f"no answer from the edge at {', '.join(plan.candidates)}")
        client = self.client(session, base)
        pushed = await self.push(client)
        drafts = await self.push_drafts(client)
        pulled = await self.pull(client)
        pulled_server = await self.pull_server_data(client)
        summary = {
            "at": format_timestamp(self.clock()),
            "edgeUrl": base,
            "source": plan.source,
            "pushed": pushed.describe(),
            "drafts": drafts.describe(),
            "pulledItems": pulled,
            "pulledServerRecords": pulled_server,
            "clockOffsetSeconds": round(client.clock_offset),
        }
        await self.store.set_state("last_sync", json.dumps(summary, sort_keys=True))
        return summary

    async def status(self) -> dict[str, Any]:
        pairing = await self.store.pairing()
        counts = await self.store.sync_counts()
        last_sync = await self.store.state("last_sync")
        last_gather = await self.store.state("last_gather")
        return {
            "deviceId": self.device_id,
            "fp": fingerprint(self.keypair.public_key),
            "paired": pairing is not None,
            "pairing": None if pairing is None else pairing.describe(),
            "pending": await self.store.pending_counts(),
            **counts,
            "items": len(await self.store.items()),
            "drafts": await self.store.draft_counts(),
            "serverData": await self.store.server_record_counts(),
            "lastSync": None if last_sync is None else json.loads(last_sync),
            "lastGather": None if last_gather is None else json.loads(last_gather),
        }


def check_advert(answer: PairAnswer, advert_node: str | None, advert_fp: str | None) -> None:
    """A discovered edge must answer as the node its advert named."""
    if advert_node is not None and answer.node_id != advert_node:
        raise PairingRefused(
            f"the advert named node {advert_node} but the edge answered as {answer.node_id}"
        )
    if advert_fp is not None and answer.fingerprint != advert_fp:
        raise PairingRefused(
            f"the advert's fp {advert_fp} is not the fp {answer.fingerprint} of the key the "
            "edge answered with: refused, nothing was stored"
        )

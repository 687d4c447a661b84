"""Gather a paired tablet's unsynced records from its own API (docs/discovery.md).

For a device in the registry (``edgenode.devices_seen``) that is present,
paired and advertises ``pending > 0``, one *round* is::

    GET  …/field/pending?limit=N   (node-signed; first advert address that answers)
    store the records exactly as a push would (edgenode.records, the intake)
    POST …/field/acks {transitions: [result…], encounters: [result…]}
    again while the answer said ``more`` (at most MAX_PAGES_PER_ROUND pages)

A record that fails the push's checks is not stored and is answered
``rejected``/``validation_failed``, so the device stops offering it. If an
acknowledgement is lost, the next round is offered the same records and
answers them as duplicates, as a repeated push would be.

Every request carries a fresh ``PHS-Nonce``, and every 200 answer must be
signed by the device's paired key over that request and the answer's exact
bytes (``PHS-Signature``, ``shared.signing.verify_answer``), and be at most
``max_body_bytes`` long: it is checked before it is decoded, and an answer
that fails stops the round like any refusal (nothing stored, nothing
acknowledged, the reason recorded). So a host that answers on a device's
address, or advertises its id, cannot put records in the device's name.

``Gatherer`` runs one round at a time per device: a request while a round
runs schedules exactly one more. Its ``aiohttp.ClientSession`` and clock come
from outside.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from edgenode.devices_seen import SeenDevice, gather_candidates, record_gather, seen_device
from edgenode.encounters import ingest_encounters
from edgenode.gateway_client import (
    AnswerCheck,
    AnswerTooLarge,
    GatewayClient,
    GatewayUnreachable,
    RawAnswer,
)
from edgenode.intake import OutreachIntake
from edgenode.records import device_encounter, device_transition
from edgenode.settings import EdgeSettings
from edgenode.store.database import EdgeDatabase
from gateway.http import PREFIX, Clock
from shared.discovery import host_of
from shared.errors import ItemCode, PhsError
from shared.signing import (
    ANSWER_HEADER,
    NONCE_HEADER,
    KeyPair,
    parse_answer_signature,
    verify_answer,
)
from shared.values import is_identifier

log = logging.getLogger("edgenode.gather")

PENDING_PATH = f"{PREFIX}/field/pending"
ACKS_PATH = f"{PREFIX}/field/acks"
MAX_PAGES_PER_ROUND = 10  # then the registry is read again before going on

Result = dict[str, Any]


class GatherFailed(Exception):
    """A round stopped: the device refused, answered nonsense, or went away."""


class DeviceUnreachable(GatherFailed):
    """No connection to this address (the next one of the advert is tried)."""


class AnswerRefused(GatherFailed):
    """An answer that is not the device's own (unsigned, another key, altered,
    skewed) or is too large: not decoded, and the round stops."""


@dataclass
class GatherOutcome:
    device_id: str
    skipped: str | None = None  # why no round ran: not paired, not present, nothing pending
    pages: int = 0
    records: int = 0  # answered and acknowledged
    rejected: int = 0  # records refused by the checks (not stored)
    more: bool = False  # the page budget ran out with records left
    error: str | None = None


@dataclass(frozen=True)
class Page:
    transitions: Sequence[Any]
    encounters: Sequence[Any]
    more: bool

    @property
    def size(self) -> int:
        return len(self.transitions) + len(self.encounters)


def read_page(doc: Any, device_id: str, limit: int) -> Page:
    """The answer of ``GET …/field/pending``, checked for shape."""
    if not isinstance(doc, Mapping):
        raise GatherFailed("pending records: the answer is not an object")
    if doc.get("deviceId") != device_id:
        raise GatherFailed(f"pending records: answer names device {doc.get('deviceId')!r}")
    transitions, encounters, more = (
        doc.get("transitions", []),
        doc.get("encounters", []),
        doc.get("more", False),
    )
    if not isinstance(transitions, list) or not isinstance(encounters, list):
        raise GatherFailed("pending records: transitions and encounters must be arrays")
    if not isinstance(more, bool):
        raise GatherFailed("pending records: more must be true or false")
    page = Page(transitions, encounters, more)
    if page.size > limit:
        raise GatherFailed(f"pending records: {page.size} records, asked for at most {limit}")
    return page


def rejected(obj: Any, err: PhsError) -> Result | None:
    """The result of a record that fails the checks: not stored, not offered
    again. None when the record has no usable id: there is nothing to
    answer it by (and the device refuses a result without one)."""
    record_id = obj.get("id") if isinstance(obj, Mapping) else None
    if not is_identifier(record_id):
        log.warning("a gathered record without a usable id is ignored: %s", err.detail)
        return None
    return {
        "id": record_id,
        "status": "rejected",
        "code": ItemCode.VALIDATION_FAILED.value,
        "detail": err.detail,
    }


class Gatherer:
    def __init__(
        self,
        db: EdgeDatabase,
        intake: OutreachIntake,
        outbox_wake: asyncio.Event,
        session: aiohttp.ClientSession,
        keypair: KeyPair,
        settings: EdgeSettings,
        clock: Clock,
    ) -> None:
        self._db = db
        self._intake = intake
        self._wake = outbox_wake
        self._session = session
        self._keypair = keypair
        self._settings = settings
        self._clock = clock
        self._offsets: dict[str, float] = {}  # device clock minus ours, learnt from clock_skew
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    # -- scheduling -------------------------------------------------------------

    def request(self, device_id: str) -> None:
        """Gather from the device soon; if a round runs, one more after it."""
        task = self._running.get(device_id)
        if task is not None and not task.done():
            self._again.add(device_id)
            return
        task = asyncio.get_running_loop().create_task(self._rounds(device_id))
        self._running[device_id] = task
        task.add_done_callback(lambda done: self._forget(device_id, done))

    def _forget(self, device_id: str, task: asyncio.Task[None]) -> None:
        if self._running.get(device_id) is task:
            del self._running[device_id]

    async def sweep(self) -> int:
        """Request a round for every present, paired device with records pending."""
        async with self._db.read() as conn:
            candidates = await gather_candidates(conn)
        for device in candidates:
            self.request(device.device_id)
        return len(candidates)

    async def idle(self) -> None:
        """Wait until no round runs or is scheduled."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _rounds(self, device_id: str) -> None:
        while True:
            self._again.discard(device_id)
            try:
                outcome = await self.gather_once(device_id)
            except Exception:
                log.exception("gathering from %s failed", device_id)
                return
            if outcome.more:
                self._again.add(device_id)
            if device_id not in self._again:
                return

    # -- one round ---------------------------------------------------------------

    async def gather_once(self, device_id: str) -> GatherOutcome:
        """One round with the device, recorded in the registry."""
        outcome = GatherOutcome(device_id)
        async with self._db.read() as conn:
            device = await seen_device(conn, device_id)
        if device is None or not device.paired:
            outcome.skipped = "not paired"  # never ask an unpaired device for anything
        elif not device.present:
            outcome.skipped = "not present"
        elif device.pending == 0:
            outcome.skipped = "nothing pending"
        if device is None or outcome.skipped is not None:
            return outcome
        pending: int | None = None
        try:
            pending = await self._pages(device, outcome)
        except GatherFailed as err:
            outcome.error = str(err)
            log.warning("gathering from %s stopped: %s", device_id, err)
        except Exception as err:  # ours (the store): on the status page too, then raised
            outcome.error = f"internal error: {err}"
            async with self._db.write() as conn:
                await record_gather(conn, device_id, self._clock(), outcome.records, outcome.error)
            raise
        async with self._db.write() as conn:
            await record_gather(
                conn, device_id, self._clock(), outcome.records, outcome.error, pending
            )
        if outcome.records:
            log.info(
                "gathered %d records from %s in %d pages (%d rejected)",
                outcome.records,
                device_id,
                outcome.pages,
                outcome.rejected,
            )
        return outcome

    async def _pages(self, device: SeenDevice, outcome: GatherOutcome) -> int | None:
        """Fetch, store and acknowledge pages; the device's pending count after."""
        limit = self._settings.gather_page_size
        path = f"{PENDING_PATH}?{urlencode({'limit': limit})}"
        client, doc = await self._first_answer(device, path)
        pending: int | None = None
        while True:
            page = read_page(doc, device.device_id, limit)
            if page.size == 0:  # nothing after all: the advert's count was stale
                return 0 if not page.more else None
            t_results, e_results, refused = await self.store(device.device_id, page)
            ack = await self._call(
                client,
                device,
                "POST",
                ACKS_PATH,
                {"transitions": t_results, "encounters": e_results},
            )
            outcome.pages += 1
            outcome.records += len(t_results) + len(e_results)
            outcome.rejected += refused
            ack = ack if isinstance(ack, Mapping) else {}
            left = ack.get("pending")
            pending = left if isinstance(left, int) and not isinstance(left, bool) else None
            if not page.more:
                return pending
            if ack.get("cleared") == 0:  # the same page would come again: wait for the sweep
                return pending
            if outcome.pages >= MAX_PAGES_PER_ROUND:
                outcome.more = True
                return pending
            doc = await self._call(client, device, "GET", path)

    async def store(self, device_id: str, page: Page) -> tuple[list[Result], list[Result], int]:
        """Store a page as the device's push would be stored: a result per
        record (transitions, encounters) and how many failed the checks."""
        t_results: list[Result | None] = [None] * len(page.transitions)
        transitions = []
        for n, obj in enumerate(page.transitions):
            try:
                transitions.append((n, device_transition(obj, device_id, f"/transitions/{n}")))
            except PhsError as err:
                t_results[n] = rejected(obj, err)
        if transitions:
            # The push's group commit (edgenode.intake), without an Idempotency-Key.
            answer = await self._intake.submit(
                f"device:{device_id}", None, "", [t for _, t in transitions]
            )
            for (n, _), result in zip(transitions, answer.document["results"], strict=True):
                t_results[n] = result

        e_results: list[Result | None] = [None] * len(page.encounters)
        encounters = []
        for n, obj in enumerate(page.encounters):
            try:
                where = f"/encounters/{n}"
                encounters.append((n, device_encounter(obj, self._settings.facility_ids, where)))
            except PhsError as err:
                e_results[n] = rejected(obj, err)
        if encounters:
            async with self._db.write() as conn:
                stored = await ingest_encounters(
                    conn, device_id, [e for _, e in encounters], self._clock()
                )
            for (n, _), result in zip(encounters, stored, strict=True):
                e_results[n] = result
        if transitions or encounters:
            self._wake.set()
        refused = page.size - len(transitions) - len(encounters)
        return (
            [r for r in t_results if r is not None],
            [r for r in e_results if r is not None],
            refused,
        )

    # -- requests to the device ------------------------------------------------------

    def _client(self, device: SeenDevice, address: str) -> GatewayClient:
        # The node's signed client (CONTRACT section 2), aimed at the device.
        client = GatewayClient(
            self._session,
            f"http://{host_of(address)}:{device.port}",
            self._settings.node_id,
            self._keypair,
            clock=lambda: self._clock().timestamp(),
            max_answer_bytes=self._settings.max_body_bytes,
        )
        client.clock_offset = self._offsets.get(device.device_id, 0.0)
        return client

    async def _first_answer(self, device: SeenDevice, path: str) -> tuple[GatewayClient, Any]:
        """The first page, from the first of the advert's addresses that answers."""
        errors = []
        for address in device.addresses:
            client = self._client(device, address)
            try:
                doc = await self._call(client, device, "GET", path)
            except DeviceUnreachable as err:
                errors.append(str(err))
                continue
            finally:
                self._offsets[device.device_id] = client.clock_offset
            return client, doc
        raise DeviceUnreachable("unreachable: " + "; ".join(errors or ["no address"]))

    async def _call(
        self,
        client: GatewayClient,
        device: SeenDevice,
        method: str,
        path: str,
        document: Any = None,
    ) -> Any:
        nonce = secrets.token_hex(16)  # this request's: an answer to another will not do
        check = self._answer_check(client, device, method, path, nonce)
        try:
            answer = await client.request(method, path, document, {NONCE_HEADER: nonce}, check)
        except GatewayUnreachable as err:
            raise DeviceUnreachable(str(err)) from err
        except AnswerTooLarge as err:
            raise AnswerRefused(str(err)) from err
        if answer.status != 200:
            doc = answer.document if isinstance(answer.document, Mapping) else {}
            raise GatherFailed(
                f"{method} {path.split('?')[0]} answered {answer.status} "
                f"{doc.get('code', '')}: {doc.get('detail', '')}".rstrip(": ")
            )
        return answer.document

    def _answer_check(
        self, client: GatewayClient, device: SeenDevice, method: str, path: str, nonce: str
    ) -> AnswerCheck:
        """Refuse a 200 answer the device did not sign for this request, before
        it is decoded. (A refusal is used only for its code and detail, and a
        clock_skew one for its ``Date``: neither can put a record in.)"""

        def check(raw: RawAnswer) -> None:
            if raw.status != 200:
                return
            where = f"{method} {path.split('?')[0]}"
            if device.public_key is None:  # not paired: never asked, but never trusted either
                raise AnswerRefused(f"{where}: no paired key to verify the answer with")
            try:
                auth = parse_answer_signature(raw.headers.get(ANSWER_HEADER))
                verify_answer(
                    auth,
                    device.device_id,
                    device.public_key,
                    method,
                    path,
                    nonce,
                    raw.body,
                    self._clock().timestamp() + client.clock_offset,
                    self._settings.clock_skew_seconds,
                )
            except PhsError as err:
                raise AnswerRefused(f"{where}: answer refused, {err.code}: {err.detail}") from err

        return check

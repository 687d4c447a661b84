"""The node rotates its gateway signing key, offline-first (docs/key-rotation.md).

1. A new keypair is made and kept (``NodeKeys.make_pending``, synced to disk)
   before anything is sent.
2. ``POST …/sync/keys`` registers its public key, signed with the current key.
3. Only on the gateway's 2xx naming that key does the node switch to it
   (``NodeKeys.promote``: an atomic rename).

Until then the node keeps signing with its current key, which the gateway
still accepts: a WAN that drops between 2 and 3 (the gateway registered the
key, the node never heard) loses nothing. The next attempt sends the same key
again and the gateway answers 200 (it is already the node's active key). If
the current key was refused meanwhile (its overlap window ended, or an admin
retired or revoked it), the attempt is made once more signed with the new key
itself, which the gateway accepts if it registered it; a key it never
registered leaves the node waiting for an admin (``phs-gateway rotate-key
--public-key``, printed by ``edgenode rotate-key``).

``resume`` runs before each forward cycle of ``edgenode run`` and ``edgenode
sync``: it finishes a rotation under way, and starts one when the gateway's
last answer said the current key is retiring (an admin's ``phs-gateway
rotate-key``), so the node moves to a new key well before its window ends.
Once the gateway has refused the new key, ``resume`` asks again only after a
pause that doubles from a minute to half an hour: the node waits for an admin
anyway, and each refused attempt is an audit row at the gateway, which a node
left waiting for days would otherwise add every forward cycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgenode.gateway_client import PREFIX, GatewayAnswer, GatewayClient, GatewayUnreachable
from edgenode.keys import NodeKeys, SigningKey

log = logging.getLogger("edgenode.rotation")

KEYS_PATH = f"{PREFIX}/sync/keys"
# The current key itself is refused: the new key may be registered already.
KEY_REFUSALS = frozenset({"key_retired", "key_revoked", "unknown_key"})

ROTATED = "rotated"  # the node signs with the new key from now on
WAITING = "waiting"  # not acknowledged (WAN down, gateway error): kept, sent again later
REFUSED = "refused"  # the gateway refused it: kept for an admin, or dropped if it never will
NOTHING = "nothing"  # no rotation under way
FIRST_PAUSE_SECONDS = 60.0  # after a refusal, before resume() asks again
LONGEST_PAUSE_SECONDS = 1800.0


@dataclass(frozen=True)
class RotationOutcome:
    state: str
    key_id: str  # the key the node signs with now
    pending_key_id: str | None = None  # the new key still waiting, if any
    detail: str = ""


class KeyRotation:
    def __init__(
        self,
        client: GatewayClient,
        keys: NodeKeys,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._keys = keys
        self._clock = clock
        self._pause = 0.0  # after the last refusal (doubles up to LONGEST_PAUSE_SECONDS)
        self._next_attempt = 0.0  # resume() asks again from then (clock's seconds)

    def follow_disk(self) -> SigningKey:
        """Sign with the current key on disk (another process may have rotated)."""
        current = self._keys.current()
        if current.key_id != self._client.key_id:
            self._client.use_key(current)
        return current

    async def rotate(self) -> RotationOutcome:
        """Make a new key (or take the one under way) and register it."""
        self.follow_disk()
        self._keys.make_pending()
        return await self.finish()

    async def resume(self) -> RotationOutcome | None:
        """Finish a rotation under way, or start one the gateway asked for;
        None when there is neither."""
        current = self.follow_disk()
        if self._keys.pending() is None:
            if self._client.key_retires_at is None:
                return None
            log.info(
                "the gateway retires key %s at %s: rotating",
                current.key_id,
                self._client.key_retires_at,
            )
            self._keys.make_pending()
        elif self._clock() < self._next_attempt:
            pending = self._keys.pending()
            return RotationOutcome(
                REFUSED,
                current.key_id,
                pending.key_id if pending else None,
                f"refused by the gateway; asking again in "
                f"{self._next_attempt - self._clock():.0f} s (or run edgenode rotate-key)",
            )
        return await self.finish()

    async def finish(self) -> RotationOutcome:
        """Register the key under way now (``rotate`` and ``edgenode rotate-key``
        never wait out the pause after a refusal)."""
        outcome = await self._finish()
        if outcome.state == REFUSED and outcome.pending_key_id is not None:
            self._pause = min(LONGEST_PAUSE_SECONDS, max(FIRST_PAUSE_SECONDS, 2 * self._pause))
            self._next_attempt = self._clock() + self._pause
        elif outcome.state != WAITING:
            self._pause, self._next_attempt = 0.0, 0.0
        return outcome

    async def _finish(self) -> RotationOutcome:
        current = self.follow_disk()
        pending = self._keys.pending()
        if pending is None:
            return RotationOutcome(NOTHING, current.key_id)
        document = {"publicKey": pending.keypair.public_key}
        # An edge node always sends an Idempotency-Key (CONTRACT.md §4): one per
        # new key, so a resend after a lost answer is the gateway's replay.
        headers = {"Idempotency-Key": f"key-{pending.key_id}"}
        try:
            answer = await self._client.request("POST", KEYS_PATH, document, headers)
            if _refused_key(answer):
                answer = await self._client.request(
                    "POST", KEYS_PATH, document, headers, signer=pending
                )
        except GatewayUnreachable as err:
            return RotationOutcome(WAITING, current.key_id, pending.key_id, str(err))
        body = answer.document if isinstance(answer.document, dict) else {}
        if answer.status in (200, 201) and body.get("keyId") == pending.key_id:
            new = self._keys.promote()
            self._client.use_key(new)
            log.info("rotated to key %s (was %s)", new.key_id, current.key_id)
            return RotationOutcome(ROTATED, new.key_id)
        code, detail = str(body.get("code", "unknown")), str(body.get("detail", ""))
        problem = f"HTTP {answer.status} {code}: {detail}"
        if answer.status >= 500 or answer.status in (408, 425, 429) or answer.status < 400:
            return RotationOutcome(WAITING, current.key_id, pending.key_id, problem)
        log.warning("the gateway refused key %s: %s", pending.key_id, problem)
        if code == "already_exists":  # the gateway will never take this key: the next is new
            self._keys.discard_pending()
            return RotationOutcome(REFUSED, current.key_id, None, problem)
        return RotationOutcome(REFUSED, current.key_id, pending.key_id, problem)


def _refused_key(answer: GatewayAnswer) -> bool:
    doc = answer.document
    code = doc.get("code") if isinstance(doc, dict) else None
    return answer.status in (401, 403) and code in KEY_REFUSALS

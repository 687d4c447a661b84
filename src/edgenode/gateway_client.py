"""A node's signed HTTP client for the gateway (CONTRACT sections 2, 6, 7, 8).

It receives its ``aiohttp.ClientSession`` and clock from outside, so tests and
the edge node's forwarder control connections and time. On ``clock_skew`` it
learns its offset from the gateway's ``Date`` header and retries once.

The gatherer (``edgenode.gather``) uses the same client towards field
devices, with two additions: ``max_answer_bytes`` caps how much of an answer
is read (``AnswerTooLarge`` beyond it), and a ``check`` sees every answer's
status, headers and exact body bytes before they are decoded (it verifies a
device's answer signature; whatever it raises reaches the caller).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgpack

from edgenode.keys import SigningKey
from shared.encoding import MSGPACK
from shared.node_keys import KEY_RETIRES_HEADER
from shared.signing import KeyPair, authorization_header

PREFIX = "/api/v1/population-health"


class GatewayUnreachable(Exception):
    """The WAN or the gateway is down; the caller keeps its outbox and retries."""


class AnswerTooLarge(Exception):
    """The answer's body is over ``max_answer_bytes``: refused, not decoded."""


@dataclass(frozen=True)
class GatewayAnswer:
    status: int
    document: Any
    replayed: bool


@dataclass(frozen=True)
class RawAnswer:
    """An answer as received, before decoding: what a ``check`` sees."""

    status: int
    headers: Mapping[str, str]
    body: bytes


AnswerCheck = Callable[[RawAnswer], None]


class GatewayClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        node_id: str,
        keypair: KeyPair,
        clock: Callable[[], float] = time.time,
        max_answer_bytes: int | None = None,
        key_id: str | None = None,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self.node_id = node_id
        self._key = SigningKey(key_id or node_id, keypair)  # keyId: the node id unless rotated
        self._clock = clock
        self._max_answer_bytes = max_answer_bytes  # None: read whatever comes
        self.clock_offset = 0.0  # gateway time minus ours, learned from clock_skew
        # When the gateway last said our key is retiring (PHS-Key-Retires-At):
        # the node rotates (edgenode.rotation). None: it did not.
        self.key_retires_at: str | None = None

    @property
    def key_id(self) -> str:
        return self._key.key_id

    def use_key(self, key: SigningKey) -> None:
        """Sign every later request with ``key`` (a rotation was acknowledged)."""
        self._key = key
        self.key_retires_at = None

    async def request(
        self,
        method: str,
        path: str,
        document: Any = None,
        headers: Mapping[str, str] | None = None,
        check: AnswerCheck | None = None,
        signer: SigningKey | None = None,
    ) -> GatewayAnswer:
        body = b"" if document is None else msgpack.packb(document, use_bin_type=True)
        return await self.send(method, path, body, headers or {}, check, signer)

    async def send(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        check: AnswerCheck | None = None,
        signer: SigningKey | None = None,
    ) -> GatewayAnswer:
        """Send exact body bytes; after a clock_skew answer, correct and retry once.
        ``check`` sees each answer before it is decoded. ``signer``: sign this
        request with that key instead of the client's own."""
        answer, date = await self._send(method, path, body, headers, check, signer)
        if answer.status == 401 and _code(answer) == "clock_skew" and date is not None:
            self.clock_offset = date - self._clock()
            answer, _ = await self._send(method, path, body, headers, check, signer)
        return answer

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        check: AnswerCheck | None,
        signer: SigningKey | None = None,
    ) -> tuple[GatewayAnswer, float | None]:
        ts = int(self._clock() + self.clock_offset)
        key = signer or self._key
        all_headers = {
            "Authorization": authorization_header(key.keypair, key.key_id, method, path, body, ts),
            "Accept": MSGPACK,
            **headers,
        }
        if body:
            all_headers["Content-Type"] = MSGPACK
        try:
            async with self._session.request(
                method, self._base + path, data=body, headers=all_headers
            ) as resp:
                raw = RawAnswer(resp.status, resp.headers, await self._read(resp, method, path))
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise GatewayUnreachable(f"{method} {path}: {err}") from err
        except ValueError as err:
            raise GatewayUnreachable(f"{method} {path}: unreadable answer: {err}") from err
        if check is not None:
            check(raw)  # before a byte of the body is decoded
        if signer is None and raw.status < 400:
            self.key_retires_at = raw.headers.get(KEY_RETIRES_HEADER)
        try:
            date = raw.headers.get("Date")
            document = msgpack.unpackb(raw.body, raw=False) if raw.body else None
            return (
                GatewayAnswer(
                    raw.status, document, raw.headers.get("Idempotent-Replayed") == "true"
                ),
                parsedate_to_datetime(date).timestamp() if date else None,
            )
        except (msgpack.UnpackException, ValueError) as err:
            raise GatewayUnreachable(f"{method} {path}: unreadable answer: {err}") from err

    async def _read(self, resp: aiohttp.ClientResponse, method: str, path: str) -> bytes:
        """The answer's body, refused (and the connection dropped) past the cap."""
        limit = self._max_answer_bytes
        if limit is None:
            return await resp.read()
        too_large = AnswerTooLarge(f"{method} {path}: answer over {limit} bytes")
        if resp.content_length is not None and resp.content_length > limit:
            resp.close()
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > limit:
                resp.close()
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def post_batch_body(self, batch_id: str, body: bytes) -> GatewayAnswer:
        """Send a persisted batch exactly as stored (a resend is the same request)."""
        return await self.send(
            "POST", f"{PREFIX}/sync/batches", body, {"Idempotency-Key": batch_id}
        )

    async def post_batch(
        self, batch_id: str, created_at: str, items: Sequence[Mapping[str, Any]]
    ) -> GatewayAnswer:
        document = {
            "v": 1,
            "batchId": batch_id,
            "nodeId": self.node_id,
            "createdAt": created_at,
            "items": list(items),
        }
        return await self.request(
            "POST", f"{PREFIX}/sync/batches", document, {"Idempotency-Key": batch_id}
        )

    async def post_report(
        self, payload: bytes, signature: bytes, idempotency_key: str | None = None
    ) -> GatewayAnswer:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return await self.request(
            "POST",
            f"{PREFIX}/sync/facility-reports",
            {"deviceId": self.node_id, "payload": payload, "signature": signature},
            headers,
        )

    async def changes(self, since: str, limit: int = 5000) -> GatewayAnswer:
        query = urlencode({"since": since, "limit": limit})
        return await self.request("GET", f"{PREFIX}/sync/changes?{query}")


def _code(answer: GatewayAnswer) -> str | None:
    doc = answer.document
    return doc.get("code") if isinstance(doc, dict) else None

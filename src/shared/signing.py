"""Ed25519 keys and the ``PHS-Ed25519`` request signature (CONTRACT section 2).

A signed request carries::

    Authorization: PHS-Ed25519 keyId=<id>,ts=<unix seconds>,sig=<base64>

where ``sig`` is the Ed25519 signature of the UTF-8 bytes of::

    METHOD \\n PATH_WITH_QUERY \\n ts \\n hex(sha256(body))

(no spaces around the newlines).

An *answer signature* (docs/discovery.md) is the same header format, sent
by a field device in the ``PHS-Signature`` header of its answer to the
paired node's gather request, over::

    phs-answer v1 \\n METHOD PATH_WITH_QUERY \\n nonce \\n ts \\n hex(sha256(body))

where METHOD, PATH_WITH_QUERY and nonce (the ``PHS-Nonce`` header, or empty)
are the request's and ts and body the answer's. A request string starts with
``METHOD.upper()``, which holds no lowercase letter; an answer string starts
with ``phs-answer v1``. So neither can ever be the other, and a signature of
one never verifies as the other.

Pure functions, no I/O and no clock: the receiver passes ``now`` in, so
tests control time. PyNaCl does the cryptography; its exceptions become our
``BadSignature`` here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing

from shared.errors import (
    BadSignature,
    ClockSkew,
    MissingCredentials,
    UnknownKey,
    ValidationFailed,
)
from shared.values import binary, is_identifier

SCHEME = "PHS-Ed25519"
SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_SKEW_SECONDS = 300
ANSWER_HEADER = "PHS-Signature"  # a device's signature of its answer
NONCE_HEADER = "PHS-Nonce"  # the request's nonce, which the answer signature covers
ANSWER_TAG = "phs-answer v1"  # first line of an answer string: never a request's

# Unix seconds as plain digits: int() would also take "+5", " 5" and "5_0",
# and an unbounded digit string would be a cheap way to burn CPU.
_TS_RE = re.compile(r"[0-9]{1,12}")
_PARAMS = ("keyId", "ts", "sig")


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 keypair; ``seed`` is the 32-byte private key.

    The seed stays out of ``repr`` so it cannot leak into logs or tracebacks.
    """

    seed: bytes = field(repr=False)
    public_key: bytes
    _signing_key: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes, not {len(self.seed)}")
        signing_key = nacl.signing.SigningKey(self.seed)
        # A pair whose halves do not match would sign requests no one can verify.
        if bytes(signing_key.verify_key) != self.public_key:
            raise ValueError("public_key does not belong to seed")
        object.__setattr__(self, "_signing_key", signing_key)

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh keypair from the operating system's random source (via libsodium)."""
        return cls.from_seed(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """The keypair of a stored 32-byte seed."""
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes, not {len(seed)}")
        return cls(seed=bytes(seed), public_key=bytes(nacl.signing.SigningKey(seed).verify_key))

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached signature of ``data``."""
        signature: bytes = self._signing_key.sign(data).signature
        return signature

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode("ascii")


def public_key_from(value: Any) -> bytes:
    """A 32-byte Ed25519 public key from raw bytes or standard base64."""
    raw = binary(value, "publicKey", max_length=1024)
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValidationFailed(
            f"publicKey must be {PUBLIC_KEY_BYTES} bytes, not {len(raw)}", field="publicKey"
        )
    # Refuse non-points and small-order points at enrollment, not at the
    # first request: libsodium would refuse every signature under them anyway.
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(raw):
        raise ValidationFailed("publicKey is not a valid Ed25519 key", field="publicKey")
    return raw


def fingerprint(public_key: bytes) -> str:
    """First 16 hex characters of sha256(public key): the ``fp`` of CONTRACT section 10."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> None:
    """Return if ``signature`` is ``public_key``'s signature of ``data``; else BadSignature."""
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature(f"signature must be {SIGNATURE_BYTES} bytes, not {len(signature)}")
    try:
        verify_key = nacl.signing.VerifyKey(public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as err:
        raise BadSignature("the stored public key is not a usable Ed25519 key") from err
    try:
        verify_key.verify(data, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as err:
        # BadSignatureError is a CryptoError; libsodium also lands here for
        # non-canonical or small-order encodings.
        raise BadSignature("signature does not verify") from err


def _stamp(ts: int, body: bytes) -> str:
    """The last two lines of every signed string: ``ts \\n hex(sha256(body))``."""
    return f"{ts}\n{hashlib.sha256(body).hexdigest()}"


def signing_string(method: str, path_with_query: str, ts: int, body: bytes) -> bytes:
    """The exact bytes a request signature covers."""
    return f"{method.upper()}\n{path_with_query}\n{_stamp(ts, body)}".encode()


def is_nonce(value: object) -> bool:
    """A request nonce an answer signature may cover: empty (none sent) or an
    identifier (no separators, at most 128 characters)."""
    return value == "" or is_identifier(value)


def answer_signing_string(
    method: str, path_with_query: str, nonce: str, ts: int, body: bytes
) -> bytes:
    """The exact bytes an answer signature covers: the request it answers
    (method, path and query as sent, nonce) and the answer's ts and body."""
    if not is_nonce(nonce):
        # A separator in it would make the string ambiguous; the device
        # refuses such a nonce before it signs anything.
        raise ValueError(f"nonce {nonce!r} is not empty or an identifier")
    return f"{ANSWER_TAG}\n{method.upper()} {path_with_query}\n{nonce}\n{_stamp(ts, body)}".encode()


def _signature_header(keypair: KeyPair, key_id: str, data: bytes, ts: int) -> str:
    if not is_identifier(key_id):
        # Fail at the sender: the receiver would refuse this header anyway.
        raise ValueError(f"key id {key_id!r} is not an identifier")
    sig = base64.b64encode(keypair.sign(data)).decode("ascii")
    return f"{SCHEME} keyId={key_id},ts={ts},sig={sig}"


def authorization_header(
    keypair: KeyPair, key_id: str, method: str, path_with_query: str, body: bytes, ts: int
) -> str:
    """The ``Authorization`` value for a request signed by ``keypair`` at ``ts``."""
    return _signature_header(keypair, key_id, signing_string(method, path_with_query, ts, body), ts)


def answer_signature_header(
    keypair: KeyPair,
    key_id: str,
    method: str,
    path_with_query: str,
    nonce: str,
    body: bytes,
    ts: int,
) -> str:
    """The ``PHS-Signature`` value for an answer ``body`` to the request
    ``method path_with_query`` (with ``nonce``), signed by ``keypair`` at ``ts``."""
    return _signature_header(
        keypair, key_id, answer_signing_string(method, path_with_query, nonce, ts, body), ts
    )


@dataclass(frozen=True)
class SignedAuth:
    """The parsed parameters of a ``PHS-Ed25519`` Authorization header."""

    key_id: str
    ts: int
    signature: bytes


def parse_authorization(header: str | None) -> SignedAuth:
    """Parse an Authorization header: MissingCredentials if it is not ours,
    BadSignature if it is ours but malformed."""
    return _parse_signature(header, "Authorization")


def parse_answer_signature(header: str | None) -> SignedAuth:
    """Parse a ``PHS-Signature`` answer header, as ``parse_authorization``."""
    return _parse_signature(header, ANSWER_HEADER)


def _parse_signature(header: str | None, header_name: str) -> SignedAuth:
    if header is None or not header.strip():
        raise MissingCredentials(f"{header_name} header with the {SCHEME} scheme is required")
    scheme, _, rest = header.strip().partition(" ")
    # Auth schemes are case-insensitive (RFC 9110 section 11.1).
    if scheme.lower() != SCHEME.lower():
        raise MissingCredentials(f"{header_name} must use the {SCHEME} scheme")
    params: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not name:
            raise BadSignature(f"malformed {SCHEME} parameter {part.strip()!r}")
        if name not in _PARAMS:
            raise BadSignature(f"unknown {SCHEME} parameter {name!r}")
        if name in params:
            # Two readers could pick different copies; refuse the ambiguity.
            raise BadSignature(f"duplicate {SCHEME} parameter {name!r}")
        params[name] = value
    missing = [name for name in _PARAMS if name not in params]
    if missing:
        raise BadSignature(f"{SCHEME} parameter(s) missing: {', '.join(missing)}")
    key_id = params["keyId"]
    if not is_identifier(key_id):
        raise BadSignature("keyId must be 1-128 characters of [A-Za-z0-9._:-]")
    if _TS_RE.fullmatch(params["ts"]) is None:
        raise BadSignature("ts must be unix seconds as an integer")
    try:
        signature = base64.b64decode(params["sig"].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        raise BadSignature("sig must be standard base64") from err
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature(f"sig must decode to {SIGNATURE_BYTES} bytes, not {len(signature)}")
    return SignedAuth(key_id=key_id, ts=int(params["ts"]), signature=signature)


def verify_request(
    auth: SignedAuth,
    public_key: bytes,
    method: str,
    path_with_query: str,
    body: bytes,
    now: float,
    max_skew_seconds: int = MAX_SKEW_SECONDS,
) -> None:
    """Check a parsed signature against the request and the receiver's clock.

    The signature is checked first so that an unauthenticated caller learns
    nothing about our clock; ``serverTime`` lets a genuine caller correct its
    offset and retry.
    """
    _verify(
        auth,
        public_key,
        signing_string(method, path_with_query, auth.ts, body),
        now,
        max_skew_seconds,
        "the server's clock",
    )


def verify_answer(
    auth: SignedAuth,
    key_id: str,
    public_key: bytes,
    method: str,
    path_with_query: str,
    nonce: str,
    body: bytes,
    now: float,
    max_skew_seconds: int = MAX_SKEW_SECONDS,
) -> None:
    """Check a parsed answer signature: signed as ``key_id`` (else UnknownKey)
    with ``public_key``, over this answer ``body`` to the request ``method
    path_with_query`` sent with ``nonce`` (else BadSignature), at a ts within
    ``max_skew_seconds`` of ``now`` (else ClockSkew)."""
    if auth.key_id != key_id:
        raise UnknownKey(f"the answer is signed by {auth.key_id}, not {key_id}")
    _verify(
        auth,
        public_key,
        answer_signing_string(method, path_with_query, nonce, auth.ts, body),
        now,
        max_skew_seconds,
        "the receiver's clock",
    )


def _verify(
    auth: SignedAuth, public_key: bytes, data: bytes, now: float, max_skew_seconds: int, clock: str
) -> None:
    verify_signature(public_key, data, auth.signature)
    if abs(now - auth.ts) > max_skew_seconds:
        raise ClockSkew(
            f"ts {auth.ts} is more than {max_skew_seconds} s from {clock}",
            serverTime=int(now),
        )

"""shared.signing: Ed25519 keys, the PHS-Ed25519 request signature and the answer signature."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import (
    BadSignature,
    ClockSkew,
    MissingCredentials,
    UnknownKey,
    ValidationFailed,
)
from shared.signing import (
    ANSWER_HEADER,
    NONCE_HEADER,
    SCHEME,
    KeyPair,
    SignedAuth,
    answer_signature_header,
    answer_signing_string,
    authorization_header,
    fingerprint,
    parse_answer_signature,
    parse_authorization,
    public_key_from,
    signing_string,
    verify_answer,
    verify_request,
    verify_signature,
)

# RFC 8032 section 7.1, all five Ed25519 tests: secret key (seed), public key, message, signature.
RFC8032_VECTORS: list[tuple[str, str, str, str]] = [
    (  # TEST 1: empty message
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (  # TEST 2: one byte 0x72
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (  # TEST 3: two bytes af82
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (  # TEST 1024: 1023 bytes
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        (
            "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98"
            "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8"
            "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
            "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc"
            "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe"
            "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
            "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef"
            "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7"
            "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
            "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2"
            "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24"
            "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
            "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc"
            "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07"
            "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
            "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a"
            "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e"
            "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
            "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c"
            "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8"
            "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
            "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08"
            "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649"
            "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
            "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
            "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e"
            "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
            "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5"
            "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1"
            "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
            "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c"
            "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0"
        ),
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (  # TEST SHA(abc): the 64-byte SHA-512 of "abc"
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493  # L, RFC 8032 section 5.1


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors(seed: str, public: str, message: str, signature: str) -> None:
    keypair = KeyPair.from_seed(bytes.fromhex(seed))
    assert keypair.public_key.hex() == public  # seed -> public key per RFC 8032
    assert keypair.sign(bytes.fromhex(message)).hex() == signature  # Ed25519 is deterministic
    verify_signature(bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature))


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_signatures_refused_when_any_bit_is_flipped(
    seed: str, public: str, message: str, signature: str
) -> None:
    key, data, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    for bit in range(0, len(sig) * 8, 7):
        flipped = bytearray(sig)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BadSignature):
            verify_signature(key, data, bytes(flipped))
    if data:
        with pytest.raises(BadSignature):
            verify_signature(key, bytes([data[0] ^ 1]) + data[1:], sig)


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032_VECTORS)
def test_malleated_signature_refused(seed: str, public: str, message: str, signature: str) -> None:
    """S + L satisfies the group equation: a verifier without the S < L check of
    RFC 8032 section 5.1.7 would take it as a second valid signature."""
    sig = bytes.fromhex(signature)
    s_plus_l = int.from_bytes(sig[32:], "little") + ED25519_ORDER
    assert s_plus_l < 2**256
    with pytest.raises(BadSignature):
        verify_signature(
            bytes.fromhex(public),
            bytes.fromhex(message),
            sig[:32] + s_plus_l.to_bytes(32, "little"),
        )


VECTOR_SEED = bytes.fromhex(RFC8032_VECTORS[0][0])
KEYPAIR = KeyPair.from_seed(VECTOR_SEED)
OTHER = KeyPair.from_seed(bytes.fromhex(RFC8032_VECTORS[1][0]))
NOW = 1_764_063_000  # 2025-11-25T09:30:00Z
PATH = "/api/v1/population-health/sync/batches?x=1"
BODY = b'{"v":1,"items":[]}'


# ---------------------------------------------------------------- keys


def test_generate_gives_a_working_pair() -> None:
    keypair = KeyPair.generate()
    assert len(keypair.seed) == 32 and len(keypair.public_key) == 32
    verify_signature(keypair.public_key, b"data", keypair.sign(b"data"))
    assert KeyPair.generate().seed != keypair.seed  # fresh randomness each time


def test_from_seed_refuses_wrong_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        KeyPair.from_seed(b"\x00" * 31)


def test_mismatched_pair_refused() -> None:
    with pytest.raises(ValueError, match="does not belong"):
        KeyPair(seed=VECTOR_SEED, public_key=OTHER.public_key)


def test_repr_hides_the_seed() -> None:
    text = repr(KEYPAIR) + str(KEYPAIR)
    assert VECTOR_SEED.hex() not in text
    assert repr(VECTOR_SEED) not in text  # not even as a bytes literal
    assert "seed" not in text


def test_public_key_b64() -> None:
    assert base64.b64decode(KEYPAIR.public_key_b64) == KEYPAIR.public_key  # standard base64
    assert KEYPAIR.public_key_b64 == "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


def test_fingerprint() -> None:
    fp = fingerprint(KEYPAIR.public_key)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)  # 16 lower-case hex characters
    assert fp == hashlib.sha256(KEYPAIR.public_key).hexdigest()[:16]  # CONTRACT section 10
    assert fingerprint(OTHER.public_key) != fp  # distinct keys, distinct fp


PUBLIC_KEY_INPUTS: list[object] = [
    KEYPAIR.public_key,  # raw 32 bytes
    bytearray(KEYPAIR.public_key),  # bytearray works like bytes
    KEYPAIR.public_key_b64,  # standard base64 text
]


@pytest.mark.parametrize("value", PUBLIC_KEY_INPUTS)
def test_public_key_from(value: object) -> None:
    assert public_key_from(value) == KEYPAIR.public_key


BAD_PUBLIC_KEYS: list[object] = [
    None,  # missing
    12345,  # not bytes or text
    b"\x01" * 31,  # one byte short
    KEYPAIR.public_key + b"\x00",  # one byte long
    "not base64!",  # invalid base64
    base64.b64encode(b"\x01" * 31).decode(),  # valid base64 of 31 bytes
    base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # URL-safe alphabet is not standard
    "é",  # not ASCII
    bytes(32),  # all zeros: a small-order point
    bytes([1]) + bytes(31),  # the identity point: signs anything
]


@pytest.mark.parametrize("value", BAD_PUBLIC_KEYS)
def test_public_key_from_refuses(value: object) -> None:
    with pytest.raises(ValidationFailed):
        public_key_from(value)


# ---------------------------------------------------------------- signatures


def test_verify_signature_failures() -> None:
    data = b"payload"
    good = KEYPAIR.sign(data)
    verify_signature(KEYPAIR.public_key, data, good)  # the control: it verifies
    flipped = bytes([good[0] ^ 1]) + good[1:]
    cases: list[tuple[bytes, bytes, bytes]] = [
        (KEYPAIR.public_key, data, flipped),  # one bit of the signature changed
        (KEYPAIR.public_key, data + b"!", good),  # the data changed
        (OTHER.public_key, data, good),  # another key
        (KEYPAIR.public_key, data, good[:63]),  # short signature
        (KEYPAIR.public_key, data, b""),  # no signature
        (KEYPAIR.public_key[:31], data, good),  # short key
        (bytes(32), data, good),  # a small-order key
    ]
    for public_key, message, signature in cases:
        with pytest.raises(BadSignature):
            verify_signature(public_key, message, signature)


def test_bad_signature_chains_the_nacl_error() -> None:
    with pytest.raises(BadSignature) as info:
        verify_signature(OTHER.public_key, b"x", KEYPAIR.sign(b"x"))
    assert info.value.__cause__ is not None  # raise ... from err


def test_signing_string_layout() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    expected = f"POST\n{PATH}\n{NOW}\n{digest}".encode()  # no spaces around \n
    assert signing_string("post", PATH, NOW, BODY) == expected  # method upper-cased
    empty = hashlib.sha256(b"").hexdigest()
    assert signing_string("GET", "/x", 0, b"") == f"GET\n/x\n0\n{empty}".encode()


# ---------------------------------------------------------------- header round trip


def _header(method: str = "POST", path: str = PATH, body: bytes = BODY, ts: int = NOW) -> str:
    return authorization_header(KEYPAIR, "edge-01", method, path, body, ts)


def test_header_round_trip() -> None:
    header = _header()
    assert header.startswith(f"{SCHEME} keyId=edge-01,ts={NOW},sig=")
    auth = parse_authorization(header)
    assert auth.key_id == "edge-01" and auth.ts == NOW and len(auth.signature) == 64
    verify_request(auth, KEYPAIR.public_key, "POST", PATH, BODY, now=NOW)


def test_method_case_does_not_matter() -> None:
    auth = parse_authorization(_header(method="post"))
    verify_request(auth, KEYPAIR.public_key, "POST", PATH, BODY, now=NOW)


TAMPERED: list[tuple[str, str, bytes, int]] = [
    ("POST", PATH, BODY + b" ", NOW),  # body changed
    ("POST", PATH, b"", NOW),  # body dropped
    ("PUT", PATH, BODY, NOW),  # method changed
    ("POST", "/api/v1/population-health/sync/batches?x=2", BODY, NOW),  # query changed
    ("POST", "/api/v1/population-health/sync/batches", BODY, NOW),  # query dropped
    ("POST", PATH, BODY, NOW + 1),  # ts changed (within skew)
]


@pytest.mark.parametrize(("method", "path", "body", "ts"), TAMPERED)
def test_tampered_request_refused(method: str, path: str, body: bytes, ts: int) -> None:
    signed = parse_authorization(_header())
    # Replay the signature against a request that differs in one part.
    auth = SignedAuth(key_id=signed.key_id, ts=ts, signature=signed.signature)
    with pytest.raises(BadSignature):
        verify_request(auth, KEYPAIR.public_key, method, path, body, now=NOW)


def test_wrong_key_refused() -> None:
    auth = parse_authorization(_header())
    with pytest.raises(BadSignature):
        verify_request(auth, OTHER.public_key, "POST", PATH, BODY, now=NOW)


# ---------------------------------------------------------------- clock skew

SKEW_CASES: list[tuple[float, bool]] = [
    (NOW, True),  # same clock
    (NOW + 300, True),  # caller 300 s behind: at the limit, accepted
    (NOW - 300, True),  # caller 300 s ahead: at the limit, accepted
    (NOW + 301, False),  # caller 301 s behind: refused
    (NOW - 301, False),  # caller 301 s ahead: refused
    (NOW + 300.5, False),  # fractions count: 300.5 > 300
    (NOW + 86_400, False),  # a day off
]


@pytest.mark.parametrize(("now", "accepted"), SKEW_CASES)
def test_clock_skew(now: float, accepted: bool) -> None:
    auth = parse_authorization(_header())
    if accepted:
        verify_request(auth, KEYPAIR.public_key, "POST", PATH, BODY, now=now)
        return
    with pytest.raises(ClockSkew) as info:
        verify_request(auth, KEYPAIR.public_key, "POST", PATH, BODY, now=now)
    assert info.value.extra["serverTime"] == int(now)  # the caller corrects from this
    assert info.value.problem()["serverTime"] == int(now)  # and it reaches the document


def test_skew_is_checked_after_the_signature() -> None:
    # A forged header must not learn our clock: bad signature wins over skew.
    auth = parse_authorization(_header())
    with pytest.raises(BadSignature):
        verify_request(auth, OTHER.public_key, "POST", PATH, BODY, now=NOW + 10_000)


def test_skew_limit_is_configurable() -> None:
    auth = parse_authorization(_header())
    with pytest.raises(ClockSkew):
        verify_request(
            auth, KEYPAIR.public_key, "POST", PATH, BODY, now=NOW + 61, max_skew_seconds=60
        )


# ---------------------------------------------------------------- header parsing

SIG = base64.b64encode(KEYPAIR.sign(b"x")).decode()

GOOD_HEADERS: list[tuple[str, SignedAuth]] = [
    # the canonical form
    (f"PHS-Ed25519 keyId=a,ts=1,sig={SIG}", SignedAuth("a", 1, base64.b64decode(SIG))),
    # optional spaces after commas
    (f"PHS-Ed25519 keyId=a, ts=1, sig={SIG}", SignedAuth("a", 1, base64.b64decode(SIG))),
    # parameters in any order; scheme case-insensitive; surrounding whitespace
    (
        f"  phs-ed25519 sig={SIG},ts=0,keyId=node:1.a-b_c ",
        SignedAuth("node:1.a-b_c", 0, base64.b64decode(SIG)),
    ),
]


@pytest.mark.parametrize(("header", "expected"), GOOD_HEADERS)
def test_parse_authorization(header: str, expected: SignedAuth) -> None:
    assert parse_authorization(header) == expected


MISSING_HEADERS: list[str | None] = [
    None,  # no Authorization header
    "",  # empty
    "   ",  # blank
    "Bearer abc.def",  # a token, not a signature
    "Basic dXNlcjpwYXNz",  # another scheme
    f"PHS-Ed25519x keyId=a,ts=1,sig={SIG}",  # a scheme that only starts like ours
]


@pytest.mark.parametrize("header", MISSING_HEADERS)
def test_parse_authorization_missing(header: str | None) -> None:
    with pytest.raises(MissingCredentials):
        parse_authorization(header)


MALFORMED_HEADERS: list[tuple[str, str]] = [
    ("PHS-Ed25519", "malformed"),  # scheme without parameters
    (f"PHS-Ed25519 ts=1,sig={SIG}", "missing: keyId"),  # no keyId
    (f"PHS-Ed25519 keyId=a,sig={SIG}", "missing: ts"),  # no ts
    ("PHS-Ed25519 keyId=a,ts=1", "missing: sig"),  # no sig
    (f"PHS-Ed25519 keyId=a,keyId=b,ts=1,sig={SIG}", "duplicate"),  # keyId twice
    (f"PHS-Ed25519 keyId=a,ts=1,ts=2,sig={SIG}", "duplicate"),  # ts twice
    (f"PHS-Ed25519 keyId=a,ts=1,sig={SIG},extra=1", "unknown"),  # unknown parameter
    (f"PHS-Ed25519 keyId=a,ts=1,,sig={SIG}", "malformed"),  # empty parameter
    (f"PHS-Ed25519 keyId=a,ts,sig={SIG}", "malformed"),  # parameter without =
    (f"PHS-Ed25519 keyId=a,ts=1.5,sig={SIG}", "ts must be"),  # not an integer
    (f"PHS-Ed25519 keyId=a,ts=-1,sig={SIG}", "ts must be"),  # negative
    (f"PHS-Ed25519 keyId=a,ts=+1,sig={SIG}", "ts must be"),  # int() would take it
    (f"PHS-Ed25519 keyId=a,ts=1_0,sig={SIG}", "ts must be"),  # int() would take it
    (f"PHS-Ed25519 keyId=a,ts=,sig={SIG}", "ts must be"),  # empty
    (f"PHS-Ed25519 keyId=a,ts={'9' * 40},sig={SIG}", "ts must be"),  # absurdly long
    ("PHS-Ed25519 keyId=a,ts=1,sig=***", "base64"),  # not base64
    ("PHS-Ed25519 keyId=a,ts=1,sig=é", "base64"),  # not ASCII
    (f"PHS-Ed25519 keyId=a,ts=1,sig={SIG[:-4]}", "64 bytes"),  # truncated signature
    (f"PHS-Ed25519 keyId=,ts=1,sig={SIG}", "keyId"),  # empty keyId
    (f"PHS-Ed25519 keyId=a/b,ts=1,sig={SIG}", "keyId"),  # not an identifier
    (f"PHS-Ed25519 keyId={'k' * 129},ts=1,sig={SIG}", "keyId"),  # 129 characters
]


@pytest.mark.parametrize(("header", "detail"), MALFORMED_HEADERS)
def test_parse_authorization_malformed(header: str, detail: str) -> None:
    with pytest.raises(BadSignature, match=detail):
        parse_authorization(header)


def test_authorization_header_refuses_bad_key_id() -> None:
    with pytest.raises(ValueError):
        authorization_header(KEYPAIR, "bad id", "GET", "/", b"", NOW)  # space not allowed


# ---------------------------------------------------------------- answer signatures

PENDING = "/api/v1/population-health/field/pending?limit=500"
ANSWER = b"\x84\xa8deviceId\xa5tab-a"
NONCE = "3f2a9c0d5e6b7a8190a1b2c3d4e5f607"


def _answer(
    method: str = "GET",
    path: str = PENDING,
    nonce: str = NONCE,
    body: bytes = ANSWER,
    ts: int = NOW,
    key_id: str = "tab-a",
) -> SignedAuth:
    return parse_answer_signature(
        answer_signature_header(KEYPAIR, key_id, method, path, nonce, body, ts)
    )


def test_answer_signing_string_layout() -> None:
    digest = hashlib.sha256(ANSWER).hexdigest()
    expected = f"phs-answer v1\nGET {PENDING}\n{NONCE}\n{NOW}\n{digest}".encode()
    assert answer_signing_string("get", PENDING, NONCE, NOW, ANSWER) == expected
    empty = hashlib.sha256(b"").hexdigest()
    assert answer_signing_string("POST", "/x", "", 0, b"") == (
        f"phs-answer v1\nPOST /x\n\n0\n{empty}".encode()  # no nonce: an empty line
    )


@pytest.mark.parametrize("nonce", ["a b", "a\nb", "n" * 129, "é"])
def test_answer_signing_string_refuses_a_nonce_with_separators(nonce: str) -> None:
    with pytest.raises(ValueError, match="nonce"):
        answer_signing_string("GET", PENDING, nonce, NOW, ANSWER)


def test_answer_round_trip() -> None:
    header = answer_signature_header(KEYPAIR, "tab-a", "GET", PENDING, NONCE, ANSWER, NOW)
    assert header.startswith(f"{SCHEME} keyId=tab-a,ts={NOW},sig=")  # CONTRACT section 2's form
    auth = parse_answer_signature(header)
    assert auth.key_id == "tab-a" and auth.ts == NOW
    verify_answer(auth, "tab-a", KEYPAIR.public_key, "GET", PENDING, NONCE, ANSWER, now=NOW)
    # An answer to a request that sent no nonce covers an empty one.
    auth = _answer(nonce="")
    verify_answer(auth, "tab-a", KEYPAIR.public_key, "GET", PENDING, "", ANSWER, now=NOW)


TAMPERED_ANSWERS: list[tuple[str, str, str, bytes, int]] = [
    ("GET", PENDING, NONCE, ANSWER + b"\x00", NOW),  # body changed
    ("GET", PENDING, NONCE, b"", NOW),  # body dropped
    ("GET", PENDING, NONCE[:-1] + "8", ANSWER, NOW),  # an answer to another request (nonce)
    ("GET", PENDING, "", ANSWER, NOW),  # ... to one without a nonce
    ("POST", PENDING, NONCE, ANSWER, NOW),  # ... with another method
    ("GET", PENDING.replace("500", "5000"), NONCE, ANSWER, NOW),  # ... another query
    ("GET", PENDING, NONCE, ANSWER, NOW + 1),  # ts changed (within skew)
]


@pytest.mark.parametrize(("method", "path", "nonce", "body", "ts"), TAMPERED_ANSWERS)
def test_tampered_answer_refused(method: str, path: str, nonce: str, body: bytes, ts: int) -> None:
    signed = _answer()
    auth = SignedAuth(key_id=signed.key_id, ts=ts, signature=signed.signature)
    with pytest.raises(BadSignature):
        verify_answer(auth, "tab-a", KEYPAIR.public_key, method, path, nonce, body, now=NOW)


def test_answer_by_another_key_or_key_id_refused() -> None:
    with pytest.raises(BadSignature):
        verify_answer(_answer(), "tab-a", OTHER.public_key, "GET", PENDING, NONCE, ANSWER, NOW)
    # Signed as another device (with any key): refused before the signature is checked.
    with pytest.raises(UnknownKey, match="signed by tab-b, not tab-a"):
        verify_answer(
            _answer(key_id="tab-b"), "tab-a", KEYPAIR.public_key, "GET", PENDING, NONCE, ANSWER, NOW
        )


@pytest.mark.parametrize(("now", "accepted"), SKEW_CASES)
def test_answer_clock_skew(now: float, accepted: bool) -> None:
    args = ("tab-a", KEYPAIR.public_key, "GET", PENDING, NONCE, ANSWER)
    if accepted:
        verify_answer(_answer(), *args, now=now)
        return
    with pytest.raises(ClockSkew, match="from the receiver's clock"):
        verify_answer(_answer(), *args, now=now)


def test_answer_skew_limit_is_configurable() -> None:
    args = ("tab-a", KEYPAIR.public_key, "GET", PENDING, NONCE, ANSWER)
    with pytest.raises(ClockSkew):
        verify_answer(_answer(), *args, now=NOW + 61, max_skew_seconds=60)


def test_answer_skew_is_checked_after_the_signature() -> None:
    with pytest.raises(BadSignature):
        verify_answer(
            _answer(), "tab-a", OTHER.public_key, "GET", PENDING, NONCE, ANSWER, NOW + 10_000
        )


@pytest.mark.parametrize("method", ["GET", "POST", "ANSWER", "phs-answer v1", ""])
def test_a_request_signature_never_verifies_as_an_answer(method: str) -> None:
    request = parse_authorization(
        authorization_header(KEYPAIR, "tab-a", method, PENDING, ANSWER, NOW)
    )
    for nonce in ("", NONCE):
        with pytest.raises(BadSignature):
            verify_answer(request, "tab-a", KEYPAIR.public_key, method, PENDING, nonce, ANSWER, NOW)


@pytest.mark.parametrize("method", ["GET", "POST", "ANSWER", "phs-answer v1"])
def test_an_answer_signature_never_verifies_as_a_request(method: str) -> None:
    answer = _answer(method=method, nonce="")
    for claimed in (method, "ANSWER", "PHS-ANSWER V1", f"PHS-ANSWER V1\n{method}"):
        with pytest.raises(BadSignature):
            verify_request(answer, KEYPAIR.public_key, claimed, PENDING, ANSWER, NOW)


@given(
    method=st.text(max_size=20),
    path=st.text(max_size=40),
    nonce=st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)),
    ts=st.integers(min_value=0, max_value=10**12),
    body=st.binary(max_size=64),
    other=st.tuples(st.text(max_size=20), st.text(max_size=60), st.integers(0, 10**12)),
)
def test_request_and_answer_strings_never_coincide(
    method: str, path: str, nonce: str, ts: int, body: bytes, other: tuple[str, str, int]
) -> None:
    # A request string starts with METHOD.upper(), which has no lowercase
    # letter; an answer string with "phs-answer v1". Whatever the parts.
    answer = answer_signing_string(method, path, nonce, ts, body)
    assert answer != signing_string(other[0], other[1], other[2], body)
    assert answer != signing_string(method, path, ts, body)


def test_parse_answer_signature_names_its_header() -> None:
    with pytest.raises(MissingCredentials, match="PHS-Signature header"):
        parse_answer_signature(None)
    with pytest.raises(MissingCredentials, match="PHS-Signature must use"):
        parse_answer_signature("Bearer x")
    with pytest.raises(BadSignature, match="missing: sig"):
        parse_answer_signature("PHS-Ed25519 keyId=a,ts=1")
    assert ANSWER_HEADER == "PHS-Signature" and NONCE_HEADER == "PHS-Nonce"

"""Request and response plumbing of both services (gateway and edge node).

Handlers read bodies and answer only through these helpers, so limits,
content negotiation and the problem-document shape live in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.settings import Settings
from shared.encoding import JSON, MSGPACK, PROBLEM_JSON, Limits, decode_body, encode, negotiate
from shared.encoding import media_type_of as _media_type_of
from shared.errors import MalformedBody, PayloadTooLarge, PhsError, ValidationFailed

if TYPE_CHECKING:
    # Only for typing: the edge node uses this module too, and must not load
    # SQLAlchemy and Alembic into a Raspberry Pi's memory for it.
    from gateway.db.database import Database

Clock = Callable[[], datetime]

PREFIX = "/api/v1/population-health"
SETTINGS = web.AppKey("settings", Settings)
DATABASE: web.AppKey[Database] = web.AppKey("database")
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
LIMITS = web.AppKey("limits", Limits)


def system_clock() -> datetime:
    return datetime.now(UTC)


def now(request: web.Request) -> datetime:
    return request.app[CLOCK]()


def database(request: web.Request) -> Database:
    return request.app[DATABASE]


def settings(request: web.Request) -> Settings:
    return request.app[SETTINGS]


def path_with_query(request: web.Request) -> str:
    """The path and query exactly as sent: what the caller signed."""
    return request.raw_path


async def read_body(request: web.Request) -> bytes:
    limit = request.app[LIMITS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge(f"request body over {limit} bytes") from err


def request_media_type(request: web.Request) -> str:
    return _media_type_of(request.headers.get("Content-Type"))


async def read_document(request: web.Request) -> tuple[bytes, Mapping[str, Any]]:
    """The raw body (for signatures and fingerprints) and its decoded map."""
    body = await read_body(request)
    return body, decode_document(request, body)


def decode_document(request: web.Request, body: bytes) -> Mapping[str, Any]:
    doc = decode_body(body, request_media_type(request), request.app[LIMITS])
    if not isinstance(doc, Mapping):
        raise MalformedBody("the request body must be an object")
    return doc


def answer_type(request: web.Request) -> str:
    if request.method in ("GET", "HEAD", "DELETE"):
        default = JSON
    else:
        try:
            default = _media_type_of(request.headers.get("Content-Type"))
        except PhsError:
            default = JSON
    return negotiate(request.headers.get("Accept"), default)


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def respond(
    request: web.Request,
    status: int,
    document: Any,
    headers: Mapping[str, str] | None = None,
    problem: bool = False,
) -> web.Response:
    media = answer_type(request)
    json_type = PROBLEM_JSON if problem else JSON
    response = web.Response(
        status=status,
        body=encode(document, media),
        content_type=MSGPACK if media == MSGPACK else json_type,
    )
    response.headers.update(headers or {})
    return response


def problem_response(request: web.Request, error: PhsError) -> web.Response:
    try:
        media = answer_type(request)
    except PhsError:
        media = JSON  # a problem must reach the caller even if Accept is odd
    response = web.Response(
        status=error.status,
        body=encode(error.problem(), media),
        content_type=MSGPACK if media == MSGPACK else PROBLEM_JSON,
    )
    response.headers.update(error.headers())
    return response


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise ValidationFailed(f"query parameter {name} must be an integer", field=name) from err
    if not minimum <= value <= maximum:
        raise ValidationFailed(
            f"query parameter {name} must be in {minimum}..{maximum}", field=name
        )
    return value

"""The one middleware that turns every failure into an RFC 9457 problem.

It also refuses, before any handler runs, a path parameter or query string
holding text no store can hold (``shared.encoding.unstorable_text``); body
strings are checked where bodies are decoded (``decode_body``). Both services
(the gateway and the edge node) use it.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.http import CLOCK, http_date, problem_response
from shared.encoding import unstorable_text
from shared.errors import (
    MalformedBody,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PhsError,
    ValidationFailed,
)

log = logging.getLogger("gateway.http")


def _from_http_exception(exc: web.HTTPException) -> PhsError | None:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such resource")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"method {exc.method} not allowed here")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("request body too large")
    return None


def check_request_text(request: web.Request) -> None:
    """Refuse a path parameter, query name or query value no store can hold.

    aiohttp decodes ``%00`` to NUL in both, which PostgreSQL text cannot hold
    (asyncpg raised: a 500 on ``GET …/outreach-items/%00``). Checked here, once
    for every route, not by each handler. The offending text is never echoed.
    """
    for name, value in request.match_info.items():
        fault = unstorable_text(value)
        if fault is not None:
            raise ValidationFailed(f"path parameter {name} contains {fault}", field=name)
    for key, value in request.query.items():
        fault = unstorable_text(key)
        if fault is not None:
            raise ValidationFailed(f"a query parameter's name contains {fault}")
        fault = unstorable_text(value)
        if fault is not None:
            name = key[:100]
            raise ValidationFailed(f"query parameter {name} contains {fault}", field=name)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        check_request_text(request)
        response = await handler(request)
    except PhsError as err:
        response = problem_response(request, err)
    except web.HTTPException as exc:
        translated = _from_http_exception(exc)
        if translated is None:
            raise
        response = problem_response(request, translated)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            # RFC 9110 section 15.5.6: a 405 lists the methods the resource allows.
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception as err:
        if isinstance(err, ConnectionResetError) and _client_gone(request):
            # The caller's connection broke while its body was being read (a WAN
            # reset; found by the chaos run): no fault of ours, and nobody will read
            # the answer. Nothing was written: no write starts before its body is whole.
            log.info("connection lost mid-request on %s %s", request.method, request.path)
            lost = MalformedBody("the connection was lost mid-request")
            response = problem_response(request, lost)
        else:
            # A bug of ours: log it with its traceback, answer a bare 500 problem.
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = problem_response(request, PhsError("unexpected server error"))
    # The gateway's own clock, so a caller told clock_skew can correct its offset.
    response.headers["Date"] = http_date(request.app[CLOCK]())
    return response


def _client_gone(request: web.Request) -> bool:
    """Whether the caller's own connection is closed (not one of ours to elsewhere)."""
    transport = request.transport
    return transport is None or transport.is_closing()

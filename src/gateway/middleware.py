"""The one middleware that turns every failure into an RFC 9457 problem."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.http import CLOCK, http_date, problem_response
from shared.errors import (
    MalformedBody,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PhsError,
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


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
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

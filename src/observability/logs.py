"""Structured logs: one JSON object per line, for journald (docs/logging.md).

Every command of the three CLIs calls ``configure_logging`` once. The
services (``phs-gateway serve`` and ``relay``, ``edgenode run``,
``phs-field serve``) write JSON lines to stdout, which journald collects;
one-shot commands default to a text format on stderr, since their stdout is
their answer.

A line is ``{"time", "level", "logger", "message", ...}``: the time in RFC
3339 UTC with milliseconds, then any fixed fields of the process (the
gateway's ``worker``), then the structured fields a call passes with
``extra=``, then ``exception`` (the traceback) when there is one.

No PHI and no key material reaches a log line: the calls log ids, counts
and codes only (tests/test_log_privacy.py scans a whole run). Two guards
stand behind that rule: the formatter blanks the value of any ``extra`` field
whose name is known to carry secrets or patient data (``REDACTED``), and
aiohttp's report of a malformed HTTP request, whose exception text quotes
the raw header or request line (a bearer token, a query string), is cut down
to the exception's class. Request lines are logged by ``RequestLog``: method,
path without the query string, status and duration; never headers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from shared.errors import ValidationFailed

JSON = "json"
TEXT = "text"
FORMATS = (JSON, TEXT)
REDACTED = "[redacted]"

#: ``extra`` field names (lower case, without ``_`` and ``-``) whose values are never
#: written: tokens, keys, signatures, request bodies and patient data.
SENSITIVE_FIELDS = frozenset(
    {
        "authorization",
        "token",
        "bearer",
        "bearertoken",
        "enrollmenttoken",
        "admintoken",
        "pairingcode",
        "password",
        "secret",
        "key",
        "privatekey",
        "publickey",
        "seed",
        "signature",
        "sig",
        "body",
        "data",
        "payload",
        "headers",
        "query",
        "patient",
        "patientref",
        "patientid",
        "patientname",
        "givenname",
        "familyname",
        "birthdate",
        "dateofbirth",
        "dob",
        "phone",
        "address",
    }
)

#: Libraries' loggers held at a level whatever ``log_level`` says. aiosqlite's
#: DEBUG lines print each statement with its bound values (patient data);
#: SQLAlchemy's INFO lines would too (it sets WARNING itself; kept so);
#: alembic's INFO lines are schema chatter on every command.
LIBRARY_LEVELS = {
    "aiosqlite": logging.INFO,
    "sqlalchemy": logging.WARNING,
    "alembic": logging.WARNING,
}

#: What every LogRecord carries by itself: anything else on a record came from ``extra``.
_BARE_RECORD = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
_RECORD_FIELDS = frozenset(vars(_BARE_RECORD)) | {"message", "asctime", "taskName"}


def is_sensitive(field: str) -> bool:
    return field.lower().replace("_", "").replace("-", "") in SENSITIVE_FIELDS


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call passed with ``extra=``, sensitive values blanked."""
    return {
        name: REDACTED if is_sensitive(name) else value
        for name, value in vars(record).items()
        if name not in _RECORD_FIELDS and not name.startswith("_")
    }


def rfc3339(created: float) -> str:
    """``2026-11-25T09:30:00.123Z``: UTC, milliseconds (the wire contract's form)."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks inside a string)."""

    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in (*self._fields.items(), *extra_fields(record).items()):
            line.setdefault(name, value)  # the four above always win
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``time LEVEL [prefix]logger message key=value ...``, for people at a terminal."""

    def __init__(self, prefix: str = "") -> None:
        escaped = prefix.replace("%", "%%")
        super().__init__(f"%(asctime)s %(levelname)s {escaped}%(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return text
        head, newline, rest = text.partition("\n")  # fields before any traceback
        pairs = " ".join(f"{name}={value}" for name, value in fields.items())
        return f"{head} {pairs}{newline}{rest}"


class MalformedRequestFilter(logging.Filter):
    """aiohttp's ``Error handling request`` for a request it could not parse
    quotes the offending raw bytes in the exception (a header with its bearer
    token, a request line with its query string). Keep one warning naming the
    exception's class and status; drop the text and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = "malformed HTTP request refused: %s (%s)"
            record.args = (type(error).__name__, error.code)
            if record.levelno > logging.WARNING:  # the client's fault, not the server's
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


class RequestLog(AbstractAccessLogger):
    """The access log (``access_log_class``): ``GET /path 200``, with method,
    path, status, duration and remote address as fields. Never the query
    string (it may carry a cursor or a filter value) nor any header."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %d",
            request.method,
            request.path,
            response.status,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "durationMs": round(time * 1000, 1),
                "remote": request.remote,
            },
        )


class LineHandler(logging.StreamHandler[IO[str]]):
    """The one handler ``configure_logging`` installs. Given ``sys.stdout`` or
    ``sys.stderr`` it writes to whichever object that name holds at each record
    (as ``logging.lastResort`` does), so a stream replaced later (pytest's
    capture, a redirect) is followed, never written to once closed."""

    def __init__(self, stream: IO[str]) -> None:
        self._by_name = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}.get(id(stream))
        super().__init__(stream)

    @property
    def stream(self) -> IO[str]:
        if self._by_name is not None:
            current: IO[str] = getattr(sys, self._by_name)
            return current
        return self._stream

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        self._stream = value


def configure_logging(
    level: str,
    fmt: str,
    *,
    stream: IO[str] | None = None,
    prefix: str = "",
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Route every logger of the process to one handler on ``stream`` (stdout
    by default) in ``fmt`` (``json`` or ``text``). ``prefix`` starts each text
    line (the gateway's "worker 2 (pid 4242): "); ``fields`` join each JSON
    line (``{"worker": 2}``). ``pid`` is always a field of a JSON line.

    Called again, it replaces its own handler; a handler someone else put on
    the root logger (pytest's, when a test calls a CLI's ``main``) stays."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = LineHandler(stream if stream is not None else sys.stdout)
    if fmt == JSON:
        handler.setFormatter(JsonFormatter({"pid": os.getpid(), **(fields or {})}))
    else:
        handler.setFormatter(TextFormatter(prefix))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, LineHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, floor in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(floor)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())
    # Python's own reports become lines of the same format (journald gets
    # one JSON object per line, a traceback inside it, not 20 bare lines).
    logging.captureWarnings(True)
    sys.excepthook = log_uncaught


def log_uncaught(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """``sys.excepthook``: an exception that ends the process, as a CRITICAL line."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, trace)
        return
    logging.getLogger("uncaught").critical(
        "the process ends on an unexpected %s", kind.__name__, exc_info=(kind, error, trace)
    )


def log_format(configured: str, service: bool) -> str:
    """The format of setting ``log_format``: as set, or json for a service
    (journald) and text for a one-shot command when it is empty."""
    if not configured:
        return JSON if service else TEXT
    if configured not in FORMATS:
        raise ValidationFailed(
            f"log_format must be one of {', '.join(FORMATS)}, not {configured[:40]!r}",
            field="log_format",
        )
    return configured


def lifecycle(name: str) -> logging.Logger:
    """A logger whose INFO lines are written whatever ``log_level`` says: a
    service's start ("Running on …") and stop, which operators and scripts
    wait for even with ``log_level = "WARNING"``."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    return logger

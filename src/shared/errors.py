"""The one error tree of PHS Sync.

Every failure a caller can cause is one of these classes; each carries its
HTTP status and the stable ``code`` of CONTRACT.md, and one middleware per
service renders it as an RFC 9457 problem document::

    PhsError (500 internal_error)
    ├── BadRequest (400)
    │   ├── MalformedBody            malformed_body
    │   ├── BadIdempotencyKey        bad_idempotency_key
    │   └── BadCursor                bad_cursor
    ├── Unauthorized (401)
    │   ├── MissingCredentials       unauthenticated
    │   ├── UnknownKey               unknown_key
    │   ├── BadSignature             bad_signature
    │   ├── ClockSkew                clock_skew
    │   └── KeyRetired               key_retired
    ├── Forbidden (403)
    │   ├── KeyRevoked               key_revoked
    │   ├── RoleForbidden            forbidden
    │   ├── OutOfScope               out_of_scope
    │   └── PolicyServerAuthoritative policy_server_authoritative
    ├── NotFound (404)               not_found
    ├── MethodNotAllowed (405)       method_not_allowed
    ├── NotAcceptable (406)          not_acceptable
    ├── Conflict (409)
    │   ├── AlreadyExists            already_exists
    │   ├── Immutable                immutable
    │   ├── ReportConflict           report_conflict
    │   ├── ExportNotDownloadable    export_not_downloadable (+ state)
    │   └── IdempotencyInFlight      idempotency_in_flight
    ├── PayloadTooLarge (413)        payload_too_large
    │   └── BatchTooLarge            batch_too_large
    ├── UnsupportedMediaType (415)   unsupported_media_type
    ├── Unprocessable (422)
    │   ├── ValidationFailed         validation_failed
    │   ├── InvalidReport            invalid_report
    │   ├── IdempotencyKeyMismatch   idempotency_key_mismatch
    │   └── CohortInvalid            cohort_invalid (+ errors: [{path, message}])
    └── ServiceUnavailable (503)     unavailable

Per-item batch results reuse the same codes (``ItemCode``) without raising.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, ClassVar

PROBLEM_TYPE_BASE = "https://phs-sync.org/problems/"


class PhsError(Exception):
    """Base of every error we raise on purpose; never raised bare."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        # Extra members of the problem document (e.g. reportId, path).
        self.extra = extra

    def headers(self) -> dict[str, str]:
        """Headers the response must carry (Retry-After, ...)."""
        return {}

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem document as a plain map."""
        doc: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        doc.update(self.extra)
        return doc


class BadRequest(PhsError):
    status = 400
    code = "bad_request"
    title = "Bad request"


class MalformedBody(BadRequest):
    code = "malformed_body"
    title = "Malformed request body"


class BadIdempotencyKey(BadRequest):
    code = "bad_idempotency_key"
    title = "Bad Idempotency-Key header"


class BadCursor(BadRequest):
    code = "bad_cursor"
    title = "Bad cursor"


class Unauthorized(PhsError):
    status = 401
    code = "unauthenticated"
    title = "Authentication required"

    def headers(self) -> dict[str, str]:
        # RFC 9110 section 11.6.1: a 401 names the schemes it accepts (signed
        # node and tablet requests, CONTRACT section 2; bearer tokens for people).
        return {"WWW-Authenticate": 'PHS-Ed25519 realm="phs-sync", Bearer realm="phs-sync"'}


class MissingCredentials(Unauthorized):
    code = "unauthenticated"
    title = "Authentication required"


class UnknownKey(Unauthorized):
    code = "unknown_key"
    title = "Unknown key"


class BadSignature(Unauthorized):
    code = "bad_signature"
    title = "Bad signature"


class ClockSkew(Unauthorized):
    code = "clock_skew"
    title = "Clock skew too large"


class KeyRetired(Unauthorized):
    """A node key whose rotation overlap window is over (docs/key-rotation.md):
    a 401, unlike a revoked key's 403, because the node itself is still
    trusted and may authenticate again with its newer key."""

    code = "key_retired"
    title = "Key retired"


class Forbidden(PhsError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class KeyRevoked(Forbidden):
    code = "key_revoked"
    title = "Key revoked"


class RoleForbidden(Forbidden):
    code = "forbidden"
    title = "Role not allowed"


class OutOfScope(Forbidden):
    code = "out_of_scope"
    title = "Out of scope"


class PolicyServerAuthoritative(Forbidden):
    code = "policy_server_authoritative"
    title = "Server-authoritative aggregate"


class NotFound(PhsError):
    status = 404
    code = "not_found"
    title = "Not found"


class MethodNotAllowed(PhsError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class NotAcceptable(PhsError):
    status = 406
    code = "not_acceptable"
    title = "Not acceptable"


class Conflict(PhsError):
    status = 409
    code = "conflict"
    title = "Conflict"


class AlreadyExists(Conflict):
    code = "already_exists"
    title = "Already exists"


class Immutable(Conflict):
    code = "immutable"
    title = "Immutable"


class ReportConflict(Conflict):
    code = "report_conflict"
    title = "Report conflicts with the stored report"


class ExportNotDownloadable(Conflict):
    """An export job's result was asked for, but the job has none to give:
    it is not finished, failed, or (a de-identified extract) blocked. The
    problem names the job's ``state``."""

    code = "export_not_downloadable"
    title = "Export not downloadable"


class IdempotencyInFlight(Conflict):
    code = "idempotency_in_flight"
    title = "Request with this Idempotency-Key is still running"

    def __init__(self, detail: str | None = None, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class PayloadTooLarge(PhsError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class BatchTooLarge(PayloadTooLarge):
    code = "batch_too_large"
    title = "Batch too large"


class UnsupportedMediaType(PhsError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class Unprocessable(PhsError):
    status = 422
    code = "unprocessable"
    title = "Unprocessable request"


class ValidationFailed(Unprocessable):
    code = "validation_failed"
    title = "Validation failed"


class InvalidReport(Unprocessable):
    code = "invalid_report"
    title = "Invalid facility report"


class IdempotencyKeyMismatch(Unprocessable):
    code = "idempotency_key_mismatch"
    title = "Idempotency-Key reused with a different request"


class CohortInvalid(Unprocessable):
    """A cohort definition (or a ``cohort.draft``) the validator refused.

    The problem document carries every error found, not just the first, as
    ``errors: [{"path", "message"}]`` where ``path`` is an RFC 6901 JSON
    pointer into the definition (``""`` is the whole definition).
    """

    code = "cohort_invalid"
    title = "Invalid cohort definition"

    def __init__(
        self,
        detail: str | None = None,
        errors: Sequence[Mapping[str, str]] = (),
        **extra: Any,
    ) -> None:
        listed = [{"path": e["path"], "message": e["message"]} for e in errors]
        super().__init__(detail, errors=listed, **extra)
        self.errors = listed


class ServiceUnavailable(PhsError):
    """Temporarily unable to answer (store unreachable, writes kept aborting);
    with ``retry_after`` the answer says when to try again."""

    status = 503
    code = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class ItemCode(StrEnum):
    """Codes carried by per-item results (batches, tablet pushes)."""

    UNKNOWN_ITEM = "unknown_item"
    FSM_INVALID_TRANSITION = "fsm_invalid_transition"
    FSM_GAP = "fsm_gap"
    SERVER_ADVANCED = "server_advanced"
    SUPERSEDED_BY_NEWER = "superseded_by_newer"
    UNKNOWN_KIND = "unknown_kind"
    POLICY_SERVER_AUTHORITATIVE = "policy_server_authoritative"
    OUT_OF_SCOPE = "out_of_scope"
    INVALID_REPORT = "invalid_report"
    REPORT_CONFLICT = "report_conflict"
    VALIDATION_FAILED = "validation_failed"
    COHORT_INVALID = "cohort_invalid"
    NOT_FOUND = "not_found"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    KEY_REVOKED = "key_revoked"
    KEY_RETIRED = "key_retired"

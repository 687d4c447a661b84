"""The paths of the gateway's OpenAPI document (``gateway.openapi``), one entry per
route of ``gateway.app.add_routes``, with the documents they take and answer.

Request bodies are closed (``additionalProperties: false``) exactly where the
handler refuses unknown fields; answers are open (clients ignore new members).
The problem codes per operation are those of docs/api.md and CONTRACT.md.
"""

from __future__ import annotations

from typing import Any

from gateway.http import PREFIX
from gateway.openapi import (
    HTML,
    OPENAPI_PATH,
    SIGNED,
    TOKEN,
    WRITER,
    Schema,
    answer,
    array,
    closed,
    limit_parameter,
    merge,
    nullable,
    operation,
    path_parameter,
    problem_answer,
    query_parameter,
    ref,
    text,
)
from shared.encoding import JSON

ID, TIME, DATE, BYTES = ref("Identifier"), ref("Timestamp"), ref("Date"), ref("Bytes")
STRING, INTEGER, BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
OBJECT: Schema = {"type": "object"}
STATE: Schema = {
    "type": "string",
    "enum": [
        "pending",
        "assigned",
        "in_progress",
        "contacted",
        "completed",
        "declined",
        "unreachable",
        "cancelled",
    ],
}

TAGS = [
    {"name": "service", "description": "Liveness, readiness, metrics and this document"},
    {"name": "admin", "description": "Edge node enrollment and the admin page"},
    {"name": "sync", "description": "Edge nodes: signed batches, reports and the change feed"},
    {"name": "outreach", "description": "Outreach items and server transitions"},
    {"name": "analytics", "description": "Merged facility reports and events"},
    {"name": "cohorts", "description": "Population cohorts, versions and memberships"},
    {"name": "registry", "description": "Disease registry entries and risk scores"},
    {"name": "quality", "description": "Quality metric snapshots"},
    {"name": "exports", "description": "HMIS and de-identified export jobs"},
]

# --- documents -----------------------------------------------------------------------

NODE = answer(
    {
        "nodeId": ID,
        "tenantId": ID,
        "facilityIds": array(ID),
        "publicKey": BYTES,
        "fp": STRING,
        "capabilities": array(STRING),
        "status": {"enum": ["active", "revoked"]},
        "enrolledAt": TIME,
        "revokedAt": nullable(TIME),
    }
)
NEW_NODE = closed(
    {
        "nodeId": ID,
        "tenantId": ID,
        "facilityIds": array(ID),
        "publicKey": BYTES,
        "capabilities": array({"enum": ["risk_override"]}),
    },
    ["nodeId", "tenantId", "facilityIds", "publicKey"],
)
NEW_ITEM = closed(
    {
        "id": ID,
        "facilityId": ID,
        "state": STATE,
        "assigneeId": nullable(ID),
        "patientRef": nullable(ID),
        "cohortId": nullable(ID),
        "dueDate": nullable(DATE),
    },
    ["id", "facilityId", "state"],
)
ITEM = answer(
    {
        "id": ID,
        "facilityId": ID,
        "state": STATE,
        "assigneeId": nullable(STRING),
        "history": array(OBJECT),
    }
)
NEW_ITEM_ANSWER = answer(
    {
        "id": ID,
        "facilityId": ID,
        "state": STATE,
        "assigneeId": nullable(STRING),
        "version": INTEGER,
        "updatedAt": TIME,
    }
)
SERVER_TRANSITION = closed(
    {"id": ID, "from": text(64), "to": text(64), "occurredAt": TIME}, ["id", "from", "to"]
)
RESULT = answer(
    {
        "id": STRING,
        "status": {"enum": ["applied", "noop", "duplicate", "rejected", "superseded"]},
        "code": nullable(STRING),
        "detail": STRING,
        "itemId": STRING,
        "state": nullable(STATE),
        "version": nullable(INTEGER),
    },
    ["id", "status"],
)
REPORT_SUBMISSION = closed(
    {"deviceId": ID, "payload": BYTES, "signature": BYTES},
    ["deviceId", "payload", "signature"],
)
REPORT_RECEIPT = answer(
    {
        "status": {"enum": ["merged", "duplicate"]},
        "reportId": STRING,
        "facilityId": ID,
        "periodKey": STRING,
        "deviceId": ID,
    }
)
BATCH = closed(
    {
        "v": {"const": 1},
        "batchId": ID,
        "nodeId": ID,
        "createdAt": TIME,
        "items": array(answer({"kind": STRING, "id": ID}, ["kind"]), 5000),
    },
    ["v", "batchId", "nodeId", "createdAt", "items"],
)
CHANGES = answer(
    {
        "changes": array(
            answer(
                {
                    "seq": INTEGER,
                    "aggregate": STRING,
                    "id": STRING,
                    "op": {"enum": ["upsert", "delete"]},
                    "data": {},
                }
            )
        ),
        "cursor": {"type": "string", "pattern": "^[0-9]+$"},
        "more": BOOLEAN,
    }
)
REPORT = answer(
    {
        "reportId": STRING,
        "facilityId": ID,
        "periodType": ref("PeriodType"),
        "periodKey": STRING,
        "deviceId": ID,
        "metrics": OBJECT,
        "generatedAt": STRING,
        "receivedAt": STRING,
    }
)
COHORT_VERSION = answer(
    {"cohortId": ID, "name": STRING, "version": INTEGER, "definition": OBJECT, "createdAt": TIME}
)
DEFINITION: Schema = {"type": "object", "description": "a cohort definition (docs/cohorts.md)"}
NEW_COHORT = closed(
    {"cohortId": ID, "name": text(200, 1), "definition": DEFINITION},
    ["cohortId", "name", "definition"],
)
DRAFT = closed({"definition": DEFINITION}, ["definition"])
MEMBERS = answer(
    {
        "cohortId": ID,
        "version": INTEGER,
        "members": array(OBJECT),
        "cursor": nullable(STRING),
        "more": BOOLEAN,
    }
)
CONDITION = closed(
    {"code": {"type": "string", "pattern": "^[A-Za-z0-9.-]{1,32}$"}, "onset": nullable(DATE)},
    ["code"],
)
ENTRY_FIELDS: dict[str, Schema] = {
    "id": ID,
    "facilityId": ID,
    "patientRef": text(128),
    "sex": {"enum": ["female", "male", "other", "unknown"]},
    "birthDate": DATE,
    "conditions": array(CONDITION),
    "lastScreeningDate": nullable(DATE),
    "lastImmunizationDate": nullable(DATE),
}
ENTRY = closed(ENTRY_FIELDS, ["id", "facilityId", "patientRef", "sex", "birthDate"])
STORED_ENTRY = answer(
    {**ENTRY_FIELDS, "version": INTEGER, "createdAt": TIME, "updatedAt": TIME},
    ["id", "facilityId", "version"],
)
TOMBSTONE = answer({"id": ID, "facilityId": ID, "version": INTEGER, "deletedAt": TIME})
ENTRIES = answer({"entries": array(OBJECT), "cursor": nullable(STRING), "more": BOOLEAN})
RISK = answer(
    {
        "entryId": ID,
        "facilityId": ID,
        "score": nullable(INTEGER),
        "band": nullable(STRING),
        "source": STRING,
        "computed": nullable(OBJECT),
        "override": nullable(OBJECT),
        "computedAt": nullable(STRING),
        "audit": array(OBJECT),
    }
)
OVERRIDE = closed(
    {
        "id": ID,
        "value": nullable({"type": "integer", "minimum": 0, "maximum": 100}),
        "reason": text(500, 1),
        "occurredAt": TIME,
    },
    ["id", "value", "reason", "occurredAt"],
)
OVERRIDE_RESULT = answer(
    {
        "id": ID,
        "status": {"enum": ["applied", "superseded", "duplicate"]},
        "entryId": ID,
        "risk": OBJECT,
    }
)
SNAPSHOT = answer({"id": STRING, "tenantId": ID, "createdBy": STRING, "createdAt": TIME})
JOB = answer(
    {"id": ID, "kind": STRING, "state": STRING, "createdBy": STRING, "createdAt": TIME},
)
DEIDENT_REQUEST = closed(
    {
        "cohortId": nullable(ID),
        "asOf": nullable(DATE),
        "k": nullable({"type": "integer", "minimum": 2, "maximum": 1000}),
    }
)
OVERVIEW = answer(
    {"tenantId": ID, "at": TIME, "nodes": array(OBJECT), "reportGrid": {}, "rejected": OBJECT},
)


def _raw(media: str, description: str, status_schema: Schema | None = None) -> Schema:
    return {"description": description, "content": {media: {"schema": status_schema or {}}}}


def _see_page(description: str) -> Schema:
    return {
        "description": description,
        "headers": {"Location": {"schema": {"const": "/admin"}}},
    }


def _download(name: str) -> Schema:
    return {
        "description": f"The stored {name}, byte for byte (whatever the Accept)",
        "headers": {
            "X-Content-SHA256": {"schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
            "Content-Disposition": {"schema": STRING},
        },
        "content": {JSON: {"schema": {}}},
    }


def _refused_writes(prefix: str, methods: list[str], **kw: Any) -> dict[str, Schema]:
    """Methods that every role is refused (and recorded)."""
    return {
        m.lower(): operation(f"{prefix}{m.title()}", f"{m}: always refused", **kw) for m in methods
    }


LOGIN_FORM: Schema = {
    "type": "object",
    "properties": {"token": text(200)},
    "required": ["token"],
}
COHORT_ID, VERSION = path_parameter("cohortId"), path_parameter("version", STRING)
ITEM_ID, ENTRY_ID, NODE_ID = (
    path_parameter("id"),
    path_parameter("entryId"),
    path_parameter("nodeId"),
)
PERIOD_QUERY = [
    query_parameter("periodType", ref("PeriodType")),
    query_parameter("from", ref("PeriodKey"), "first period key (inclusive)"),
    query_parameter("to", ref("PeriodKey"), "last period key (inclusive)"),
]
PAGE_QUERY = [
    query_parameter("facilityId", ID),
    query_parameter("after", ID, "the last id seen (the previous page's cursor)"),
]
A = PREFIX

PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": operation(
            "healthz",
            "Liveness: the process answers",
            tag="service",
            security=None,
            ok={200: answer({"status": {"const": "ok"}})},
            uses_store=False,
        )
    },
    "/readyz": {
        "get": operation(
            "readyz",
            "Readiness: the database answers (503 unavailable when it does not)",
            tag="service",
            security=None,
            ok={200: answer({"status": {"const": "ready"}})},
        )
    },
    "/metrics": {
        "get": operation(
            "metrics",
            "Prometheus metrics (docs/metrics.md)",
            tag="service",
            security=None,
            ok={200: _raw("text/plain", "Prometheus text exposition (or OpenMetrics)")},
            uses_store=False,
        )
    },
    OPENAPI_PATH: {
        "get": operation(
            "openapi",
            "This document",
            tag="service",
            security=None,
            ok={200: _raw(JSON, "The OpenAPI 3.1 document")},
            uses_store=False,
            negotiated=False,
        )
    },
    "/admin": {
        "get": {
            "operationId": "adminPage",
            "summary": "The admin page (HTML): by bearer token or session cookie",
            "tags": ["admin"],
            "security": [{"bearerToken": []}, {"adminSession": []}],
            "responses": {
                "200": _raw(HTML, "The page"),
                "401": _raw(HTML, "The login form"),
            },
        }
    },
    "/admin/login": {
        "post": {
            "operationId": "adminLogin",
            "summary": "Exchange an admin token for a session cookie (8 h)",
            "tags": ["admin"],
            "security": [],
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": LOGIN_FORM}},
            },
            "responses": {
                "303": _see_page("Logged in: Set-Cookie phs_admin, to the page"),
                "401": _raw(HTML, "Not an admin token: the login form again"),
                "400": problem_answer(400, ["malformed_body"]),
                "413": problem_answer(413, ["payload_too_large"]),
            },
        },
        "get": {
            "operationId": "adminLoginPage",
            "summary": "To the page",
            "tags": ["admin"],
            "security": [],
            "responses": {"303": _see_page("To the page")},
        },
    },
    "/admin/logout": {
        "post": {
            "operationId": "adminLogout",
            "summary": "End the session of the cookie sent",
            "tags": ["admin"],
            "security": [{"adminSession": []}],
            "responses": {"303": _see_page("Logged out, to the page")},
        },
        "get": {
            "operationId": "adminLogoutPage",
            "summary": "To the page",
            "tags": ["admin"],
            "security": [],
            "responses": {"303": _see_page("To the page")},
        },
    },
    f"{A}/admin/overview": {
        "get": operation(
            "adminOverview",
            "The admin page's figures (admin token)",
            tag="admin",
            ok={200: OVERVIEW},
            problems=TOKEN,
        )
    },
    f"{A}/admin/nodes": {
        "post": operation(
            "enrollNode",
            "Enroll an edge node (admin token of its tenant)",
            tag="admin",
            body=NEW_NODE,
            ok={201: NODE},
            problems=merge(TOKEN, {403: ["out_of_scope"], 409: ["already_exists"]}),
        )
    },
    f"{A}/admin/nodes/{{nodeId}}": {
        "parameters": [NODE_ID],
        "get": operation(
            "readNode",
            "A node of the admin's tenant",
            tag="admin",
            ok={200: NODE},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
        "delete": operation(
            "revokeNode",
            "Revoke a node",
            tag="admin",
            idempotent_write=True,
            ok={200: NODE},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
    },
    f"{A}/outreach-items": {
        "post": operation(
            "createOutreachItem",
            "Import an outreach item in any state (admin or service)",
            tag="outreach",
            body=NEW_ITEM,
            ok={201: NEW_ITEM_ANSWER},
            problems=merge(TOKEN, {409: ["already_exists"]}),
        )
    },
    f"{A}/outreach-items/{{id}}": {
        "parameters": [ITEM_ID],
        "get": operation(
            "readOutreachItem",
            "An item with its whole history",
            tag="outreach",
            ok={200: ITEM},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
    },
    f"{A}/outreach-items/{{id}}/transitions": {
        "parameters": [ITEM_ID],
        "post": operation(
            "serverTransition",
            "A server transition; always 200 with the per-item result",
            tag="outreach",
            body=SERVER_TRANSITION,
            ok={200: RESULT},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
    },
    f"{A}/sync/facility-reports": {
        "post": operation(
            "submitFacilityReport",
            "One facility report, authenticated by its own signature (CONTRACT section 6)",
            tag="sync",
            security=None,
            body=REPORT_SUBMISSION,
            ok={201: REPORT_RECEIPT, 200: REPORT_RECEIPT},
            problems={
                401: ["unknown_key", "bad_signature", "key_retired"],
                403: ["key_revoked", "out_of_scope"],
                409: ["report_conflict"],
                422: ["invalid_report"],
            },
        )
    },
    f"{A}/sync/batches": {
        "post": operation(
            "submitBatch",
            "An edge node's signed batch (CONTRACT section 7); Idempotency-Key is its batchId",
            tag="sync",
            security="node",
            body=BATCH,
            ok={200: answer({"batchId": ID, "results": array(OBJECT)})},
            problems=merge(SIGNED, {403: ["out_of_scope"], 413: ["batch_too_large"]}),
        )
    },
    f"{A}/sync/changes": {
        "get": operation(
            "readChanges",
            "The change feed towards a node (CONTRACT section 8)",
            tag="sync",
            security="node",
            parameters=[
                query_parameter(
                    "since",
                    {"type": "string", "pattern": "^[0-9]{0,19}$"},
                    "the last cursor seen; empty or absent: from the start",
                ),
                limit_parameter(5000, 5000),
            ],
            ok={200: CHANGES},
            problems=merge(SIGNED, {400: ["bad_cursor"], 422: ["validation_failed"]}),
        )
    },
    f"{A}/analytics/facility-reports": {
        "get": operation(
            "readFacilityReports",
            "Merged facility reports (analyst or admin)",
            tag="analytics",
            parameters=[
                query_parameter("facilityId", ID),
                *PERIOD_QUERY,
                limit_parameter(10000, 1000),
            ],
            ok={200: answer({"reports": array(REPORT)})},
            problems=merge(TOKEN, {422: ["validation_failed"]}),
        )
    },
    f"{A}/events": {
        "get": operation(
            "readEvents",
            "The event outbox of the token's tenant (service or admin)",
            tag="analytics",
            parameters=[
                query_parameter("after", {"type": "integer", "minimum": 0}, "the last seq seen"),
                limit_parameter(1000, 1000),
            ],
            ok={200: answer({"events": array(OBJECT), "cursor": {}})},
            problems=merge(TOKEN, {422: ["validation_failed"]}),
        )
    },
    f"{A}/cohorts": {
        "post": operation(
            "createCohort",
            "Create a cohort and its version 1 (admin)",
            tag="cohorts",
            body=NEW_COHORT,
            ok={201: COHORT_VERSION},
            problems=merge(WRITER, {409: ["already_exists"], 422: ["cohort_invalid"]}),
        ),
        "get": operation(
            "listCohorts",
            "Every cohort at its latest version (admin or analyst)",
            tag="cohorts",
            ok={200: answer({"cohorts": array(OBJECT)})},
            problems=TOKEN,
        ),
    },
    f"{A}/cohorts/{{cohortId}}": {
        "parameters": [COHORT_ID],
        "get": operation(
            "readCohort",
            "The latest version and the list of versions",
            tag="cohorts",
            ok={200: answer({**COHORT_VERSION["properties"], "versions": array(OBJECT)})},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
        **{
            m.lower(): operation(
                f"changeCohort{m.title()}",
                f"{m}: 409 immutable (a cohort changes only by a new version)",
                tag="cohorts",
                ok={},
                problems={401: ["unauthenticated"], 404: ["not_found"], 409: ["immutable"]},
            )
            for m in ("PUT", "PATCH", "DELETE")
        },
    },
    f"{A}/cohorts/{{cohortId}}/drafts": {
        "parameters": [COHORT_ID],
        "post": operation(
            "postCohortDraft",
            "A new version (201), or the latest when the draft says the same (200)",
            tag="cohorts",
            body=DRAFT,
            ok={201: COHORT_VERSION, 200: COHORT_VERSION},
            problems=merge(WRITER, {404: ["not_found"], 422: ["cohort_invalid"]}),
        ),
    },
    f"{A}/cohorts/{{cohortId}}/versions/{{version}}": {
        "parameters": [COHORT_ID, VERSION],
        "get": operation(
            "readCohortVersion",
            "One version with its author and source",
            tag="cohorts",
            ok={200: COHORT_VERSION},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
        **{
            m.lower(): operation(
                f"changeCohortVersion{m.title()}",
                f"{m}: 409 immutable (404 if there is no such version)",
                tag="cohorts",
                ok={},
                problems={401: ["unauthenticated"], 404: ["not_found"], 409: ["immutable"]},
            )
            for m in ("PUT", "PATCH", "POST", "DELETE")
        },
    },
    f"{A}/cohorts/{{cohortId}}/members": {
        "parameters": [COHORT_ID],
        "get": operation(
            "readCohortMembers",
            "The latest version's members, in entry id order",
            tag="cohorts",
            parameters=[*PAGE_QUERY, limit_parameter(5000, 1000)],
            ok={200: MEMBERS},
            problems=merge(TOKEN, {404: ["not_found"], 422: ["validation_failed"]}),
        ),
        **_refused_writes(
            "writeCohortMembers",
            ["PUT", "PATCH", "POST", "DELETE"],
            tag="cohorts",
            ok={},
            problems=WRITER,
        ),
    },
    f"{A}/registry/entries": {
        "get": operation(
            "listRegistryEntries",
            "Live entries in id order (admin or analyst)",
            tag="registry",
            parameters=[*PAGE_QUERY, limit_parameter(1000, 100)],
            ok={200: ENTRIES},
            problems=merge(TOKEN, {422: ["validation_failed"]}),
        )
    },
    f"{A}/registry/entries/{{id}}": {
        "parameters": [ITEM_ID],
        "put": operation(
            "putRegistryEntry",
            "Create (201) or update (200) an entry (service token); id must be the path's",
            tag="registry",
            body=ENTRY,
            ok={201: STORED_ENTRY, 200: STORED_ENTRY},
            problems=WRITER,
        ),
        "delete": operation(
            "deleteRegistryEntry",
            "Delete an entry, keeping a tombstone (service token)",
            tag="registry",
            idempotent_write=True,
            ok={200: TOMBSTONE},
            problems=merge(WRITER, {404: ["not_found"]}),
        ),
        "get": operation(
            "readRegistryEntry",
            "An entry (admin or analyst)",
            tag="registry",
            ok={200: STORED_ENTRY},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
    },
    f"{A}/risk-scores/{{entryId}}": {
        "parameters": [ENTRY_ID],
        "get": operation(
            "readRiskScore",
            "The effective score, its source and audit trail (admin or analyst)",
            tag="registry",
            ok={200: RISK},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
        **_refused_writes(
            "writeRiskScore", ["PUT", "PATCH", "DELETE"], tag="registry", ok={}, problems=WRITER
        ),
    },
    f"{A}/risk-scores/{{entryId}}/overrides": {
        "parameters": [ENTRY_ID],
        "post": operation(
            "overrideRiskScore",
            "An admin override (every attempt audited); 200 the per-item result",
            tag="registry",
            body=OVERRIDE,
            ok={200: OVERRIDE_RESULT},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
    },
    f"{A}/quality-snapshots": {
        "post": operation(
            "createQualitySnapshot",
            "A period's snapshot: 201 new, 200 the same as stored, 409 immutable if different",
            tag="quality",
            body=ref("Period"),
            ok={201: SNAPSHOT, 200: SNAPSHOT},
            problems=merge(WRITER, {409: ["immutable"]}),
        ),
        "get": operation(
            "listQualitySnapshots",
            "Snapshots in type and key order (admin or analyst)",
            tag="quality",
            parameters=[*PERIOD_QUERY, limit_parameter(10000, 1000)],
            ok={200: answer({"snapshots": array(OBJECT)})},
            problems=merge(TOKEN, {422: ["validation_failed"]}),
        ),
    },
    f"{A}/quality-snapshots/{{id}}": {
        "parameters": [path_parameter("id", ref("PeriodKey"))],
        "get": operation(
            "readQualitySnapshot",
            "A snapshot; its id is its period key",
            tag="quality",
            ok={200: SNAPSHOT},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
        **_refused_writes(
            "changeQualitySnapshot",
            ["PUT", "PATCH", "DELETE"],
            tag="quality",
            ok={},
            problems=merge(WRITER, {409: ["immutable"]}),
        ),
    },
    f"{A}/hmis-exports": {
        "post": operation(
            "createHmisExport",
            "Queue a DHIS2 dataValueSets export of a period (admin); 202 with Location",
            tag="exports",
            body=ref("Period"),
            ok={202: JOB},
            problems=WRITER,
        )
    },
    f"{A}/hmis-exports/{{id}}": {
        "parameters": [ITEM_ID],
        "get": operation(
            "readHmisExport",
            "An HMIS export job (admin)",
            tag="exports",
            ok={200: JOB},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
    },
    f"{A}/hmis-exports/{{id}}/document": {
        "parameters": [path_parameter("id", STRING)],
        "get": operation(
            "downloadHmisExport",
            "The document of a succeeded job; every attempt recorded",
            tag="exports",
            ok={200: _download("dataValueSets document")},
            problems=merge(TOKEN, {404: ["not_found"], 409: ["export_not_downloadable"]}),
        ),
    },
    f"{A}/deident-exports": {
        "post": operation(
            "createDeidentExport",
            "Queue a de-identified extract (admin); 202 with Location",
            tag="exports",
            body=DEIDENT_REQUEST,
            ok={202: JOB},
            problems=WRITER,
        )
    },
    f"{A}/deident-exports/{{id}}": {
        "parameters": [ITEM_ID],
        "get": operation(
            "readDeidentExport",
            "A de-identification job (admin)",
            tag="exports",
            ok={200: JOB},
            problems=merge(TOKEN, {404: ["not_found"]}),
        ),
    },
    f"{A}/deident-exports/{{id}}/download": {
        "parameters": [path_parameter("id", STRING)],
        "get": operation(
            "downloadDeidentExport",
            "The extract of a released job; every attempt recorded",
            tag="exports",
            ok={200: _download("extract")},
            problems=merge(TOKEN, {404: ["not_found"], 409: ["export_not_downloadable"]}),
        ),
    },
}

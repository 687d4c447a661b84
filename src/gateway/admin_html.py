"""The admin page's HTML, rendered from ``gateway.admin_overview``'s document,
and its login form.

Key figures carry stable ids and ``data-value`` (``observability.html_page``);
table rows carry ``data-key`` (the node, facility or record) and cells
``data-field``, so browser tests compare them with ``GET …/admin/overview``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.admin_sessions import SESSION_LIFETIME
from observability.html_page import (
    Html,
    ago,
    card,
    document,
    field,
    join,
    moment,
    pill,
    stamp,
    stat,
    stats,
    table,
    text,
)

REFRESH_SECONDS = 60
LOGIN_PATH = "/admin/login"
LOGOUT_PATH = "/admin/logout"


def _offset(seconds: float | None) -> Html:
    if seconds is None:
        return pill("unknown", "none")
    size = abs(seconds)
    tone = "ok" if size < 5 else "warn" if size < 60 else "bad"
    return pill(f"{seconds:+.1f} s", tone)


def _seen(seen: str | None, age_seconds: float | None, now: datetime) -> Html:
    if seen is None or age_seconds is None:
        return pill("never", "none")
    tone = "ok" if age_seconds < 900 else "warn" if age_seconds < 86400 else "bad"
    return Html(f"{pill(ago(seen, now) or '', tone)} <small>{stamp(seen)}</small>")


def _summary(doc: Mapping[str, Any]) -> Html:
    nodes = doc["nodes"]
    rejected = doc["rejected"]
    grid = doc["reportGrid"]

    def problem(count: int) -> str:
        return "warn" if count else ""

    return stats(
        stat("nodes-count", "Nodes", len(nodes)),
        stat("nodes-active", "Active", sum(1 for n in nodes if n["status"] == "active")),
        stat(
            "reports-arrived-weekly",
            "Weekly reports",
            grid["weekly"]["arrived"],
            note=f"last {len(grid['weekly']['periods'])} weeks",
        ),
        stat(
            "reports-arrived-daily",
            "Daily reports",
            grid["daily"]["arrived"],
            note=f"last {len(grid['daily']['periods'])} days",
        ),
        stat(
            "rejected-transitions-count",
            "Transitions refused",
            rejected["transitionsTotal"],
            problem(rejected["transitionsTotal"]),
        ),
        stat(
            "report-conflicts-count",
            "Report conflicts",
            rejected["reportConflictsTotal"],
            problem(rejected["reportConflictsTotal"]),
        ),
        stat(
            "refused-writes-count",
            "Refused writes",
            rejected["refusedWritesTotal"],
            problem(rejected["refusedWritesTotal"]),
        ),
    )


def _nodes(doc: Mapping[str, Any], now: datetime) -> Html:
    nodes = doc["nodes"]
    rows = [
        (
            Html(f"<strong>{text(n['nodeId'])}</strong>"),
            field(
                "status", n["status"], pill(n["status"], "ok" if n["status"] == "active" else "bad")
            ),
            field("facilityIds", ",".join(n["facilityIds"]), text(", ".join(n["facilityIds"]))),
            field(
                "lastSeenAt", n["lastSeenAt"], _seen(n["lastSeenAt"], n["lastSeenAgeSeconds"], now)
            ),
            field("clockOffsetSeconds", n["clockOffsetSeconds"], _offset(n["clockOffsetSeconds"])),
            field("fp", n["fp"], Html(f"<code>{text(n['fp'])}</code>")),
        )
        for n in nodes
    ]
    return card(
        "Nodes",
        table(
            "nodes-table",
            ("Node", "Status", "Facilities", "Last seen", "Clock offset", "Key"),
            rows,
            "No node is enrolled in this tenant.",
            [n["nodeId"] for n in nodes],
        ),
        "nodes",
    )


def _grid_cell(key: str, nodes: list[str]) -> Html:
    """One facility's report for one period: ✓ once, the count when several
    nodes sent one (the facility is served twice), — when none arrived."""
    count = len(nodes)
    if count == 0:
        return field(key, 0, pill("—", "none"))
    return field(
        key, count, pill("✓" if count == 1 else str(count), "ok" if count == 1 else "warn")
    )


def _grid(doc: Mapping[str, Any], period_type: str, title: str) -> Html:
    grid = doc["reportGrid"][period_type]
    periods: list[str] = grid["periods"][::-1]  # newest first: what a phone shows unscrolled
    rows = [
        [
            Html(f"<strong>{text(row['facilityId'])}</strong>"),
            *(_grid_cell(key, row["cells"][key]["nodes"]) for key in periods),
        ]
        for row in grid["rows"]
    ]
    head = ("Facility", *(key[5:] for key in periods))  # 11-24, W47: the year is above
    years = "–".join(sorted({key[:4] for key in periods}))
    return card(
        f"{title} ({years}, newest first)",
        table(
            f"grid-{period_type}",
            head,
            rows,
            "No facility yet: enroll a node.",
            [r["facilityId"] for r in grid["rows"]],
            stack=False,
        ),
        f"grid-{period_type}-section",
    )


def _disposition(disposition: str, code: str | None) -> Html:
    shown = pill(disposition, "bad" if disposition == "rejected" else "warn")
    return Html(f"{shown} <small>{text(code)}</small>") if code else shown


# Event data shown, with its label (a report id is in the JSON, too long to show).
EVENT_LABELS = {
    "facilityId": "facility",
    "periodKey": "period",
    "deviceId": "from",
    "snapshotId": "snapshot",
    "cohortId": "cohort",
}


def _event_type(name: str) -> str:
    """``population_health.facility_report.synced.v1`` -> ``facility_report.synced``."""
    short = name.removeprefix("population_health.")
    head, _, version = short.rpartition(".")
    return head if head and version.startswith("v") and version[1:].isdigit() else short


def _events(doc: Mapping[str, Any], now: datetime) -> Html:
    recent = doc["recentEvents"]
    rows = [
        (
            moment(e["time"], now),
            Html(f"<code>{text(_event_type(e['type']))}</code>"),
            text(
                " · ".join(
                    f"{EVENT_LABELS[k]} {v}" for k, v in e["subject"].items() if k in EVENT_LABELS
                )
            ),
        )
        for e in recent
    ]
    return card(
        "Recent events",
        table(
            "events-table",
            ("When", "Type", "About"),
            rows,
            "No event yet.",
            [str(e["seq"]) for e in recent],
        ),
        "events",
    )


def _rejected(doc: Mapping[str, Any], now: datetime) -> Html:
    rejected = doc["rejected"]
    transitions = table(
        "rejected-transitions-table",
        ("When", "Transition", "Item", "Move", "Outcome", "From"),
        [
            (
                moment(t["receivedAt"], now),
                Html(f"<code>{text(t['transitionId'])}</code>"),
                Html(f"<code>{text(t['itemId'])}</code>"),
                text(f"{t['from']} → {t['to']}"),
                field("disposition", t["disposition"], _disposition(t["disposition"], t["code"])),
                text(t["source"]),
            )
            for t in rejected["transitions"]
        ],
        "No transition was rejected or superseded.",
        [t["transitionId"] for t in rejected["transitions"]],
    )
    conflicts = table(
        "report-conflicts-table",
        ("When", "Facility", "Period", "Node", "Stored report"),
        [
            (
                moment(c["receivedAt"], now),
                text(c["facilityId"]),
                text(c["periodKey"]),
                text(c["deviceId"]),
                Html(f"<code>{text(c['reportId'])}</code>"),
            )
            for c in rejected["reportConflicts"]
        ],
        "No report copy conflicted with the stored one.",
        [f"{c['facilityId']}/{c['periodKey']}" for c in rejected["reportConflicts"]],
    )
    refused = table(
        "refused-writes-table",
        ("When", "Who", "What", "Record", "Reason"),
        [
            (
                moment(w["receivedAt"], now),
                text(w["principal"]),
                text(w["kind"]),
                Html(f"<code>{text(w['recordId'])}</code>"),
                Html(f"{text(w['code'])} <small>{text(w['detail'])}</small>"),
            )
            for w in rejected["refusedWrites"]
        ],
        "No write was refused.",
        [str(w["recordId"]) for w in rejected["refusedWrites"]],
    )
    return card(
        "Rejected and conflicting submissions",
        join(
            (
                Html("<h3>Outreach transitions</h3>"),
                transitions,
                Html("<h3>Facility reports in conflict</h3>"),
                conflicts,
                Html("<h3>Refused writes</h3>"),
                refused,
            )
        ),
        "rejected",
    )


def render_overview(doc: Mapping[str, Any], now: datetime, logout: bool) -> Html:
    """The admin page; ``logout``: a session cookie is in use (show the logout button)."""
    button = (
        Html(
            f'<form method="post" action="{LOGOUT_PATH}">'
            '<button type="submit" id="logout">Log out</button></form>'
        )
        if logout
        else Html("")
    )
    header = Html(
        f"<div><h1>PHS gateway · tenant {text(doc['tenantId'])}</h1>"
        f"<p>As of {stamp(doc['at'])} · refreshes every {REFRESH_SECONDS} s</p></div>{button}"
    )
    body = join(
        (
            card("At a glance", _summary(doc), "summary"),
            _nodes(doc, now),
            _grid(doc, "weekly", "Weekly reports arrived"),
            _grid(doc, "daily", "Daily reports arrived"),
            _rejected(doc, now),
            _events(doc, now),
            Html(
                "<footer>The same figures as JSON: <code>GET /api/v1/population-health/"
                "admin/overview</code> with an admin bearer token.</footer>"
            ),
        )
    )
    return document(f"PHS gateway · {doc['tenantId']}", header, body, REFRESH_SECONDS)


def render_login(message: str | None) -> Html:
    """The login form; ``message`` says why the last attempt failed."""
    error = Html(f'<p class="error" id="login-error">{text(message)}</p>') if message else Html("")
    hours = int(SESSION_LIFETIME.total_seconds() // 3600)
    body = Html(
        f'<form class="login" method="post" action="{LOGIN_PATH}"><section>'
        "<h2>Log in</h2>"
        f"{error}"
        '<label for="token">Admin token</label>'
        '<input type="password" id="token" name="token" autocomplete="off" required>'
        '<button type="submit" id="login">Log in</button>'
        "<p><small>An admin token of your tenant (<code>phs-gateway create-token --role "
        f"admin</code>). A session lasts {hours} hours.</small></p>"
        "</section></form>"
    )
    return document("PHS gateway · log in", Html("<h1>PHS gateway admin</h1>"), body)

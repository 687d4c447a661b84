"""The edge node's status page (``GET /``), rendered from ``GET /status``'s document.

For the district IT officer with a phone: one glance says whether sync is
healthy (the header's verdict), the cards say why. The page refreshes itself;
it carries no script and loads nothing else. Key figures have stable ids
(``outbox-depth``, ``last-forward``...) with the raw value in ``data-value``,
which the browser tests compare with ``GET /status``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from observability.html_page import (
    Html,
    age,
    card,
    document,
    figure,
    figures,
    join,
    moment,
    pill,
    stamp,
    stat,
    stats,
    table,
    text,
)

REFRESH_SECONDS = 15
# Records waiting longer than this make the verdict "attention".
STALE_OUTBOX_SECONDS = 3600


def verdict(doc: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    """(label, tone, reasons): healthy, or what needs a look, worst first."""
    gateway = doc["gateway"]
    reasons: list[tuple[int, str]] = []
    if gateway["enrolled"] is False:
        reasons.append((2, "the gateway does not accept this node's key (not enrolled)"))
    if gateway["reachable"] is False:
        reasons.append((2, "the gateway is unreachable"))
    elif gateway["reachable"] is None:
        reasons.append((1, "no contact with the gateway yet"))
    oldest = doc["oldestUnsentAgeSeconds"]
    if oldest is not None and oldest > STALE_OUTBOX_SECONDS:
        reasons.append((1, f"records have waited {age(oldest)} to be forwarded"))
    rejected = int(doc["problems"]) + int(doc["refusedWrites"])
    if rejected:
        reasons.append((1, f"{_count(rejected, 'rejected item')}: see below"))
    if not reasons:
        return "healthy", "ok", []
    worst = max(level for level, _ in reasons)
    ordered = [reason for _, reason in sorted(reasons, key=lambda r: -r[0])]
    return ("problem" if worst == 2 else "attention"), ("bad" if worst == 2 else "warn"), ordered


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _yes_no(value: bool | None, yes: str, no: str, unknown: str) -> Html:
    if value is None:
        return pill(unknown, "none")
    return pill(yes, "ok") if value else pill(no, "bad")


def _gateway_card(doc: Mapping[str, Any], now: datetime) -> Html:
    gateway = doc["gateway"]
    errors = []
    if doc["lastForwardError"]:
        errors.append(figure("last-forward-error", "Forward error", doc["lastForwardError"]))
    if doc["lastPullError"]:
        errors.append(figure("last-pull-error", "Pull error", doc["lastPullError"]))
    return card(
        "Gateway",
        figures(
            figure(
                "gateway-reachable",
                "Reachable",
                gateway["reachable"],
                _yes_no(gateway["reachable"], "yes", "no", "not tried yet"),
            ),
            figure(
                "last-forward",
                "Last forward",
                doc["lastForwardOk"],
                moment(doc["lastForwardOk"], now),
            ),
            figure("last-pull", "Last pull", doc["lastPullOk"], moment(doc["lastPullOk"], now)),
            figure(
                "last-answer",
                "Last answer",
                gateway["lastAnswer"],
                note=moment(gateway["lastAnswerAt"], now) if gateway["lastAnswerAt"] else None,
            ),
            *errors,
            figure(
                "gateway-url",
                "Address",
                doc["gatewayUrl"],
                Html(f"<code>{text(doc['gatewayUrl'])}</code>"),
            ),
        ),
        "gateway",
    )


def _headline(doc: Mapping[str, Any]) -> Html:
    """The figures read first: what waits, how long, what was sent, who is around."""
    oldest = doc["oldestUnsentAgeSeconds"]
    stale = oldest is not None and oldest > STALE_OUTBOX_SECONDS
    present = sum(1 for d in doc["devicesSeen"] if d["present"])
    return stats(
        stat("outbox-depth", "Waiting to send", doc["outboxDepth"], "warn" if stale else ""),
        stat(
            "oldest-unsent-age",
            "Oldest waiting",
            oldest,
            "warn" if stale else "",
            shown=age(oldest) if oldest is not None else "—",
        ),
        stat("reports-generated", "Reports generated", doc["reportsGenerated"]),
        stat("reports-forwarded", "Reports forwarded", doc["reportsForwarded"]),
        stat("devices-paired", "Tablets paired", doc["pairedDevices"]),
        stat("devices-present", "Tablets on the LAN", present),
    )


def _outbox_card(doc: Mapping[str, Any]) -> Html:
    answers: Mapping[str, int] = doc["reportDispositions"]
    shown = ", ".join(f"{count} {status}" for status, count in sorted(answers.items()))
    return card(
        "Outbox and reports",
        figures(
            figure(
                "outbox-breakdown",
                "Waiting",
                doc["outboxDepth"],
                text(
                    f"{_count(doc['unsentTransitions'], 'transition')}, "
                    f"{_count(doc['unsentReports'], 'report')}, "
                    f"{_count(doc['unsentCohortDrafts'], 'cohort draft')}"
                ),
            ),
            figure(
                "oldest-unsent-at", "Since", doc["oldestUnsentAt"], stamp(doc["oldestUnsentAt"])
            ),
            figure("open-batches", "Open batches", doc["openBatches"]),
            *([figure("outbox-error", "Last error", doc["lastError"])] if doc["lastError"] else []),
            figure("report-answers", "Gateway's answers", shown, text(shown or "none yet")),
            figure("encounters", "Encounters held", doc["encounters"]),
            figure("devices-seen", "Tablets ever seen", len(doc["devicesSeen"])),
        ),
        "outbox",
    )


def _identity_card(doc: Mapping[str, Any]) -> Html:
    enrolled = doc["gateway"]["enrolled"]
    return card(
        "This node",
        figures(
            figure("node-id", "Node", doc["nodeId"]),
            figure("tenant-id", "Tenant", doc["tenantId"]),
            figure("facility-ids", "Facilities", ", ".join(doc["facilityIds"])),
            figure(
                "key-fingerprint",
                "Key fingerprint",
                doc["keyFingerprint"],
                Html(f"<code>{text(doc['keyFingerprint'])}</code>"),
            ),
            figure(
                "node-enrolled",
                "Enrolled",
                enrolled,
                _yes_no(enrolled, "yes", "no: key refused", "unknown until the gateway answers"),
            ),
        ),
        "identity",
    )


def _rejected_section(doc: Mapping[str, Any], now: datetime) -> Html:
    problems = doc["recentProblems"]
    refused = doc["recentRefusedWrites"]
    gateway_table = table(
        "problems-table",
        ("When", "What", "Record", "Reason"),
        [
            (
                moment(p["at"], now),
                text(p["kind"]),
                Html(f"<code>{text(p['id'])}</code>"),
                text(p["code"]),
            )
            for p in problems
        ],
        "The gateway has refused nothing.",
        [str(p["id"]) for p in problems],
    )
    edge_table = table(
        "refused-writes-table",
        ("When", "Device", "What", "Record", "Reason"),
        [
            (
                moment(r["at"], now),
                text(r["device_id"]),
                text(r["kind"]),
                Html(f"<code>{text(r['id'])}</code>"),
                Html(f"{text(r['code'])} <small>{text(r['detail'])}</small>"),
            )
            for r in refused
        ],
        "This node has refused no tablet write.",
        [str(r["id"]) for r in refused],
    )
    return card(
        "Rejected items",
        join(
            (
                figures(
                    figure("problems-count", "Refused by the gateway", doc["problems"]),
                    figure("refused-writes-count", "Refused here", doc["refusedWrites"]),
                ),
                Html("<h3>Refused by the gateway</h3>"),
                gateway_table,
                Html("<h3>Tablet writes refused by this node</h3>"),
                edge_table,
            )
        ),
        "rejected",
    )


def _seen_section(doc: Mapping[str, Any], now: datetime) -> Html:
    devices = doc["devicesSeen"]

    def yes(value: bool) -> Html:
        return pill("yes", "ok") if value else pill("no", "none")

    rows = [
        (
            text(d["deviceId"]),
            yes(d["present"]),
            yes(d["paired"]),
            text(d["pending"]),
            text(", ".join(str(a) for a in d["addresses"]) + f" :{d['port']}"),
            moment(d["lastSeen"], now),
            Html(
                f"{moment(d['lastGatherAt'], now)}"
                + (f" <small>{text(d['lastGatherError'])}</small>" if d["lastGatherError"] else "")
            ),
            text(d["gatheredRecords"]),
        )
        for d in devices
    ]
    return card(
        "Devices seen on the LAN",
        table(
            "devices-seen-table",
            (
                "Device",
                "Present",
                "Paired",
                "Pending",
                "Address",
                "Last seen",
                "Last gather",
                "Gathered",
            ),
            rows,
            "No field device has been seen on the LAN yet.",
            [str(d["deviceId"]) for d in devices],
        ),
        "devices-seen-section",
    )


def render(doc: Mapping[str, Any], now: datetime) -> Html:
    label, tone, reasons = verdict(doc)
    header = Html(
        f"<div><h1>Edge node {text(doc['nodeId'])} "
        f'<span id="health" data-value="{text(label)}" class="pill {text(tone)}">'
        f"{text(label)}</span></h1>"
        f"<p>Tenant {text(doc['tenantId'])} · facilities {text(', '.join(doc['facilityIds']))}"
        f" · as of {stamp(doc['at'])} · refreshes every {REFRESH_SECONDS} s</p></div>"
    )
    why = (
        Html(
            f'<section id="health-reasons" class="notice-{text(tone)}"><h2>Needs a look</h2><ul>'
            + join(Html(f"<li>{text(r)}</li>") for r in reasons)
            + "</ul></section>"
        )
        if reasons
        else Html("")
    )
    body = join(
        (
            why,
            _headline(doc),
            Html('<div class="grid">'),
            _identity_card(doc),
            _gateway_card(doc, now),
            _outbox_card(doc),
            Html("</div>"),
            _rejected_section(doc, now),
            _seen_section(doc, now),
            Html(
                "<footer>The same figures as JSON: <code>GET /status</code>; "
                "Prometheus metrics: <code>GET /metrics</code>.</footer>"
            ),
        )
    )
    return document(f"Edge node {doc['nodeId']}", header, body, REFRESH_SECONDS)

"""What ``make demo`` prints: numbered steps, progress lines, the closing summary.

The services' own logs (JSON lines) go to files under the demo's data
directory; the console is for a person. Every figure in the summary is read
back from the tablets' queues, ``edgenode status`` and the gateway's API;
none is what the demo believes it sent.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

INDENT = "      "
# Without a terminal (CI, a pipe) a progress line is printed at most this often.
PLAIN_PROGRESS_SECONDS = 5.0


class Console:
    """Steps ``[n/total]``, detail lines under them, and one progress line
    that rewrites itself on a terminal (and is printed now and then, not
    rewritten, into a pipe)."""

    def __init__(self, total_steps: int, stream: TextIO = sys.stdout) -> None:
        self.total = total_steps
        self.stream = stream
        self.tty = stream.isatty()
        self.step_no = 0
        self._progress_shown = False
        self._last_plain = 0.0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _end_progress(self) -> None:
        if self._progress_shown:
            self._write("\r\x1b[K" if self.tty else "")
            self._progress_shown = False

    def say(self, line: str) -> None:
        self._end_progress()
        self._write(line + "\n")
        self._last_plain = time.monotonic()

    def step(self, text: str) -> None:
        self.step_no += 1
        self.say(f"[{self.step_no}/{self.total}] {text}")

    def info(self, text: str) -> None:
        self.say(INDENT + text)

    def progress(self, text: str) -> None:
        """A line about work under way, replaced by the next one."""
        if self.tty:
            self._write(f"\r\x1b[K{INDENT}{text}")
            self._progress_shown = True
        elif time.monotonic() - self._last_plain >= PLAIN_PROGRESS_SECONDS:
            self._last_plain = time.monotonic()
            self._write(f"{INDENT}{text}\n")


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counter.items() if n) or "none"


@dataclass
class Figures:
    """What the services say once the edge's outbox is empty."""

    tablets: list[dict[str, Any]]  # FieldDevice.status() of each tablet
    edge: dict[str, Any]  # edgenode status
    edge_problems: str  # edgenode problems, as printed
    gateway_dispositions: Counter[str]  # dispositions in the items' histories
    gateway_states: Counter[str]  # items by state
    gateway_reports: list[dict[str, Any]]  # …/analytics/facility-reports
    gateway_events: Counter[str]  # …/events by type

    def lines(self) -> list[str]:
        tablets = self.tablets
        recorded = sum(t["recorded"] for t in tablets)
        pushed = sum(t["synced"]["push"] for t in tablets)
        gathered = sum(t["synced"]["gather"] for t in tablets)
        pending = sum(sum(t["pending"].values()) for t in tablets)
        edge = self.edge
        answered = dict(edge["gatewayDispositions"])
        unanswered = answered.pop("unanswered", 0)
        forwarded = sum(answered.values())
        reports = ", ".join(
            f"{r['facilityId']} {r['periodKey']} from {r['deviceId']}" for r in self.gateway_reports
        )
        out = [
            "Summary — every figure read back from the tablets, the edge and the gateway",
            f"  tablets   {sum(t['paired'] for t in tablets)} paired; {recorded} records made "
            f"offline: {pushed} pushed to the edge, {gathered} gathered by it, "
            f"{pending} still pending",
            f"  edge      {forwarded} outreach transitions forwarded; the gateway's answers to "
            f"its batches: {_counts(answered)}; {unanswered} unanswered; outbox depth "
            f"{edge['outboxDepth']}",
            f"            {edge['encounters']} encounters kept on the edge (only the report's "
            "aggregates leave it)",
            "  gateway   transitions in the items' histories: "
            + _counts(self.gateway_dispositions),
            f"            {sum(self.gateway_states.values())} items now "
            f"{_counts(self.gateway_states)}",
            f"  reports   {edge['reportsGenerated']} signed at the edge, {edge['unsentReports']} "
            f"waiting in its outbox; {len(self.gateway_reports)} at the gateway"
            + (f" ({reports})" if reports else ""),
            f"  events    {_counts(self.gateway_events)}",
        ]
        for seen in edge["devicesSeen"]:
            out.append(
                f"  LAN       the edge saw {seen['deviceId']} at "
                f"{', '.join(seen['addresses'])}:{seen['port']} (paired: "
                f"{'yes' if seen['paired'] else 'no'}, {seen['gatheredRecords']} records gathered)"
            )
        problems = edge["problems"] + edge["refusedWrites"]
        if problems == 0 and edge["lastError"] is None:
            out.append("  problems  none: the gateway refused nothing and the edge refused nothing")
        else:
            out.append(
                f"  problems  {edge['problems']} refused by the gateway, "
                f"{edge['refusedWrites']} tablet writes refused by the edge; last forward error: "
                f"{edge['lastError'] or 'none'}"
            )
            out.extend("            " + line for line in self.edge_problems.splitlines())
        return out

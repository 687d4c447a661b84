"""The conflict policy table of CONTRACT.md section 3, as data.

The gateway enforces it and the edge mirrors it; both read this one table so
they cannot disagree about who may write what.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class SyncPolicy(StrEnum):
    SERVER_AUTHORITATIVE = "server_authoritative"
    SERVER_AUTHORITATIVE_IMMUTABLE = "server_authoritative_immutable"
    LWW_AUDIT = "lww_audit"
    LWW_FSM = "lww_fsm"
    APPEND_ONLY = "append_only"


class Writer(StrEnum):
    """Who may write an aggregate (CONTRACT section 3, last column)."""

    SERVER = "server"
    ADMIN = "admin"
    SERVICE = "service"
    EDGE_NODE = "edge_node"  # a signed node request, on behalf of field workers
    GENERATING_DEVICE = "generating_device"


@dataclass(frozen=True)
class AggregatePolicy:
    kind: str
    policy: SyncPolicy
    writers: frozenset[Writer]
    # A batch kind clients may send instead (population_cohort accepts drafts).
    client_submission_kind: str | None = None
    note: str = ""

    @property
    def accepts_edge_writes(self) -> bool:
        return bool(self.writers & {Writer.EDGE_NODE, Writer.GENERATING_DEVICE})


def _table(*rows: AggregatePolicy) -> Mapping[str, AggregatePolicy]:
    return MappingProxyType({row.kind: row for row in rows})


POLICY_TABLE: Mapping[str, AggregatePolicy] = _table(
    AggregatePolicy(
        "population_cohort",
        SyncPolicy.SERVER_AUTHORITATIVE,
        frozenset({Writer.SERVER}),
        client_submission_kind="cohort.draft",
        note="server validates and versions drafts",
    ),
    AggregatePolicy(
        "cohort_membership",
        SyncPolicy.SERVER_AUTHORITATIVE,
        frozenset({Writer.SERVER}),
        note="computed from cohort definitions",
    ),
    AggregatePolicy(
        "disease_registry_entry",
        SyncPolicy.SERVER_AUTHORITATIVE,
        frozenset({Writer.SERVICE}),
        note="upstream clinical data",
    ),
    AggregatePolicy(
        "risk_score.computed", SyncPolicy.SERVER_AUTHORITATIVE, frozenset({Writer.SERVER})
    ),
    AggregatePolicy(
        "risk_score.override",
        SyncPolicy.LWW_AUDIT,
        frozenset({Writer.ADMIN}),
        note="or a node with the risk_override capability carrying the admin",
    ),
    AggregatePolicy(
        "outreach.transition",
        SyncPolicy.LWW_FSM,
        frozenset({Writer.EDGE_NODE, Writer.SERVER}),
        note="FSM guards; server-only transitions by the server",
    ),
    AggregatePolicy(
        "quality_metric_snapshot",
        SyncPolicy.SERVER_AUTHORITATIVE_IMMUTABLE,
        frozenset({Writer.SERVER}),
        note="never changed after creation",
    ),
    AggregatePolicy(
        "hmis_export_job", SyncPolicy.SERVER_AUTHORITATIVE, frozenset({Writer.SERVER, Writer.ADMIN})
    ),
    AggregatePolicy(
        "deident_export_job",
        SyncPolicy.SERVER_AUTHORITATIVE,
        frozenset({Writer.ADMIN}),
        note="released only after server-side de-identification checks",
    ),
    AggregatePolicy(
        "facility_report", SyncPolicy.APPEND_ONLY, frozenset({Writer.GENERATING_DEVICE})
    ),
)

SERVER_AUTHORITATIVE_KINDS: frozenset[str] = frozenset(
    kind
    for kind, row in POLICY_TABLE.items()
    if row.policy in (SyncPolicy.SERVER_AUTHORITATIVE, SyncPolicy.SERVER_AUTHORITATIVE_IMMUTABLE)
)


def policy_for(kind: str) -> AggregatePolicy | None:
    return POLICY_TABLE.get(kind)

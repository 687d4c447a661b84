"""Edge node settings, each declared once with its default and help.

``edgenode init`` writes the identity settings to ``DATA_DIR/edgenode.toml``;
every command reads that file (or ``--config``), then environment variables
``PHS_EDGE_<NAME>``, then flags. docs/configuration.md lists every setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.settings import load_data_dir_settings
from shared.config import describe, setting

ENV_PREFIX = "PHS_EDGE_"
CONFIG_NAME = "edgenode.toml"


@dataclass(frozen=True)
class EdgeSettings:
    node_id: str = setting("", "This node's id, as enrolled at the gateway.")
    tenant_id: str = setting("", "The tenant (district programme) this node serves.")
    facility_ids: list[str] = setting([], "Facilities this node serves.")  # noqa: RUF009
    gateway_url: str = setting("", "Base URL of the gateway, e.g. https://gw.example.org.")
    time_zone: str = setting("UTC", "IANA time zone of the facilities' local dates (reports).")
    host: str = setting("0.0.0.0", "Address the tablet API listens on.")
    port: int = setting(8490, "TCP port of the tablet API.")
    data_dir: str = setting("./edge-data", "Directory of the key, config and SQLite store.")
    batch_max_items: int = setting(500, "Most items in one batch sent to the gateway.")
    batch_max_bytes: int = setting(1024 * 1024, "Largest batch body sent to the gateway.")
    forward_interval_seconds: int = setting(5, "Pause between forward cycles when idle.")
    pull_interval_seconds: int = setting(30, "Pause between change-feed pulls.")
    retry_base_seconds: int = setting(2, "First retry delay after a failed send (doubles).")
    retry_max_seconds: int = setting(300, "Longest retry delay (full jitter below it).")
    request_timeout_seconds: int = setting(30, "Timeout of one request to the gateway.")
    pairing_code_ttl_seconds: int = setting(900, "How long a pairing code may be redeemed.")
    clock_skew_seconds: int = setting(
        300, "Allowed skew of a tablet's signed request, and of its signed gather answer."
    )
    report_schedule: bool = setting(True, "Generate daily and weekly reports by schedule.")
    daily_report_after_minutes: int = setting(
        15, "Minutes after local midnight before the previous day's report is made."
    )
    weekly_report_weekday: int = setting(
        0, "Weekday (0 = Monday) from which the previous ISO week's report is made."
    )
    schedule_interval_seconds: int = setting(60, "How often the report schedule is checked.")
    report_catch_up_periods: int = setting(
        7, "Missed periods of each type made up after the node was off (not before init)."
    )
    idempotency_ttl_seconds: int = setting(
        86400, "How long a tablet's Idempotency-Key answer is replayed; purged after."
    )
    max_body_bytes: int = setting(
        4 * 1024 * 1024,
        "Largest tablet request body (413), and largest answer read from a tablet when gathering.",
    )
    max_push_items: int = setting(5000, "Most records in one tablet push (413).")
    discovery: bool = setting(
        True, "Advertise on the LAN (mDNS) and gather from paired tablets that advertise."
    )
    interfaces: list[str] = setting(  # noqa: RUF009
        [],
        "Interfaces (names or addresses) to advertise and browse on; empty: every "
        "non-loopback interface that is up (or the host address, when one is set).",
    )
    gather_interval_seconds: int = setting(
        30, "How often paired tablets that still advertise pending records are gathered."
    )
    gather_page_size: int = setting(500, "Most records asked of a tablet in one gather request.")
    address_check_seconds: int = setting(
        30, "How often the node re-reads its addresses and re-announces when they changed."
    )
    log_level: str = setting("INFO", "Python logging level.")
    log_format: str = setting(
        "",
        "Log lines: json (one object per line) or text; empty: json for the services "
        "(run), text for the one-shot commands (docs/logging.md).",
    )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_path / "edgenode.db"

    @property
    def key_path(self) -> Path:
        return self.data_path / "node.key"

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return describe(cls)


def load_edge_settings(
    config_file: str | None = None,
    data_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> EdgeSettings:
    """Settings from ``--config``, else the config file in the data directory."""
    return load_data_dir_settings(
        EdgeSettings, ENV_PREFIX, CONFIG_NAME, "edgenode", config_file, data_dir, environ, overrides
    )

"""Field device settings, each declared once with its default and help.

``phs-field init`` writes the device id to ``DATA_DIR/phs-field.toml`` (a
``[field]`` table); every command reads that file (or ``--config``), then
environment variables ``PHS_FIELD_<NAME>``, then flags. docs/configuration.md
lists every setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.settings import load_data_dir_settings
from shared.config import describe, setting

ENV_PREFIX = "PHS_FIELD_"
CONFIG_NAME = "phs-field.toml"
CONFIG_TABLE = "field"


@dataclass(frozen=True)
class FieldSettings:
    device_id: str = setting("", "This device's id, as the edge node's pairing code names it.")
    data_dir: str = setting("./field-data", "Directory of the key, config and SQLite store.")
    edge_url: str = setting(
        "",
        "Fallback address of the edge's API (http://host:8490, path optional), used when "
        "discovery is off or finds no advert of the paired node.",
    )
    interfaces: list[str] = setting(  # noqa: RUF009
        [], "Interfaces (names or addresses) to browse and advertise on; none: every one up."
    )
    discovery: bool = setting(True, "Find the edge and advertise this device over mDNS.")
    discovery_seconds: int = setting(3, "How long one search for the edge browses.")
    host: str = setting("0.0.0.0", "Address the device's gather API listens on.")
    port: int = setting(0, "TCP port of the gather API (0: any free port; the advert says it).")
    push_interval_seconds: int = setting(
        15, "phs-field serve: pause between attempts to find the edge and push."
    )
    request_timeout_seconds: int = setting(30, "Timeout of one request to the edge.")
    clock_skew_seconds: int = setting(300, "Allowed skew of the edge's signed gather request.")
    log_level: str = setting("INFO", "Python logging level.")
    log_format: str = setting(
        "",
        "Log lines: json (one object per line) or text; empty: json for the services "
        "(serve), text for the one-shot commands (docs/logging.md).",
    )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_path / "field.db"

    @property
    def key_path(self) -> Path:
        return self.data_path / "device.key"

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return describe(cls)


def load_field_settings(
    config_file: str | None = None,
    data_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FieldSettings:
    """Settings from ``--config``, else the config file in the data directory."""
    return load_data_dir_settings(
        FieldSettings,
        ENV_PREFIX,
        CONFIG_NAME,
        CONFIG_TABLE,
        config_file,
        data_dir,
        environ,
        overrides,
    )

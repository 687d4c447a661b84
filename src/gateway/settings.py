"""Gateway settings, each declared once with its default and help.

Values come from, lowest to highest precedence: the defaults below, a TOML
file (``--config``; keys at top level or under ``[gateway]``), environment
variables ``PHS_GATEWAY_<NAME>`` and command-line flags. docs/configuration.md
lists every setting; a test keeps the two in step.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shared.errors import ValidationFailed

ENV_PREFIX = "PHS_GATEWAY_"


def setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    host: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(8480, "TCP port to listen on.")
    data_dir: str = setting("./gateway-data", "Directory for the SQLite database and logs.")
    database_url: str = setting(
        "",
        "SQLAlchemy URL of the store; empty means SQLite at DATA_DIR/gateway.db "
        "(sqlite+aiosqlite:///…). PostgreSQL: postgresql+asyncpg://user@host/db.",
    )
    max_body_bytes: int = setting(4 * 1024 * 1024, "Largest request body accepted (413).")
    max_batch_items: int = setting(5000, "Most items in one batch (413 batch_too_large).")
    max_nesting_depth: int = setting(32, "Deepest nesting of a JSON or msgpack body (400).")
    clock_skew_seconds: int = setting(
        300,
        "Allowed difference between a signed request's ts and the gateway clock (401 clock_skew).",
    )
    idempotency_ttl_seconds: int = setting(
        86400, "How long a stored Idempotency-Key answer is replayed; purged after."
    )
    idempotency_stale_seconds: int = setting(
        120, "A key still marked in flight after this long is taken over (its request died)."
    )
    purge_interval_seconds: int = setting(3600, "How often expired idempotency keys are purged.")
    changes_max_limit: int = setting(5000, "Most changes one GET …/sync/changes answers.")
    events_max_limit: int = setting(1000, "Most events one GET …/events answers.")
    log_level: str = setting("INFO", "Python logging level.")

    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        path = Path(self.data_dir).resolve() / "gateway.db"
        return f"sqlite+aiosqlite:///{path}"

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(name, default, help) of every setting, for docs and --help."""
        return [(f.name, f.default, f.metadata["help"]) for f in fields(cls)]

    def with_overrides(self, values: Mapping[str, Any]) -> Settings:
        return replace(self, **_coerce(values, where="override"))


def _coerce(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    known = {f.name: f for f in fields(Settings)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in known:
            raise ValidationFailed(f"unknown setting {name!r} in {where}")
        kind = type(known[name].default)
        if kind is int and isinstance(value, str):
            try:
                value = int(value)
            except ValueError as err:
                raise ValidationFailed(f"setting {name} must be an integer") from err
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValidationFailed(f"setting {name} must be of type {kind.__name__}")
        out[name] = value
    return out


def load_settings(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    settings = Settings()
    if config_file:
        try:
            with open(config_file, "rb") as handle:
                doc = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValidationFailed(f"cannot read config file {config_file}: {err}") from err
        table = doc.get("gateway", doc)
        settings = replace(settings, **_coerce(table, where=config_file))
    env = os.environ if environ is None else environ
    from_env = {
        name: env[ENV_PREFIX + name.upper()]
        for name, _, _ in Settings.describe()
        if ENV_PREFIX + name.upper() in env
    }
    settings = replace(settings, **_coerce(from_env, where="environment"))
    return settings.with_overrides({k: v for k, v in (overrides or {}).items() if v is not None})

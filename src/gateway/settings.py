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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shared.config import describe, resolve_settings, setting
from shared.errors import ValidationFailed
from shared.node_keys import overlap_seconds

if TYPE_CHECKING:
    from _typeshed import DataclassInstance as SettingsClass
else:
    SettingsClass = object

ENV_PREFIX = "PHS_GATEWAY_"


@dataclass(frozen=True)
class Settings:
    host: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(8480, "TCP port to listen on.")
    workers: int = setting(
        1,
        "Gateway processes serving the port (`serve --workers`); more than 1 needs "
        "PostgreSQL (docs/deployment.md).",
    )
    data_dir: str = setting("./gateway-data", "Directory for the SQLite database.")
    database_url: str = setting(
        "",
        "SQLAlchemy URL of the store; empty means SQLite at DATA_DIR/gateway.db "
        "(sqlite+aiosqlite:///…). PostgreSQL: postgresql+asyncpg://user@host/db.",
    )
    database_pool_size: int = setting(
        10,
        "PostgreSQL connections each gateway process keeps open (SQLite: one writer "
        "and four readers, fixed).",
    )
    database_pool_overflow: int = setting(
        10,
        "Extra PostgreSQL connections a process may open under load, closed when idle; "
        "per process at most pool size + overflow.",
    )
    database_retry_attempts: int = setting(
        5,
        "Times a write transaction is tried when PostgreSQL aborts it as a deadlock "
        "victim or a serialization failure, before answering 503.",
    )
    max_body_bytes: int = setting(4 * 1024 * 1024, "Largest request body accepted (413).")
    max_batch_items: int = setting(5000, "Most items in one batch (413 batch_too_large).")
    max_nesting_depth: int = setting(32, "Deepest nesting of a JSON or msgpack body (400).")
    clock_skew_seconds: int = setting(
        300,
        "Allowed difference between a signed request's ts and the gateway clock (401 clock_skew).",
    )
    key_overlap_seconds: int = setting(
        7 * 24 * 3600,
        "How long a node's previous key is still accepted after a rotation (its overlap "
        "window; then 401 key_retired). Admins may name another length per call "
        "(docs/key-rotation.md).",
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
    relay_nats_url: str = setting(
        "nats://127.0.0.1:4222",
        "NATS server the event relay publishes to (comma-separated URLs for a cluster); "
        "`relay --nats` overrides it.",
    )
    relay_stream: str = setting(
        "PHS_EVENTS", "JetStream stream of the relayed events; created at relay start if missing."
    )
    relay_subject_prefix: str = setting(
        "phs.events",
        "Events are published on <prefix>.<tenant>.<event type>; the stream captures <prefix>.>.",
    )
    relay_duplicate_window_seconds: int = setting(
        7200, "The stream's de-duplication window: a re-published event id is dropped."
    )
    relay_batch_size: int = setting(
        500, "Most events the relay publishes before it records them as published."
    )
    relay_poll_interval_seconds: float = setting(
        1.0, "How often the relay looks for new events once it has published them all."
    )
    relay_publish_timeout_seconds: float = setting(
        10.0, "How long the relay waits for JetStream to acknowledge a batch before retrying."
    )
    relay_max_backoff_seconds: float = setting(
        30.0, "Longest wait between the relay's retries while NATS or the database is down."
    )
    hmis_mapping_file: str = setting(
        "",
        "JSON file mapping facilities to DHIS2 orgUnits and metrics to data elements "
        "(docs/exports.md), read by every HMIS export job; empty: HMIS jobs fail until set.",
    )
    facility_districts_file: str = setting(
        "",
        "JSON object facility id → district, read by every de-identified export job; "
        "empty: those jobs fail until set.",
    )
    deident_k: int = setting(
        5, "k of a de-identified extract when the request names none, and the least it may name."
    )
    deident_max_suppressed_share: float = setting(
        0.05, "Largest share of rows a de-identified extract may suppress; more blocks it."
    )
    admin_cookie_secure: bool = setting(
        False,
        "Always mark the admin page's session cookie Secure: set it when a TLS-terminating "
        "proxy talks plain HTTP to the gateway (otherwise Secure only on a TLS request).",
    )
    log_level: str = setting("INFO", "Python logging level.")
    log_format: str = setting(
        "",
        "Log lines: json (one object per line) or text; empty: json for the services "
        "(serve, relay), text for the one-shot commands (docs/logging.md).",
    )

    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        path = Path(self.data_dir).resolve() / "gateway.db"
        return f"sqlite+aiosqlite:///{path}"

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return describe(cls)


def read_toml_table(path: str, table: str) -> dict[str, Any]:
    """The ``[table]`` of a TOML file, or its top level when it has none."""
    try:
        with open(path, "rb") as handle:
            doc = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValidationFailed(f"cannot read config file {path}: {err}") from err
    found = doc.get(table, doc)
    return dict(found) if isinstance(found, dict) else {}


S = TypeVar("S", bound=SettingsClass)


def load_data_dir_settings(
    cls: type[S],
    prefix: str,
    config_name: str,
    table: str,
    config_file: str | None,
    data_dir: str | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
) -> S:
    """Settings of a service that keeps its config in its data directory: from
    ``--config``, else ``DATA_DIR/<config_name>`` when it exists (the edge node,
    the field device)."""
    env = os.environ if environ is None else environ
    if config_file is None:
        default_dir = getattr(cls(), "data_dir")  # noqa: B009 - every such class has one
        base = data_dir or env.get(prefix + "DATA_DIR") or default_dir
        candidate = Path(base) / config_name
        config_file = str(candidate) if candidate.exists() else None
    return resolve_settings(
        cls,
        prefix=prefix,
        file_table=read_toml_table(config_file, table) if config_file else None,
        file_name=config_file or "",
        environ=env,
        overrides={**(overrides or {}), "data_dir": data_dir},
    )


def load_settings(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    settings = resolve_settings(
        Settings,
        prefix=ENV_PREFIX,
        file_table=read_toml_table(config_file, "gateway") if config_file else None,
        file_name=config_file or "",
        environ=os.environ if environ is None else environ,
        overrides=overrides,
    )
    # Checked at start, not per request: a bad window would make every
    # rotation a 422 that blames the caller.
    overlap_seconds(settings.key_overlap_seconds, "key_overlap_seconds")
    return settings

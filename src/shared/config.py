"""Settings declared once: a frozen dataclass whose fields carry their help.

Both services declare their settings with ``setting(default, help)`` and
resolve them with ``resolve_settings``: defaults, then a config file's
table, then environment variables ``<PREFIX><NAME>``, then flags. Pure:
the caller reads the file and passes the environment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

from shared.errors import ValidationFailed

if TYPE_CHECKING:
    from _typeshed import DataclassInstance as SettingsClass
else:
    SettingsClass = object

S = TypeVar("S", bound=SettingsClass)


def setting(default: Any, help: str) -> Any:
    """A settings field with its default and its one-line documentation."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def describe(cls: type[SettingsClass]) -> list[tuple[str, Any, str]]:
    """(name, default, help) of every setting, for docs and --help."""
    out = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        out.append((f.name, default, f.metadata["help"]))
    return out


def coerce(cls: type[SettingsClass], values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check names and types; strings from the environment become ints or lists."""
    defaults = {name: default for name, default, _ in describe(cls)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in defaults:
            raise ValidationFailed(f"unknown setting {name!r} in {where}")
        kind = type(defaults[name])
        if isinstance(value, str) and kind is int:
            try:
                value = int(value)
            except ValueError as err:
                raise ValidationFailed(f"setting {name} must be an integer ({where})") from err
        if kind is float and isinstance(value, str):
            try:
                value = float(value)
            except ValueError as err:
                raise ValidationFailed(f"setting {name} must be a number ({where})") from err
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # TOML writes 1 for 1.0
        if kind is float and isinstance(value, float) and not math.isfinite(value):
            raise ValidationFailed(f"setting {name} must be a finite number ({where})")
        if isinstance(value, str) and kind is bool:
            if value.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValidationFailed(f"setting {name} must be true or false ({where})")
            value = value.lower() in {"1", "true", "yes"}
        if isinstance(value, str) and kind is list:
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValidationFailed(f"setting {name} must be of type {kind.__name__} ({where})")
        out[name] = value
    return out


def resolve_settings(
    cls: type[S],
    *,
    prefix: str,
    file_table: Mapping[str, Any] | None,
    file_name: str = "config file",
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> S:
    settings = cls()  # every field has a default
    if file_table:
        settings = replace(settings, **coerce(cls, file_table, file_name))
    names = [name for name, _, _ in describe(cls)]
    from_env = {n: environ[prefix + n.upper()] for n in names if prefix + n.upper() in environ}
    settings = replace(settings, **coerce(cls, from_env, "environment"))
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    return replace(settings, **coerce(cls, chosen, "command line"))

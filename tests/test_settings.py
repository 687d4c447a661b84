"""Settings are declared once; every one is documented and loadable."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenode.settings import EdgeSettings, load_edge_settings
from fielddevice.settings import FieldSettings, load_field_settings
from gateway.settings import Settings, load_settings
from shared.errors import ValidationFailed

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


@pytest.mark.parametrize(
    ("prefix", "name"),
    [("PHS_GATEWAY_", name) for name, _, _ in Settings.describe()]
    + [("PHS_EDGE_", name) for name, _, _ in EdgeSettings.describe()]
    + [("PHS_FIELD_", name) for name, _, _ in FieldSettings.describe()],
)
def test_every_setting_is_documented(prefix: str, name: str) -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert f"| `{name}` | `{prefix}{name.upper()}` |" in text


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nport = 9000\nhost = "0.0.0.0"\nmax_batch_items = 10\n')
    settings = load_settings(
        str(config),
        environ={"PHS_GATEWAY_PORT": "9100"},
        overrides={"host": "127.0.0.2", "data_dir": None},
    )
    assert settings.port == 9100  # environment beats the file
    assert settings.host == "127.0.0.2"  # a flag beats both
    assert settings.max_batch_items == 10  # from the file
    assert settings.data_dir == Settings().data_dir  # a flag left unset changes nothing


@pytest.mark.parametrize(
    "content",
    [
        "prot = 1\n",  # a typo must not be silently ignored
        'port = "eighty"\n',  # wrong type
        "port = \n",  # not TOML
    ],
)
def test_bad_config_files_are_refused(tmp_path: Path, content: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(ValidationFailed):
        load_settings(str(config), environ={})


def test_bad_environment_value_is_refused() -> None:
    with pytest.raises(ValidationFailed):
        load_settings(None, environ={"PHS_GATEWAY_PORT": "http"})


def test_default_store_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    url = Settings(data_dir=str(tmp_path)).sqlalchemy_url()
    assert url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/gateway.db"


def test_edge_settings_from_init_file_environment_and_flags(tmp_path: Path) -> None:
    (tmp_path / "edgenode.toml").write_text(
        '[edgenode]\nnode_id = "edge-01"\nfacility_ids = ["f-001", "f-002"]\n'
    )
    settings = load_edge_settings(
        None,
        str(tmp_path),
        environ={"PHS_EDGE_REPORT_SCHEDULE": "false", "PHS_EDGE_PORT": "9001"},
        overrides={"port": None},
    )
    assert settings.node_id == "edge-01"  # read from DATA_DIR/edgenode.toml
    assert settings.facility_ids == ["f-001", "f-002"]
    assert settings.report_schedule is False  # "false" from the environment is a bool
    assert settings.port == 9001
    assert settings.data_dir == str(tmp_path)


def test_field_settings_from_init_file_environment_and_flags(tmp_path: Path) -> None:
    (tmp_path / "phs-field.toml").write_text(
        '[field]\ndevice_id = "tab-01"\nedge_url = "http://10.0.0.5:8490"\n'
    )
    settings = load_field_settings(
        None,
        str(tmp_path),
        environ={"PHS_FIELD_DISCOVERY": "false", "PHS_FIELD_INTERFACES": "eth0, wlan0"},
        overrides={"port": 8600, "host": None},
    )
    assert settings.device_id == "tab-01"  # read from DATA_DIR/phs-field.toml
    assert settings.edge_url == "http://10.0.0.5:8490"
    assert settings.discovery is False  # "false" from the environment is a bool
    assert settings.interfaces == ["eth0", "wlan0"]  # comma-separated list
    assert settings.port == 8600  # a flag
    assert settings.host == "0.0.0.0"  # a flag left unset changes nothing
    assert settings.data_dir == str(tmp_path)
    assert settings.key_path == tmp_path / "device.key"


def test_field_settings_refuse_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "phs-field.toml").write_text('[field]\ndevise_id = "tab-01"\n')
    with pytest.raises(ValidationFailed):
        load_field_settings(None, str(tmp_path), environ={})


def test_float_settings_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[gateway]\ndeident_max_suppressed_share = 0\n")  # TOML int for a float
    assert load_settings(str(config), environ={}).deident_max_suppressed_share == 0.0
    settings = load_settings(None, environ={"PHS_GATEWAY_DEIDENT_MAX_SUPPRESSED_SHARE": "0.1"})
    assert settings.deident_max_suppressed_share == 0.1
    for bad in ("lots", "nan", "inf"):
        with pytest.raises(ValidationFailed):
            load_settings(None, environ={"PHS_GATEWAY_DEIDENT_MAX_SUPPRESSED_SHARE": bad})


def test_a_key_overlap_window_out_of_range_is_refused_at_start() -> None:
    none = load_settings(None, environ={"PHS_GATEWAY_KEY_OVERLAP_SECONDS": "0"})
    assert none.key_overlap_seconds == 0
    for bad in ("-1", "31622401"):
        with pytest.raises(ValidationFailed):
            load_settings(None, environ={"PHS_GATEWAY_KEY_OVERLAP_SECONDS": bad})

"""Settings are declared once; every one is documented and loadable."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings, load_settings
from shared.errors import ValidationFailed

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


@pytest.mark.parametrize("name", [name for name, _, _ in Settings.describe()])
def test_every_setting_is_documented(name: str) -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert f"`{name}`" in text and f"`PHS_GATEWAY_{name.upper()}`" in text


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

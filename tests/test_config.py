"""Connecting and configuration (API.md "Connecting")."""

from __future__ import annotations

from pathlib import Path

import pytest

import ow_es
from ow_es import config


def test_precedence_argument_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OW_ES_DATABASE_URL", "sqlite:///from-ow-es.db")
    monkeypatch.setenv("OPENWORKFLOW_POSTGRES_URL", "postgresql://u@h/db")
    assert config.resolve("sqlite:///arg.db").sqlite_path == "arg.db"
    assert config.resolve().sqlite_path == "from-ow-es.db"
    monkeypatch.delenv("OW_ES_DATABASE_URL")
    settings = config.resolve()
    assert settings.backend == "postgres" and settings.url == "postgresql://u@h/db"
    monkeypatch.delenv("OPENWORKFLOW_POSTGRES_URL")
    default = config.resolve()
    assert default.backend == "sqlite" and default.sqlite_path == "openworkflow.db"


def test_namespace_and_schema_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENWORKFLOW_NAMESPACE_ID", "tenant-1")
    monkeypatch.setenv("OPENWORKFLOW_SCHEMA", "wf")
    settings = config.resolve("postgresql://u@h/db")
    assert (settings.namespace, settings.schema) == ("tenant-1", "wf")
    monkeypatch.delenv("OPENWORKFLOW_NAMESPACE_ID")
    monkeypatch.delenv("OPENWORKFLOW_SCHEMA")
    settings = config.resolve("postgresql://u@h/db")
    assert (settings.namespace, settings.schema) == ("default", "openworkflow")


def test_sqlite_urls_follow_sqlalchemy() -> None:
    assert config.resolve("sqlite:///rel/path.db").sqlite_path == "rel/path.db"
    assert config.resolve("sqlite:////abs/path.db").sqlite_path == "/abs/path.db"
    assert config.resolve("sqlite:///:memory:").sqlite_path == ":memory:"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"schema": "bad-name"}, "invalid schema name"),
        ({"schema": "x" * 64}, "invalid schema name"),
        ({"schema": "1abc"}, "invalid schema name"),
        ({"namespace": ""}, "invalid namespace"),
        ({"namespace": "has space"}, "invalid namespace"),
        ({"namespace": "n" * 129}, "invalid namespace"),
    ],
)
async def test_invalid_names_are_config_errors(kwargs: dict[str, str], fragment: str) -> None:
    for url in ("sqlite:///:memory:", "postgresql://u@127.0.0.1:1/db"):
        with pytest.raises(ow_es.ConfigError, match=fragment):
            await ow_es.connect(url, **kwargs)


async def test_invalid_urls_are_config_errors() -> None:
    with pytest.raises(ow_es.ConfigError, match="must start with"):
        await ow_es.connect("mysql://x/y")
    with pytest.raises(ow_es.ConfigError, match="invalid SQLite URL"):
        await ow_es.connect("sqlite:/nope.db")
    with pytest.raises(ow_es.ConfigError, match="invalid PostgreSQL URL"):
        await ow_es.connect("postgresql://u@h/db?sslmode=nonsense&x=")


async def test_unreachable_postgres_is_store_unavailable() -> None:
    with pytest.raises(ow_es.StoreUnavailable, match="cannot use PostgreSQL") as info:
        await ow_es.connect("postgresql://postgres:secret@127.0.0.1:1/nowhere")
    assert "secret" not in str(info.value)  # the password is redacted
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_missing_sqlite_folder_is_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ow_es.StoreUnavailable, match="is missing"):
        await ow_es.connect(f"sqlite:///{tmp_path}/no/such/dir/ow.db")


async def test_embedded_default_is_openworkflow_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OW_ES_DATABASE_URL", "OPENWORKFLOW_POSTGRES_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    async with ow_es.OpenWorkflow() as client:
        assert client.store.dialect == "sqlite"
        await client.start("anything", {"x": 1})
    assert (tmp_path / "openworkflow.db").exists()


def test_client_is_safe_at_import_time() -> None:
    client = ow_es.OpenWorkflow()  # no I/O, no environment read yet
    with pytest.raises(ow_es.ConfigError, match="not connected"):
        _ = client.store


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p@ss@h/db", "user=u password=*** dbname=db host=***@h"),
        ("postgresql://u@h/db?password=hunter2", "user=u password=*** dbname=db host=h"),
        ("host=h password=x", "password=*** host=h"),
        ("postgresql://u:p%40ss@h:5433/db", "user=u password=*** dbname=db host=h port=5433"),
        ("host=h sslpassword=keypass", "host=h sslpassword=***"),
    ],
)
def test_redact_hides_passwords_wherever_libpq_finds_them(url: str, shown: str) -> None:
    assert config.redact(url) == shown


def test_redact_leaves_urls_without_secrets_and_masks_what_libpq_cannot_read() -> None:
    assert config.redact("postgresql://u@h:5432/db") == "postgresql://u@h:5432/db"
    assert config.redact("sqlite:///ow.db") == "sqlite:///ow.db"
    assert config.redact("mysql://u:p@ss@h/db?password=zz") == "mysql://u:***@h/db?password=***"


def test_redact_text_hides_a_drivers_echo_of_the_secrets() -> None:
    url = "postgresql://u:p@ss@h/db"
    text = config.redact_text("failed to resolve host 'ss@h'", [url])
    assert text == "failed to resolve host '***@h'"
    url = "postgresql://u@h/db?password=hunter2"
    assert config.redact_text("hunter2 hunter22", [url]) == "*** hunter22"


@pytest.mark.parametrize(
    "url", ["postgresql://u:p@ss@127.0.0.1:1/db", "postgresql://u@127.0.0.1:1/db?password=hunter2"]
)
async def test_connection_errors_show_no_password(url: str) -> None:
    with pytest.raises(ow_es.StoreUnavailable) as info:
        await ow_es.connect(url)
    assert "p@ss" not in str(info.value) and "hunter2" not in str(info.value)
    assert "password=***" in str(info.value)

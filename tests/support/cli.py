"""The ``ow-es`` command line in the test process (click's CliRunner), and the options or
environment that point it at a test's database."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from click.testing import CliRunner, Result

from ow_es.cli import main

# Cleared for every invocation (with every other OW_ES_*/OPENWORKFLOW_* setting but the test
# suite's own), so the developer's environment cannot leak into a test.
ENV_KEYS = (
    "OW_ES_DATABASE_URL",
    "OPENWORKFLOW_POSTGRES_URL",
    "OPENWORKFLOW_NAMESPACE_ID",
    "OPENWORKFLOW_SCHEMA",
    "OW_ES_APP",
)
_SUITE_KEYS = ("OW_ES_TEST_POSTGRES_URL", "OW_ES_REQUIRE_POSTGRES")


def _cleared() -> dict[str, str | None]:
    present = (
        key
        for key in os.environ
        if key.startswith(("OW_ES_", "OPENWORKFLOW_")) and key not in _SUITE_KEYS
    )
    return dict.fromkeys([*ENV_KEYS, *present])


def db_args(db: Mapping[str, Any]) -> list[str]:
    """The options that point a command at this test's database."""
    args = ["--database-url", db["url"]]
    return [*args, "--schema", db["schema"]] if db["schema"] else args


def db_env(db: Mapping[str, Any]) -> dict[str, str]:
    """The environment that points a command at this test's database."""
    env = {"OW_ES_DATABASE_URL": db["url"]}
    if db["schema"]:
        env["OPENWORKFLOW_SCHEMA"] = db["schema"]
    return env


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    overrides = _cleared()
    overrides.update(env or {})
    return CliRunner().invoke(main, list(args), env=overrides)


async def ainvoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """The CLI runs its own event loop: call it from a thread while the test's loop waits."""
    return await asyncio.to_thread(invoke, *args, env=env)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_usage_error(result: Result, *fragments: str) -> None:
    """click's usage error: exit status 2, its message on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not a crash
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]

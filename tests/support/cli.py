"""The ``ow-es`` command line in the test process (click's CliRunner), and the options or
environment that point it at a test's database."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from click.testing import CliRunner, Result

from ow_es.cli import main

# Cleared for every invocation, so the developer's environment cannot leak into a test.
ENV_KEYS = (
    "OW_ES_DATABASE_URL",
    "OPENWORKFLOW_POSTGRES_URL",
    "OPENWORKFLOW_NAMESPACE_ID",
    "OPENWORKFLOW_SCHEMA",
    "OW_ES_APP",
)


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
    overrides: dict[str, str | None] = dict.fromkeys(ENV_KEYS)
    overrides.update(env or {})
    return CliRunner().invoke(main, list(args), env=overrides)


async def ainvoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """The CLI runs its own event loop: call it from a thread while the test's loop waits."""
    return await asyncio.to_thread(invoke, *args, env=env)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not a crash
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]

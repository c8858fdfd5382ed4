"""``[tool.ow-es]`` in ./pyproject.toml: the worker's APP and option defaults.

Flags and environment variables win over it. A bad value is reported naming the file and the
key, before click would blame the option (and its environment variable) for it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ow_es.cli.common import CliError
from ow_es.durations import to_seconds

PYPROJECT = "pyproject.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def project_settings() -> dict[str, Any]:
    """The ``[tool.ow-es]`` table of ./pyproject.toml (empty when there is none)."""
    path = Path(PYPROJECT)
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"cannot read {path.resolve()}: {exc}") from None
    table = data.get("tool", {}).get("ow-es", {})
    if not isinstance(table, dict):
        raise CliError(f"[tool.ow-es] in {path.resolve()} must be a table")
    return table


def configured_target() -> str | None:
    """``[tool.ow-es] app`` from ./pyproject.toml, if there is one."""
    app = project_settings().get("app")
    if app is not None and (not isinstance(app, str) or not app):
        raise CliError(
            f'{Path(PYPROJECT).resolve()}: [tool.ow-es] app must be a "module:attr" string'
        )
    return app


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected a whole number of at least 1")
    try:
        number = int(value)
    except ValueError:
        raise ValueError("expected a whole number of at least 1") from None
    if number < 1:
        raise ValueError("expected a whole number of at least 1")
    return number


def _duration(value: Any) -> str:
    to_seconds(value, "")  # raises ": <why>" for anything that is not a duration
    return str(value)


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value.lower()

    return check


# The worker's option defaults ``[tool.ow-es]`` may set, with their checks.
WORKER_SETTINGS: dict[str, Callable[[Any], Any]] = {
    "concurrency": _count,
    "lease": _duration,
    "heartbeat": _duration,
    "poll_interval": _duration,
    "stop_timeout": _duration,
    "connect_timeout": _duration,
    "log_level": _choice(*LOG_LEVELS),
    "log_format": _choice(*LOG_FORMATS),
}


def worker_defaults() -> dict[str, Any]:
    """The worker option defaults of ``[tool.ow-es]``, checked: a bad one is an error naming
    pyproject.toml and the key."""
    table = project_settings()
    defaults = {}
    for key, check in WORKER_SETTINGS.items():
        if key not in table:
            continue
        try:
            defaults[key] = check(table[key])
        except ValueError as exc:
            why = str(exc).removeprefix(": ")
            raise CliError(
                f"{Path(PYPROJECT).resolve()}: [tool.ow-es] {key} = {table[key]!r}: {why}"
            ) from None
    return defaults

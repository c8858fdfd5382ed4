"""Finding the user's workflows from an APP target: ``module:attr`` or ``module``.

``module:attr`` names an ``OpenWorkflow`` (or one ``Workflow``); ``module`` alone serves every
workflow found at its top level (and those registered on its top-level clients) on a fresh
client connected with the CLI's options. Without a target, ``[tool.ow-es] app`` in
./pyproject.toml.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

from ow_es.cli.common import CliError, Connection
from ow_es.client import OpenWorkflow
from ow_es.workflow import Workflow

PYPROJECT = "pyproject.toml"


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
    path = Path(PYPROJECT)
    app = project_settings().get("app")
    if app is not None and (not isinstance(app, str) or not app):
        raise CliError(f'[tool.ow-es] app in {path.resolve()} must be a "module:attr" string')
    return app


def require_target(app: str | None) -> str:
    target = app or configured_target()
    if not target:
        raise CliError(
            'no APP given: pass `module:attr` or `module`, or set [tool.ow-es] app = "..." '
            "in ./pyproject.toml"
        )
    return target


def import_module(name: str) -> ModuleType:
    """Import the user's module with the current directory importable, as `python -m` would."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except Exception as exc:  # whatever the user's import raised: report it in one line
        raise CliError(f"cannot import {name!r}: {type(exc).__name__}: {exc}") from None


def _attribute(module: ModuleType, path: str, target: str) -> Any:
    value: Any = module
    for part in path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CliError(f"{target}: {module.__name__!r} has no attribute {path!r}") from None
    return value


def module_workflows(module: ModuleType) -> list[Workflow[Any]]:
    """Every workflow at the module's top level, and those registered on its clients."""
    found: dict[tuple[str, str | None], Workflow[Any]] = {}
    for value in vars(module).values():
        if isinstance(value, Workflow):
            candidates = [value]
        elif isinstance(value, OpenWorkflow):
            candidates = value.workflows
        else:
            continue
        for workflow in candidates:
            if found.setdefault(workflow.key, workflow) is not workflow:
                raise CliError(
                    f"{module.__name__!r} defines two different workflows "
                    f"{label(workflow)!r}: give them distinct names or versions"
                )
    return list(found.values())


def label(workflow: Workflow[Any]) -> str:
    """``name@version``, or the bare name of an unversioned workflow."""
    return workflow.name if workflow.version is None else f"{workflow.name}@{workflow.version}"


def load_app(target: str, conn: Connection) -> OpenWorkflow:
    """The client serving ``target``'s workflows (not connected yet)."""
    module_name, _, attr = target.partition(":")
    if not module_name or (":" in target and not attr):
        raise CliError(f"invalid APP {target!r}: expected `module:attr` or `module`")
    module = import_module(module_name)
    if not attr:
        client = conn.client(migrate=True)
        for workflow in module_workflows(module):
            client.register(workflow)
    else:
        value = _attribute(module, attr, target)
        if isinstance(value, OpenWorkflow):
            client = adopt(value, conn)
        elif isinstance(value, Workflow):
            client = conn.client(migrate=True)
            client.register(value)
        else:
            raise CliError(f"{target} is a {type(value).__name__}, not an ow_es.OpenWorkflow")
    if not client.workflows:
        raise CliError(f"no workflows found in {target}")
    return client


def adopt(client: OpenWorkflow, conn: Connection) -> OpenWorkflow:
    """Fill in the connection settings the app's client left open (None) from the CLI's."""
    if client.settings is None:  # not connected yet
        client.url = client.url if client.url is not None else conn.url
        client.namespace = client.namespace if client.namespace is not None else conn.namespace
        client.schema = client.schema if client.schema is not None else conn.schema
    return client

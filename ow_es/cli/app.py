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
import traceback
from types import ModuleType
from typing import Any

import click

from ow_es.cli.common import CliError, Connection, keep_secret, one_line
from ow_es.cli.project import configured_target
from ow_es.client import OpenWorkflow
from ow_es.workflow import Workflow


def require_target(app: str | None) -> str:
    target = app or configured_target()
    if not target:
        raise click.UsageError(
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
        raise CliError(f"cannot import {name}: {import_failure(exc)}") from None


_IMPORTLIB = os.path.dirname(importlib.__file__) + os.sep


def import_failure(exc: BaseException) -> str:
    """``SyntaxError at /app/flows.py:3: invalid syntax``: the error and where it happened (the
    innermost frame outside the import machinery), in one line."""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}" if exc.lineno else exc.filename
        return f"{type(exc).__name__} at {where}: {exc.msg}"
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(("<", _IMPORTLIB)) and frame.filename != __file__
    ]
    if not frames:  # the module itself was not found: no file to point at
        return f"{type(exc).__name__}: {one_line(exc)}"
    return f"{type(exc).__name__} at {frames[-1].filename}:{frames[-1].lineno}: {one_line(exc)}"


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
        raise click.UsageError(f"invalid APP {target!r}: expected `module:attr` or `module`")
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
    keep_secret(client.url)
    return client

"""Numbered SQL migrations per dialect, shipped as ``ow_es.migrations/<dialect>/NNNN_name.sql``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from ow_es.errors import SchemaMismatch

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    folder = resources.files("ow_es.migrations").joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.version)
    return found


def latest_version(dialect: str) -> int:
    return migrations(dialect)[-1].version


def pending(dialect: str, applied: int) -> list[Migration]:
    """Migrations after version ``applied``; refuses a database newer than this ow-es."""
    latest = latest_version(dialect)
    if applied > latest:
        raise SchemaMismatch(
            f"the database schema is at version {applied}, newer than this ow-es knows "
            f"({latest}); upgrade ow-es"
        )
    return [m for m in migrations(dialect) if m.version > applied]

"""Named SQL queries from ``queries/<dialect>.sql`` (``-- name: NAME`` blocks)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.M)


@cache
def load(dialect: str) -> dict[str, str]:
    text = resources.files("ow_es.store").joinpath(f"queries/{dialect}.sql").read_text()
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[name] = body.strip().rstrip(";")
    return queries

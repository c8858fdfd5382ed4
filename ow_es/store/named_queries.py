"""Named SQL queries from ``<dialect>/queries.sql`` (``-- name: NAME`` blocks). A line
``-- include: NAME`` stands for the body of another block (a condition several queries share),
itself expanded.

The comments are for readers of the file and are not sent: without them the claim statements
fit psycopg's parse cache (statements up to 4 KiB are parsed once per process, longer ones on
every execution, about 0.1 ms each time for a claim)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.M)
_INCLUDE = re.compile(r"^\s*-- include: (\w+)\s*$", re.M)


@cache
def load(dialect: str) -> dict[str, str]:
    text = resources.files(f"ow_es.store.{dialect}").joinpath("queries.sql").read_text()
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[name] = body.strip().rstrip(";")

    def expand(query: str) -> str:  # an included block may include another
        return _INCLUDE.sub(lambda m: expand(queries[m.group(1)]), query)

    return {name: _without_comments(expand(q)) for name, q in queries.items()}


def _without_comments(query: str) -> str:
    """The query without its comment lines and indentation (no line of code carries one)."""
    lines = (line.strip() for line in query.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))

"""The write statements of both adapters, derived from the table definitions (``tables``).

Identifiers come from the definitions, never from input. PostgreSQL placeholders carry the
column's type (``%s::jsonb``), SQLite's are plain ``?``.
"""

from __future__ import annotations

import functools
from typing import Literal

from ow_es.store.tables import Column, Table

Dialect = Literal["postgres", "sqlite"]


def placeholder(column: Column, dialect: Dialect) -> str:
    return f"%s::{column.type}" if dialect == "postgres" else "?"


@functools.cache
def insert(table: Table, dialect: Dialect, *, if_new: bool = False) -> str:
    """INSERT of every column; ``if_new``: nothing on a conflict, returning the key's last
    column of the rows inserted."""
    values = ", ".join(placeholder(c, dialect) for c in table.columns)
    text = f"INSERT INTO {table.name} ({', '.join(table.names)}) VALUES ({values})"
    if if_new:
        text += f" ON CONFLICT DO NOTHING RETURNING {table.key[-1]}"
    return text


@functools.cache
def upsert_clause(table: Table) -> str:
    """ON CONFLICT of the key: every other column takes the new row's value."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in table.updatable)
    return f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}"


@functools.cache
def upsert(table: Table, dialect: Dialect, *, into: str | None = None) -> str:
    """INSERT of every column, replacing the row with the same key (``into``: a table of the
    same shape, such as a rebuild's shadow table)."""
    values = ", ".join(placeholder(c, dialect) for c in table.columns)
    name = into or table.name
    return f"INSERT INTO {name} ({', '.join(table.names)}) VALUES ({values}) {upsert_clause(table)}"


@functools.cache
def update(table: Table, columns: tuple[str, ...], dialect: Dialect) -> str:
    """UPDATE of just these columns of the row with a key (parameters: values, then key), as
    ``tables.changes`` groups them; one prepared statement per shape of change."""
    assignments = ", ".join(f"{c} = {placeholder(table.by_name[c], dialect)}" for c in columns)
    where = " AND ".join(f"{k} = {placeholder(table.by_name[k], dialect)}" for k in table.key)
    return f"UPDATE {table.name} SET {assignments} WHERE {where}"

"""Migrations: they produce the schema the code expects, run once under concurrency, and a
database migrated by a newer ow-es is refused."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any

import psycopg
import pytest

import ow_es
from ow_es.store import migrator
from ow_es.store.tables import EVENTS, RUNS, STEPS, Table
from tests.support.processes import Processes

# The log's own columns, which the database fills in (not written by ow-es).
DATABASE_COLUMNS = {
    "sqlite": {"position": "INTEGER"},
    "postgres": {"position": "bigint", "tx_id": "xid8"},
}


def _columns(db: dict[str, Any], table: str) -> dict[str, str]:
    """The table's columns in the migrated database, with their types."""
    if db["backend"] == "sqlite":
        path = db["url"].removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            return {row[1]: row[2] for row in conn.execute(f"PRAGMA table_info({table})")}
    with psycopg.connect(db["url"]) as conn:
        rows = conn.execute(
            "SELECT column_name, format_type(atttypid, atttypmod)"
            " FROM information_schema.columns"
            " JOIN pg_attribute ON attrelid = format('%%I.%%I', table_schema, table_name)::regclass"
            "  AND attname = column_name"
            " WHERE table_schema = %s AND table_name = %s",
            [db["schema"], table],
        ).fetchall()
    return {row[0]: row[1].replace("timestamp with time zone", "timestamptz") for row in rows}


def _expected(table: Table, backend: str) -> dict[str, str]:
    """The columns the table definition says the table has, typed per backend."""
    if backend == "sqlite":
        return {c.name: c.sqlite_type for c in table.columns}
    return {c.name: c.type for c in table.columns}


async def test_migrations_produce_the_schema_the_code_expects(
    db: dict[str, Any], make_client: Any
) -> None:
    client = await make_client()
    await client.connect()
    backend = db["backend"]
    assert _columns(db, RUNS.name) == _expected(RUNS, backend)
    assert _columns(db, STEPS.name) == _expected(STEPS, backend)
    assert _columns(db, EVENTS.name) == {**_expected(EVENTS, backend), **DATABASE_COLUMNS[backend]}
    assert await client.store.schema_version() == migrator.latest_version(client.store.dialect)


async def test_migrate_is_idempotent_and_dry_run_writes_nothing(
    db: dict[str, Any], make_client: Any
) -> None:
    client = await make_client(migrate=False)
    await client.connect()
    every = [m.name for m in migrator.migrations(db["backend"])]
    assert await client.store.migrate(dry_run=True) == every
    assert await client.store.migrate(dry_run=True) == every  # still pending
    assert await client.store.migrate() == every
    assert await client.store.migrate() == []
    assert await client.store.migrate(dry_run=True) == []


async def test_newer_database_is_refused(db: dict[str, Any], make_client: Any) -> None:
    client = await make_client()
    await client.connect()
    await client.close()
    future = migrator.latest_version(db["backend"]) + 1
    if db["backend"] == "sqlite":
        with sqlite3.connect(db["url"].removeprefix("sqlite:///")) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (?, 'future.sql', 'now')", (future,))
    else:
        with psycopg.connect(db["url"], autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{db["schema"]}".schema_migrations (version, name)'
                " VALUES (%s, 'future.sql')",
                [future],
            )
    for migrate in (True, False):
        newer = await make_client(migrate=migrate)
        with pytest.raises(ow_es.SchemaMismatch, match="newer than this ow-es"):
            await newer.connect()


_CONNECT = """
import asyncio, sys
import ow_es
async def main():
    client = await ow_es.connect(sys.argv[1], schema=sys.argv[2])
    await client.close()
asyncio.run(main())
"""


@pytest.mark.slow
async def test_eight_processes_connecting_to_an_empty_schema_all_succeed(
    pg_url: str, processes: Processes
) -> None:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        procs = [processes.python("-c", _CONNECT, pg_url, schema) for _ in range(8)]
        codes = await asyncio.gather(*(p.exited(60) for p in procs))
        for proc, code in zip(procs, codes, strict=True):
            assert code == 0, proc.stderr()
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(f'SELECT version FROM "{schema}".schema_migrations').fetchall()
        # migrated exactly once
        assert rows == [(m.version,) for m in migrator.migrations("postgres")]
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

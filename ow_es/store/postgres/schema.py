"""Migrations on PostgreSQL: applied under an advisory lock, so many processes may start at
once (one migrates, the others wait and find it done)."""

from __future__ import annotations

from typing import Any, cast

import psycopg
from psycopg import sql

from ow_es.store import migrator


async def applied_version(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    cur = await conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        [f"{sql.Identifier(schema).as_string(None)}.schema_migrations"],
    )
    row = await cur.fetchone()
    if not row or not row[0]:
        return 0
    cur = await conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(
            sql.Identifier(schema)
        )
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def check_version(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    """The applied version; raises ``SchemaMismatch`` for a database newer than this ow-es."""
    applied = await applied_version(conn, schema)
    migrator.pending("postgres", applied)
    return applied


async def migrate(
    conn: psycopg.AsyncConnection[Any], schema: str, lock_key: int, *, dry_run: bool
) -> list[str]:
    todo = migrator.pending("postgres", await applied_version(conn, schema))
    if not todo or dry_run:
        return [m.name for m in todo]
    ident = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key])
        cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        if await cur.fetchone() is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        todo = migrator.pending("postgres", await applied_version(conn, schema))
        for migration in todo:
            await conn.execute(cast(Any, migration.sql))
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                [migration.version, migration.name],
            )
    return [m.name for m in todo]

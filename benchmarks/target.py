"""Where the benchmark runs (URL, schema, folders), a client on it, and progress lines."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

import ow_es


class Skipped(Exception):
    """A phase cannot be measured here (a competitor not installed, a backend without it);
    the message says why, and the run goes on."""


@dataclass(frozen=True)
class Target:
    """Where the benchmark runs: the URL, its own schema, and a folder for worker logs."""

    url: str
    schema: str
    log_dir: Path
    profile_dir: Path | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if self.url.startswith("sqlite:") else "postgres"


@contextlib.asynccontextmanager
async def client(target: Target, namespace: str) -> AsyncIterator[ow_es.OpenWorkflow]:
    async with ow_es.OpenWorkflow(target.url, namespace=namespace, schema=target.schema) as ow:
        yield ow


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def create_schema(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


async def drop_schema(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )

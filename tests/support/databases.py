"""Fixture plugin: the databases a test runs against.

One behavioural suite over both backends. PostgreSQL comes from ``OW_ES_TEST_POSTGRES_URL``,
else a testcontainers container when a Docker engine answers, else the Postgres half is
skipped with a loud reason. Under ``OW_ES_REQUIRE_POSTGRES=1`` (CI) a missing Postgres fails
instead of skipping. Every test gets its own schema (Postgres) or database file (SQLite).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import ow_es

_PG_SKIP_REASON = ""

ClientFactory = Callable[..., Awaitable[ow_es.OpenWorkflow]]


def _docker_postgres() -> Iterator[str | None]:
    global _PG_SKIP_REASON
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception as exc:
        _PG_SKIP_REASON = (
            "PostgreSQL tests SKIPPED: OW_ES_TEST_POSTGRES_URL is not set and no Docker engine "
            f"answers for testcontainers ({type(exc).__name__})"
        )
        yield None
        return
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver=None) as container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    url = os.environ.get("OW_ES_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    yield from _docker_postgres()


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get("OW_ES_TEST_POSTGRES_URL")
    return f"ow-es: PostgreSQL from {'OW_ES_TEST_POSTGRES_URL' if url else 'testcontainers/none'}"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _require_postgres(url: str | None) -> str:
    if url is None:
        if os.environ.get("OW_ES_REQUIRE_POSTGRES") == "1":
            pytest.fail("OW_ES_REQUIRE_POSTGRES=1 but no PostgreSQL: " + _PG_SKIP_REASON)
        pytest.skip(_PG_SKIP_REASON)
    return url


@pytest.fixture
def pg_url(postgres_url: str | None) -> str:
    """A PostgreSQL URL (skips loudly, or fails under OW_ES_REQUIRE_POSTGRES=1)."""
    return _require_postgres(postgres_url)


def _own_schema(url: str) -> Iterator[dict[str, Any]]:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield {"url": url, "schema": schema, "backend": "postgres"}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def db(backend: str, postgres_url: str | None, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Connection settings isolated to this test: ``{"url", "schema", "backend"}``."""
    if backend == "sqlite":
        yield {"url": f"sqlite:///{tmp_path / 'ow.db'}", "schema": None, "backend": "sqlite"}
        return
    yield from _own_schema(_require_postgres(postgres_url))


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[dict[str, Any]]:
    """As ``db``, PostgreSQL only: for tests that need a second session or server processes."""
    yield from _own_schema(pg_url)


@pytest.fixture
async def make_client(db: dict[str, Any]) -> AsyncIterator[ClientFactory]:
    """Make connected clients on this test's database; all are closed at teardown."""
    clients: list[ow_es.OpenWorkflow] = []

    async def make(**options: Any) -> ow_es.OpenWorkflow:
        options.setdefault("namespace", "default")
        client = ow_es.OpenWorkflow(db["url"], schema=db["schema"], **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def ow(make_client: ClientFactory) -> ow_es.OpenWorkflow:
    """A client (not yet connected: define workflows, then ``await ow.connect()``)."""
    return await make_client()

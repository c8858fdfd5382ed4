"""The ``ow-es`` command line on both backends: in-process with CliRunner, and the worker as a
real subprocess stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import sqlite3
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec
import psycopg
import pytest

import ow_es
from ow_es import gc_tuning, logging_setup, run_facts
from ow_es.cli import main, runs_bulk
from ow_es.schedule import tick_key
from ow_es.store import migrator
from tests.support.cli import (
    ainvoke,
    assert_one_line_error,
    assert_usage_error,
    db_args,
    db_env,
    invoke,
    ok,
)
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
    [
        *(["worker"], ["migrate"], ["doctor"], ["signal"], ["reproject"]),
        *(["runs", "list"], ["runs", "show"], ["runs", "resume"]),
        *(["runs", "start"], ["runs", "cancel"]),
        *(["limits", "list"], ["limits", "set"], ["limits", "clear"]),
    ],
)
def test_help_shows_every_options_env_var(command: list[str]) -> None:
    text = ok(invoke(*command, "--help"))
    for name in ("OW_ES_DATABASE_URL", "OPENWORKFLOW_POSTGRES_URL", "OPENWORKFLOW_SCHEMA"):
        assert name in text
    assert "OPENWORKFLOW_NAMESPACE_ID" in text
    if command == ["worker"]:
        for name in (
            *("OW_ES_CONCURRENCY", "OW_ES_LEASE", "OW_ES_STOP_TIMEOUT"),
            *("OW_ES_CONNECT_TIMEOUT", "OW_ES_LOG_FORMAT"),
        ):
            assert name in text


def test_every_option_reads_an_environment_variable() -> None:
    def commands(group: click.Group, path: str) -> Iterator[tuple[str, click.Command]]:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, f"{path} {name}")
            else:
                yield f"{path} {name}", command

    for path, command in commands(main, "ow-es"):
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.envvar, f"{path} {param.opts[0]} reads no environment variable"


def test_help_documents_the_exit_statuses() -> None:
    text = ok(invoke("--help"))
    assert "Exit status:" in text
    assert "0  success" in text
    assert "1  the command failed: one line `error: <cause>`" in text
    assert "2  usage error" in text


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
    if db["backend"] == "sqlite":
        Path(db["url"].removeprefix("sqlite:///")).touch()  # an empty database
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


async def test_doctor_reports_workers_and_stranded_runs(
    db: dict[str, Any], make_client: ClientFactory
) -> None:
    """The live workers and what they serve; ready runs no live worker serves; runs held
    without progress. Stranded runs fail the check: the doctor no longer says "all checks
    passed" while runs wait forever."""
    ow = await make_client()

    @ow.workflow(name="served", version="1")
    async def served(ctx: ow_es.Context) -> None:
        return None

    await ow.connect()
    await ow.start("served", version="2")  # nobody serves version 2
    await ow.start("held")
    await ow.store.claim("w-hung", [("held", None)], 1, 300)  # held, never progressing
    async with running_worker(ow, worker_id="w-doc"):
        result = await ainvoke("doctor", "--stuck-after", "0", *db_args(db))
        as_json = await ainvoke("doctor", "--stuck-after", "1h", "--json", *db_args(db))
    assert_one_line_error(result, "2 check(s) failed")
    out = result.stdout
    assert "ok    workers: 1 live: w-doc (served@1, 0/10 busy)" in out
    assert "FAIL  unserved runs: 1 ready run(s) no live worker serves: served@2 x1" in out
    assert "FAIL  stuck runs: held with no event for over 0s: " in out
    assert "(held on w-hung)" in out
    assert "ok    unowned runs: none" in out
    checks = {c["check"]: c["ok"] for c in msgspec.json.decode(as_json.stdout)["checks"]}
    assert checks["stuck runs"] is True and checks["unserved runs"] is False


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
    assert_usage_error(invoke("worker"), "no APP given")
    assert_usage_error(invoke("worker", "app:"), "invalid APP")
    (app_dir / "pyproject.toml").write_text('[tool.ow-es]\napp = "missing_mod:ow"\n')
    assert_one_line_error(
        invoke("worker"), "cannot import missing_mod: ModuleNotFoundError: No module named"
    )


def test_worker_rejects_bad_settings_in_one_line(db: dict[str, Any], app_dir: Path) -> None:
    module = write_module(app_dir, APP_WITH_CLIENT)
    target = f"{module}:ow"
    assert_one_line_error(invoke("worker", target, "--lease", "soon", *db_args(db)), "lease")
    assert_one_line_error(
        invoke("worker", target, "--lease", "30s", "--heartbeat", "40", *db_args(db)),
        "heartbeat must be shorter than the lease",
    )
    assert_one_line_error(invoke("worker", f"{module}:charge_x", *db_args(db)), "no attribute")
    assert_usage_error(
        invoke("worker", target, "--replay-cache-bytes", "-1", *db_args(db)), "replay-cache-bytes"
    )


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
        *("ID", "WORKFLOW", "VERSION", "STATUS", "KEY", "PRIORITY"),
        *("ATTEMPTS", "CREATED", "UPDATED", "WAITING"),
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
    assert page["next_cursor"] is None and page["held_back"] == {}
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


# -- runs start, signal --------------------------------------------------------------------------


async def test_runs_start_by_name_with_version_key_and_json(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    await ow.connect()  # creates the schema
    args = ["runs", "start", "charge", "--input", '{"amount": 5}', "--version", "2"]
    run_id = ok(await ainvoke(*args, "--key", "order-1", *db_args(db))).strip()
    run = await (await ow.get_handle(run_id)).status()
    assert (run.workflow_name, run.version, run.status) == ("charge", "2", "pending")
    assert run.input == {"amount": 5} and run.idempotency_key == "order-1"
    # The same key gives the run it already started.
    again = ok(await ainvoke(*args, "--key", "order-1", "--json", env=db_env(db)))
    assert msgspec.json.decode(again) == {
        "run_id": run_id,
        "workflow": "charge",
        "status": "pending",
    }
    # No --input: null.
    bare = ok(await ainvoke("runs", "start", "notify", *db_args(db))).strip()
    assert (await (await ow.get_handle(bare)).status()).input is None
    # Flow control: the key per-key limits count by, and the priority.
    flow = ["runs", "start", "sync", "--limit-key", "tenant-3", "--priority", "7"]
    keyed = ok(await ainvoke(*flow, *db_args(db))).strip()
    run = await (await ow.get_handle(keyed)).status()
    assert (run.key, run.priority, run.idempotency_key) == ("tenant-3", 7, None)


def test_runs_start_usage_errors_exit_2(db: dict[str, Any]) -> None:
    ok(invoke("migrate", *db_args(db)))
    assert_usage_error(invoke("runs", "start", "x", "--input", "{nope", *db_args(db)), "--input")
    assert_usage_error(invoke("runs", "start", "x", "--input", "hello", *db_args(db)), "not JSON")
    assert_usage_error(
        invoke("runs", "start", "x", "--timeout", "5", *db_args(db)), "--timeout only goes with"
    )
    assert_usage_error(
        invoke("runs", "start", "x", "--wait", "--timeout", "soon", *db_args(db)), "--timeout"
    )
    assert_usage_error(invoke("signal", "go", "--data", "{", *db_args(db)), "--data")
    assert_usage_error(
        invoke("runs", "start", "x", "--priority", "high", *db_args(db)), "--priority"
    )


async def test_runs_start_wait_prints_the_result_or_the_error(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    """--wait on runs that already finished (started earlier with the same key), and on one
    nobody serves (timeout); a live worker's wait is the slow test below."""

    @ow.workflow(name="greet")
    async def greet(ctx: ow_es.Context, name: str) -> str:
        return f"hi {name}"

    @ow.workflow(name="boom")
    async def boom(ctx: ow_es.Context) -> None:
        raise ow_es.NonRetryableError("kaboom\nsecond line")

    await ow.connect()
    async with running_worker(ow):
        done = await greet.start("ada", idempotency_key="g")
        failed = await boom.start(idempotency_key="b")
        assert await done.result(timeout=15) == "hi ada"
        with pytest.raises(ow_es.WorkflowFailed):
            await failed.result(timeout=15)

    out = ok(await ainvoke("runs", "start", "greet", "--key", "g", "--wait", *db_args(db)))
    assert out.splitlines() == [done.run_id, '"hi ada"']
    shown = msgspec.json.decode(
        ok(await ainvoke("runs", "start", "greet", "--key", "g", "--wait", "--json", *db_args(db)))
    )
    assert shown == {
        "run_id": done.run_id,
        "workflow": "greet",
        "status": "completed",
        "result": "hi ada",
    }

    result = await ainvoke("runs", "start", "boom", "--key", "b", "--wait", *db_args(db))
    assert_one_line_error(result, f"run {failed.run_id} failed: ", "kaboom; second line")
    assert result.stdout.strip() == failed.run_id
    result = await ainvoke("runs", "start", "boom", "--key", "b", "--wait", "--json", *db_args(db))
    assert result.exit_code == 1 and result.stderr.startswith("error: run ")
    assert len(result.stderr.splitlines()) == 1
    record = msgspec.json.decode(result.stdout)  # the record, with the run's error
    assert record["status"] == "failed" and record["error"]["message"] == "kaboom\nsecond line"

    args = ("runs", "start", "nobody", "--wait", "--timeout", "300ms")
    assert_one_line_error(await ainvoke(*args, *db_args(db)), "did not finish within 0.3s")


async def test_signal_prints_the_runs_it_reached(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    @ow.workflow(name="approval")
    async def approval(ctx: ow_es.Context) -> Any:
        return {"got": await ctx.step.wait_for_signal("approved")}

    async def waiting(run_id: str) -> bool:
        run = await ow.store.get_run(run_id)
        return bool(run and run.waiting_for and run.waiting_for.get("name") == "approved")

    await ow.connect()
    async with running_worker(ow):
        first, second = await approval.start(), await approval.start()
        await eventually(lambda: waiting(first.run_id))
        await eventually(lambda: waiting(second.run_id))

    assert ok(await ainvoke("signal", "nobody-waits", *db_args(db))) == ""
    out = ok(await ainvoke("signal", "approved", "--data", '{"by": "ada"}', *db_args(db)))
    assert sorted(out.splitlines()) == sorted([first.run_id, second.run_id])
    again = await ainvoke("signal", "approved", "--key", "k", "--json", *db_args(db))
    assert msgspec.json.decode(ok(again)) == {"signal": "approved", "delivered_to": []}
    async with running_worker(ow):
        assert await first.result(timeout=15) == {"got": {"by": "ada"}}
        assert await second.result(timeout=15) == {"got": {"by": "ada"}}


# -- bulk cancel -----------------------------------------------------------------------------------


async def test_bulk_cancel_by_filters_with_dry_run_and_summary(
    ow: ow_es.OpenWorkflow, db: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs_bulk, "_PAGE", 2)  # page through list_runs in small pages
    ids = await finished_runs(ow)  # completed "greet", failed "boom", pending "nobody"
    older = [ids["pending"], *[(await ow.start("nobody", {"n": n})).run_id for n in range(3)]]
    other = (await ow.start("other")).run_id
    await asyncio.sleep(1.1)
    newer = (await ow.start("nobody", {"n": "new"})).run_id

    async def statuses() -> dict[str, str]:
        page = await ow.list_runs(limit=100)
        return {run.id: run.status for run in page.runs}

    before = await statuses()
    out = ok(await ainvoke("runs", "cancel", "--workflow", "nobody", "--dry-run", *db_args(db)))
    lines = out.splitlines()
    assert sorted(line.split()[2] for line in lines[:-1]) == sorted([*older, newer])
    assert all(line.startswith("would cancel ") for line in lines[:-1])
    assert lines[-1].startswith("would cancel 5 run(s), skipped 0") and "dry run" in lines[-1]
    assert await statuses() == before  # nothing canceled

    args = ("runs", "cancel", "--workflow", "nobody", "--status", "pending", "--older-than", "1s")
    out = ok(await ainvoke(*args, *db_args(db)))
    assert out.splitlines()[-1].startswith("canceled 4 run(s), skipped 0 already finished")
    after = await statuses()
    assert [after[run_id] for run_id in older] == ["canceled"] * 4
    assert after[newer] == after[other] == "pending"
    assert after[ids["completed"]] == "completed" and after[ids["failed"]] == "failed"

    # Finished and canceled matches are skipped and counted.
    out = ok(await ainvoke("runs", "cancel", "--older-than", "1s", "--json", *db_args(db)))
    record = msgspec.json.decode(out)
    assert record["matched"] == 7 and record["canceled"] == [other]
    assert {s["run_id"]: s["status"] for s in record["skipped"]} == {
        **dict.fromkeys(older, "canceled"),
        ids["completed"]: "completed",
        ids["failed"]: "failed",
    }
    assert (await statuses())[newer] == "pending"


def test_bulk_cancel_usage_errors_exit_2(db: dict[str, Any]) -> None:
    ok(invoke("migrate", *db_args(db)))
    assert_usage_error(invoke("runs", "cancel", *db_args(db)), "give a RUN_ID, or at least one")
    assert_usage_error(
        invoke("runs", "cancel", "some-id", "--status", "pending", *db_args(db)),
        "either RUN_ID or filters",
    )
    assert_usage_error(
        invoke("runs", "cancel", "--older-than", "soon", *db_args(db)), "--older-than"
    )
    assert_usage_error(invoke("runs", "cancel", "--status", "sleepy", *db_args(db)), "--status")


# -- flow control: limits, keys, priorities, schedules ------------------------------------------


def limits_of(ow: ow_es.OpenWorkflow) -> Any:
    async def read() -> dict[str, tuple[ow_es.Limits, str]]:
        return {s.workflow_name: (s.limits, s.source) for s in await ow.limits()}

    return read()


async def test_limits_list_set_and_clear(ow: ow_es.OpenWorkflow, db: dict[str, Any]) -> None:
    await ow.connect()
    args = db_args(db)
    assert ok(await ainvoke("limits", "list", *args)).strip() == "no limits stored"
    assert msgspec.json.decode(ok(await ainvoke("limits", "list", "--json", *args))) == []

    out = ok(await ainvoke("limits", "set", "sync", "--concurrency", "2", "--rate", "10/1s", *args))
    assert out.strip() == "limits of sync set: concurrency=2, rate=10/1s"
    assert await limits_of(ow) == {"sync": (ow_es.Limits(concurrency=2, rate="10/1s"), "operator")}
    # Set replaces what was stored: options left out are no limit.
    stored = msgspec.json.decode(
        ok(await ainvoke("limits", "set", "sync", "--per-key", "1", "--json", env=db_env(db)))
    )
    assert stored["workflow_name"] == "sync" and stored["source"] == "operator"
    assert stored["limits"] == {
        "concurrency": None, "per_key": 1, "rate": None, "per_key_rate": None,
    }  # fmt: skip
    assert datetime.fromisoformat(stored["updated_at"]).tzinfo is not None
    ok(
        await ainvoke(
            "limits", "set", "mail", "--per-key-rate", "5/1m", "--concurrency", "3", *args
        )
    )

    table = ok(await ainvoke("limits", "list", *args)).splitlines()
    assert table[0].split() == [
        *("WORKFLOW", "CONCURRENCY", "PER", "KEY", "RATE", "PER-KEY", "RATE", "SOURCE", "UPDATED")
    ]
    assert table[1].split()[:6] == ["mail", "3", "-", "-", "5/1m", "operator"]
    assert table[2].split()[:6] == ["sync", "-", "1", "-", "-", "operator"]
    listed = msgspec.json.decode(ok(await ainvoke("limits", "list", "--json", *args)))
    assert [(r["workflow_name"], r["limits"]["per_key_rate"]) for r in listed] == [
        ("mail", "5/1m"), ("sync", None),
    ]  # fmt: skip

    assert ok(await ainvoke("limits", "clear", "sync", *args)).strip() == "limits of sync cleared"
    assert list(await limits_of(ow)) == ["mail"]
    assert_one_line_error(
        await ainvoke("limits", "clear", "sync", *args), "no limits stored for sync"
    )
    cleared = ok(await ainvoke("limits", "clear", "mail", "--json", *args))
    assert msgspec.json.decode(cleared) == {"workflow_name": "mail", "cleared": True}
    assert await limits_of(ow) == {}


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--rate", "ten"], ["--rate", "'ten' is not a rate"]),
        (["--rate", "10/soon"], ["--rate", "not a duration"]),
        (["--per-key-rate", "0/1m"], ["--per-key-rate", "at least 1"]),
        (["--concurrency", "0"], ["--concurrency"]),
        (["--per-key", "one"], ["--per-key", "not a valid integer"]),
        (["--concurrency", "5", "--rate", "ten"], ["--rate"]),
        ([], ["at least one of --concurrency"]),
    ],
)
async def test_limits_set_refuses_bad_values_and_writes_nothing(
    ow: ow_es.OpenWorkflow, db: dict[str, Any], options: list[str], fragments: list[str]
) -> None:
    await ow.connect()
    await ow.set_limits("sync", ow_es.Limits(concurrency=9))
    before = await ow.limits()
    assert_usage_error(await ainvoke("limits", "set", "sync", *options, *db_args(db)), *fragments)
    assert await ow.limits() == before


async def held_back_runs(ow: ow_es.OpenWorkflow) -> dict[str, str]:
    """Under ``concurrency=1``: a run held by a worker (key ``tenant-7``, priority 5) and a
    ready one that the limit holds back, started by a schedule's tick; a run of a manual
    trigger, and a plain one (no limit, no key)."""
    await ow.connect()
    await ow.set_limits("sync", ow_es.Limits(concurrency=1))
    tick = datetime(2024, 5, 1, 3, tzinfo=UTC)
    held = await ow.start("sync", 1, key="tenant-7", priority=5)
    waiting = await ow.start(
        "sync", 2, key="tenant-8", idempotency_key=tick_key("nightly:eu", tick)
    )
    (claimed,) = await ow.store.claim("w", [("sync", None)], 10, 30)
    assert claimed.id == held.run_id
    manual = await ow.start("other", None, idempotency_key=f"schedule:hourly:manual:{'a' * 32}")
    plain = await ow.start("other", None)
    return {
        "held": held.run_id,
        "waiting": waiting.run_id,
        "manual": manual.run_id,
        "plain": plain.run_id,
    }


async def test_runs_list_and_show_key_priority_schedule_and_held_back(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    ids = await held_back_runs(ow)
    args = db_args(db)
    lines = {
        line.split()[0]: line for line in ok(await ainvoke("runs", "list", *args)).splitlines()
    }
    assert lines[ids["held"]].split()[3:6] == ["running", "tenant-7", "5"]
    assert lines[ids["waiting"]].split()[3:6] == ["pending", "tenant-8", "0"]
    reason = "held back by a limit: concurrency limit 1 reached"
    assert lines[ids["waiting"]].endswith(reason)
    assert lines[ids["plain"]].split()[3:6] == ["pending", "-", "0"]
    assert reason not in lines[ids["plain"]] + lines[ids["held"]]

    page = msgspec.json.decode(ok(await ainvoke("runs", "list", "--json", *args)))
    by_id = {run["id"]: run for run in page["runs"]}
    assert (by_id[ids["held"]]["key"], by_id[ids["held"]]["priority"]) == ("tenant-7", 5)
    assert (by_id[ids["plain"]]["key"], by_id[ids["plain"]]["priority"]) == (None, 0)
    assert page["held_back"] == {ids["waiting"]: "concurrency limit 1 reached"}
    assert all("claim_token" not in run for run in page["runs"])

    out = ok(await ainvoke("runs", "show", ids["waiting"], *args))
    assert "  key          tenant-8" in out and "  priority     0" in out
    assert "  schedule     nightly:eu" in out
    assert f"  waiting for  {reason}" in out
    assert "run_created  workflow=sync key=tenant-8 available_at=" in out
    held = ok(await ainvoke("runs", "show", ids["held"], *args))
    assert "  priority     5" in held and "  schedule     -" in held
    assert "held back" not in held and "key=tenant-7 priority=5" in held
    manual = ok(await ainvoke("runs", "show", ids["manual"], *args))
    assert "  schedule     hourly" in manual and "held back" not in manual

    shown = msgspec.json.decode(ok(await ainvoke("runs", "show", ids["waiting"], "--json", *args)))
    assert shown["schedule"] == "nightly:eu"
    assert shown["held_back"] == "concurrency limit 1 reached"
    assert (shown["run"]["key"], shown["run"]["priority"]) == ("tenant-8", 0)
    plain = msgspec.json.decode(ok(await ainvoke("runs", "show", ids["plain"], "--json", *args)))
    assert plain["schedule"] is None and plain["held_back"] is None


def test_the_schedule_of_a_run_comes_from_its_idempotency_key() -> None:
    tick = datetime(2024, 3, 31, 1, 30, 15, 250000, tzinfo=UTC)
    assert run_facts.schedule_of(tick_key("nightly", tick)) == "nightly"
    assert run_facts.schedule_of(tick_key("a:b", tick.replace(microsecond=0))) == "a:b"
    assert run_facts.schedule_of(f"schedule:hourly:manual:{uuid.uuid4().hex}") == "hourly"
    for key in (None, "", "order-1", "schedule:nightly", "schedule:x:2024-05-01", "schedule::x"):
        assert run_facts.schedule_of(key) is None, key


# -- --json everywhere, and never a claim token ------------------------------------------------


async def test_json_output_never_shows_a_claim_token(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    release = asyncio.Event()

    @ow.workflow(name="hold")
    async def hold(ctx: ow_es.Context) -> str:
        async def wait() -> str:
            await release.wait()
            return "released"

        return await ctx.step.run("wait", wait)

    await ow.connect()
    async with running_worker(ow):
        handle = await hold.start()
        run = await eventually(
            lambda: _claimed(ow, handle.run_id), message="the run claimed by the worker"
        )
        assert run.claim_token
        listed = ok(await ainvoke("runs", "list", "--json", *db_args(db)))
        shown = ok(await ainvoke("runs", "show", handle.run_id, "--json", *db_args(db)))
        release.set()
        assert await handle.result(timeout=15) == "released"
    for text in (listed, shown):
        assert "claim_token" not in text and run.claim_token not in text
    assert msgspec.json.decode(listed)["runs"][0]["worker_id"] == run.worker_id
    events = msgspec.json.decode(shown)["events"]
    claimed = [e for e in events if e["type"] == "run_claimed"]
    assert claimed and claimed[0]["data"]["worker_id"] == run.worker_id


async def _claimed(ow: ow_es.OpenWorkflow, run_id: str) -> ow_es.WorkflowRun | None:
    run = await ow.store.get_run(run_id)
    return run if run is not None and run.claim_token else None


async def test_every_printing_command_speaks_json(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    migrated = msgspec.json.decode(ok(await ainvoke("migrate", "--json", *db_args(db))))
    assert migrated["migrations"] and migrated["dry_run"] is False
    assert migrated["schema_version"] == migrator.latest_version(db["backend"])
    ids = await finished_runs(ow)
    checked = await ainvoke("doctor", "--json", *db_args(db))
    doctor = msgspec.json.decode(checked.stdout)
    checks = {check["check"]: check["ok"] for check in doctor["checks"]}
    assert list(checks) == [
        "connection", "schema", "workers", "unserved runs", "stuck runs", "unowned runs",
    ]  # fmt: skip
    # The pending run has no worker serving it: the doctor says so, and fails.
    assert doctor["ok"] is False and checks["unserved runs"] is False
    assert checked.exit_code == 1
    canceled = ok(await ainvoke("runs", "cancel", ids["pending"], "--json", *db_args(db)))
    assert msgspec.json.decode(canceled)["status"] == "canceled"
    resumed = ok(await ainvoke("runs", "resume", ids["failed"], "--json", *db_args(db)))
    assert msgspec.json.decode(resumed)["run_id"] == ids["failed"]
    dry = ok(await ainvoke("reproject", "--dry-run", "--json", *db_args(db)))
    assert msgspec.json.decode(dry)["report"]["counts"]["workflow_runs"] == 3
    verified = ok(await ainvoke("reproject", "--verify", "--json", *db_args(db)))
    assert msgspec.json.decode(verified)["report"]["differences"] == []
    up_to_date = ok(await ainvoke("migrate", "--dry-run", "--json", *db_args(db)))
    assert msgspec.json.decode(up_to_date)["migrations"] == []


# -- looking creates nothing; no password in any output -------------------------------------------


def test_doctor_and_migrate_dry_run_create_no_database(tmp_path: Path) -> None:
    path = tmp_path / "ow.db"
    url = f"sqlite:///{path}"
    result = invoke("doctor", "--database-url", url)
    assert_one_line_error(result, "1 check(s) failed")
    assert f"FAIL  connection: no database at {path}" in result.stdout
    record = msgspec.json.decode(invoke("doctor", "--json", "--database-url", url).stdout)
    assert record["ok"] is False and record["checks"][0]["detail"] == f"no database at {path}"

    out = ok(invoke("migrate", "--dry-run", "--database-url", url))
    every = [m.name for m in migrator.migrations("sqlite")]
    assert out.splitlines() == [f"no database at {path}", *(f"would apply {n}" for n in every)]
    assert_one_line_error(invoke("runs", "list", "--database-url", url), f"no database at {path}")
    assert not list(tmp_path.iterdir())  # no ow.db, no -wal or -shm
    ok(invoke("migrate", "--database-url", url))
    assert path.exists()


PASSWORD_FORMS = [
    # (connection string, what must not appear in any output)
    ("postgresql://u:p@ss@127.0.0.1:1/db", ["p@ss", "ss@127"]),
    ("postgresql://u@127.0.0.1:1/db?password=hunter2", ["hunter2"]),
    ("host=127.0.0.1 port=1 password=xyzzy", ["xyzzy"]),
]


@pytest.mark.parametrize(("url", "secrets"), PASSWORD_FORMS)
def test_no_password_in_doctor_output_or_error_messages(url: str, secrets: list[str]) -> None:
    results = [
        invoke("doctor", "--database-url", url),
        invoke("doctor", "--json", "--database-url", url),
        invoke("runs", "list", "--database-url", url),
        invoke("migrate", env={"OW_ES_DATABASE_URL": url}),
    ]
    for result in results:
        assert result.exit_code == 1, result.output
        for secret in secrets:
            assert secret not in result.stdout + result.stderr
    assert "password=***" in results[0].stdout
    assert "password=***" in results[2].stderr


# -- pyproject.toml and broken apps ------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ('concurrency = "lots"', "[tool.ow-es] concurrency = 'lots': expected a whole number"),
        ("concurrency = 0", "[tool.ow-es] concurrency = 0: expected a whole number"),
        ('lease = "soon"', "[tool.ow-es] lease = 'soon': 'soon' is not a duration"),
        ('connect_timeout = "later"', "[tool.ow-es] connect_timeout = 'later'"),
        ('log_format = "xml"', "[tool.ow-es] log_format = 'xml': expected one of text, json"),
    ],
)
def test_bad_pyproject_values_name_the_file_and_key(
    app_dir: Path, setting: str, fragment: str
) -> None:
    module = write_module(app_dir, APP_WITH_CLIENT)
    (app_dir / "pyproject.toml").write_text(f'[tool.ow-es]\napp = "{module}:ow"\n{setting}\n')
    result = invoke("worker")
    assert_one_line_error(result, f"{app_dir / 'pyproject.toml'}: {fragment}")
    assert "OW_ES_" not in result.stderr
    ok(invoke("runs", "--help"))  # other commands need not read it


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("x = 1\n\ndef broken(:\n    pass\n", "SyntaxError at {path}:3: "),
        ("import os\nraise RuntimeError('boom at import')\n", "RuntimeError at {path}:2: boom"),
        ("\nimport no_such_module_here\n", "ModuleNotFoundError at {path}:2: No module named"),
    ],
)
def test_an_app_that_fails_to_import_is_one_line_with_file_and_line(
    app_dir: Path, source: str, fragment: str
) -> None:
    module = write_module(app_dir, source)
    path = app_dir / f"{module}.py"
    result = invoke("worker", module)
    assert_one_line_error(result, f"cannot import {module}: " + fragment.format(path=path))


# -- the worker's startup and its logs, in process -------------------------------------------------


def test_worker_gives_up_on_an_unreachable_database(app_dir: Path) -> None:
    module = write_module(app_dir, APP_WITH_CLIENT)
    url = "postgresql://postgres@127.0.0.1:1/test"
    started = time.monotonic()
    result = invoke("worker", f"{module}:ow", "--database-url", url, "--connect-timeout", "1.2")
    assert time.monotonic() - started >= 1.2
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    retries = [line for line in lines if "database unavailable, retrying in" in line]
    assert len(retries) >= 2 and "attempt=1" in retries[0] and "attempt=2" in retries[1]
    assert "WARNING ow_es.cli" in retries[0] and "Connection refused" in retries[0]
    assert lines[-1].startswith("error: database still unavailable after 1.2s")
    assert "Traceback" not in result.output


def test_worker_does_not_wait_for_a_newer_schema(db: dict[str, Any], app_dir: Path) -> None:
    ok(invoke("migrate", *db_args(db)))
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
    module = write_module(app_dir, APP_WITH_CLIENT)
    started = time.monotonic()
    result = invoke("worker", f"{module}:ow", *db_args(db))
    assert time.monotonic() - started < 5
    assert_one_line_error(result, "newer than this ow-es")  # no retry lines either


def test_log_formats_print_extra_fields() -> None:
    record = logging.LogRecord("ow_es.worker", logging.INFO, __file__, 1, "run %s", ("done",), None)
    fields = {"workflow": "charge", "run_id": "r1", "status": "completed", "duration_ms": 12}
    fields |= {"attempts": 1, "note": "two words"}
    record.__dict__.update(fields)
    text = logging_setup.formatter("text").format(record)
    assert text.endswith(
        " INFO ow_es.worker: run done workflow=charge run_id=r1 status=completed"
        ' duration_ms=12 attempts=1 note="two words"'
    )
    assert datetime.fromisoformat(text.split()[0]).tzinfo is not None
    entry = msgspec.json.decode(logging_setup.formatter("json").format(record))
    assert entry.pop("time")
    assert entry == {"level": "INFO", "logger": "ow_es.worker", "message": "run done", **fields}


def test_one_formatter_for_ow_es_and_the_driver() -> None:
    stream = io.StringIO()
    restore = logging_setup.configure("info", "json", stream=stream)
    try:
        logging.getLogger("ow_es.worker").info("finished", extra={"run_id": "r1"})
        logging.getLogger("psycopg.pool").warning("error connecting in 'pool-1'")
        logging.getLogger("psycopg.pool").info("connection given by 'pool-1'")  # below warning
        logging.getLogger("uvicorn.error").warning("address in use")
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("ow_es.executor").exception("crashed")
    finally:
        restore()
    entries = [msgspec.json.decode(line) for line in stream.getvalue().splitlines()]
    assert [(e["logger"], e["level"]) for e in entries] == [
        ("ow_es.worker", "INFO"),
        ("psycopg.pool", "WARNING"),
        ("uvicorn.error", "WARNING"),
        ("ow_es.executor", "ERROR"),
    ]
    assert entries[0]["run_id"] == "r1"
    assert "ValueError: bad" in entries[-1]["exception"]
    assert logging.getLogger("psycopg").handlers == []  # put back as it was


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


@pytest.mark.slow
async def test_worker_waits_for_the_database_and_logs_json(
    tmp_path: Path, processes: Processes
) -> None:
    """SQLite refuses a database whose folder is missing (StoreUnavailable): the worker retries
    until the folder appears, logging each failed attempt as one JSON object per line."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP_WITH_CLIENT))
    folder = tmp_path / "later"
    url = f"sqlite:///{folder / 'ow.db'}"
    env = {"OW_ES_LOG_FORMAT": "json", "OW_ES_CONNECT_TIMEOUT": "60"}
    proc = processes.worker("app:ow", "--database-url", url, cwd=tmp_path, env=env, isolated=True)
    await eventually(lambda: proc.stderr().count("database unavailable") >= 2, timeout=20)
    folder.mkdir()
    line = await proc.serving()
    assert "serving charge@2, notify on sqlite" in line
    client = await ow_es.OpenWorkflow(url).connect()
    try:
        handle = await client.start("notify")
        assert await handle.result(timeout=20) == "sent"
    finally:
        await client.close()
    await sigterm(proc)
    entries = [msgspec.json.decode(line) for line in proc.stderr().splitlines()]
    # The worker's line per finished run carries its facts as fields.
    (ended,) = [e for e in entries if e.get("run_id") == handle.run_id]
    assert (ended["logger"], ended["level"]) == ("ow_es.worker", "INFO")
    assert (ended["workflow"], ended["status"], ended["attempts"]) == ("notify", "completed", 1)
    assert isinstance(ended["duration_ms"], int)
    retries = [e for e in entries if e["message"].startswith("database unavailable")]
    assert [e["attempt"] for e in retries] == list(range(1, len(retries) + 1))
    assert all(e["level"] == "WARNING" and e["logger"] == "ow_es.cli" for e in retries)
    assert "is missing" in retries[0]["message"]
    assert any(e["message"].startswith("SIGTERM: stopping") for e in entries)
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)


@pytest.mark.slow
async def test_runs_start_wait_follows_a_live_worker(
    make_client: ClientFactory, db: dict[str, Any], tmp_path: Path, processes: Processes
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP_WITH_CLIENT))
    ok(await ainvoke("migrate", *db_args(db)))
    proc, _ = await serving_worker(processes, tmp_path, "app:ow", env=db_env(db))
    args = ("runs", "start", "charge", "--input", "21", "--version", "2", "--wait")
    out = ok(await ainvoke(*args, "--timeout", "30", *db_args(db)))
    run_id, result = out.splitlines()
    assert result == "42"
    client = await (await make_client()).connect()
    assert (await (await client.get_handle(run_id)).status()).status == "completed"
    await sigterm(proc)


GC_APP = """
import gc

import ow_es

ow = ow_es.OpenWorkflow()


@ow.workflow(name="gc-threshold")
async def gc_threshold(ctx: ow_es.Context) -> list[int]:
    async def read() -> list[int]:
        return [gc.get_threshold()[0], gc.get_freeze_count()]

    return await ctx.step.run("read", read)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "expected"),
    [((), gc_tuning.DEFAULT_THRESHOLD), (("--gc-threshold", "0"), gc.get_threshold()[0])],
    ids=["tuned", "python-default"],
)
async def test_worker_process_collects_its_first_generation_as_told(
    tmp_path: Path, processes: Processes, option: tuple[str, ...], expected: int
) -> None:
    """`ow-es worker` is a process of its own: it raises the collector's first-generation
    threshold (and freezes what startup loaded) unless told 0."""
    (tmp_path / "app.py").write_text(textwrap.dedent(GC_APP))
    url = f"sqlite:///{tmp_path / 'ow.db'}"
    proc = processes.worker("app:ow", *option, "--database-url", url, cwd=tmp_path, isolated=True)
    await proc.serving()
    client = await ow_es.OpenWorkflow(url).connect()
    try:
        handle = await client.start("gc-threshold")
        threshold, frozen = await handle.result(timeout=20)
    finally:
        await client.close()
    await sigterm(proc)
    assert threshold == expected
    assert (frozen > 0) == (expected == gc_tuning.DEFAULT_THRESHOLD)

"""Retention: old terminal run trees deleted in batches with their steps and events (the log
refuses any other delete), idempotency keys freed, dry runs, archives that import back
identically, concurrent retention, and the ``ow-es retention`` / ``ow-es import`` commands."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

import ow_es
from tests.support.cli import ainvoke, db_args, ok
from tests.support.databases import ClientFactory
from tests.support.runs import parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker


def _define(ow: ow_es.OpenWorkflow) -> tuple[ow_es.Workflow[Any], ow_es.Workflow[Any]]:
    @ow.workflow(name="work")
    async def work(ctx: ow_es.Context, n: int) -> int:
        a = await ctx.step.run("a", lambda: n + 1)
        return await ctx.step.run("b", lambda: a * 2)

    @ow.workflow(name="waiter")
    async def waiter(ctx: ow_es.Context, name: str) -> Any:
        return await ctx.step.wait_for_signal(name)

    return work, waiter


async def _finished(ow: ow_es.OpenWorkflow, n: int, **start: Any) -> list[str]:
    work = ow.registered("work", None)
    assert work is not None
    async with running_worker(ow, concurrency=8):
        handles = [await ow.start(work, i, **start) for i in range(n)]
        for handle in handles:
            await handle.result(timeout=20)
    return [h.run_id for h in handles]


async def _snapshot(ow: ow_es.OpenWorkflow, run_id: str) -> dict[str, Any]:
    """A run as stored, without what is new after an import (log positions)."""
    events = await ow.store.read_run_events(run_id)
    return {
        "run": msgspec.to_builtins(await ow.store.get_run(run_id)),
        "steps": msgspec.to_builtins(await ow.store.step_attempts(run_id)),
        "events": [
            {k: v for k, v in msgspec.to_builtins(e).items() if k != "position"} for e in events
        ],
    }


async def test_old_terminal_runs_go_with_their_events_and_steps(ow: ow_es.OpenWorkflow) -> None:
    _, waiter = _define(ow)
    await ow.connect()
    done = await _finished(ow, 3)
    live = await ow.start(waiter, "never")
    assert (await ow.retention(older_than="1h")).runs == 0  # nothing that old

    report = await ow.retention(older_than="0s", batch=2)
    assert (report.runs, report.steps) == (3, 6)
    assert report.events > 0 and report.batches >= 2 and not report.dry_run
    for run_id in done:
        assert await ow.store.get_run(run_id) is None
        assert await ow.store.read_run_events(run_id) == []
        assert await ow.store.step_attempts(run_id) == []
    kept = await ow.store.get_run(live.run_id)
    assert kept is not None and kept.status == "pending"
    assert await ow.store.read_run_events(live.run_id)
    assert (await ow.retention(older_than="0s")).runs == 0


async def test_a_parent_waits_for_its_children(ow: ow_es.OpenWorkflow) -> None:
    _, waiter = _define(ow)

    @ow.workflow(name="parent")
    async def parent(ctx: ow_es.Context) -> Any:
        return await ctx.step.run_workflow(waiter, "go")

    await ow.connect()
    async with running_worker(ow, concurrency=4):
        handle = await parent.start()
        await eventually(lambda: parked(ow, handle.run_id, "child"), message="parent parked")
        [child] = await ow.store.list_children(handle.run_id)
        await eventually(lambda: parked(ow, child.id, "signal"), message="child parked")
        await ow.cancel(handle.run_id, cascade=False)  # the parent ends, its child lives on
        report = await ow.retention(older_than="0s")
        assert report.runs == 0
        assert await ow.store.get_run(handle.run_id) is not None

        assert await ow.send_signal("go", 1) == [child.id]
        await eventually(lambda: _status(ow, child.id, "completed"), message="child done")
    report = await ow.retention(older_than="0s")
    assert report.runs == 2
    assert await ow.store.get_run(handle.run_id) is None
    assert await ow.store.get_run(child.id) is None


async def _gone(ow: ow_es.OpenWorkflow, run_ids: list[str]) -> bool:
    return [await ow.store.get_run(run_id) for run_id in run_ids] == [None] * len(run_ids)


async def _status(ow: ow_es.OpenWorkflow, run_id: str, status: str) -> bool:
    run = await ow.store.get_run(run_id)
    return run is not None and run.status == status


async def test_deleting_frees_the_idempotency_key(ow: ow_es.OpenWorkflow) -> None:
    _define(ow)
    await ow.connect()
    [first] = await _finished(ow, 1, idempotency_key="order-1")
    assert (await ow.start("work", 5, idempotency_key="order-1")).run_id == first
    assert (await ow.retention(older_than="0s")).runs == 1
    again = await ow.start("work", 5, idempotency_key="order-1")
    assert again.run_id != first
    assert await ow.store.get_run(again.run_id) is not None


async def test_old_signal_sends_are_forgotten_with_their_keys(ow: ow_es.OpenWorkflow) -> None:
    """Every send records its idempotency key (a send without one gets one, so a repeat
    after a lost reply delivers once); retention forgets those older than the cutoff."""
    await ow.connect()
    for n in range(3):
        await ow.send_signal("nobody-waits", n)
    await ow.send_signal("nobody-waits", 9, idempotency_key="kept-for-a-day")
    assert (await ow.retention(older_than="1d")).signal_sends == 0  # none that old
    dry = await ow.retention(older_than="0s", dry_run=True, batch=2)
    assert dry.signal_sends == 2  # a dry run counts one batch
    assert (await ow.retention(older_than="0s", batch=2)).signal_sends == 4
    assert (await ow.retention(older_than="0s")).signal_sends == 0


async def test_a_dry_run_deletes_nothing(ow: ow_es.OpenWorkflow) -> None:
    _define(ow)
    await ow.connect()
    done = await _finished(ow, 2)
    dry = await ow.retention(older_than="0s", dry_run=True)
    assert dry.dry_run and dry.runs == 2 and dry.steps == 4 and dry.events > 0
    for run_id in done:
        assert await ow.store.get_run(run_id) is not None
    real = await ow.retention(older_than="0s")
    assert (real.runs, real.steps, real.events) == (dry.runs, dry.steps, dry.events)


async def test_the_log_refuses_other_deletes(ow: ow_es.OpenWorkflow, db: dict[str, Any]) -> None:
    _define(ow)
    await ow.connect()
    [run_id] = await _finished(ow, 1)
    if db["backend"] == "sqlite":
        conn = sqlite3.connect(db["url"].removeprefix("sqlite:///"))
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            conn.execute("DELETE FROM events")
        conn.close()
    else:
        with psycopg.connect(db["url"], autocommit=True) as pg:
            pg.execute(f'SET search_path = "{db["schema"]}"')
            with pytest.raises(psycopg.Error, match="immutable"):
                pg.execute("DELETE FROM events")
    assert await ow.store.read_run_events(run_id)
    assert (await ow.retention(older_than="0s")).runs == 1
    assert await ow.store.read_run_events(run_id) == []


async def test_an_archive_imports_back_as_it_was(ow: ow_es.OpenWorkflow, tmp_path: Path) -> None:
    _define(ow)

    @ow.workflow(name="parent")
    async def parent(ctx: ow_es.Context) -> Any:
        return await ctx.step.run_workflow("work", 3)

    await ow.connect()
    done = await _finished(ow, 3, idempotency_key=None)
    async with running_worker(ow, concurrency=4):
        tree = await parent.start()
        assert await tree.result(timeout=20) == 8
    [child] = await ow.store.list_children(tree.run_id)
    ids = [*done, tree.run_id, child.id]
    before = {run_id: await _snapshot(ow, run_id) for run_id in ids}

    archive = tmp_path / "old.jsonl.gz"
    report = await ow.retention(older_than="0s", archive=str(archive), batch=2)
    assert report.runs == report.archived == 5 and report.batches >= 2
    with gzip.open(archive, "rt") as lines:
        records = [msgspec.json.decode(line) for line in lines]
    assert sorted(r["run"]["id"] for r in records) == sorted(ids)
    assert set(records[0]) == {"run", "steps", "events"}
    assert await _gone(ow, ids)

    imported = await ow.import_archive(archive)
    assert imported.imported == 5 and imported.skipped == []
    assert imported.events == sum(len(s["events"]) for s in before.values())
    for run_id in ids:
        assert await _snapshot(ow, run_id) == before[run_id]
    assert (await ow.reproject(verify=True)).differences == []

    again = await ow.import_archive(archive)  # every run is there now: all skipped
    assert again.imported == 0 and sorted(again.skipped) == sorted(ids)


async def test_concurrent_retention_deletes_each_run_once(
    ow: ow_es.OpenWorkflow, make_client: ClientFactory
) -> None:
    _define(ow)
    await ow.connect()
    done = await _finished(ow, 30)
    other = await (await make_client()).connect()
    reports = await asyncio.gather(
        ow.retention(older_than="0s", batch=3), other.retention(older_than="0s", batch=3)
    )
    assert sum(r.runs for r in reports) == len(done)
    assert sum(r.steps for r in reports) == 2 * len(done)
    assert await _gone(ow, done)


async def test_the_commands(ow: ow_es.OpenWorkflow, db: dict[str, Any], tmp_path: Path) -> None:
    _define(ow)
    await ow.connect()
    done = await _finished(ow, 2)
    archive = str(tmp_path / "a.jsonl.gz")
    args = db_args(db)
    dry = msgspec.json.decode(
        ok(await ainvoke("retention", "--older-than", "0s", "--dry-run", "--json", *args))
    )
    assert dry["dry_run"] is True and dry["runs"] == 2
    command = ["retention", "--older-than", "0s", "--archive", archive, "--json", *args]
    record = msgspec.json.decode(ok(await ainvoke(*command)))
    assert record["runs"] == 2 and record["archived"] == 2 and record["steps"] == 4
    assert await _gone(ow, done)
    back = msgspec.json.decode(ok(await ainvoke("import", archive, "--json", *args)))
    assert back["imported"] == 2 and back["skipped"] == []
    text = ok(await ainvoke("import", archive, *args))
    assert "skipped 2" in text
    text = ok(await ainvoke("retention", "--older-than", "1h", *args))
    assert "deleted 0 run(s)" in text

"""``reproject``: rebuild from the log, verify, swap online while a worker runs."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg

import ow_es
from ow_es.durations import utcnow
from tests.support.waiting import eventually
from tests.support.workers import running_worker


def _sql(db: dict[str, Any], statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    if db["backend"] == "sqlite":
        with sqlite3.connect(db["url"].removeprefix("sqlite:///")) as conn:
            return conn.execute(statement.replace("%s", "?"), params).fetchall()
    with psycopg.connect(db["url"], autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{db["schema"]}"')
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def _define(ow: ow_es.OpenWorkflow, nap: str = "20ms") -> Any:
    @ow.workflow(name="job")
    async def job(ctx: ow_es.Context, n: int) -> int:
        first = await ctx.step.run("first", lambda: n)
        await ctx.step.sleep("nap", nap)

        async def second() -> int:
            return first * 2

        return await ctx.step.run("second", second)

    return job


async def test_verify_names_a_corrupted_row_and_reproject_repairs_it(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    job = _define(ow)
    await ow.connect()
    async with running_worker(ow, concurrency=5):
        handles = [await job.start(i) for i in range(6)]
        for handle in handles:
            await handle.result(timeout=20)
    assert (await ow.reproject(verify=True)).differences == []

    victim = handles[2].run_id
    _sql(db, "UPDATE workflow_runs SET status = 'failed', attempts = 7 WHERE id = %s", (victim,))
    _sql(db, "UPDATE step_attempts SET output = NULL WHERE run_id = %s AND step_name = 'first'",
         (handles[3].run_id,))  # fmt: skip
    report = await ow.reproject(verify=True)
    described = [d.describe() for d in report.differences]
    assert len(described) == 2, described
    assert any(victim in d and "status" in d and "attempts" in d for d in described)
    assert any(handles[3].run_id in d and "output" in d for d in described)
    assert not report.swapped
    assert (await ow.store.get_run(victim)).status == "failed"  # verify changes nothing

    swapped = await ow.reproject()
    assert swapped.swapped and swapped.events == report.events
    assert (await ow.store.get_run(victim)).status == "completed"
    assert (await ow.reproject(verify=True)).differences == []
    assert _sql(db, "SELECT status FROM workflow_runs_previous WHERE id = %s", (victim,)) == [
        ("failed",)
    ]  # the old tables are kept for rollback


async def test_dry_run_reports_and_writes_nothing(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    await ow.connect()
    await ow.start("nobody-serves-this", 1)
    report = await ow.reproject(dry_run=True)
    assert report.counts == {"events": 1, "workflow_runs": 1, "step_attempts": 0}
    assert not report.swapped
    assert _sql(db, "SELECT count(*) FROM reproject_state") == [(0,)]


async def test_reproject_under_load_swaps_without_disturbing_the_worker(
    make_client: Any, db: dict[str, Any]
) -> None:
    ow = await make_client()
    job = _define(ow, nap="500ms")  # runs come back after their nap: claims go on after the swap
    await ow.connect()
    admin = await make_client()
    await admin.connect()
    async with running_worker(ow, concurrency=20, lease="3s", heartbeat="200ms"):
        handles = [await job.start(i) for i in range(150)]
        await eventually(lambda: _completed_some(admin))
        before = utcnow()
        report = await admin.reproject()
        after = utcnow()
        assert report.swapped
        # Work started after the swap is claimed from the swapped-in tables.
        handles += [await job.start(i) for i in range(150, 200)]
        # Heartbeats go on against the swapped-in tables: a held lease keeps moving.
        held = [
            r for r in (await admin.list_runs(status="running", limit=200)).runs if r.lease_until
        ]
        if held:
            first = held[0]
            await eventually(lambda: _lease_moved(admin, first.id, first.lease_until))
        results = [await h.result(timeout=60) for h in handles]
    assert results == [i * 2 for i in range(200)]
    # The live tables are the rebuilt ones; the replaced ones are kept as *_previous.
    assert _sql(db, "SELECT count(*) FROM workflow_runs_previous")[0][0] > 0
    claims = [
        e.created_at
        for h in handles
        for e in await admin.history(h.run_id)
        if e.type == "run_claimed"
    ]
    assert any(t < before for t in claims) and any(t > after for t in claims)
    assert (await admin.reproject(verify=True)).differences == []


async def _completed_some(client: ow_es.OpenWorkflow) -> bool:
    return len((await client.list_runs(status="completed", limit=10)).runs) >= 10


async def _lease_moved(client: ow_es.OpenWorkflow, run_id: str, lease: Any) -> bool:
    run = await client.store.get_run(run_id)
    assert run is not None
    return run.lease_until is None or run.lease_until > lease


async def test_cli_verify_exits_1_naming_the_corrupted_row(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    from tests.support.cli import ainvoke, assert_one_line_error, ok

    job = _define(ow)
    await ow.connect()
    async with running_worker(ow):
        handle = await job.start(5)
        await handle.result(timeout=20)
    args = ["--database-url", db["url"]] + (["--schema", db["schema"]] if db["schema"] else [])
    assert "0 row(s) differ" in ok(await ainvoke("reproject", "--verify", *args))
    assert "nothing written" in ok(await ainvoke("reproject", "--dry-run", *args))

    _sql(db, "UPDATE workflow_runs SET output = '99' WHERE id = %s", (handle.run_id,))
    result = await ainvoke("reproject", "--verify", *args)
    assert_one_line_error(result, "1 projection row(s) differ")
    assert f"workflow_runs default/{handle.run_id}: output differ" in result.stdout

    assert "swapped in" in ok(await ainvoke("reproject", *args))
    assert await handle.result(timeout=1) == 10  # the repaired row
    assert "0 row(s) differ" in ok(await ainvoke("reproject", "--verify", *args))


async def test_an_interrupted_rebuild_resumes(
    ow: ow_es.OpenWorkflow, db: dict[str, Any], monkeypatch: Any
) -> None:
    from ow_es import reproject as reproject_module

    job = _define(ow)
    await ow.connect()
    async with running_worker(ow, concurrency=5):
        for handle in [await job.start(i) for i in range(8)]:
            await handle.result(timeout=20)
    monkeypatch.setattr(reproject_module, "BATCH_SIZE", 10)
    folded: list[int] = []

    def crash_after_two_batches(count: int) -> None:
        folded.append(count)
        if len(folded) == 2:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of the rebuild

    try:
        await ow.reproject(progress=crash_after_two_batches)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the rebuild was not interrupted")
    (cursor,) = _sql(db, "SELECT cursor FROM reproject_state")[0]
    assert cursor not in ("0", "0:0")  # the checkpoint of the batches folded so far

    report = await ow.reproject()
    assert report.resumed and report.swapped
    assert report.events == report.counts["events"] - sum(folded)  # only the rest was read
    assert (await ow.reproject(verify=True)).differences == []
    assert _sql(db, "SELECT count(*) FROM reproject_state") == [(0,)]

"""``reproject``: rebuild the projections from the log, verify them, swap them in online while
workers run (and while signals are delivered, processes are SIGKILLed and runs canceled), and
the ``ow-es reproject`` command as a real process."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from functools import partial
from typing import Any

import psycopg
import pytest

import ow_es
from ow_es.durations import utcnow
from tests.support.auditors import (
    audit_attempts,
    audit_executions,
    audit_log,
    describe,
    read_executions,
    statuses,
)
from tests.support.cli import ainvoke, assert_one_line_error, db_args, ok
from tests.support.databases import ClientFactory
from tests.support.fleet import Fleet
from tests.support.processes import Process, Processes
from tests.support.runs import event_types, parked
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
    assert (await (await ow.get_handle(victim)).status()).status == "failed"  # verify wrote nothing

    swapped = await ow.reproject()
    assert swapped.swapped and swapped.events == report.events
    assert (await (await ow.get_handle(victim)).status()).status == "completed"
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


# -- the command as a real process; reproject under load --------------------------------------


async def _cli(processes: Processes, db: dict[str, Any], *args: str) -> Process:
    """``ow-es reproject ...`` as a real process (its own exit status)."""
    return await processes.run_ow_es("reproject", *args, *db_args(db))


@pytest.mark.slow
async def test_cli_verify_and_dry_run_on_corrupted_step_rows(
    ow: ow_es.OpenWorkflow, db: dict[str, Any], processes: Processes
) -> None:
    @ow.workflow(name="signalled")
    async def signalled(ctx: ow_es.Context) -> Any:
        first = await ctx.step.run("first", lambda: 1)
        got = await ctx.step.wait_for_signal("go", timeout="20s")
        return [first, got]

    await ow.connect()
    async with running_worker(ow):
        handle = await signalled.start()
        await eventually(lambda: parked(ow, handle.run_id, "signal", name="go"))
        assert await ow.send_signal("go", {"v": 1}) == [handle.run_id]
        assert await handle.result(timeout=15) == [1, {"v": 1}]
    run_id = handle.run_id

    clean = await _cli(processes, db, "--verify")
    assert clean.returncode == 0, clean.stderr()
    assert "0 row(s) differ" in clean.stdout()

    # A completed wait shown as still open, and a step row gone.
    _sql(
        db,
        "UPDATE step_attempts SET status = 'running', output = NULL, finished_at = NULL"
        " WHERE run_id = %s AND step_name = 'go'",
        (run_id,),
    )
    _sql(db, "DELETE FROM step_attempts WHERE run_id = %s AND step_name = 'first'", (run_id,))

    dry = await _cli(processes, db, "--dry-run")
    assert dry.returncode == 0, dry.stderr()
    assert "nothing written" in dry.stdout()
    assert _sql(db, "SELECT status FROM step_attempts WHERE run_id = %s AND step_name = 'go'",
                (run_id,)) == [("running",)]  # fmt: skip

    bad = await _cli(processes, db, "--verify")
    assert bad.returncode == 1, (bad.stdout(), bad.stderr())
    assert f"step_attempts default/{run_id}/go/1:" in bad.stdout(), bad.stdout()
    assert f"step_attempts default/{run_id}/first/1:" in bad.stdout(), bad.stdout()
    error_lines = [line for line in bad.stderr().splitlines() if line.strip()]
    assert error_lines == ["error: 2 projection row(s) differ from the log"], bad.stderr()
    assert "Traceback" not in bad.stderr()
    # Verify wrote nothing: the corruption is still there.
    assert _sql(db, "SELECT count(*) FROM step_attempts WHERE run_id = %s", (run_id,)) == [(1,)]

    repaired = await _cli(processes, db)
    assert repaired.returncode == 0, repaired.stderr()
    assert "swapped in" in repaired.stdout()
    steps = {s.step_name: s for s in await ow.store.step_attempts(run_id)}
    assert (steps["go"].status, steps["go"].output) == ("completed", {"v": 1})
    assert steps["first"].output == 1
    again = await _cli(processes, db, "--verify")
    assert again.returncode == 0 and "0 row(s) differ" in again.stdout(), again.stdout()


async def test_reproject_while_signals_are_delivered(
    make_client: ClientFactory, db: dict[str, Any]
) -> None:
    ow = await make_client()

    @ow.workflow(name="relay")
    async def relay(ctx: ow_es.Context, i: int) -> Any:
        first = await ctx.step.wait_for_signal(f"s-{i}", timeout="30s")
        second = await ctx.step.wait_for_signal(f"t-{i}", timeout="30s")
        return [first, second]

    await ow.connect()
    admin = await make_client()
    await admin.connect()
    count = 30
    async with running_worker(ow, concurrency=10, lease="5s", heartbeat="300ms"):
        handles = [await relay.start(i) for i in range(count)]
        for i, handle in enumerate(handles):
            await eventually(partial(parked, ow, handle.run_id, "signal", name=f"s-{i}"))

        async def send_all(prefix: str) -> list[list[str]]:
            delivered = []
            for i in range(count):
                if prefix == "t":
                    await eventually(
                        partial(parked, ow, handles[i].run_id, "signal", name=f"t-{i}")
                    )
                delivered.append(await admin.send_signal(f"{prefix}-{i}", f"{prefix}{i}"))
                await asyncio.sleep(0)
            return delivered

        reports = []

        verified: list[list[Any]] = []

        async def reproject_while(sending: asyncio.Future[Any]) -> Any:
            reports.append(await admin.reproject())
            while not sending.done():  # swap and verify again and again until all are out
                verified.append((await admin.reproject(verify=True)).differences)
                reports.append(await admin.reproject())
            return await sending

        first_round = await reproject_while(asyncio.ensure_future(send_all("s")))
        second_round = await reproject_while(asyncio.ensure_future(send_all("t")))
        results = [await h.result(timeout=30) for h in handles]
    assert all(r.swapped for r in reports)
    # A verify taken while appends go on compares one consistent snapshot: no false alarms.
    assert all(d == [] for d in verified), verified
    assert first_round == [[h.run_id] for h in handles]
    assert second_round == [[h.run_id] for h in handles]
    assert results == [[f"s{i}", f"t{i}"] for i in range(count)]
    for handle in handles:
        assert (await event_types(admin, handle.run_id)).count("signal_received") == 2
    assert (await admin.reproject(verify=True)).differences == []


@pytest.mark.slow
async def test_reproject_swaps_during_kills_and_cancels_lose_nothing(
    make_client: Any, db: dict[str, Any], processes: Processes
) -> None:
    total = 50
    seed = time.time_ns() % 100_000
    rng = random.Random(seed)
    ow = await make_client()
    await ow.connect()
    fleet = Fleet(db, processes)
    canceled: set[str] = set()
    swaps = 0
    try:
        handles = [await ow.start("chaos", n) for n in range(total)]
        for _ in range(2):
            fleet.spawn()
        await eventually(lambda: len(list(fleet.state.glob("exec-*"))) >= 4, 20, "work started")
        for round_ in range(4):
            await asyncio.sleep(rng.uniform(0.3, 0.6))
            report = await ow.reproject()
            swaps += report.swapped
            if round_ == 1:
                fleet.kill(rng.choice(fleet.live()))
                fleet.spawn()
            if round_ in (0, 2):
                for handle in rng.sample(handles, 4):
                    try:
                        await handle.cancel()
                        canceled.add(handle.run_id)
                    except ow_es.InvalidTransition:
                        pass  # it had finished already

        async def settled() -> bool:
            counts = await statuses(ow)
            return counts["pending"] + counts["running"] == 0

        await eventually(settled, 60, "every run finished")
    finally:
        codes = fleet.stop_all()
    assert set(codes.values()) == {0}, (codes, fleet.logs())
    assert swaps == 4
    counts = await statuses(ow)
    assert counts == {"completed": total - len(canceled), "canceled": len(canceled)}, (
        f"seed {seed}",
        counts,
        fleet.logs(),
    )

    problems: list[str] = []
    evidence: list[str] = []
    for n, handle in enumerate(handles):
        events = await ow.history(handle.run_id)
        found = [
            *audit_log(events),
            *audit_attempts(events, await ow.store.step_attempts(handle.run_id)),
        ]
        if handle.run_id in canceled:
            if events[-1].type != "run_canceled":
                found.append(f"the log goes on after the cancel: {events[-1].type}")
        else:
            executions = read_executions(fleet.state, handle.run_id)
            found += audit_executions(events, executions, fleet.killed)
            if (await handle.status()).output != [n, 2 * n, 3 * n, 4 * n, 5 * n]:
                found.append("wrong output")
        problems += [f"run {n} ({handle.run_id}): {p}" for p in found]
        if found and len(evidence) < 3:
            evidence.append(f"run {n}:\n{describe(events)}")
    assert not problems, "\n".join([f"seed {seed}:", *problems[:40], *evidence])
    report = await ow.reproject(verify=True)
    assert report.differences == [], report.differences[:10]

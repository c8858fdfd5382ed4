"""Adversarial: ``ow-es reproject`` through the real CLI process, and online while signals
are being delivered."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import psycopg

import ow_es
from tests.support.cli import db_args
from tests.support.processes import Process, Processes
from tests.support.runs import event_types
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


async def _cli(processes: Processes, db: dict[str, Any], *args: str) -> Process:
    """``ow-es reproject ...`` as a real process (its own exit status)."""
    return await processes.run_ow_es("reproject", *args, *db_args(db))


async def _parked_on(client: ow_es.OpenWorkflow, run_id: str, name: str) -> bool:
    run = await client.store.get_run(run_id)
    return bool(run and run.worker_id is None and (run.waiting_for or {}).get("name") == name)


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
        await eventually(lambda: _parked_on(ow, handle.run_id, "go"))
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


async def test_reproject_while_signals_are_delivered(make_client: Any, db: dict[str, Any]) -> None:
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
            await eventually(lambda h=handle, i=i: _parked_on(ow, h.run_id, f"s-{i}"))

        async def send_all(prefix: str) -> list[list[str]]:
            delivered = []
            for i in range(count):
                if prefix == "t":
                    await eventually(lambda i=i: _parked_on(ow, handles[i].run_id, f"t-{i}"))
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

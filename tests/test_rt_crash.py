"""Crash recovery with real processes: a worker is SIGKILLed mid-step, another finishes the
run after the lease expires, and nothing that completed before the kill runs again."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import ow_es
from tests.helpers import eventually, running_worker

APP = textwrap.dedent(
    '''
    """A worker app for the crash tests: it counts step executions in files next to it."""

    import asyncio
    import os
    import sys
    from pathlib import Path

    import ow_es

    STATE = Path(__file__).parent / "state"
    STATE.mkdir(exist_ok=True)


    def mark(name: str) -> None:
        with open(STATE / f"calls-{name}", "a") as f:
            f.write(f"{os.getpid()}\\n")


    async def first() -> int:
        mark("first")
        return 1


    def part(i: int):
        async def fn() -> int:
            mark(f"part{i}")
            if i == 2 and os.environ.get("OW_TEST_BLOCK") == "1":
                (STATE / "blocked").write_text(str(os.getpid()))
                await asyncio.sleep(3600)
            return i * 10

        return fn


    def last() -> str:
        mark("last")
        return "last"


    @ow_es.workflow(name="crash-victim")
    async def victim(ctx: ow_es.Context) -> dict:
        one = await ctx.step.run("first", first)
        parts = await asyncio.gather(*(ctx.step.run("part", part(i)) for i in range(3)))
        end = await ctx.step.run("last", last)
        return {"first": one, "parts": list(parts), "last": end}


    async def main(url: str, schema: str) -> None:
        ow = ow_es.OpenWorkflow(url, namespace="default", schema=schema or None)
        ow.register(victim)
        async with ow:
            worker = ow.worker(concurrency=4, lease="2s", poll_interval="100ms")
            (STATE / "worker-id").write_text(worker.worker_id)
            await worker.run()


    if __name__ == "__main__":
        asyncio.run(main(sys.argv[1], sys.argv[2]))
    '''
)


def _load_app(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"owapp_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count(state: Path, name: str) -> int:
    path = state / f"calls-{name}"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_sigkilled_worker_process_is_recovered(
    ow: ow_es.OpenWorkflow, db: dict[str, Any], tmp_path: Path
) -> None:
    app_path = tmp_path / "crashapp.py"
    app_path.write_text(APP)
    app = _load_app(app_path)  # the same definitions in this process, without blocking
    state = tmp_path / "state"
    ow.register(app.victim)
    await ow.connect()
    handle = await ow.start(app.victim)

    env = {**os.environ, "OW_TEST_BLOCK": "1"}
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, str(app_path), db["url"], db["schema"] or ""],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        async def blocked() -> bool:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            return (state / "blocked").exists()

        await eventually(blocked, timeout=30, interval=0.05)

        async def recorded() -> bool:
            done = {
                e.data["step_name"]
                for e in await ow.history(handle.run_id)
                if e.type == "step_completed"
            }
            return {"first", "part", "part:1"} <= done

        await eventually(recorded, timeout=10)
        before_kill = await handle.status()
        assert before_kill.status == "running"
        dead_worker = (state / "worker-id").read_text()
        assert before_kill.worker_id == dead_worker
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    async with running_worker(ow, lease="2s", concurrency=2) as rescuer:
        result = await handle.result(timeout=30)
    assert result == {"first": 1, "parts": [0, 10, 20], "last": "last"}

    # Completed before the kill: run once. Interrupted: run again. After: run once.
    assert _count(state, "first") == 1
    assert _count(state, "part0") == 1
    assert _count(state, "part1") == 1
    assert _count(state, "part2") == 2
    assert _count(state, "last") == 1

    events = await ow.history(handle.run_id)
    claims = [e for e in events if e.type == "run_claimed"]
    assert [c.data["worker_id"] for c in claims] == [dead_worker, rescuer.worker_id]
    # The rescuer waited for the lease: no takeover while the dead worker still held it.
    assert before_kill.lease_until is not None
    assert claims[1].created_at >= before_kill.lease_until - timedelta(milliseconds=100)
    # One owner at a time: every worker-written event after the takeover is the rescuer's.
    takeover = claims[1].seq
    writers = {e.data.get("worker_id") for e in events if e.seq > takeover} - {None}
    assert writers == {rescuer.worker_id}
    steps = await ow.store.step_attempts(handle.run_id)
    assert {s.step_name for s in steps if s.status == "completed"} == {
        "first",
        "part",
        "part:1",
        "part:2",
        "last",
    }


async def test_stopped_worker_releases_its_run_for_another(ow: ow_es.OpenWorkflow) -> None:
    """A graceful stop that cannot finish in time hands the run back at once (no lease wait)."""
    entered = asyncio.Event()
    calls: list[str] = []

    @ow.workflow(name="handover")
    async def handover(ctx: ow_es.Context) -> str:
        async def done_before() -> str:
            calls.append("before")
            return "before"

        async def long_step() -> str:
            calls.append("long")
            if len([c for c in calls if c == "long"]) == 1:
                entered.set()
                await asyncio.sleep(30)
            return "long"

        await ctx.step.run("before", done_before)
        return await ctx.step.run("long", long_step)

    await ow.connect()
    handle = await handover.start()
    first = ow.worker(lease="30s", poll_interval="200ms")
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(entered.wait(), 15)
    await first.stop(timeout=0.1)
    await asyncio.wait_for(task, 10)
    types = [e.type for e in await ow.history(handle.run_id)]
    assert types[-1] == "run_released"
    run = await handle.status()
    assert run.status == "running" and run.worker_id is None and run.lease_until is None

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with running_worker(ow, lease="30s"):
        assert await handle.result(timeout=15) == "long"
    assert loop.time() - started < 10  # far less than the 30 s lease
    assert calls == ["before", "long", "long"]

"""Cron schedules: the tick computation (DST, catch-up), and firing on both backends: one run
per tick across workers, overlap skips, pause/resume/trigger."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import ow_es
from ow_es.metrics import WorkerMetrics
from ow_es.schedule import due_ticks, next_tick, tick_key
from tests.support.cli import ainvoke, assert_one_line_error, db_args, ok
from tests.support.databases import ClientFactory
from tests.support.processes import Processes
from tests.support.workers import running_worker

BERLIN = ZoneInfo("Europe/Berlin")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# -- definitions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "0 3 * * *", "overlap": "queue"}, "overlap"),
        ({"cron": "0 3 * * *", "catch_up": "some"}, "catch_up"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ow_es.ValidationError, match=f"^{field}:"):
        ow_es.Schedule(**kwargs)


# -- the tick computation (pure) ----------------------------------------------------------


def test_a_daily_tick_stays_at_local_time_across_both_dst_changes() -> None:
    # 2026-03-29: 02:00 CET -> 03:00 CEST; 2026-10-25: 03:00 CEST -> 02:00 CET.
    at = utc(2026, 3, 27, 12)
    ticks = []
    for _ in range(4):
        at = next_tick("0 3 * * *", "Europe/Berlin", at)
        ticks.append(at)
    assert [t.astimezone(BERLIN).hour for t in ticks] == [3, 3, 3, 3]
    assert ticks[:3] == [utc(2026, 3, 28, 2), utc(2026, 3, 29, 1), utc(2026, 3, 30, 1)]
    at = utc(2026, 10, 23, 12)
    ticks = []
    for _ in range(3):
        at = next_tick("0 3 * * *", "Europe/Berlin", at)
        ticks.append(at)
    assert ticks == [utc(2026, 10, 24, 1), utc(2026, 10, 25, 2), utc(2026, 10, 26, 2)]


def test_a_tick_in_the_skipped_hour_fires_once_and_the_repeated_hour_once() -> None:
    # 02:30 does not exist on 2026-03-29 (cron fires at 03:00 local); exists twice on 10-25.
    spring = next_tick("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12))
    assert spring == utc(2026, 3, 29, 1)  # 03:00 CEST
    autumn = next_tick("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12))
    after = next_tick("30 2 * * *", "Europe/Berlin", autumn)
    assert autumn == utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    assert after == utc(2026, 10, 26, 1, 30)  # not the second 02:30 an hour later


def test_six_fields_have_seconds_first() -> None:
    assert next_tick("30 0 12 * * *", "UTC", utc(2026, 1, 1)) == utc(2026, 1, 1, 12, 0, 30)


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        ("all", [utc(2026, 1, 1, 0, m) for m in (2, 3, 4, 5)]),
        ("latest", [utc(2026, 1, 1, 0, 5)]),
        ("none", []),  # the newest missed tick is older than the grace
    ],
)
def test_catch_up_after_downtime(catch_up: str, expected: list[datetime]) -> None:
    now = utc(2026, 1, 1, 0, 5, 30)
    due = due_ticks("* * * * *", "UTC", catch_up, utc(2026, 1, 1, 0, 2), now, grace=10)
    assert due is not None
    assert due.ticks == expected
    assert due.next_tick_at == utc(2026, 1, 1, 0, 6)


def test_catch_up_none_still_fires_a_tick_on_time_and_all_is_bounded() -> None:
    now = utc(2026, 1, 1, 0, 5, 1)
    due = due_ticks("* * * * *", "UTC", "none", utc(2026, 1, 1, 0, 2), now)
    assert due is not None and due.ticks == [utc(2026, 1, 1, 0, 5)]
    assert due_ticks("* * * * *", "UTC", "all", utc(2026, 1, 1, 0, 6), now) is None
    due = due_ticks("* * * * * *", "UTC", "all", utc(2025, 1, 1), now)
    assert due is not None and len(due.ticks) == 1000 and due.ticks[-1] == utc(2026, 1, 1, 0, 5, 1)


def test_the_key_is_the_tick_in_utc() -> None:
    tick = datetime(2026, 3, 29, 3, tzinfo=BERLIN)
    assert tick_key("nightly", tick) == "schedule:nightly:2026-03-29T01:00:00+00:00"


# -- firing (both backends) ----------------------------------------------------------------


async def test_three_workers_make_one_run_per_tick(make_client: ClientFactory) -> None:
    clients = []
    for _ in range(3):
        client = await make_client()

        @client.workflow(name="every-second", schedule=ow_es.Schedule("* * * * * *"))
        async def every_second(ctx: ow_es.Context, tick: ow_es.Tick) -> str:
            return tick.scheduled_at.isoformat()

        clients.append(await client.connect())
    ow = clients[0]
    async with (
        running_worker(clients[0]),
        running_worker(clients[1]),
        running_worker(clients[2]),
    ):
        await asyncio.sleep(3.5)
        await ow.pause_schedule("every-second")
    runs = (await ow.list_runs(workflow_name="every-second", limit=100)).runs
    keys = sorted(r.idempotency_key or "" for r in runs)
    assert len(keys) == len(set(keys)) >= 3
    ticks = [datetime.fromisoformat(k.removeprefix("schedule:every-second:")) for k in keys]
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks))
    for run in runs:
        if run.status == "completed":
            assert run.output == datetime.fromisoformat(run.input["scheduled_at"]).isoformat()


async def test_catch_up_all_after_a_pause_starts_every_missed_tick(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="w", schedule=ow_es.Schedule("* * * * *", catch_up="all", overlap="allow"))
    async def w(ctx: ow_es.Context, tick: ow_es.Tick) -> None:
        return None

    await ow.connect()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await ow.store.schedules.upsert(ow.schedule_rows(now))
    await ow.store.schedules.set_next_tick("w", now - timedelta(minutes=3))
    fired = await ow.store.fire_schedules(["w"], now=now + timedelta(seconds=1))
    assert [key for _, _, key in fired.started] == [
        tick_key("w", now - timedelta(minutes=m)) for m in (3, 2, 1, 0)
    ]
    again = await ow.store.fire_schedules(["w"], now=now + timedelta(seconds=2))
    assert again.started == [] and again.skipped == []
    (row,) = await ow.store.schedules.all()
    assert row.next_tick_at == now + timedelta(minutes=1)


async def test_overlap_skip_is_recorded_and_counted(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="slow", schedule=ow_es.Schedule("* * * * *"))
    async def slow(ctx: ow_es.Context, tick: ow_es.Tick) -> None:
        return None

    await ow.connect()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await ow.store.schedules.upsert(ow.schedule_rows(now - timedelta(minutes=1)))
    first = await ow.store.fire_schedules(["slow"], now=now)
    assert len(first.started) == 1 and first.skipped == []
    second = await ow.store.fire_schedules(["slow"], now=now + timedelta(minutes=1))
    assert second.started == [] and second.skipped == ["slow"]  # the first run is pending
    counted = WorkerMetrics()  # what the worker's loop does with a firing
    counted.fired([s for s, _, _ in first.started], second.skipped)
    sample = counted.registry.get_sample_value
    labels = {"schedule": "slow", "outcome": "skipped"}
    assert sample("ow_es_schedule_ticks_total", labels) == 1
    (info,) = await ow.schedules()
    assert info.last_run_id == first.started[0][1] and info.last_run_status == "pending"


async def test_pause_resume_and_trigger(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="p", schedule=ow_es.Schedule("* * * * *", input=None))
    async def p(ctx: ow_es.Context, tick: ow_es.Tick) -> None:
        return None

    await ow.connect()
    now = datetime.now(UTC)
    await ow.store.schedules.upsert(ow.schedule_rows(now))
    await ow.pause_schedule("p")
    assert (await ow.store.fire_schedules(["p"], now=now + timedelta(minutes=5))).started == []
    await ow.resume_schedule("p")
    assert len((await ow.store.fire_schedules(["p"], now=now + timedelta(minutes=5))).started) == 1
    handle = await ow.trigger_schedule("p")
    run = await ow.store.get_run(handle.run_id)
    assert run is not None and (run.idempotency_key or "").startswith("schedule:p:manual:")
    with pytest.raises(ow_es.ValidationError):
        await ow.pause_schedule("nope")


async def test_the_cli_lists_pauses_resumes_and_triggers(ow: ow_es.OpenWorkflow, db: Any) -> None:
    @ow.workflow(name="nightly", schedule=ow_es.Schedule("0 3 * * *", timezone="Europe/Berlin"))
    async def nightly(ctx: ow_es.Context, tick: ow_es.Tick) -> None:
        return None

    await ow.connect()
    await ow.store.schedules.upsert(ow.schedule_rows(datetime.now(UTC)))
    args = db_args(db)
    ok(await ainvoke("schedules", "pause", "nightly", *args))
    listed = json.loads(ok(await ainvoke("schedules", "list", "--json", *args)))
    assert [(s["name"], s["paused"], s["timezone"]) for s in listed] == [
        ("nightly", True, "Europe/Berlin")
    ]
    ok(await ainvoke("schedules", "resume", "nightly", *args))
    run_id = ok(await ainvoke("schedules", "trigger", "nightly", *args)).strip()
    table = ok(await ainvoke("schedules", "list", *args))
    assert "nightly" in table and run_id in table and "pending" in table
    (info,) = await ow.schedules()
    assert not info.paused and info.last_run_id == run_id
    assert_one_line_error(await ainvoke("schedules", "pause", "nope", *args), "nope")


@pytest.mark.slow
async def test_three_worker_processes_make_one_run_per_tick(
    make_client: ClientFactory, db: dict[str, Any], processes: Processes
) -> None:
    """Three real ``ow-es worker`` processes serve a one-second schedule: every tick between
    the first and the last makes exactly one run, none missing, none doubled."""
    workers = [
        processes.worker("tests.support.apps.scheduled", "--poll-interval", "200ms", *db_args(db))
        for _ in range(3)
    ]
    for worker in workers:
        await worker.serving()
    await asyncio.sleep(4.5)
    ow = await make_client()
    await ow.connect()
    await ow.pause_schedule("every-second-proc")
    processes.stop_all()
    runs = (await ow.list_runs(workflow_name="every-second-proc", limit=1000)).runs
    keys = sorted(r.idempotency_key or "" for r in runs)
    assert len(keys) == len(set(keys)) >= 4, keys
    ticks = [datetime.fromisoformat(k.removeprefix("schedule:every-second-proc:")) for k in keys]
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks)), ticks

"""Prometheus metrics, parsed with prometheus-client's own parser after a known workload:
the dashboard's database gauges (``/metrics``) on both backends, and a worker's counters,
histograms and gauges on its metrics port."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import ow_es
from ow_es import Context, RetryPolicy
from tests.support.databases import ClientFactory
from tests.test_dashboard_api import eventually, running_worker, serve_dashboard

STATUSES = ["pending", "running", "completed", "failed", "canceled"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_dashboard_gauges_after_a_known_workload(make_client: ClientFactory) -> None:
    ow = await make_client()

    @ow.workflow(name="alpha", retry=RetryPolicy(maximum_attempts=1))
    async def alpha(ctx: Context, inp: dict[str, Any]) -> str:
        if inp.get("fail"):
            raise ValueError("asked to fail")
        return "ok"

    await ow.connect()
    async with running_worker(ow):
        for handle in [await alpha.start({}), await alpha.start({})]:
            await handle.result(timeout=20)
        failing = await alpha.start({"fail": True})
        with pytest.raises(ow_es.WorkflowFailed):
            await failing.result(timeout=20)
    await ow.start("beta", None)  # served by no worker: ready, waiting for one
    await ow.start("beta", None, available_at="1h")  # a timer: neither ready nor unowned
    await ow.cancel((await ow.start("beta", None, available_at="1h")).run_id)
    # A run whose worker's lease ran out: running, with no live lease and no timer.
    await ow.start("gamma", None)
    (held,) = await ow.store.claim("gone-worker", [("gamma", None)], 1, 0.05)
    await asyncio.sleep(0.1)

    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = parse(response.text)
    expected = {
        ("alpha", "completed"): 2,
        ("alpha", "failed"): 1,
        ("beta", "pending"): 2,
        ("beta", "canceled"): 1,
        ("gamma", "running"): 1,
    }
    for workflow in ("alpha", "beta", "gamma"):
        for status in STATUSES:
            got = value(
                samples, "openworkflow_workflow_runs", status=status, workflow_name=workflow
            )
            assert got == expected.get((workflow, status), 0), (workflow, status)
    assert value(samples, "ow_es_ready_runs") == 1
    assert 0 <= value(samples, "ow_es_oldest_ready_run_age_seconds") < 30
    assert value(samples, "ow_es_unowned_runs") == 1
    assert held.workflow_name == "gamma"
    assert value(samples, "ow_es_log_lag_seconds") >= 0
    assert value(samples, "ow_es_workers") == 0  # the worker left when it stopped
    unserved = {key: n for key, n in samples.items() if key[0] == "ow_es_unserved_runs"}
    assert unserved == {
        ("ow_es_unserved_runs", (("version", ""), ("workflow_name", "beta"))): 1
    }  # gamma's run is held (its lease ran out), not ready
    assert value(samples, "ow_es_stuck_runs") == 0  # held for 0.1 s, not 600 s


async def test_dashboard_worker_gauges(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live workers, ready runs no live worker serves, and runs held without progress past
    the threshold (``OW_ES_STUCK_AFTER``, 0 here)."""
    ow = await make_client()

    @ow.workflow(name="alpha")
    async def alpha(ctx: Context, inp: None) -> str:
        return "ok"

    await ow.connect()
    await ow.start("beta", None)  # no worker serves beta, in any version
    await ow.start("beta", None, version="2")
    await ow.start("beta", None, version="2")
    await ow.start("gamma", None)
    await ow.start("gamma", None)
    (held,) = await ow.store.claim("w", [("gamma", None)], 1, 300)  # held, no progress
    monkeypatch.setenv("OW_ES_STUCK_AFTER", "0")
    async with (
        running_worker(ow, worker_id="w-alpha"),
        running_worker(ow, worker_id="w-alpha-2"),
        serve_dashboard(ow) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        await asyncio.sleep(0.01)  # past the threshold: held before now
        samples = parse((await http.get("/metrics")).text)
    assert value(samples, "ow_es_workers") == 2
    unserved = {
        dict(labels)["workflow_name"] + "@" + dict(labels)["version"]: n
        for (name, labels), n in samples.items()
        if name == "ow_es_unserved_runs"
    }
    assert unserved == {"beta@": 1, "beta@2": 2, "gamma@": 1}
    assert value(samples, "ow_es_stuck_runs") == 1
    assert held.worker_id == "w"


async def test_dashboard_gauges_of_an_empty_namespace(make_client: Any) -> None:
    ow = await make_client()
    await ow.connect()
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        samples = parse((await http.get("/metrics")).text)
    assert not [key for key in samples if key[0] == "openworkflow_workflow_runs"]
    assert value(samples, "ow_es_ready_runs") == 0
    assert value(samples, "ow_es_oldest_ready_run_age_seconds") == 0
    assert value(samples, "ow_es_unowned_runs") == 0
    assert value(samples, "ow_es_workers") == 0
    assert not [key for key in samples if key[0] == "ow_es_unserved_runs"]
    assert not [key for key in samples if key[0] == "ow_es_limited_runs"]
    assert value(samples, "ow_es_stuck_runs") == 0


async def test_limited_runs_counts_ready_runs_a_limit_holds_back(
    make_client: ClientFactory,
) -> None:
    """``ow_es_limited_runs{workflow_name}``: one series per workflow with stored limits (0
    when nothing waits), none for a workflow without limits."""
    ow = await make_client()
    await ow.connect()
    await ow.set_limits("sync", ow_es.Limits(concurrency=1))
    await ow.set_limits("mail", ow_es.Limits(per_key=1))
    for i in range(3):
        await ow.start("sync", i)
    (held,) = await ow.store.claim("w", [("sync", None)], 10, 30)  # one place: the others wait
    await ow.start("mail", None, key="k")  # ready, under its per-key limit
    await ow.start("plain", None)  # no limit: ready, not held back
    await ow.start("sync", None, available_at="1h")  # not due: not held back
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        samples = parse((await http.get("/metrics")).text)
        limited = {
            dict(labels)["workflow_name"]: n
            for (name, labels), n in samples.items()
            if name == "ow_es_limited_runs"
        }
        assert limited == {"sync": 2, "mail": 0}
        assert value(samples, "ow_es_ready_runs") == 4  # held back runs are ready too
        await ow.clear_limits("sync")
        samples = parse((await http.get("/metrics")).text)
    assert [dict(labels) for (name, labels) in samples if name == "ow_es_limited_runs"] == [
        {"workflow_name": "mail"}
    ]
    assert held.workflow_name == "sync"


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse(response.read().decode())


async def test_worker_metrics_after_a_known_workload(make_client: Any, db: dict[str, Any]) -> None:
    ow: ow_es.OpenWorkflow = await make_client()
    failed_once: set[str] = set()

    @ow.workflow(name="counted")
    async def counted(ctx: Context, inp: None) -> str:
        await ctx.step.run("plain", lambda: 1)

        def flaky() -> int:
            if ctx.run.id not in failed_once:
                failed_once.add(ctx.run.id)
                raise ConnectionError("first attempt fails")
            return 2

        retry = RetryPolicy(initial_interval="50ms", maximum_attempts=3)
        await ctx.step.run("flaky", flaky, retry=retry)
        await ctx.step.sleep("nap", "100ms")
        return "done"

    @ow.workflow(name="broken")
    async def broken(ctx: Context, inp: None) -> None:
        raise RuntimeError("the body fails")

    await ow.connect()
    async with running_worker(ow, concurrency=4, metrics_port=0) as worker:
        port = worker.metrics.bound_port
        assert port
        handles = [await counted.start(None), await counted.start(None)]
        for handle in handles:
            assert await handle.result(timeout=30) == "done"
        failing = await broken.start(None)
        with pytest.raises(ow_es.WorkflowFailed):
            await failing.result(timeout=30)
        histories = {h.run_id: await ow.history(h.run_id) for h in [*handles, failing]}
        claims = sum(e.type == "run_claimed" for events in histories.values() for e in events)

        async def latencies_observed() -> Samples | None:
            samples = await asyncio.to_thread(scrape, port)
            done = value(samples, "ow_es_run_start_latency_seconds_count") == claims
            return samples if done else None

        samples = await eventually(latencies_observed)

    assert value(samples, "ow_es_runs_started_total", workflow_name="counted") == 2
    assert value(samples, "ow_es_runs_started_total", workflow_name="broken") == 1
    finished = "ow_es_runs_finished_total"
    assert value(samples, finished, workflow_name="counted", status="completed") == 2
    assert value(samples, finished, workflow_name="broken", status="failed") == 1
    assert value(samples, "ow_es_step_failures_total", workflow_name="counted") == 2
    steps = "ow_es_step_duration_seconds_count"
    assert value(samples, steps, workflow_name="counted", step_kind="function") == 6
    assert value(samples, steps, workflow_name="counted", step_kind="sleep") == 2
    naps = value(
        samples, "ow_es_step_duration_seconds_sum", workflow_name="counted", step_kind="sleep"
    )
    assert 0.2 <= naps < 10  # two naps of 100 ms, to scale
    assert 0 <= value(samples, "ow_es_run_start_latency_seconds_sum") < claims * 5

    appended: dict[str, int] = {}
    for events in histories.values():
        for event in events:
            if event.type != "run_created":  # the client's, not the worker's
                appended[event.type] = appended.get(event.type, 0) + 1
    worker_events = {
        dict(labels)["type"]: n
        for (name, labels), n in samples.items()
        if name == "ow_es_events_appended_total"
    }
    assert worker_events == appended

    assert value(samples, "ow_es_worker_slots", state="busy") == 0
    assert value(samples, "ow_es_worker_slots", state="idle") == 4
    assert not [key for key in samples if key[0].startswith("ow_es_worker_held")]  # holding off
    pool = [key for key in samples if key[0] == "ow_es_db_pool_connections"]
    if db["backend"] == "postgres":
        in_use = value(samples, "ow_es_db_pool_connections", state="in_use")
        assert in_use >= 0 and value(samples, "ow_es_db_pool_connections", state="idle") >= 0
        assert len(pool) == 2
    else:
        assert pool == []  # SQLite has no pool


async def test_a_worker_holding_runs_counts_them_and_its_resumes(
    make_client: ClientFactory,
) -> None:
    ow = await make_client()

    @ow.workflow(name="napping")
    async def napping(ctx: Context, inp: None) -> str:
        for nap in ("first", "second"):
            await ctx.step.sleep(nap, "200ms")
        return "rested"

    await ow.connect()
    async with running_worker(ow, metrics_port=0, hold_parked_runs=5) as worker:
        port = worker.metrics.bound_port
        assert port
        handle = await napping.start(None)
        assert await handle.result(timeout=30) == "rested"
        samples = await asyncio.to_thread(scrape, port)
    wakes = [e.type for e in await ow.history(handle.run_id)].count("run_claimed") - 1
    assert wakes >= 1
    assert value(samples, "ow_es_worker_held_resumes_total") == wakes == worker.held.resumed
    assert value(samples, "ow_es_worker_held_runs") == 0  # the run ended: nothing is held

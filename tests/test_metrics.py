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
from tests.test_dashboard_api import running_worker, serve_dashboard

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


async def test_dashboard_gauges_of_an_empty_namespace(make_client: Any) -> None:
    ow = await make_client()
    await ow.connect()
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        samples = parse((await http.get("/metrics")).text)
    assert not [key for key in samples if key[0] == "openworkflow_workflow_runs"]
    assert value(samples, "ow_es_ready_runs") == 0
    assert value(samples, "ow_es_oldest_ready_run_age_seconds") == 0
    assert value(samples, "ow_es_unowned_runs") == 0


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse(response.read().decode())

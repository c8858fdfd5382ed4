"""The dashboard's HTTP API on both backends, through a real uvicorn server on 127.0.0.1:
runs (filters, search, pages), a run's detail, events and past states, counts, actions, the
live stream (tail, resume after Last-Event-ID), errors, the token, and cross-site writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest

import ow_es
from ow_es import Context, RetryPolicy
from ow_es.dashboard import create_app
from ow_es.dashboard.server import make_server
from ow_es.schedule import tick_key
from tests.support.databases import ClientFactory

STATUSES = ["pending", "running", "completed", "failed", "canceled"]


# -- harness (shared by the dashboard, metrics and browser tests) ------------------------------


@contextlib.asynccontextmanager
async def serve_dashboard(
    client: ow_es.OpenWorkflow, *, token: str | None = None
) -> AsyncIterator[str]:
    """The dashboard over ``client`` on a free port of 127.0.0.1; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(client, token=token)
    server = make_server(app, host="127.0.0.1", port=port, log_level="warning")
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


@contextlib.asynccontextmanager
async def running_worker(client: ow_es.OpenWorkflow, **options: Any) -> AsyncIterator[Any]:
    """A worker of ``client`` running in this test's loop, stopped at exit."""
    options.setdefault("poll_interval", "200ms")
    worker = client.worker(**options)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(15):
        ready = asyncio.ensure_future(worker.ready.wait())
        done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
    try:
        yield worker
    finally:
        await worker.stop(timeout=5)
        await asyncio.wait_for(task, 30)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := await check()):
            await asyncio.sleep(0.05)
        return value


async def connected(make_client: Any) -> ow_es.OpenWorkflow:
    client: ow_es.OpenWorkflow = await make_client()
    return await client.connect()


# -- runs ---------------------------------------------------------------------------------------


async def test_runs_list_filters_searches_and_pages(make_client: Any) -> None:
    ow = await connected(make_client)
    ids = []
    for i in range(5):
        ids.append((await ow.start("alpha", {"i": i}, idempotency_key=f"order-{i}")).run_id)
    ids += [(await ow.start("beta", {"i": i})).run_id for i in range(2)]
    await ow.cancel(ids[0])
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/api/runs", params=params)).json()
            seen += [run["id"] for run in page["runs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]  # newest first, each once

        beta = (await http.get("/api/runs", params={"workflow": "beta"})).json()
        assert {r["id"] for r in beta["runs"]} == set(ids[5:])
        canceled = (await http.get("/api/runs", params={"status": "canceled"})).json()
        assert [r["id"] for r in canceled["runs"]] == [ids[0]]

        by_id = (await http.get("/api/runs", params={"q": ids[3]})).json()
        assert [r["id"] for r in by_id["runs"]] == [ids[3]] and by_id["next_cursor"] is None
        by_key = (await http.get("/api/runs", params={"q": "order-2"})).json()
        assert [(r["id"], r["idempotency_key"]) for r in by_key["runs"]] == [(ids[2], "order-2")]
        assert (await http.get("/api/runs", params={"q": "no-such"})).json()["runs"] == []

        run = by_id["runs"][0]
        assert run["input"] == {"i": 3} and run["status"] == "pending"
        assert datetime.fromisoformat(run["created_at"]).tzinfo is not None  # ISO-8601, aware

        for bad in ({"status": "sleeping"}, {"cursor": "not-a-cursor"}, {"limit": "x"}):
            response = await http.get("/api/runs", params=bad)
            assert response.status_code == 422, bad
            assert set(response.json()) == {"error"}


async def test_counts_hold_every_status_with_zeros(make_client: Any) -> None:
    ow = await connected(make_client)
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/api/counts")).json() == {
            "by_status": dict.fromkeys(STATUSES, 0),
            "by_workflow": {},
        }
        first = await ow.start("alpha", None)
        await ow.start("alpha", None)
        await ow.start("beta", None)
        await ow.cancel(first.run_id)
        expected = {
            "by_status": {**dict.fromkeys(STATUSES, 0), "pending": 2, "canceled": 1},
            "by_workflow": {
                "alpha": {**dict.fromkeys(STATUSES, 0), "pending": 1, "canceled": 1},
                "beta": {**dict.fromkeys(STATUSES, 0), "pending": 1},
            },
        }

        async def counted() -> bool:  # the server shares one count for up to 2 s
            return bool((await http.get("/api/counts")).json() == expected)

        await eventually(counted, timeout=5)


async def test_run_detail_events_state_children_and_failed_attempts(
    make_client: ClientFactory,
) -> None:
    ow = await make_client()

    @ow.workflow(name="child")
    async def child(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
        return {"child_of": inp["parent"]}

    @ow.workflow(name="parent", retry=RetryPolicy(maximum_attempts=1))
    async def parent(ctx: Context, inp: dict[str, Any]) -> Any:
        def flaky() -> str:
            raise ValueError("boom on attempt")

        with contextlib.suppress(ow_es.StepFailed):
            await ctx.step.run(
                "flaky", flaky, retry=RetryPolicy(initial_interval="10ms", maximum_attempts=2)
            )
        return await ctx.step.run_workflow(child, {"parent": ctx.run.id})

    await ow.connect()
    async with running_worker(ow):
        handle = await parent.start({})
        await handle.result(timeout=20)
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        detail = (await http.get(f"/api/runs/{handle.run_id}")).json()
        assert set(detail) >= {"run", "steps", "children", "parent", "schedule", "held_back"}
        assert detail["run"]["status"] == "completed" and detail["parent"] is None
        assert detail["schedule"] is None and detail["held_back"] is None
        (child_id,) = detail["children"]
        failed = [s for s in detail["steps"] if s["status"] == "failed"]
        assert [(s["step_name"], s["attempt"]) for s in failed] == [("flaky", 1), ("flaky", 2)]
        assert failed[0]["error"]["type"] == "ValueError"
        assert "boom on attempt" in failed[0]["error"]["message"]
        assert "Traceback" in failed[0]["error"]["traceback"]
        child_detail = (await http.get(f"/api/runs/{child_id}")).json()
        assert child_detail["parent"] == handle.run_id
        assert child_detail["run"]["output"] == {"child_of": handle.run_id}

        events = (await http.get(f"/api/runs/{handle.run_id}/events")).json()["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["type"] == "run_created" and events[-1]["type"] == "run_completed"
        assert all(e["run_id"] == handle.run_id for e in events)

        first = (await http.get(f"/api/runs/{handle.run_id}/state", params={"seq": 1})).json()
        assert first["run"]["status"] == "pending" and first["steps"] == []
        seq = next(e["seq"] for e in events if e["type"] == "step_failed")
        then = (await http.get(f"/api/runs/{handle.run_id}/state", params={"seq": seq})).json()
        assert then["run"]["status"] == "running"
        assert [s["status"] for s in then["steps"]] == ["failed"]
        last = events[-1]["seq"]
        now = (await http.get(f"/api/runs/{handle.run_id}/state", params={"seq": last})).json()
        assert now["run"] == detail["run"]

        for path in ("", "/events", "/state?seq=1"):
            response = await http.get(f"/api/runs/no-such-run{path}")
            assert response.status_code == 404 and "not found" in response.json()["error"]
        for query in ("", "?seq=x", "?seq=0"):
            response = await http.get(f"/api/runs/{handle.run_id}/state{query}")
            assert response.status_code == 422, query


async def test_runs_show_key_priority_schedule_and_what_holds_them_back(
    make_client: ClientFactory,
) -> None:
    """Under ``concurrency=1`` one run is held, the next (started by a schedule's tick) is
    ready but held back: the run's detail says why, the list gives each held-back run's
    reason, and a run no limit keeps waiting has none."""
    ow = await connected(make_client)
    await ow.set_limits("sync", ow_es.Limits(concurrency=1))
    tick = datetime(2024, 5, 1, 3, tzinfo=UTC)
    held = await ow.start("sync", 1, key="tenant-7", priority=5)
    waiting = await ow.start("sync", 2, key="tenant-8", idempotency_key=tick_key("nightly", tick))
    (claimed,) = await ow.store.claim("w", [("sync", None)], 10, 30)
    assert claimed.id == held.run_id and claimed.claim_token
    plain = await ow.start("other", None, idempotency_key="order-1")
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        detail = (await http.get(f"/api/runs/{waiting.run_id}")).json()
        assert (detail["run"]["key"], detail["run"]["priority"]) == ("tenant-8", 0)
        assert detail["schedule"] == "nightly"
        assert detail["held_back"] == "concurrency limit 1 reached"
        holder = (await http.get(f"/api/runs/{held.run_id}")).json()
        assert (holder["run"]["key"], holder["run"]["priority"]) == ("tenant-7", 5)
        assert holder["schedule"] is None and holder["held_back"] is None
        other = (await http.get(f"/api/runs/{plain.run_id}")).json()
        assert (other["run"]["key"], other["run"]["priority"]) == (None, 0)
        assert other["schedule"] is None and other["held_back"] is None

        page = (await http.get("/api/runs")).json()
        assert page["held_back"] == {waiting.run_id: "concurrency limit 1 reached"}
        keys = {run["id"]: (run["key"], run["priority"]) for run in page["runs"]}
        assert keys[held.run_id] == ("tenant-7", 5) and keys[plain.run_id] == (None, 0)
        found = (await http.get("/api/runs", params={"q": waiting.run_id})).json()
        assert found["held_back"] == {waiting.run_id: "concurrency limit 1 reached"}
        others = (await http.get("/api/runs", params={"workflow": "other"})).json()
        assert others["held_back"] == {}
        assert claimed.claim_token not in json.dumps([page, detail, holder])

        # The limit lifted: nothing holds the run back any more.
        await ow.set_limits("sync", ow_es.Limits(concurrency=2))
        assert (await http.get(f"/api/runs/{waiting.run_id}")).json()["held_back"] is None
        assert (await http.get("/api/runs")).json()["held_back"] == {}


# -- actions ------------------------------------------------------------------------------------


async def test_no_response_carries_a_claim_token(make_client: Any) -> None:
    """A claim token is a worker's fencing secret: the API leaves it out of run rows and of
    ``run_claimed`` events, while a user's own key of that name is kept."""
    ow = await connected(make_client)
    handle = await ow.start("held", {"claim_token": "mine"})
    (claimed,) = await ow.store.claim("w-1", [("held", None)], 1, 300)
    assert claimed.claim_token
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        bodies = [
            (await http.get(path)).text
            for path in (
                "/api/runs",
                f"/api/runs/{handle.run_id}",
                f"/api/runs/{handle.run_id}/events",
                f"/api/runs/{handle.run_id}/state?seq=2",
                "/api/workers?stuck_after=0",
            )
        ]
    for body in bodies:
        assert claimed.claim_token not in body
    detail = msgspec.json.decode(bodies[1])
    assert detail["run"]["input"] == {"claim_token": "mine"}


async def test_start_validates_and_is_idempotent(make_client: Any) -> None:
    ow = await connected(make_client)
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        body = {"workflow_name": "alpha", "version": "2", "input": {"n": 1}, "idempotency_key": "k"}
        created = await http.post("/api/runs", json={**body, "available_at": "5m"})
        assert created.status_code == 200
        run = created.json()["run"]
        assert (run["workflow_name"], run["version"], run["input"]) == ("alpha", "2", {"n": 1})
        due = datetime.fromisoformat(run["available_at"]) - datetime.now(UTC)
        assert timedelta(minutes=4) < due <= timedelta(minutes=5)
        again = (await http.post("/api/runs", json={**body, "input": {"n": 2}})).json()["run"]
        assert again["id"] == run["id"] and again["input"] == {"n": 1}

        keyed = await http.post("/api/runs", json={"workflow_name": "c", "key": "t", "priority": 3})
        assert (keyed.json()["run"]["key"], keyed.json()["run"]["priority"]) == ("t", 3)

        deadline = "2030-01-01T00:00:00+00:00"
        later = await http.post("/api/runs", json={"workflow_name": "b", "deadline_at": deadline})
        assert datetime.fromisoformat(later.json()["run"]["deadline_at"]) == datetime(
            2030, 1, 1, tzinfo=UTC
        )

        refused = {
            400: [b"{not json", b"[1, 2"],
            422: [
                b"[1, 2]",
                b'{"input": {}}',
                b'{"workflow_name": ""}',
                b'{"workflow_name": 5}',
                b'{"workflow_name": "a", "available_at": "next tuesday"}',
                b'{"workflow_name": "a", "deadline_at": "2030-01-01T00:00:00"}',
                b'{"workflow_name": "a", "idempotency_key": ""}',
                b'{"workflow_name": "a", "key": ""}',
                b'{"workflow_name": "a", "priority": "high"}',
            ],
        }
        for status, bodies in refused.items():
            for raw in bodies:
                response = await http.post(
                    "/api/runs", content=raw, headers={"Content-Type": "application/json"}
                )
                assert response.status_code == status, raw
                assert set(response.json()) == {"error"}
                assert "Traceback" not in response.text
        assert (await ow.list_runs()).runs[0].id == later.json()["run"]["id"]  # nothing else


async def test_cancel_resume_and_signal(make_client: ClientFactory) -> None:
    ow = await make_client()

    @ow.workflow(name="waits")
    async def waits(ctx: Context, inp: None) -> Any:
        return await ctx.step.wait_for_signal("go")

    @ow.workflow(name="fails")
    async def fails(ctx: Context, inp: None) -> None:
        raise RuntimeError("nope")

    await ow.connect()
    async with (
        running_worker(ow),
        serve_dashboard(ow) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        waiting = await waits.start(None)
        sleeper = await waits.start(None)

        async def parked(run_id: str) -> bool:
            run = (await http.get(f"/api/runs/{run_id}")).json()["run"]
            return bool(run["waiting_for"] and run["waiting_for"]["kind"] == "signal")

        await eventually(lambda: parked(waiting.run_id))
        await eventually(lambda: parked(sleeper.run_id))
        canceled = await http.post(f"/api/runs/{sleeper.run_id}/cancel")
        assert canceled.status_code == 200 and canceled.json()["run"]["status"] == "canceled"
        assert (await http.post(f"/api/runs/{sleeper.run_id}/cancel")).status_code == 200

        sent = await http.post("/api/signals", json={"name": "go", "data": {"ok": True}})
        assert sent.json() == {"delivered_to": [waiting.run_id]}
        assert await waiting.result(timeout=15) == {"ok": True}
        nobody = await http.post("/api/signals", json={"name": "nobody-waits", "data": 1})
        assert nobody.json() == {"delivered_to": []}
        assert (await http.post("/api/signals", json={"data": 1})).status_code == 422

        conflict = await http.post(f"/api/runs/{waiting.run_id}/cancel")
        assert conflict.status_code == 409 and "error" in conflict.json()
        assert (await http.post(f"/api/runs/{waiting.run_id}/resume")).status_code == 409

        failing = await fails.start(None)
        with pytest.raises(ow_es.WorkflowFailed):
            await failing.result(timeout=15)
        resumed = await http.post(f"/api/runs/{failing.run_id}/resume")
        assert resumed.status_code == 200 and resumed.json()["run"]["status"] == "running"
        for action in ("cancel", "resume"):
            response = await http.post(f"/api/runs/no-such-run/{action}")
            assert response.status_code == 404


# -- workers ------------------------------------------------------------------------------------


async def test_workers_lists_live_workers_unserved_and_stuck_runs(
    make_client: ClientFactory,
) -> None:
    ow = await make_client()
    release = asyncio.Event()

    @ow.workflow(name="alpha")
    async def alpha(ctx: Context, inp: None) -> str:
        async def hold() -> str:
            await release.wait()
            return "held"

        return await ctx.step.run("hold", hold)

    await ow.connect()
    producer = await connected(make_client)
    beta = await producer.start("beta", None)  # nobody serves beta
    await producer.start("beta", None, version="2")
    await producer.start("beta", None, version="2")
    async with (
        serve_dashboard(ow) as url,
        httpx.AsyncClient(base_url=url, timeout=20) as http,
    ):
        empty = (await http.get("/api/workers")).json()
        assert empty["workers"] == [] and empty["stuck"] == [] and empty["stuck_more"] is False
        assert empty["unserved"] == [
            {"workflow_name": "beta", "version": None, "ready": 1},
            {"workflow_name": "beta", "version": "2", "ready": 2},
        ]
        assert empty["stuck_after_seconds"] == 600

        worker_options = {"concurrency": 3, "lease": "2s", "heartbeat": "100ms"}
        async with running_worker(ow, worker_id="w-alpha", **worker_options):
            body = (await http.get("/api/workers")).json()
            (me,) = body["workers"]
            assert me["id"] == "w-alpha"
            assert (me["host"], me["pid"]) == (socket.gethostname(), os.getpid())
            assert me["workflows"] == [{"name": "alpha", "version": None}]
            assert (me["concurrency"], me["busy"], me["idle"]) == (3, 0, 3)
            beat = datetime.fromisoformat(me["heartbeat_at"])
            assert datetime.fromisoformat(me["started_at"]) <= beat <= datetime.now(UTC)
            assert 0 <= me["heartbeat_age_seconds"] < 10
            assert [u["workflow_name"] for u in body["unserved"]] == ["beta", "beta"]

            # A body in progress takes a slot; the heartbeat reports it.
            busy = await alpha.start(None)

            async def one_busy() -> Any:
                (w,) = (await http.get("/api/workers")).json()["workers"]
                return w if (w["busy"], w["idle"]) == (1, 2) else None

            await eventually(one_busy)
            release.set()
            assert await busy.result(timeout=15) == "held"

            # A worker serving beta (no version) takes its run off the list; version 2 stays.
            beta_client = await make_client()

            @beta_client.workflow(name="beta")
            async def beta_body(ctx: Context, inp: None) -> str:
                return "served"

            await beta_client.connect()
            async with running_worker(beta_client, worker_id="w-beta"):
                served = await beta_client.get_handle(beta.run_id)
                assert await served.result(timeout=15) == "served"
                body = (await http.get("/api/workers")).json()
                assert {w["id"] for w in body["workers"]} == {"w-alpha", "w-beta"}
                assert body["unserved"] == [{"workflow_name": "beta", "version": "2", "ready": 2}]
        assert (await http.get("/api/workers")).json()["workers"] == []  # they left

        # A run held by a worker that makes no progress: stuck once past the threshold.
        gamma = await producer.start("gamma", None)
        (held,) = await producer.store.claim("w", [("gamma", None)], 1, 300)
        assert held.id == gamma.run_id
        assert (await http.get("/api/workers")).json()["stuck"] == []  # not for 600 s

        async def stuck() -> Any:
            body = (await http.get("/api/workers", params={"stuck_after": "0"})).json()
            return body if body["stuck"] else None

        body = await eventually(stuck)
        (run,) = body["stuck"]
        assert (run["id"], run["workflow_name"], run["worker_id"]) == (gamma.run_id, "gamma", "w")
        assert run["status"] == "running" and run["version"] is None
        assert datetime.fromisoformat(run["updated_at"]) == held.updated_at
        assert run["idle_seconds"] >= 0 and body["stuck_after_seconds"] == 0
        assert all(u["workflow_name"] != "gamma" for u in body["unserved"])  # held, not ready
        later = await http.get("/api/workers", params={"stuck_after": "1h"})
        assert later.json()["stuck"] == [] and later.json()["stuck_after_seconds"] == 3600

        for bad in ("soon", "-1", "nan", "inf", "1e400", "5 parsecs", "20y"):
            response = await http.get("/api/workers", params={"stuck_after": bad})
            assert response.status_code == 422, bad
            assert set(response.json()) == {"error"} and "stuck_after" in response.json()["error"]


async def test_workers_threshold_comes_from_the_environment(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ow = await connected(make_client)
    monkeypatch.setenv("OW_ES_STUCK_AFTER", "90s")
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/api/workers")).json()["stuck_after_seconds"] == 90
    monkeypatch.setenv("OW_ES_STUCK_AFTER", "1.5")
    assert create_app(ow).state.stuck_after == 1.5
    monkeypatch.setenv("OW_ES_STUCK_AFTER", "a while")
    with pytest.raises(ow_es.ConfigError, match="OW_ES_STUCK_AFTER"):
        create_app(ow)


# -- the live stream ----------------------------------------------------------------------------


class Frames:
    """Server-sent events read from a streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10) -> dict[str, str]:
        frame: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if "event" in frame:
                        return frame
                    frame = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    frame[key] = value.removeprefix(" ")
        raise AssertionError("the stream ended")

    async def until(self, event_type: str, run_id: str) -> dict[str, str]:
        while True:
            frame = await self.next()
            if frame["event"] == event_type and json.loads(frame["data"])["run_id"] == run_id:
                return frame


async def test_stream_starts_at_the_tail_and_resumes_after_last_event_id(make_client: Any) -> None:
    ow = await connected(make_client)
    old = await ow.start("alpha", {"old": True})
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
        async with http.stream("GET", "/api/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            frames = Frames(response)
            ready = await frames.next()
            assert ready["event"] == "ready" and ready["id"]
            first = await ow.start("alpha", {"n": 1})
            frame = await frames.next()  # the old run's events are not replayed
            event = json.loads(frame["data"])
            assert frame["event"] == "run_created" == event["type"]
            assert event["run_id"] == first.run_id and event["seq"] == 1
            assert event["data"]["input"] == {"n": 1}
            resume_at = frame["id"]
        assert old.run_id != first.run_id

        second = await ow.start("alpha", {"n": 2})
        await ow.cancel(second.run_id)
        for how in ({"headers": {"Last-Event-ID": resume_at}}, {"params": {"after": resume_at}}):
            async with http.stream("GET", "/api/stream", **how) as response:  # type: ignore[arg-type]
                frames = Frames(response)
                assert (await frames.next())["event"] == "ready"
                created = await frames.next()
                assert created["event"] == "run_created"
                assert json.loads(created["data"])["run_id"] == second.run_id
                await frames.until("run_canceled", second.run_id)

        async with http.stream("GET", "/api/stream", params={"after": "start"}) as response:
            frames = Frames(response)
            await frames.next()
            replayed = json.loads((await frames.next())["data"])
            assert replayed["run_id"] == old.run_id and replayed["seq"] == 1

        bad = await http.get("/api/stream", params={"after": "bogus:cursor"})
        assert bad.status_code == 422 and "error" in bad.json()


async def test_stream_delivers_step_events_of_a_worker(make_client: ClientFactory) -> None:
    ow = await make_client()

    @ow.workflow(name="stepper")
    async def stepper(ctx: Context, inp: None) -> int:
        await ctx.step.sleep("nap", "300ms")
        return 7

    await ow.connect()
    async with (
        running_worker(ow),
        serve_dashboard(ow) as url,
        httpx.AsyncClient(base_url=url, timeout=20) as http,
        http.stream("GET", "/api/stream") as response,
    ):
        frames = Frames(response)
        await frames.next()
        handle = await stepper.start(None)
        await frames.until("run_sleeping", handle.run_id)
        await frames.until("step_completed", handle.run_id)
        done = await frames.until("run_completed", handle.run_id)
        assert json.loads(done["data"])["data"]["output"] == 7


# -- who may call -------------------------------------------------------------------------------


async def test_token_guards_data_routes_but_not_healthz(make_client: Any) -> None:
    ow = await connected(make_client)
    run = await ow.start("alpha", None)
    async with (
        serve_dashboard(ow, token="s3cret-token") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/")).status_code == 200  # the page holds no data; it asks
        paths = ("/api/runs", "/api/counts", f"/api/runs/{run.run_id}", "/api/workers", "/metrics")
        for path in paths:
            denied = await http.get(path)
            assert denied.status_code == 401, path
            assert denied.json() == {
                "error": "authentication required: send the dashboard token as a bearer token"
            }
            wrong = await http.get(path, headers={"Authorization": "Bearer s3cret-tokeX"})
            assert wrong.status_code == 401
            assert (
                await http.get(path, headers={"Authorization": "Bearer s3cret-token"})
            ).is_success
            assert (await http.get(path, auth=("anyone", "s3cret-token"))).is_success
            assert (await http.get(path, auth=("anyone", "nope"))).status_code == 401
        assert (await http.post("/api/runs", json={"workflow_name": "x"})).status_code == 401
        # ?token= is for EventSource only.
        assert (await http.get("/api/runs", params={"token": "s3cret-token"})).status_code == 401
        async with http.stream("GET", "/api/stream", params={"token": "s3cret-token"}) as ok:
            assert ok.status_code == 200
            assert (await Frames(ok).next())["event"] == "ready"
        assert (await http.get("/api/stream", params={"token": "wrong"})).status_code == 401


async def test_cross_site_writes_and_foreign_hosts_are_refused(make_client: Any) -> None:
    ow = await connected(make_client)
    async with serve_dashboard(ow) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        host = url.removeprefix("http://")
        body = {"workflow_name": "alpha"}
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "http://127.0.0.1:1"},  # another port is another origin
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            refused = await http.post("/api/runs", json=body, headers=headers)
            assert refused.status_code == 403, headers
            assert refused.json() == {"error": "cross-site request refused"}
        assert (await ow.list_runs()).runs == []
        same = await http.post(
            "/api/runs", json=body, headers={"Origin": url, "Sec-Fetch-Site": "same-origin"}
        )
        assert same.status_code == 200
        assert (await http.get("/api/counts", headers={"Origin": "http://evil.example"})).is_success
        # Without a token only loopback names are served (DNS rebinding gets nothing).
        rebound = await http.get("/api/counts", headers={"Host": "evil.example"})
        assert rebound.status_code == 403 and "OW_ES_DASHBOARD_TOKEN" in rebound.json()["error"]
        assert (
            await http.get("/api/counts", headers={"Host": f"localhost:{host.split(':')[1]}"})
        ).is_success


def test_binding_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OW_ES_", "OPENWORKFLOW_"))}
    command = [sys.executable, "-m", "ow_es.cli", "dashboard", "--host", "0.0.0.0", "--port", "0"]
    command += ["--database-url", f"sqlite:///{tmp_path / 'ow.db'}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "set OW_ES_DASHBOARD_TOKEN" in line
    assert not (tmp_path / "ow.db").exists()  # refused before touching anything

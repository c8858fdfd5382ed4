"""The store port on both backends: appends, fencing, batching, reads, immutability."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import ow_es
from ow_es import events as ev
from ow_es.projections import Recorded
from ow_es.store import Appended, AppendRequest
from ow_es.store.plan import Plan
from ow_es.store.port import Primitives


def _create(run_id: str, name: str = "wf", key: str | None = None) -> AppendRequest:
    now = datetime.now(UTC)
    return AppendRequest(
        run_id=run_id,
        events=[ev.RunCreated(workflow_name=name, idempotency_key=key, available_at=now)],
    )


def _step(name: str) -> ev.StepCompleted:
    return ev.StepCompleted(
        step_name=name, kind="function", attempt=1, output={"n": name}, started_at=datetime.now(UTC)
    )


async def _claimed(client: ow_es.OpenWorkflow, run_id: str) -> str:
    await client.store.append([_create(run_id)])
    (run,) = await client.store.claim("w-1", [("wf", None)], 1, 30)
    assert run.claim_token is not None
    return run.claim_token


async def test_seq_is_gapless_and_events_read_in_order(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    token = await _claimed(ow, "r1")
    for i in range(3):
        await ow.store.append(
            [AppendRequest(run_id="r1", claim_token=token, events=[_step(f"s{i}"), _step(f"t{i}")])]
        )
    events = await ow.store.read_run_events("r1")
    assert [e.seq for e in events] == list(range(1, 9))
    assert [e.type for e in events[:3]] == ["run_created", "run_claimed", "step_completed"]
    assert await ow.store.read_run_events("r1", after=5) == events[5:]  # only the newer ones
    assert await ow.store.read_run_events("r1", after=8) == []
    run = await ow.store.get_run("r1")
    assert run is not None and run.seq == 8 and run.updated_at == events[-1].created_at
    assert [s.step_name for s in await ow.store.step_attempts("r1")] == [
        "s0",
        "t0",
        "s1",
        "t1",
        "s2",
        "t2",
    ]


async def test_stale_claim_is_rejected_and_writes_nothing(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    token = await _claimed(ow, "r1")
    await _claimed(ow, "r2")
    before = await ow.store.read_run_events("r1")
    stale = AppendRequest(run_id="r1", claim_token="not-the-token", events=[_step("x")])
    valid = AppendRequest(run_id="r1", claim_token=token, events=[_step("y")])
    other_stale = AppendRequest(run_id="r2", claim_token=token, events=[_step("z")])
    outcomes = await ow.store.append([stale, other_stale, valid])
    assert isinstance(outcomes[0], ow_es.ConcurrencyError)
    assert isinstance(outcomes[1], ow_es.ConcurrencyError)
    assert isinstance(outcomes[2], Appended)  # one stale member does not abort the others
    after = await ow.store.read_run_events("r1")
    assert len(after) == len(before) + 1 and after[-1].data["step_name"] == "y"
    assert [e.type for e in await ow.store.read_run_events("r2")] == ["run_created", "run_claimed"]


async def test_canceled_run_rejects_its_workers_writes(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    token = await _claimed(ow, "r1")
    await ow.cancel("r1")
    (outcome,) = await ow.store.append(
        [AppendRequest(run_id="r1", claim_token=token, events=[_step("late")])]
    )
    assert isinstance(outcome, ow_es.ConcurrencyError)
    assert (await ow.store.read_run_events("r1"))[-1].type == "run_canceled"


async def test_unknown_run_and_terminal_run(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    (missing,) = await ow.store.append([AppendRequest(run_id="nope", events=[_step("a")])])
    assert isinstance(missing, ow_es.RunNotFound)
    token = await _claimed(ow, "r1")
    await ow.store.append(
        [AppendRequest(run_id="r1", claim_token=token, events=[ev.RunCompleted(output=1)])]
    )
    (late,) = await ow.store.append([AppendRequest(run_id="r1", events=[ev.RunWoken(reason="x")])])
    assert isinstance(late, ow_es.InvalidTransition)


async def test_batch_with_many_runs_and_repeated_run(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    await ow.store.append([_create(f"r{i}") for i in range(5)])
    claimed = await ow.store.claim("w", [("wf", None)], 10, 30)
    assert len(claimed) == 5
    requests = []
    for run in claimed:
        for step in ("a", "b"):  # the same run twice in one batch
            requests.append(
                AppendRequest(run_id=run.id, claim_token=run.claim_token, events=[_step(step)])
            )
    outcomes = await ow.store.append(requests)
    assert all(isinstance(o, Appended) for o in outcomes)
    for run in claimed:
        assert [e.seq for e in await ow.store.read_run_events(run.id)] == [1, 2, 3, 4]


async def _try_mutate(db: dict[str, Any], sql: str) -> None:
    if db["backend"] == "sqlite":
        with sqlite3.connect(db["url"].removeprefix("sqlite:///")) as conn:
            conn.execute(sql)
    else:
        with psycopg.connect(db["url"], autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{db["schema"]}"')
            conn.execute(sql)


@pytest.mark.parametrize(
    "sql",
    ["UPDATE events SET type = 'x'", "DELETE FROM events", "DELETE FROM events WHERE seq = 1"],
)
async def test_events_are_immutable(ow: ow_es.OpenWorkflow, db: dict[str, Any], sql: str) -> None:
    await ow.connect()
    await ow.store.append([_create("r1")])
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="immutable"):
        await _try_mutate(db, sql)
    assert len(await ow.store.read_run_events("r1")) == 1


async def test_event_mutation_allowed_only_by_explicit_setting(pg_url: str) -> None:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    client = await ow_es.connect(pg_url, schema=schema)
    try:
        await client.store.append([_create("r1")])
        with psycopg.connect(pg_url) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            with pytest.raises(psycopg.Error, match="immutable"):
                conn.execute("TRUNCATE events")
            conn.rollback()
            conn.execute(f'SET LOCAL search_path TO "{schema}"')
            conn.execute("SET LOCAL ow_es.allow_event_mutation = 'on'")
            conn.execute("DELETE FROM events")  # what retention does
            conn.rollback()
        assert len(await client.store.read_run_events("r1")) == 1
    finally:
        await client.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_idempotent_create_in_one_batch(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    first, second = await ow.store.append([_create("a", key="k"), _create("b", key="k")])
    assert isinstance(first, Appended) and first.created
    assert isinstance(second, Appended) and not second.created and second.run.id == "a"
    assert await ow.store.get_run("b") is None


async def test_concurrent_writers_and_a_consumer_that_never_skips(
    make_client: Any,
) -> None:
    writers = [await make_client(), await make_client()]
    reader = await make_client()
    for client in (*writers, reader):
        await client.connect()

    async def write(client: ow_es.OpenWorkflow, prefix: str) -> None:
        for i in range(30):
            await client.store.append([_create(f"{prefix}{i}")])

    expected = sorted([f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)])
    seen: list[str] = []

    async def consume() -> None:
        # Read until everything is seen: a skipped event would never come, and time out.
        cursor = None
        while len(seen) < len(expected):
            batch = await reader.store.read_log(cursor, 7)
            seen.extend(e.run_id for e in batch.events)
            cursor = batch.cursor
            await asyncio.sleep(0 if batch.events else 0.01)

    consumer = asyncio.create_task(consume())
    await asyncio.gather(write(writers[0], "a"), write(writers[1], "b"))
    await asyncio.wait_for(consumer, 60)
    assert sorted(seen) == expected
    assert len(seen) == len(set(seen))  # and nothing twice


async def test_a_constraint_violation_is_a_validation_error_never_unavailable(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Data the database refuses is a permanent ValidationError on both backends (sending it
    again would fail again); only a lost connection means the outcome is unknown."""
    await ow.connect()
    await ow.store.append([_create("r1")])

    async def taken_seq(tx: Primitives) -> None:
        event = ev.RunReleased(worker_id="w-1", reason="test")
        again = Recorded(
            namespace_id=tx.namespace, run_id="r1", seq=1, created_at=tx.time.marker, data=event
        )
        await tx.write(Plan(events=[again]))
        await tx.now()

    with pytest.raises(ow_es.ValidationError, match="refused the data while testing") as caught:
        await ow.store.adapter.transaction("testing", taken_seq)
    assert not isinstance(caught.value, ow_es.StoreUnavailable)
    assert [e.type for e in await ow.store.read_run_events("r1")] == ["run_created"]


async def test_a_heartbeat_locks_runs_in_the_order_appends_do(pg_url: str) -> None:
    """An append locks run rows in id order; so must a heartbeat of several runs, or the two
    can each hold a row the other waits for (a deadlock, one of them rolled back)."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    ow = await ow_es.connect(pg_url, schema=schema)
    try:
        # b first: a scan in table order (as an update joined with its input may do) meets
        # b before a.
        tokens = {run_id: await _claimed(ow, run_id) for run_id in ("b-run", "a-run")}
        holding, go_on = asyncio.Event(), asyncio.Event()

        async def lock_a_then_b(tx: Primitives) -> None:
            await tx.lock_runs(["a-run"])
            holding.set()
            await go_on.wait()
            await tx.lock_runs(["b-run"])

        held = asyncio.create_task(ow.store.adapter.transaction("locking", lock_a_then_b))
        await asyncio.wait_for(holding.wait(), 10)
        # The heartbeat must wait for a before it touches b.
        beat = asyncio.create_task(ow.store.heartbeat(tokens, 30))
        await asyncio.sleep(0.3)
        go_on.set()
        await asyncio.wait_for(held, 10)
        assert await asyncio.wait_for(beat, 10) == {"a-run", "b-run"}
    finally:
        await ow.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

"""One-statement appends (Postgres): a new run, and the claim owner's append when its row is
current; the general path when the statement cannot decide; held back by the append gate. And
the claim in one statement, property-tested against the fold of ``run_claimed``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ow_es
from ow_es import events as ev
from ow_es.models import WorkflowRun
from ow_es.projections import apply_run
from ow_es.store import Appended, AppendRequest, Store, rules, statements, tables
from ow_es.store.codec import recorded_from_event
from ow_es.store.postgres import batched
from ow_es.store.postgres.store import PostgresStore
from ow_es.store.tables import RUNS


@pytest.fixture
async def store(pg_db: dict[str, Any]) -> AsyncIterator[Store]:
    client = await ow_es.connect(pg_db["url"], schema=pg_db["schema"])
    assert isinstance(client.store.adapter, PostgresStore)
    try:
        yield client.store
    finally:
        await client.close()


def count_transactions(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The general path runs every append in an adapter transaction: count them."""
    calls: list[str] = []
    general = store.adapter.transaction

    async def transaction(what: str, fn: Any) -> Any:
        calls.append(what)
        return await general(what, fn)

    monkeypatch.setattr(store.adapter, "transaction", transaction)
    return calls


def count_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Appends written as one statement for several runs: the size of each such group."""
    sizes: list[int] = []
    real_params = batched.params

    def counted(shape: Any, members: Any, gate_key: int) -> list[Any]:
        sizes.append(len(members))
        return real_params(shape, members, gate_key)

    monkeypatch.setattr(batched, "params", counted)
    return sizes


def gate_key(store: Store) -> int:
    assert isinstance(store.adapter, PostgresStore)
    return store.adapter.gate_key


async def claimed_run(store: Store) -> WorkflowRun:
    created = AppendRequest(
        run_id=uuid.uuid4().hex,
        events=[ev.RunCreated(workflow_name="wf", available_at=datetime.now(UTC))],
    )
    await store.append([created])
    (run,) = await store.claim("worker-1", [("wf", None)], 1, 30)
    return run


def completed(step: str) -> ev.StepCompleted:
    return ev.StepCompleted(
        step_name=step, kind="function", attempt=1, output=[step], started_at=datetime.now(UTC)
    )


async def test_a_current_row_appends_in_one_statement(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await claimed_run(store)
    transactions = count_transactions(store, monkeypatch)
    outcomes = []
    known = run
    for step in ("a", "b"):
        (outcome,) = await store.append(
            [
                AppendRequest(
                    run_id=run.id,
                    claim_token=run.claim_token,
                    events=[completed(step)],
                    known=known,
                )
            ]
        )
        assert isinstance(outcome, Appended)
        outcomes.append(outcome)
        known = outcome.run
    (end,) = await store.append(
        [
            AppendRequest(
                run_id=run.id,
                claim_token=run.claim_token,
                events=[ev.RunCompleted(output=1)],
                known=known,
            )
        ]
    )
    assert transactions == []  # none of the three took the general path
    assert isinstance(end, Appended)
    # What the statement wrote is what the general path would have: the row as returned
    # (with the transaction's time patched in), the steps and the events.
    live = await store.get_run(run.id)
    assert live is not None
    assert msgspec.structs.replace(end.run, lease_until=None) == live
    assert live.status == "completed" and live.output == 1 and live.seq == run.seq + 3
    assert live.finished_at == live.updated_at
    steps = await store.step_attempts(run.id)
    assert [(s.step_name, s.status, s.output) for s in steps] == [
        ("a", "completed", ["a"]),
        ("b", "completed", ["b"]),
    ]
    events = await store.read_run_events(run.id)
    assert [e.type for e in events[-3:]] == ["step_completed", "step_completed", "run_completed"]
    assert events[-1].created_at == live.finished_at  # the transaction's time, not a client's
    assert [o.first_seq for o in outcomes] == [run.seq + 1, run.seq + 2]


async def test_a_stale_row_takes_the_general_path(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await claimed_run(store)
    (first,) = await store.append(
        [AppendRequest(run_id=run.id, claim_token=run.claim_token, events=[completed("a")])]
    )
    assert isinstance(first, Appended)
    transactions = count_transactions(store, monkeypatch)
    (outcome,) = await store.append(
        [
            AppendRequest(
                run_id=run.id, claim_token=run.claim_token, events=[completed("b")], known=run
            )
        ]
    )
    assert transactions == ["appending events"]  # the row moved on: the general path decided
    assert isinstance(outcome, Appended) and outcome.first_seq == run.seq + 2
    events = await store.read_run_events(run.id)
    assert [e.seq for e in events] == list(range(1, run.seq + 3))  # nothing written twice


async def test_a_lost_claim_writes_nothing(store: Store) -> None:
    run = await claimed_run(store)
    await store.append([AppendRequest(run_id=run.id, events=[ev.RunCanceled(reason="x")])])
    (outcome,) = await store.append(
        [
            AppendRequest(
                run_id=run.id, claim_token=run.claim_token, events=[completed("a")], known=run
            )
        ]
    )
    assert isinstance(outcome, ow_es.ConcurrencyError)
    assert await store.step_attempts(run.id) == []


@pytest.mark.parametrize("runs", [1, 3], ids=["alone", "alike-batch"])
async def test_the_append_gate_holds_it_back(
    store: Store, pg_url: str, runs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verify holds the gate across transactions; an owner's append must wait for it,
    whether it is a statement of its own or one of a batch of alike appends."""
    claimed = [await claimed_run(store) for _ in range(runs)]
    batches = count_batches(monkeypatch)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_advisory_lock(%s)", [gate_key(store)])
        requests = [
            AppendRequest(
                run_id=run.id, claim_token=run.claim_token, events=[completed("a")], known=run
            )
            for run in claimed
        ]
        task = asyncio.create_task(store.append(requests))
        await asyncio.sleep(0.5)
        assert not task.done()
        for run in claimed:  # nothing slipped past the gate
            assert await store.step_attempts(run.id) == []
        await admin.execute("SELECT pg_advisory_unlock(%s)", [gate_key(store)])
        outcomes = await asyncio.wait_for(task, 10)
    assert all(isinstance(o, Appended) for o in outcomes), outcomes
    assert batches == ([] if runs == 1 else [runs])
    for run in claimed:
        assert [s.step_name for s in await store.step_attempts(run.id)] == ["a"]


def created(key: str | None = None) -> AppendRequest:
    return AppendRequest(
        run_id=uuid.uuid4().hex,
        events=[
            ev.RunCreated(workflow_name="wf", available_at=datetime.now(UTC), idempotency_key=key)
        ],
    )


async def test_a_new_run_is_one_statement(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    transactions = count_transactions(store, monkeypatch)
    (outcome,) = await store.append([created("k")])
    assert transactions == []
    assert isinstance(outcome, Appended) and outcome.created and outcome.first_seq == 1
    live = await store.get_run(outcome.run.id)
    assert live == outcome.run  # the returned row carries the transaction's time
    assert live is not None and live.created_at == live.updated_at
    (event,) = await store.read_run_events(live.id)
    assert (event.seq, event.type, event.created_at) == (1, "run_created", live.created_at)


async def test_a_new_run_created_claimed_is_one_statement(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start handed to a worker of the same client (``runtime/handoff.py``): the run created
    already claimed, its row and both events in one statement, the row as the fold makes it."""
    request = created(None)
    claim = ev.RunClaimed(worker_id="w", claim_token="t" * 32, lease_until=datetime.now(UTC))
    request = AppendRequest(run_id=request.run_id, events=[*request.events, claim])
    transactions = count_transactions(store, monkeypatch)
    (outcome,) = await store.append([request])
    assert transactions == []
    assert isinstance(outcome, Appended) and outcome.created
    live = await store.get_run(request.run_id)
    assert live == outcome.run
    assert live is not None and (live.status, live.claim_token, live.seq) == (
        "running",
        "t" * 32,
        2,
    )
    events = await store.read_run_events(live.id)
    assert [(e.seq, e.type, e.created_at) for e in events] == [
        (1, "run_created", live.created_at),
        (2, "run_claimed", live.created_at),
    ]
    folded = None
    for event in events:
        folded = apply_run(folded, recorded_from_event(event))
    assert folded == live


async def test_a_taken_key_returns_the_existing_run(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    (first,) = await store.append([created("same")])
    transactions = count_transactions(store, monkeypatch)
    (again,) = await store.append([created("same")])
    assert transactions == ["appending events"]  # nothing written: the general path answered
    assert isinstance(first, Appended) and isinstance(again, Appended)
    assert not again.created and again.run.id == first.run.id
    page = await store.list_runs(status=None, workflow_name=None, limit=10, cursor=None)
    assert [r.id for r in page.runs] == [first.run.id]


async def test_the_append_gate_holds_a_new_run_back(store: Store, pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_advisory_lock(%s)", [gate_key(store)])
        task = asyncio.create_task(store.append([created()]))
        await asyncio.sleep(0.5)
        assert not task.done()
        page = await store.list_runs(status=None, workflow_name=None, limit=10, cursor=None)
        assert page.runs == []
        await admin.execute("SELECT pg_advisory_unlock(%s)", [gate_key(store)])
        (outcome,) = await asyncio.wait_for(task, 10)
    assert isinstance(outcome, Appended) and outcome.created


async def test_a_batch_writes_each_append_once_whichever_way_it_goes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group commit: current rows are one statement each in one transaction; a stale row, a
    run named twice and a request without a row go the general way, in order."""
    current, stale, twice, plain = [await claimed_run(store) for _ in range(4)]
    # ``stale`` moves on behind its worker's back.
    await store.append(
        [AppendRequest(run_id=stale.id, claim_token=stale.claim_token, events=[completed("x")])]
    )
    general_path: list[list[str]] = []
    general_apply = rules.apply

    async def spy(tx: Any, requests: Any, locked: Any = None) -> Any:
        general_path.append([r.run_id for r in requests])
        return await general_apply(tx, requests, locked)

    monkeypatch.setattr(rules, "apply", spy)

    def fenced(run: WorkflowRun, step: str, known: WorkflowRun | None) -> AppendRequest:
        return AppendRequest(
            run_id=run.id, claim_token=run.claim_token, events=[completed(step)], known=known
        )

    batch = [
        fenced(current, "a", current),
        fenced(stale, "a", stale),
        fenced(twice, "a", twice),
        fenced(twice, "b", twice),
        fenced(plain, "a", None),
        created(),
    ]
    outcomes = await store.append(batch)
    assert all(isinstance(o, Appended) for o in outcomes), outcomes
    # One general transaction, for the stale row (after its statement wrote nothing), the run
    # named twice and the one without a row; the others were statements.
    assert general_path == [[stale.id, twice.id, twice.id, plain.id]]
    expected = {
        current.id: ["a"],
        stale.id: ["x", "a"],
        twice.id: ["a", "b"],
        plain.id: ["a"],
    }
    for run_id, steps in expected.items():
        events = await store.read_run_events(run_id)
        assert [e.data["step_name"] for e in events[2:]] == steps
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [o.first_seq for o in outcomes[:4]] == [3, 4, 3, 4]  # type: ignore[union-attr]


async def test_alike_appends_of_a_batch_are_one_statement_each_fenced(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends of one shape (here: two steps' records at once, on each of six runs) go out as
    one statement. It keeps every append's fence: the two runs that moved on write nothing
    there and take the general path; the others are written as their own statements would
    be, rows, step rows and events in order."""
    runs = [await claimed_run(store) for _ in range(6)]
    moved = runs[1::3]
    for run in moved:
        await store.append(
            [AppendRequest(run_id=run.id, claim_token=run.claim_token, events=[completed("x")])]
        )
    used = count_batches(monkeypatch)
    transactions = count_transactions(store, monkeypatch)
    outcomes = await store.append(
        [
            AppendRequest(
                run_id=run.id,
                claim_token=run.claim_token,
                events=[completed("a"), completed("b")],
                known=run,
            )
            for run in runs
        ]
    )
    assert used == [6]
    assert len(transactions) == 1  # the general path, for the two that moved on
    assert all(isinstance(o, Appended) for o in outcomes), outcomes
    for run, outcome in zip(runs, outcomes, strict=True):
        assert isinstance(outcome, Appended)
        events = await store.read_run_events(run.id)
        steps = [e.data["step_name"] for e in events[2:]]
        assert steps == (["x", "a", "b"] if run in moved else ["a", "b"])
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        live = await store.get_run(run.id)
        assert live is not None and live.seq == len(events)
        if run not in moved:
            assert msgspec.structs.replace(outcome.run, lease_until=live.lease_until) == live
        rows = await store.step_attempts(run.id)
        assert sorted(r.step_name for r in rows) == sorted(steps)
    log = await store.read_log(None, 1000)
    for run in runs:  # the log holds each run's events in their order
        seqs = [e.seq for e in log.events if e.run_id == run.id]
        assert seqs == sorted(seqs)


async def test_alike_run_ends_are_one_statement_that_tells_their_waiters(
    store: Store, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five runs end in one group commit: one statement, whose notification on the "done"
    channel names each run it ended (and not the one that moved on, which the general path
    ends and tells of itself)."""
    runs = [await claimed_run(store) for _ in range(5)]
    moved = runs[2]
    await store.append(
        [AppendRequest(run_id=moved.id, claim_token=moved.claim_token, events=[completed("x")])]
    )
    used = count_batches(monkeypatch)
    assert isinstance(store.adapter, PostgresStore)
    channel = store.adapter.channels.done
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as listener:
        await listener.execute(f'LISTEN "{channel}"')
        outcomes = await store.append(
            [
                AppendRequest(
                    run_id=run.id,
                    claim_token=run.claim_token,
                    events=[ev.RunCompleted(output=index)],
                    known=run,
                )
                for index, run in enumerate(runs)
            ]
        )
        told: list[list[str]] = []
        async for note in listener.notifies(timeout=2.0):
            told.append(note.payload.split(","))
            if sum(map(len, told)) >= len(runs):
                break
    assert used == [5]
    assert all(isinstance(o, Appended) for o in outcomes), outcomes
    ended_together = sorted(run.id for run in runs if run is not moved)
    assert sorted(sorted(ids) for ids in told) == sorted([ended_together, [moved.id]])
    for index, run in enumerate(runs):
        live = await store.get_run(run.id)
        assert live is not None and live.status == "completed" and live.output == index


# -- the claim in one statement ------------------------------------------------------------

_PAST = datetime(2026, 1, 1, tzinfo=UTC)
_instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2026, 6, 1), timezones=st.just(UTC)
)


@st.composite
def claimable_rows(draw: st.DrawFn) -> WorkflowRun:
    """A ready run in any shape the claim may meet: pending or running, never or already
    started, parked (a due timer), released, or held under a lease that ran out."""
    shape = draw(st.sampled_from(["pending", "woken", "timer", "expired"]))
    held = shape == "expired"
    return WorkflowRun(
        namespace_id="",  # set per example
        id=uuid.uuid4().hex,
        workflow_name="wf",
        version=None,
        status="pending" if shape == "pending" else "running",
        input=draw(st.sampled_from([None, {"n": 1}, [1, "a"]])),
        attempts=0 if shape == "pending" else draw(st.integers(1, 5)),
        key=draw(st.sampled_from([None, "k"])),
        priority=draw(st.integers(-3, 3)),
        worker_id="gone" if held else None,
        claim_token=uuid.uuid4().hex if held else None,
        lease_until=_PAST if held else None,
        available_at=None if held else draw(_instants),
        waiting_for={"kind": "sleep", "step": "s", "until": "x"} if shape == "timer" else None,
        seq=draw(st.integers(1, 50)),
        created_at=_PAST,
        started_at=None if shape == "pending" else draw(st.one_of(st.none(), _instants)),
        updated_at=_PAST,
    )


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(claimable_rows(), min_size=1, max_size=6))
def test_the_one_statement_claim_writes_what_folding_run_claimed_gives(
    pg_db: dict[str, Any], rows: list[WorkflowRun]
) -> None:
    """Random ready rows, claimed in one statement: each returned row, and the live row, equal
    the fold of its ``run_claimed`` event onto the row before; the event is the claim."""
    asyncio.run(_claim_and_compare(pg_db, rows))


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(row=claimable_rows().filter(lambda r: r.claim_token is None and r.waiting_for is None))
def test_the_claim_of_a_named_run_writes_what_folding_run_claimed_gives(
    pg_db: dict[str, Any], row: WorkflowRun
) -> None:
    """A random queued row, claimed by its id (``claim_offered``): as for the claim above."""
    asyncio.run(_claim_and_compare(pg_db, [row], by_id=True))


async def _claim_and_compare(
    pg_db: dict[str, Any], rows: list[WorkflowRun], *, by_id: bool = False
) -> None:
    namespace = f"ns-{uuid.uuid4().hex[:10]}"
    rows = [msgspec.structs.replace(r, namespace_id=namespace) for r in rows]
    client = await ow_es.connect(pg_db["url"], schema=pg_db["schema"], namespace=namespace)
    try:
        store = client.store
        assert isinstance(store.adapter, PostgresStore) and store.adapter.single is not None
        with psycopg.connect(pg_db["url"], autocommit=True) as conn:
            conn.execute(f'SET search_path = "{pg_db["schema"]}"')
            insert = statements.insert(RUNS, "postgres")
            conn.cursor().executemany(insert, [tables.values(RUNS, r) for r in rows])
        single = store.adapter.single
        if by_id:
            (row,) = rows
            claimed = await single.claim_offered("worker-9", [("wf", None)], row.id, 30)
        else:
            claimed = await single.claim("worker-9", [("wf", None)], 10, 30)
        assert claimed is not None and len(claimed.runs) == len(rows)
        before = {r.id: r for r in rows}
        for run in claimed.runs:
            (event,) = await store.read_run_events(run.id)
            recorded = recorded_from_event(event)
            assert run.lease_until is not None
            assert recorded.data == ev.RunClaimed(
                worker_id="worker-9", claim_token=run.claim_token or "", lease_until=run.lease_until
            )
            folded = apply_run(before[run.id], recorded)
            assert run == folded
            assert await store.get_run(run.id) == folded
        order = [(-r.priority, r.available_at) for r in claimed.runs if r.id in before]
        fresh = [r for r in claimed.runs if before[r.id].claim_token is None]
        assert [(-before[r.id].priority, before[r.id].available_at) for r in fresh] == sorted(
            (-before[r.id].priority, before[r.id].available_at) for r in fresh
        ), order
    finally:
        await client.close()

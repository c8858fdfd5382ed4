"""Input schemas, payload limits, unencodable results and the step attempt limit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ow_es
from ow_es.dashboard.app import create_app
from ow_es.dashboard.server import make_server
from ow_es.durations import to_seconds
from ow_es.payload import MAX_NAME_LENGTH
from tests.support.cli import db_args, invoke
from tests.support.databases import ClientFactory
from tests.support.runs import event_types
from tests.support.workers import running_worker


class Order(msgspec.Struct):
    order_id: str
    amount_cents: int


@dataclasses.dataclass
class Ticket:
    title: str
    priority: int


async def test_invalid_input_names_the_field_and_writes_nothing(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="typed")
    async def typed(ctx: ow_es.Context, order: Order) -> int:
        return order.amount_cents

    await ow.connect()
    with pytest.raises(ow_es.ValidationError, match="amount_cents"):
        await typed.start({"order_id": "o-1", "amount_cents": "lots"})
    with pytest.raises(ow_es.ValidationError, match="amount_cents"):
        await typed.start({"order_id": "o-1"})
    with pytest.raises(ow_es.ValidationError, match="amount_cents"):
        await typed.start(Order("o-1", "500"))  # type: ignore[arg-type]
    with pytest.raises(ow_es.ValidationError, match="amount_cents"):
        await ow.start(typed, {"order_id": "o-1", "amount_cents": 1.5})
    with pytest.raises(ow_es.ValidationError, match="amount_cents"):
        await typed.start({"order_id": "o-1", "amount_cents": "5"}, idempotency_key="k")
    assert (await ow.list_runs()).runs == []
    assert isinstance(ow_es.ValidationError("x"), ValueError)

    handle = await typed.start(Order("o-1", 500))
    async with running_worker(ow):
        assert await handle.result(timeout=15) == 500
    assert (await handle.status()).input == {"order_id": "o-1", "amount_cents": 500}


async def test_dataclass_input_is_validated_too(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="ticketing")
    async def ticketing(ctx: ow_es.Context, ticket: Ticket) -> str:
        assert isinstance(ticket, Ticket)
        return f"{ticket.title}:{ticket.priority}"

    await ow.connect()
    with pytest.raises(ow_es.ValidationError, match="priority"):
        await ticketing.start({"title": "t", "priority": "high"})
    assert (await ow.list_runs()).runs == []
    handle = await ticketing.start(Ticket("t", 2))
    async with running_worker(ow):
        assert await handle.result(timeout=15) == "t:2"


async def test_input_over_the_payload_limit_is_rejected(make_client: ClientFactory) -> None:
    ow = await make_client(max_payload_bytes=200)

    @ow.workflow(name="small")
    async def small(ctx: ow_es.Context, data: dict[str, str]) -> int:
        return len(data["blob"])

    await ow.connect()
    with pytest.raises(ow_es.ValidationError, match="payload limit"):
        await small.start({"blob": "x" * 500})
    with pytest.raises(ow_es.ValidationError):
        await ow.start("small", {"blob": "y" * 201})
    assert (await ow.list_runs()).runs == []
    fits = await small.start({"blob": "x" * 100})
    assert (await fits.status()).status == "pending"


async def test_unencodable_step_result_fails_the_step_clearly(ow: ow_es.OpenWorkflow) -> None:
    calls: list[int] = []

    class Opaque:
        pass

    @ow.workflow(name="opaque")
    async def opaque(ctx: ow_es.Context) -> dict[str, object]:
        def make() -> object:
            calls.append(1)
            return Opaque()

        try:
            await ctx.step.run("make", make)
        except ow_es.StepFailed as exc:
            return {"type": exc.error_type, "attempts": exc.attempts, "message": exc.message}
        return {}

    await ow.connect()
    async with running_worker(ow):
        handle = await opaque.start()
        out = await handle.result(timeout=15)
    assert out["type"] == "ValidationError"
    assert out["attempts"] == 1
    assert "make" in str(out["message"]) and "JSON" in str(out["message"])
    assert calls == [1]  # not retried: it would fail the same way again
    (step,) = await ow.store.step_attempts(handle.run_id)
    assert step.status == "failed"
    assert step.error is not None and step.error["type"] == "ValidationError"


async def test_step_result_over_the_payload_limit_fails_the_step(
    make_client: ClientFactory,
) -> None:
    ow = await make_client(max_payload_bytes=300)

    @ow.workflow(name="bloated")
    async def bloated(ctx: ow_es.Context) -> None:
        async def big() -> str:
            return "z" * 1000

        await ctx.step.run("big", big)

    await ow.connect()
    async with running_worker(ow):
        handle = await bloated.start()
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=15)
    assert info.value.error_type == "StepFailed"
    assert "payload limit" in info.value.error_message
    (step,) = await ow.store.step_attempts(handle.run_id)
    assert step.status == "failed" and step.output is None


async def test_unencodable_workflow_output_fails_the_run(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="bad-output")
    async def bad_output(ctx: ow_es.Context) -> object:
        return {1, 2, 3j}

    await ow.connect()
    async with running_worker(ow):
        handle = await bad_output.start()
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=15)
    assert info.value.error_type == "ValidationError"
    assert (await handle.status()).output is None


async def test_step_attempt_limit_fails_the_run(ow: ow_es.OpenWorkflow) -> None:
    calls: list[int] = []

    @ow.workflow(name="limited", max_step_attempts=3)
    async def limited(ctx: ow_es.Context) -> int:
        async def work() -> int:
            calls.append(1)
            return len(calls)

        total = 0
        for i in range(5):
            total += await ctx.step.run(f"step-{i}", work)
        return total

    await ow.connect()
    async with running_worker(ow):
        handle = await limited.start()
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=15)
    assert info.value.error_type == "StepLimitExceeded"
    assert len(calls) == 3
    run = await handle.status()
    assert run.error is not None and run.error["type"] == "StepLimitExceeded"
    assert (await event_types(ow, handle.run_id))[-1] == "run_failed"


async def test_step_attempt_limit_counts_retries(ow: ow_es.OpenWorkflow) -> None:
    calls: list[int] = []
    fast = ow_es.RetryPolicy(initial_interval="1ms", maximum_interval="1ms")

    @ow.workflow(name="limited-retries", max_step_attempts=4)
    async def limited_retries(ctx: ow_es.Context) -> None:
        async def never() -> None:
            calls.append(1)
            raise RuntimeError("never")

        # Not a StepFailed after 10 attempts: the limit stops the run after 4.
        with contextlib.suppress(ow_es.StepFailed):
            await ctx.step.run("never", never, retry=fast)

    await ow.connect()
    async with running_worker(ow):
        handle = await limited_retries.start()
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=15)
    assert info.value.error_type == "StepLimitExceeded"
    assert len(calls) == 4


async def test_step_attempt_limit_cannot_be_swallowed(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="swallower", max_step_attempts=1)
    async def swallower(ctx: ow_es.Context) -> str:
        await ctx.step.run("one", lambda: 1)
        try:
            await ctx.step.run("two", lambda: 2)
        except Exception:
            return "swallowed"
        return "unreachable"

    await ow.connect()
    async with running_worker(ow):
        handle = await swallower.start()
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=15)
    assert info.value.error_type == "StepLimitExceeded"


_LONG = "n" * (MAX_NAME_LENGTH + 1)
_HOSTILE_NAMES = {"too long": _LONG, "NUL": "a\x00b", "lone surrogate": "a\ud800b", "empty": ""}


@pytest.mark.parametrize("problem", sorted(_HOSTILE_NAMES))
async def test_hostile_names_are_refused_naming_the_field_and_write_nothing(
    ow: ow_es.OpenWorkflow, problem: str
) -> None:
    hostile = _HOSTILE_NAMES[problem]
    await ow.connect()
    attempts: list[tuple[str, Any]] = [
        ("workflow name", ow.start(hostile)),
        ("idempotency_key", ow.start("wf", idempotency_key=hostile)),
        ("workflow version", ow.start("wf", version=hostile)),
        ("signal name", ow.send_signal(hostile)),
        ("idempotency_key", ow.send_signal("go", idempotency_key=hostile)),
    ]
    for field, attempt in attempts:
        with pytest.raises(ow_es.ValidationError, match=field):
            await attempt
    assert (await ow.list_runs()).runs == []
    with pytest.raises(ow_es.ValidationError, match="workflow name"):
        ow_es.workflow(name=hostile)(_noop)


async def _noop(ctx: ow_es.Context) -> None:
    return None


async def test_a_hostile_step_name_fails_the_run_clearly(ow: ow_es.OpenWorkflow) -> None:
    """A 4,000-character step name would break PostgreSQL's index: refused before anything
    runs, so the run fails once instead of the step running on every claim."""
    calls: list[int] = []

    @ow.workflow(name="long-step")
    async def long_step(ctx: ow_es.Context) -> None:
        await ctx.step.run("s" * 4000, lambda: calls.append(1))

    await ow.connect()
    async with running_worker(ow):
        handle = await long_step.start()
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=15)
    assert info.value.error_type == "ValidationError"
    assert "step name" in info.value.error_message
    assert calls == []


def test_durations_refuse_nan_infinity_and_more_than_ten_years() -> None:
    for bad in ("nan", float("nan"), float("inf"), 1e308, "9999w", -1):
        with pytest.raises(ValueError, match="lease"):
            to_seconds(bad, "lease")
    assert to_seconds("10m", "lease") == 600.0


def _json_values() -> st.SearchStrategy[Any]:
    """JSON-like values with the hostile parts in: NUL characters, lone surrogates, NaN and
    infinity, deep nesting."""
    text = st.text(alphabet=st.characters(codec=None), max_size=8)
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | text
    deep = st.integers(900, 1100).map(Deep)
    tree = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=8,
    )
    return tree | deep


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON: numbers by their decimal value (PostgreSQL's jsonb writes a float of
    1e16 or more back as the integer it equals)."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return Decimal(repr(a)) == Decimal(repr(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


@dataclasses.dataclass(frozen=True)
class Deep:
    """A list nested ``depth`` levels deep, built in the test (too deep to print)."""

    depth: int

    def build(self) -> Any:
        value: Any = 0
        for _ in range(self.depth):
            value = [value]
        return value


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(value=_json_values())
def test_hostile_values_are_refused_or_round_trip_unchanged(db: dict[str, Any], value: Any) -> None:
    """Through the Python API: every value is refused with a ValidationError naming the
    input (and nothing is written) or stored and read back unchanged, the same on both
    backends."""

    deep = isinstance(value, Deep)
    if deep:
        value = value.build()

    async def check() -> None:
        ow = await ow_es.connect(db["url"], schema=db.get("schema"))
        try:
            before = len((await ow.list_runs(limit=1000)).runs)
            try:
                handle = await ow.start("echo", value)
            except ow_es.ValidationError as exc:
                assert "input" in str(exc)
                assert len((await ow.list_runs(limit=1000)).runs) == before
                return
            stored = (await handle.status()).input
            if deep:  # too deep to compare item by item
                assert msgspec.json.encode(stored) == msgspec.json.encode(value)
            else:
                assert _same_json(stored, value), (stored, value)
        finally:
            await ow.close()

    asyncio.run(check())


class _Dashboard:
    """A real dashboard server (and its client) on its own event loop in a thread, for a
    synchronous test to send requests to."""

    def __init__(self, db: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = _free_port()
        self.client = ow_es.OpenWorkflow(db["url"], schema=db["schema"])
        self._run(self._serve())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _serve(self) -> None:
        await self.client.connect()
        app = create_app(self.client)
        self.server = make_server(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.serving = asyncio.ensure_future(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)

    def runs(self) -> list[ow_es.WorkflowRun]:
        return list(self._run(self.client.list_runs(limit=1000)).runs)

    def close(self) -> None:
        async def stop() -> None:
            self.server.should_exit = True
            await self.serving
            await self.client.close()

        self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dashboard(db: dict[str, Any]) -> Iterator[_Dashboard]:
    served = _Dashboard(db)
    try:
        yield served
    finally:
        served.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(value=_json_values())
def test_hostile_values_through_the_cli_and_the_dashboard_api(
    db: dict[str, Any], dashboard: _Dashboard, value: Any
) -> None:
    """The same values through ``ow-es runs start --input`` and ``POST /api/runs``: a clear
    error (one line and exit 1 or 2; a 4xx with ``{"error"}``) and nothing written, or the
    value stored unchanged."""
    if isinstance(value, Deep):
        value = value.build()
    # Python's json writes NaN and infinity as bare tokens, which no JSON reader takes.
    text = json.dumps(value, allow_nan=True)
    before = len(dashboard.runs())
    result = invoke("runs", "start", "echo", "--input", text, *db_args(db))
    if result.exit_code == 0:
        (stored,) = [r for r in dashboard.runs() if r.id == result.stdout.strip()]
        assert _deep_or_same(stored.input, value)
    else:
        assert result.exit_code in (1, 2), result.output
        assert "Traceback" not in result.output
        assert len(dashboard.runs()) == before
    before = len(dashboard.runs())
    body = '{"workflow_name": "echo", "input": ' + text + "}"
    response = httpx.post(
        f"http://127.0.0.1:{dashboard.port}/api/runs",
        content=body.encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    if response.status_code == 200:
        run_id = response.json()["run"]["id"]
        (stored,) = [r for r in dashboard.runs() if r.id == run_id]
        assert _deep_or_same(stored.input, value)
    else:
        assert response.status_code in (400, 422), response.text
        assert set(response.json()) == {"error"}
        assert len(dashboard.runs()) == before


def _deep_or_same(stored: Any, value: Any) -> bool:
    if msgspec.json.encode(stored) == msgspec.json.encode(value):
        return True
    return _same_json(stored, value)

"""The hot and the monitoring reads stay index reads as the tables grow (PostgreSQL).

A namespace is seeded with a history of tens of thousands of rows by the benchmark's own
seeder (``benchmarks/seed.sql``: terminal runs, runs parked far in the future, their events
and step attempts) plus a little live work written through the store (ready runs, runs held
under a lease), then ANALYZEd. Each statement is loaded by name through the adapter's own
loader, so a changed statement is checked as it now stands, and EXPLAINed with the planner's
default settings: a sequential scan of ``events`` or ``workflow_runs`` fails the test, since
its cost grows with the whole history. Statements the worker prepares are checked with the
generic plan too (a prepared statement switches to it after five executions). And the seeded
history is checked against a rebuild: a history no run could make would prove nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import ow_es
from ow_es import events as ev
from ow_es.store import AppendRequest
from ow_es.store.named_queries import load
from tests.support.databases import _require_postgres

SEED_SQL = Path(__file__).resolve().parents[1] / "benchmarks" / "seed.sql"
NAMESPACE = "plans"
RUNS = 11_000  # every 11th parked: 10,000 terminal runs, 1,000 parked, 100,000 events
PARK_EVERY = 11
LIVE = "plans-live"  # a workflow with ready and leased runs, written through the store
SERVED = ["bench-seed-done", "bench-seed-sleep", LIVE]
WATCHED = ("events", "workflow_runs")
_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.M)
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


@dataclass
class Seeded:
    url: str
    schema: str
    run_id: str  # a terminal run with nine events
    checkpoint: tuple[str, int]  # a log position about halfway through: (tx_id, position)
    cursor: tuple[datetime, str]  # a list_runs cursor about halfway through


def _seed_statements() -> dict[str, str]:
    parts = _HEADER.split(SEED_SQL.read_text())
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


async def _live_work(url: str, schema: str) -> None:
    """Through the store: 200 ready runs, 50 of them claimed (held under a lease)."""
    client = await ow_es.connect(url, schema=schema, namespace=NAMESPACE)
    try:
        now = datetime.now(UTC)
        requests = [
            AppendRequest(
                run_id=uuid.uuid4().hex,
                events=[ev.RunCreated(workflow_name=LIVE, available_at=now)],
            )
            for _ in range(200)
        ]
        await client.store.append(requests)
        await client.store.claim("plans-worker", [(LIVE, None)], 50, 600)
    finally:
        await client.close()


def _row(conn: psycopg.Connection[Any], query: str, params: Any = None) -> tuple[Any, ...]:
    row: tuple[Any, ...] | None = conn.execute(query, params).fetchone()
    assert row is not None
    return row


def _seed(url: str, schema: str) -> Seeded:
    statements = _seed_statements()
    asyncio.run(_live_work(url, schema))  # connecting creates the schema (migrations)
    with psycopg.connect(url, options=f"-c search_path={schema}") as conn:
        conn.execute(statements["functions"])
        (now,) = _row(conn, "SELECT now()")
        params = {
            "ns": NAMESPACE,
            "salt": secrets.token_hex(4),
            "park_every": PARK_EVERY,
            "base": now - timedelta(days=2),
            "spacing": 10.0,
            "wake": now + timedelta(days=365),
            "worker": "plans-seed",
            "first": 0,
            "last": RUNS - 1,
        }
        conn.execute(statements["batch"], params)
        conn.commit()
    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        for table in ("events", "workflow_runs", "step_attempts"):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
        (run_id,) = _row(
            conn, "SELECT id FROM workflow_runs WHERE status = 'completed' ORDER BY id LIMIT 1"
        )
        tx, position = _row(
            conn,
            "SELECT tx_id::text, position FROM events ORDER BY position OFFSET %s LIMIT 1",
            [RUNS * 4],
        )
        created, middle = _row(
            conn,
            "SELECT created_at, id FROM workflow_runs ORDER BY created_at DESC, id DESC"
            " OFFSET %s LIMIT 1",
            [RUNS // 2],
        )
    return Seeded(url, schema, run_id, (tx, position), (created, middle))


@pytest.fixture(scope="module")
def seeded(postgres_url: str | None) -> Iterator[Seeded]:
    url = _require_postgres(postgres_url)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        yield _seed(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# -- the statements and their parameters ----------------------------------------------------


def _claim(s: Seeded) -> dict[str, Any]:
    """The parameters of every claim statement (each takes those it names)."""
    return {
        "ns": NAMESPACE,
        "names": SERVED,
        "versions": [],
        "unversioned": True,
        "limit": 10,
        "taken": [],
        "key_names": [],
        "keys": [],
        # the claim in one statement (claim_in_one): it also updates and appends
        "gate": 1,
        "pairs_names": SERVED,
        "pairs_versions": [""] * len(SERVED),
        "worker": "plans-worker",
        "tokens": [uuid.uuid4().hex for _ in range(10)],
        "lease": 30.0,
        "schema_version": 1,
        "id": s.run_id,  # the claim of an offered run (claim_offered)
    }


def _claim_statements() -> list[str]:
    """The claim's statements as the adapter now names them: ``claim`` and ``claim_*`` (but
    ``claim_signal_key``, a signal's idempotency key, claims no run)."""
    names = [
        name
        for name in load("postgres")
        if (name == "claim" or name.startswith("claim_")) and name != "claim_signal_key"
    ]
    assert names, "no claim statement (claim, claim_*) in the adapter's queries.sql"
    return names


def _served(_: Seeded) -> dict[str, Any]:
    return _served_params(SERVED)


def _served_params(served: list[str]) -> dict[str, Any]:
    """``next_wake_at``'s: the names served, and the (name, version) pairs."""
    return {
        "ns": NAMESPACE,
        "names": served,
        "pairs_names": served,
        "pairs_versions": [""] * len(served),
    }


def _run_events(s: Seeded) -> dict[str, Any]:
    return {"ns": NAMESPACE, "id": s.run_id, "after": 0}


def _list(status: str | None = None, workflow: str | None = None, *, page: int = 1) -> Any:
    def params(s: Seeded) -> dict[str, Any]:
        after = s.cursor if page > 1 else (None, None)
        return {
            "ns": NAMESPACE,
            "status": status,
            "workflow": workflow,
            "after_created": after[0],
            "after_id": after[1],
            "limit": 51,
        }

    return params


def _read_log(*, from_start: bool) -> Any:
    def params(s: Seeded) -> dict[str, Any]:
        tx, pos = ("0", 0) if from_start else s.checkpoint
        return {"ns": NAMESPACE, "tx": tx, "pos": pos, "limit": 1000}

    return params


def _namespace(_: Seeded) -> dict[str, Any]:
    return {"ns": NAMESPACE}


@dataclass(frozen=True)
class Case:
    id: str
    query: str  # its name in the adapter's queries.sql
    params: Any  # (Seeded) -> parameters
    generic: bool = False  # the generic plan (of a prepared statement)
    xfail: str | None = None


_CUSTOM = [
    *(Case(name, name, _claim) for name in _claim_statements()),
    Case("next_wake_at", "next_wake_at", _served),
    Case("history", "run_events", _run_events),
    Case("list_runs", "list_runs", _list()),
    Case("list_runs-page2", "list_runs", _list(page=2)),
    Case("list_runs-status", "list_runs", _list(status="completed")),
    Case("list_runs-workflow", "list_runs", _list(workflow="bench-seed-sleep")),
    Case("read_log-start", "read_log", _read_log(from_start=True)),
    Case("read_log-checkpoint", "read_log", _read_log(from_start=False)),
    Case("count_runs", "count_runs", _namespace),
    Case("ready_backlog", "ready_backlog", _namespace),
    Case("count_unowned", "count_unowned", _namespace),
    Case("runs_per_minute", "runs_per_minute", lambda _: {"ns": NAMESPACE, "minutes": 60}),
]
# The adapter's sessions plan prepared statements generically (plan_cache_mode), and psycopg
# prepares any statement run five times: every statement's generic plan is checked too.
CASES = [*_CUSTOM, *(dataclasses.replace(c, id=f"{c.id}-generic", generic=True) for c in _CUSTOM)]


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def _explain(conn: psycopg.Connection[Any], case: Case, seeded: Seeded) -> tuple[Any, str]:
    """The JSON plan and its text form, of the statement with these parameters."""
    query = load("postgres")[case.query]
    params = case.params(seeded)
    unknown = set(_PLACEHOLDER.findall(query)) - set(params)
    assert not unknown, f"{case.query} takes parameters this test does not give: {unknown}"
    if not case.generic:
        literal = psycopg.ClientCursor(conn).mogrify(query, params)
        (plan,) = _row(conn, f"EXPLAIN (FORMAT JSON) {literal}")
        text = conn.execute(f"EXPLAIN {literal}").fetchall()
        return plan, "\n".join(row[0] for row in text)
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    conn.execute(f"PREPARE ow_es_plan AS {_PLACEHOLDER.sub(number, query).replace('%%', '%')}")
    try:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        values = psycopg.ClientCursor(conn).mogrify(
            ", ".join(["%s"] * len(names)), [params[name] for name in names]
        )
        (plan,) = _row(conn, f"EXPLAIN (FORMAT JSON) EXECUTE ow_es_plan({values})")
        text = conn.execute(f"EXPLAIN EXECUTE ow_es_plan({values})").fetchall()
        return plan, "\n".join(row[0] for row in text)
    finally:
        conn.execute("RESET plan_cache_mode")
        conn.execute("DEALLOCATE ow_es_plan")


def _seq_scans(node: dict[str, Any]) -> list[str]:
    found = []
    if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in WATCHED:
        found.append(str(node["Relation Name"]))
    for child in node.get("Plans", []):
        found += _seq_scans(child)
    return found


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_no_sequential_scan_of_the_log_or_the_runs(seeded: Seeded, case: Case) -> None:
    with psycopg.connect(
        seeded.url, autocommit=True, options=f"-c search_path={seeded.schema}"
    ) as conn:
        plan, text = _explain(conn, case, seeded)
    scans = _seq_scans(plan[0]["Plan"])
    assert not scans, f"{case.id} reads {', '.join(scans)} sequentially:\n{text}"


async def test_the_seeded_history_is_one_a_rebuild_agrees_with(seeded: Seeded) -> None:
    """The seeder writes rows exactly as the projections fold its events (else the plans
    above, and the benchmark's phase (f), would be measured on a history no run can make)."""
    client = await ow_es.connect(seeded.url, schema=seeded.schema, namespace=NAMESPACE)
    try:
        report = await client.reproject(verify=True)
    finally:
        await client.close()
    assert report.events >= RUNS * 9
    assert report.differences == []


def _rows_read(node: dict[str, Any]) -> int:
    """Rows the plan's scans of ``workflow_runs`` produced or removed by a filter."""
    own = 0
    if node.get("Relation Name") == "workflow_runs":
        loops = int(node.get("Actual Loops", 1))
        own = (int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0))) * loops
    return own + sum(_rows_read(child) for child in node.get("Plans", []))


@pytest.mark.parametrize("served", [[LIVE], SERVED], ids=["other-workflow-parked", "own-parked"])
def test_the_next_timer_is_found_without_walking_parked_or_held_runs(
    seeded: Seeded, served: list[str]
) -> None:
    """A worker reads its next timer on every claim that leaves a slot free: one index probe
    per workflow it serves and the first lease end, not a walk over the 1,000 runs parked far
    ahead (its own or another workflow's) or the 50 held under a lease."""
    query = load("postgres")["next_wake_at"]
    params = _served_params(served)
    with psycopg.connect(
        seeded.url, autocommit=True, options=f"-c search_path={seeded.schema}"
    ) as conn:
        literal = psycopg.ClientCursor(conn).mogrify(query, params)
        (plan,) = _row(conn, f"EXPLAIN (ANALYZE, FORMAT JSON) {literal}")
    assert _rows_read(plan[0]["Plan"]) <= 12, plan


def test_the_statements_on_the_wake_up_path_are_parsed_once_per_process() -> None:
    """psycopg converts a statement's ``%(name)s`` placeholders on every execution unless the
    statement fits its parse cache (4 KiB); the claim of an offered run (the one a wake-up
    names) is on the path from ``start()`` to the first step, so its text must fit. The
    comments of queries.sql stay in the file and are not sent."""
    from psycopg import _queries

    limit = _queries.MAX_CACHED_STATEMENT_LENGTH
    queries = load("postgres")
    assert len(queries["claim_offered"].encode()) <= limit
    commented = [name for name, query in queries.items() if "\n--" in f"\n{query}"]
    assert commented == []

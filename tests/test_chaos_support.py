"""Shared machinery of the chaos tests: a worker app served by real ``ow-es worker``
processes, a fleet that starts, kills, pauses and stops them, and the auditors that check the
promise (nothing lost, nothing stranded, every attempt kept, one owner at a time) on the event
log. The tests at the bottom prove that the auditors catch what they are meant to catch."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

import ow_es

# Runs are started by name from the test process; the definitions live only in the app.
APP = textwrap.dedent(
    '''
    """Chaos app: every step execution appends one line to a per-run file (O_APPEND, one
    write: atomic even under SIGKILL), so executions can be counted across processes."""

    import asyncio
    import os
    import time
    from pathlib import Path

    import ow_es

    STATE = Path(os.environ["CHAOS_STATE"])


    def mark(run_id: str, step: str) -> None:
        line = f"{step} {os.getpid()} {time.time():.6f}\\n".encode()
        fd = os.open(STATE / f"exec-{run_id}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


    def pause(n: int, step: str) -> float:
        """0.1 to 0.4 s, fixed per run and step."""
        return 0.1 + ((n * 7 + ord(step) * 13) % 4) * 0.1


    async def gate(name: str, limit: float = 60.0) -> None:
        """Wait until the test opens the gate (a file), when this process is gated."""
        if os.environ.get("CHAOS_GATED") != "1":
            return
        end = time.monotonic() + limit
        while not (STATE / name).exists() and time.monotonic() < end:
            await asyncio.sleep(0.01)


    def sync_gate(name: str, limit: float = 60.0) -> None:
        if os.environ.get("CHAOS_GATED") != "1":
            return
        end = time.monotonic() + limit
        while not (STATE / name).exists() and time.monotonic() < end:
            time.sleep(0.01)


    @ow_es.workflow(name="chaos")
    async def chaos(ctx: ow_es.Context, n: int) -> list[int]:
        run = ctx.run.id

        async def a() -> int:
            mark(run, "a")
            await asyncio.sleep(pause(n, "a"))
            return n

        def b() -> int:  # a sync step: runs in the worker's thread pool
            mark(run, "b")
            time.sleep(pause(n, "b"))
            return n * 2

        async def c() -> int:
            mark(run, "c")
            await asyncio.sleep(pause(n, "c"))
            return n * 3

        async def d() -> int:
            mark(run, "d")
            await asyncio.sleep(pause(n, "d"))
            return n * 4

        async def e() -> int:  # fails on its first execution, then succeeds
            mark(run, "e")
            flag = STATE / f"failed-{run}"
            if not flag.exists():
                flag.touch()
                raise RuntimeError("e fails once")
            await asyncio.sleep(0.05)
            return n * 5

        one = await ctx.step.run("a", a)
        two, three = await asyncio.gather(ctx.step.run("b", b), ctx.step.run("c", c))
        four = await ctx.step.run("d", d)
        await ctx.step.sleep("nap", "300ms")  # parks the run: any worker may wake it
        # Two attempts: enough only if takeovers and wake-ups use up no attempt.
        retry = ow_es.RetryPolicy(initial_interval="200ms", maximum_attempts=2)
        five = await ctx.step.run("e", e, retry=retry)
        return [one, two, three, four, five]


    @ow_es.workflow(name="relay")
    async def relay(ctx: ow_es.Context, n: int) -> list[int]:
        """Three steps; a gated process holds step "a" or "b" until the test opens its gate
        (files open-a-N / open-b-N)."""
        run = ctx.run.id

        async def a() -> int:
            mark(run, "a")
            await gate(f"open-a-{n}")
            return n

        async def b() -> int:
            mark(run, "b")
            await gate(f"open-b-{n}")
            await asyncio.sleep(float(os.environ.get("CHAOS_B_SECONDS", "0")))
            return n * 2

        def b_sync() -> int:
            mark(run, "b")
            sync_gate(f"open-b-{n}")
            return n * 2

        async def c() -> int:
            mark(run, "c")
            return n * 3

        one = await ctx.step.run("a", a)
        two = await ctx.step.run("b", b_sync if n == 1 else b)
        three = await ctx.step.run("c", c)
        return [one, two, three]
    '''
)

STEP_EVENTS = ("step_started", "step_completed", "step_failed")
# Events after which the writer no longer owns the run (until a new claim).
OWNERSHIP_ENDS = frozenset(
    {
        "run_released",
        "run_sleeping",
        "run_waiting",
        "retry_scheduled",
        "run_completed",
        "run_failed",
        "run_canceled",
    }
)
TERMINAL = frozenset({"run_completed", "run_failed", "run_canceled"})


def pid_of(worker_id: str) -> int:
    """``ow-es worker`` ids are ``host:pid:random``."""
    return int(worker_id.rsplit(":", 2)[1])


def _time(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- auditors -------------------------------------------------------------------------------


def audit_log(events: Sequence[ow_es.Event]) -> list[str]:
    """The log-level promise for one run: a gapless stream, one owner at a time (every event
    that names a worker names the latest claimant, and only while it owns the run), no
    takeover before the previous claim's lease ran out, nothing appended twice."""
    problems: list[str] = []
    seqs = [e.seq for e in events]
    if seqs != list(range(1, len(events) + 1)):
        problems.append(f"seq is not gapless 1..n: {seqs}")
    owner: str | None = None
    lease_until: datetime | None = None
    for e in events:
        worker = e.data.get("worker_id")
        if e.type == "run_claimed":
            if owner is not None and lease_until is not None and e.created_at <= lease_until:
                problems.append(
                    f"seq {e.seq}: {worker} took over from {owner} at {e.created_at}, before "
                    f"the claim's lease ran out ({lease_until})"
                )
            owner, lease_until = worker, _time(e.data["lease_until"])
            continue
        if worker is not None and worker != owner:
            problems.append(f"seq {e.seq} {e.type} written by {worker} while the owner was {owner}")
        if e.type in OWNERSHIP_ENDS:
            owner = lease_until = None
    keyed = Counter(
        (e.type, e.data.get("step_name"), e.data.get("attempt"))
        for e in events
        if e.type in STEP_EVENTS
    )
    problems += [
        f"{k[0]} of step {k[1]!r} attempt {k[2]} appended {n} times"
        for k, n in keyed.items()
        if n > 1
    ]
    completed = Counter(e.data["step_name"] for e in events if e.type == "step_completed")
    problems += [f"step {s!r} completed {n} times" for s, n in completed.items() if n > 1]
    ends = [e.type for e in events if e.type in TERMINAL]
    if len(ends) > 1:
        problems.append(f"the run ended {len(ends)} times: {ends}")
    return problems


def audit_attempts(events: Sequence[ow_es.Event], rows: Sequence[ow_es.StepAttempt]) -> list[str]:
    """Every attempt kept: one ``step_attempts`` row per attempt seen in the log, numbered
    1..k per step with the completed attempt last, and no row the log does not explain."""
    problems: list[str] = []
    logged: dict[str, set[int]] = defaultdict(set)
    done: dict[str, int] = {}
    for e in events:
        if e.type in STEP_EVENTS:
            logged[e.data["step_name"]].add(int(e.data["attempt"]))
        if e.type == "step_completed":
            done[e.data["step_name"]] = int(e.data["attempt"])
    keys = Counter((r.step_name, r.attempt) for r in rows)
    problems += [f"{n} rows for attempt {k}" for k, n in keys.items() if n > 1]
    expected = {(s, a) for s, attempts in logged.items() for a in attempts}
    if set(keys) != expected:
        problems.append(
            f"step_attempts rows {sorted(keys)} differ from the logged attempts {sorted(expected)}"
        )
    for step, attempts in logged.items():
        if attempts != set(range(1, max(attempts) + 1)):
            problems.append(f"step {step!r} attempts are not 1..k: {sorted(attempts)}")
        if step in done and done[step] != max(attempts):
            problems.append(f"step {step!r} completed attempt {done[step]} is not the last")
    for row in rows:
        if done.get(row.step_name) == row.attempt and row.status != "completed":
            problems.append(f"row of completed attempt {row.step_name}#{row.attempt}: {row.status}")
    return problems


def read_executions(state: Path, run_id: str) -> list[tuple[str, int, float]]:
    """(step, pid, wall time) of every execution of a step of ``run_id``, in order."""
    path = state / f"exec-{run_id}"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        step, pid, at = line.split()
        out.append((step, int(pid), float(at)))
    return out


def superseded(events: Sequence[ow_es.Event]) -> set[int]:
    """Processes that lost a claim of this run while they still owned it (taken over after
    their lease ran out, or released): their in-flight steps could not be recorded, so
    running them again is expected."""
    lost: set[int] = set()
    owner: str | None = None
    for e in events:
        if e.type == "run_claimed":
            if owner is not None:
                lost.add(pid_of(owner))
            owner = e.data["worker_id"]
        elif e.type == "run_released" and owner is not None:
            lost.add(pid_of(owner))
            owner = None
        elif e.type in OWNERSHIP_ENDS:
            owner = None
    return lost


def audit_executions(
    events: Sequence[ow_es.Event],
    executions: Iterable[tuple[str, int, float]],
    interrupted: set[int],
) -> list[str]:
    """A step's code ran only in a process that claimed the run, at most once per claim of
    that process. Each execution is accounted for by a recorded failure or the recorded
    completion of the process that ran it, or else it ran in a process in ``interrupted``
    (killed, or whose claim was lost or released): its result could not be recorded."""
    problems: list[str] = []
    claims = Counter(pid_of(c.data["worker_id"]) for c in claims_of(events))
    recorded: dict[str, Counter[int]] = defaultdict(Counter)
    completed: set[str] = set()
    for e in events:
        if e.data.get("abandoned"):
            continue  # the next owner closes a lost worker's attempt: it ran nothing itself
        if e.type in ("step_completed", "step_failed") and e.data.get("kind") == "function":
            recorded[e.data["step_name"]][pid_of(e.data["worker_id"])] += 1
            if e.type == "step_completed":
                completed.add(e.data["step_name"])
    by_step: dict[str, list[int]] = defaultdict(list)
    for step, pid, _ in executions:
        by_step[step].append(pid)
    for step, pids in sorted(by_step.items()):
        ran = Counter(pids)
        strangers = set(ran) - set(claims)
        if strangers:
            problems.append(f"step {step!r} ran in {strangers}, which never claimed the run")
        twice = [p for p, n in ran.items() if p in claims and n > claims[p]]
        if twice:
            problems.append(f"step {step!r} ran more than once per claim in {twice}: {pids}")
        if step not in completed:
            problems.append(f"step {step!r} ran in {pids} but no completion is recorded")
        phantom = recorded[step] - ran
        if phantom:
            problems.append(f"step {step!r} recorded by {dict(phantom)}, which did not run it")
        unexplained = ran - recorded[step]
        again = set(unexplained) - interrupted
        if again:
            problems.append(
                f"step {step!r} ran again ({pids}; recorded {dict(recorded[step])}) although "
                f"process(es) {again} were never interrupted"
            )
    problems += [f"step {s!r} completed but never ran" for s in completed if s not in by_step]
    return problems


# -- worker processes ---------------------------------------------------------------------


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path
    app_name: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Fleet:
    """Real ``ow-es worker`` processes serving the chaos app on this test's database."""

    db: dict[str, Any]
    root: Path
    tag: str = field(default_factory=lambda: f"owc_{uuid.uuid4().hex[:12]}")
    procs: list[Proc] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        (self.root / "chaosapp.py").write_text(APP)
        self.state.mkdir(exist_ok=True)

    @property
    def state(self) -> Path:
        return self.root / "state"

    def spawn(
        self,
        *,
        concurrency: int = 8,
        lease: str = "2s",
        heartbeat: str = "500ms",
        poll: str = "200ms",
        stop_timeout: str = "1",
        env: dict[str, str] | None = None,
    ) -> Proc:
        index = len(self.procs)
        app_name = f"{self.tag}_{index}"
        url = self.db["url"]
        if self.db["backend"] == "postgres":
            url += ("&" if "?" in url else "?") + f"application_name={app_name}"
        command = [
            sys.executable, "-m", "ow_es.cli", "worker", "chaosapp",
            "--database-url", url, "-c", str(concurrency), "--lease", lease,
            "--heartbeat", heartbeat, "--poll-interval", poll, "--stop-timeout", stop_timeout,
        ]  # fmt: skip
        if self.db["schema"]:
            command += ["--schema", self.db["schema"]]
        log = self.root / f"worker-{index}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                command,
                cwd=self.root,
                env={**os.environ, "CHAOS_STATE": str(self.state), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(popen, log, app_name)
        self.procs.append(proc)
        return proc

    def live(self) -> list[Proc]:
        return [p for p in self.procs if p.alive()]

    def kill(self, proc: Proc) -> None:
        self.killed.add(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)

    async def ready(self, proc: Proc, timeout: float = 20) -> None:
        """The worker printed its 'serving' line: it listens and made its first claim."""
        async with asyncio.timeout(timeout):
            while " serving " not in proc.text():
                assert proc.alive(), f"worker exited early:\n{proc.text()}"
                await asyncio.sleep(0.02)

    def stop_all(self, timeout: float = 15) -> dict[int, int | None]:
        """SIGTERM every live worker, wait, SIGKILL stragglers; their exit codes by pid."""
        for proc in self.live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.popen.terminate()
        codes: dict[int, int | None] = {}
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc.pid in self.killed:
                continue
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=10)
            codes[proc.pid] = proc.popen.returncode
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- worker {p.pid} ---\n{p.text()[-3000:]}" for p in self.procs)

    # -- Postgres: this fleet's server connections --------------------------------------

    def pg_sessions(self, proc: Proc | None = None) -> list[dict[str, Any]]:
        pattern = proc.app_name if proc is not None else f"{self.tag}\\_%"
        with psycopg.connect(self.db["url"], autocommit=True) as admin:
            cur = admin.execute(
                "SELECT pid, application_name, state, wait_event_type, query"
                " FROM pg_stat_activity WHERE application_name LIKE %s",
                [pattern],
            )
            names = [d.name for d in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def terminate_pg_sessions(self) -> int:
        """Drop every server connection of this fleet's workers (pool and listener)."""
        with psycopg.connect(self.db["url"], autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                [f"{self.tag}\\_%"],
            ).fetchall()
        return len(rows)

    # -- pausing ---------------------------------------------------------------------------

    async def pause_outside_transactions(self, proc: Proc) -> None:
        """SIGSTOP ``proc`` at a moment it holds no database transaction open (a frozen open
        transaction would hold row locks, or SQLite's write lock, and block everyone)."""
        for _ in range(100):
            os.kill(proc.pid, signal.SIGSTOP)
            await asyncio.sleep(0.05)
            if not self._holds_transaction(proc):
                return
            os.kill(proc.pid, signal.SIGCONT)
            await asyncio.sleep(0.03)
        raise AssertionError("could not pause the worker outside a transaction")

    def _holds_transaction(self, proc: Proc) -> bool:
        if self.db["backend"] == "postgres":
            return any(s["state"] not in ("idle", None) for s in self.pg_sessions(proc))
        path = self.db["url"][len("sqlite:///") :]
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()


def takeovers(events: Sequence[ow_es.Event]) -> int:
    """Claims that took the run from a worker that still owned it (its lease ran out)."""
    count, owned = 0, False
    for e in events:
        if e.type == "run_claimed":
            count += owned
            owned = True
        elif e.type in OWNERSHIP_ENDS:
            owned = False
    return count


def describe(events: Sequence[ow_es.Event]) -> str:
    """A compact listing of a run's log, for failure messages."""
    lines = []
    for e in events:
        d = e.data
        step = f" {d['step_name']}#{d.get('attempt')}" if d.get("step_name") else ""
        who = f" by {d['worker_id']}" if d.get("worker_id") else ""
        lines.append(f"  {e.seq:>3} {e.created_at:%H:%M:%S.%f} {e.type}{step}{who}")
    return "\n".join(lines)


# -- helpers for the tests ------------------------------------------------------------------


async def wait_for(check: Any, timeout: float, message: str, interval: float = 0.05) -> Any:
    """Poll ``check()`` (sync or async) until it returns something truthy."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s: {message}")
        await asyncio.sleep(interval)


async def statuses(ow: ow_es.OpenWorkflow) -> Counter[str]:
    counts: Counter[str] = Counter()
    for (_, status), n in (await ow.store.count_runs()).items():
        counts[status] += n
    return counts


def claims_of(events: Sequence[ow_es.Event]) -> list[ow_es.Event]:
    return [e for e in events if e.type == "run_claimed"]


# -- the auditors catch what they are meant to ---------------------------------------------


def _event(seq: int, type_: str, **data: Any) -> ow_es.Event:
    at = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=seq)
    return ow_es.Event(
        namespace_id="default", run_id="r", position=seq, seq=seq, type=type_,
        schema_version=1, data=data, created_at=at,
    )  # fmt: skip


def _claim(seq: int, worker: str, lease_s: int = 1) -> ow_es.Event:
    until = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=seq + lease_s)
    return _event(seq, "run_claimed", worker_id=worker, lease_until=until.isoformat())


def test_audit_log_accepts_a_clean_takeover() -> None:
    events = [
        _event(1, "run_created"),
        _claim(2, "h:1:x"),
        _event(3, "step_completed", step_name="a", attempt=1, worker_id="h:1:x"),
        _claim(4, "h:2:y"),  # after h:1:x's lease (until second 3)
        _event(5, "step_completed", step_name="b", attempt=1, worker_id="h:2:y"),
        _event(6, "run_completed", worker_id="h:2:y"),
    ]
    assert audit_log(events) == []


def test_audit_log_catches_a_stale_writer_a_gap_an_early_takeover_and_a_duplicate() -> None:
    events = [
        _event(1, "run_created"),
        _claim(2, "h:1:x", lease_s=10),
        _claim(3, "h:2:y"),  # before h:1:x's lease ran out
        _event(4, "step_completed", step_name="a", attempt=1, worker_id="h:1:x"),  # stale
        _event(5, "step_completed", step_name="a", attempt=1, worker_id="h:2:y"),  # twice
        _event(7, "run_completed", worker_id="h:2:y"),  # gap at 6
        _event(8, "run_completed", worker_id="h:2:y"),
    ]
    text = "\n".join(audit_log(events))
    for needle in ("not gapless", "before the claim's lease", "written by h:1:x",
                   "appended 2 times", "completed 2 times", "ended 2 times"):  # fmt: skip
        assert needle in text


def test_audit_executions_allows_only_interrupted_reruns() -> None:
    events = [
        _event(1, "run_created"),
        _claim(2, "h:10:x"),
        _claim(3, "h:20:y"),
        _event(4, "step_completed", step_name="a", attempt=2, kind="function", worker_id="h:20:y"),
    ]
    ran = [("a", 10, 0.0), ("a", 20, 1.0)]
    assert audit_executions(events, ran, interrupted={10}) == []
    assert "never interrupted" in "\n".join(audit_executions(events, ran, interrupted=set()))
    stranger = [*ran, ("a", 30, 2.0)]
    assert "never claimed" in "\n".join(audit_executions(events, stranger, interrupted={10, 30}))
    assert "no completion" in "\n".join(audit_executions(events, [("b", 20, 0.0)], set()))


def test_only_lost_claims_count_as_interruptions() -> None:
    events = [
        _event(1, "run_created"),
        _claim(2, "h:1:x"),
        _event(3, "run_sleeping", step_name="nap", worker_id="h:1:x"),  # parked: not lost
        _claim(4, "h:2:y"),
        _claim(6, "h:3:z"),  # h:2:y's lease ran out: lost
        _event(7, "run_released", worker_id="h:3:z"),  # released: lost
        _claim(8, "h:1:x"),
        _event(9, "run_completed", worker_id="h:1:x"),
    ]
    assert superseded(events) == {2, 3}
    assert takeovers(events) == 1
    ran = [("a", 1, 0.0), ("a", 1, 1.0)]  # h:1:x ran "a" under each of its two claims...
    completed = _event(10, "step_completed", step_name="a", kind="function", worker_id="h:1:x")
    assert "never interrupted" in "\n".join(audit_executions([*events, completed], ran, set()))
    thrice = [*ran, ("a", 1, 2.0)]  # ...but not three times
    assert "more than once per claim" in "\n".join(
        audit_executions([*events, completed], thrice, {1})
    )

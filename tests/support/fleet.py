"""A fleet of real ``ow-es worker`` processes serving the chaos app
(``tests.support.apps.chaos``) on a test's database, started through the ``processes``
harness: the chaos tests start, kill, pause and stop them."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.support.cli import db_args
from tests.support.processes import Process, Processes


@dataclass
class Fleet:
    db: dict[str, Any]
    processes: Processes
    tag: str = field(default_factory=lambda: f"owc_{uuid.uuid4().hex[:12]}")
    killed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.state.mkdir(exist_ok=True)

    @property
    def state(self) -> Path:
        """The chaos app's ``$CHAOS_STATE``: execution records and gates."""
        return self.processes.folder / "state"

    @property
    def workers(self) -> list[Process]:
        return self.processes.started

    def spawn(
        self,
        *,
        concurrency: int = 8,
        lease: str = "2s",
        heartbeat: str = "500ms",
        poll: str = "200ms",
        stop_timeout: str = "1",
        env: dict[str, str] | None = None,
    ) -> Process:
        """One more worker; on Postgres its sessions carry the application name ``name``."""
        name = f"{self.tag}_{len(self.workers)}"
        db = dict(self.db)
        if db["backend"] == "postgres":
            db["url"] += ("&" if "?" in db["url"] else "?") + f"application_name={name}"
        return self.processes.worker(
            "tests.support.apps.chaos",
            *("-c", str(concurrency), "--lease", lease, "--heartbeat", heartbeat),
            *("--poll-interval", poll, "--stop-timeout", stop_timeout),
            *db_args(db),
            name=name,
            env={"CHAOS_STATE": str(self.state), **(env or {})},
        )

    def live(self) -> list[Process]:
        return self.processes.live()

    def kill(self, worker: Process) -> None:
        self.killed.add(worker.pid)
        worker.kill()

    async def ready(self, worker: Process, timeout: float = 20) -> None:
        """The worker printed its 'serving' line: it listens and made its first claim."""
        await worker.serving(timeout)

    def stop_all(self, timeout: float = 15) -> dict[int, int | None]:
        """SIGTERM every live worker, wait, SIGKILL stragglers; the exit codes of those this
        fleet did not kill, by pid."""
        codes = self.processes.stop_all(timeout)
        return {pid: code for pid, code in codes.items() if pid not in self.killed}

    def logs(self) -> str:
        return self.processes.logs()

    # -- Postgres: this fleet's server connections --------------------------------------

    def pg_sessions(self, worker: Process | None = None) -> list[dict[str, Any]]:
        pattern = worker.name if worker is not None else f"{self.tag}\\_%"
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

    async def pause_outside_transactions(self, worker: Process) -> None:
        """SIGSTOP ``worker`` at a moment it holds no database transaction open (a frozen open
        transaction would hold row locks, or SQLite's write lock, and block everyone)."""
        for _ in range(100):
            worker.send(signal.SIGSTOP)
            await asyncio.sleep(0.05)
            if not self._holds_transaction(worker):
                return
            worker.send(signal.SIGCONT)
            await asyncio.sleep(0.03)
        raise AssertionError("could not pause the worker outside a transaction")

    def _holds_transaction(self, worker: Process) -> bool:
        if self.db["backend"] == "postgres":
            return any(s["state"] not in ("idle", None) for s in self.pg_sessions(worker))
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

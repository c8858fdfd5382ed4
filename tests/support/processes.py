"""Fixture plugin: real processes, through one harness.

Every test that runs something as a separate OS process (``ow-es worker``, a one-shot
``ow-es`` command, a script) starts it with the ``processes`` fixture. A process writes its
stdout and stderr to files in the test's folder (readable while it runs, kept for failure
messages) and gets this process's environment without any ``OW_ES_*``/``OPENWORKFLOW_*``
setting, so the developer's environment cannot leak in. Whatever still runs at teardown is
killed. Tests that use it are marked ``slow``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment minus every ow-es setting, with the repository importable (the worker
    apps under ``tests.support.apps``), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OW_ES_", "OPENWORKFLOW_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | dict(extra or {})


@dataclass
class Process:
    """A running (or finished) child process and its output files."""

    popen: subprocess.Popen[bytes]
    name: str
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def text(self) -> str:
        """Everything it printed, stdout then stderr."""
        return self.stdout() + self.stderr()

    def send(self, signum: int) -> None:
        """Send it a signal (SIGSTOP, SIGCONT, SIGTERM...)."""
        os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(timeout=10)

    async def exited(self, timeout: float) -> int:
        """Wait until it exits; its exit status."""
        await eventually(lambda: not self.alive(), timeout, f"{self.name} exited", interval=0.05)
        return self.popen.wait()

    async def stop(self, timeout: float = 15) -> int:
        """SIGTERM (after a SIGCONT, should it be stopped), then wait for it to exit."""
        if self.alive():
            self.send(signal.SIGCONT)
            self.popen.terminate()
        return await self.exited(timeout)

    async def line(self, containing: str, timeout: float = 30) -> str:
        """The first complete stdout line holding ``containing``, once it is printed. Fails at
        once, with its stderr, should the process exit first."""

        def printed() -> str | None:
            text = self.stdout()
            for line in text.splitlines(keepends=True):
                if containing in line and line.endswith("\n"):
                    return line.rstrip("\n")
            assert self.alive(), f"{self.name} exited ({self.returncode}):\n{self.text()}"
            return None

        found: str = await eventually(printed, timeout, f"{containing!r} from {self.name}")
        return found

    async def serving(self, timeout: float = 30) -> str:
        """An ``ow-es worker``'s start line, once it listens and has made its first claim."""
        return await self.line(" serving ", timeout)


class Processes:
    """The processes one test starts; see the module docstring."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Process] = []

    def spawn(
        self,
        *argv: str,
        name: str | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        name = name or f"process-{len(self.started)}"
        out, err = self.folder / f"{name}.out", self.folder / f"{name}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            popen = subprocess.Popen(
                argv, cwd=cwd or self.folder, env=child_env(env), stdout=stdout, stderr=stderr
            )
        process = Process(popen, name, out, err)
        self.started.append(process)
        return process

    def python(self, *args: str, isolated: bool = False, **options: Any) -> Process:
        """``python [-I] args...`` with this interpreter; ``-I`` keeps the current directory
        (and ``PYTHONPATH``) off ``sys.path``."""
        return self.spawn(sys.executable, *(["-I"] if isolated else []), *args, **options)

    def ow_es(self, *args: str, **options: Any) -> Process:
        """An ``ow-es`` command (``python -m ow_es.cli``)."""
        return self.python("-m", "ow_es.cli", *args, **options)

    def worker(self, *args: str, **options: Any) -> Process:
        """``ow-es worker args...``: wait for ``serving()`` before relying on it."""
        return self.ow_es("worker", *args, **options)

    async def run(self, *args: str, timeout: float = 60, **options: Any) -> Process:
        """A one-shot ``python args...``, waited for; read its exit status and output."""
        process = self.python(*args, **options)
        await process.exited(timeout)
        return process

    async def run_ow_es(self, *args: str, timeout: float = 60, **options: Any) -> Process:
        """A one-shot ``ow-es`` command, waited for."""
        return await self.run("-m", "ow_es.cli", *args, timeout=timeout, **options)

    def live(self) -> list[Process]:
        return [p for p in self.started if p.alive()]

    def logs(self, tail: int = 3000) -> str:
        """The end of every process's output, for failure messages."""
        return "\n".join(f"--- {p.name} ({p.pid}) ---\n{p.text()[-tail:]}" for p in self.started)

    def stop_all(self, timeout: float = 15) -> dict[int, int | None]:
        """SIGTERM every live process, wait for all of them, SIGKILL stragglers; the exit
        status of each by pid (``-9`` for those that had to be killed)."""
        for process in self.live():
            process.send(signal.SIGCONT)
            process.popen.terminate()
        deadline = time.monotonic() + timeout
        codes: dict[int, int | None] = {}
        for process in self.started:
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
            codes[process.pid] = process.popen.returncode
        return codes

    def close(self) -> None:
        for process in self.started:
            if process.alive():
                process.send(signal.SIGCONT)
                process.kill()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start processes for this test; those still running at teardown are killed."""
    harness = Processes(tmp_path)
    try:
        yield harness
    finally:
        harness.close()

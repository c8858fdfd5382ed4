"""DBOS Transact on the same database (optional: skipped when not installed).

DBOS runs its workflows in the calling thread; a pool of 4 threads runs ``workflows`` 4-step
workflows (each step a no-op ``@DBOS.step``, checkpointed to its system tables), after a short
warm-up. The figure is workflows / seconds of that pool. DBOS is a process-wide singleton, so
it runs in a process of its own (``python competitor_dbos.py run ...``) that prints its result
as one JSON line; its system tables go in a schema of their own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata, util
from typing import Any

from records import Dbos
from target import Skipped, Target, drop_schema

STEPS = 4
WARM_UP = 20


def run(args: argparse.Namespace) -> None:
    """The child process: launch DBOS, warm up, time the pool, print ``RESULT {json}``."""
    from dbos import DBOS

    DBOS(
        config={
            "name": "ow-es-bench",
            "system_database_url": args.url,
            "dbos_system_schema": args.schema,
            "log_level": "WARNING",
            "run_admin_server": False,
        }
    )

    @DBOS.step()
    def noop() -> None:
        return None

    @DBOS.workflow()
    def four_steps() -> int:
        for _ in range(STEPS):
            noop()
        return STEPS

    DBOS.launch()
    try:
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda _: four_steps(), range(WARM_UP)))
            began = time.perf_counter()
            list(pool.map(lambda _: four_steps(), range(args.workflows)))
            seconds = time.perf_counter() - began
    finally:
        DBOS.destroy()
    print("RESULT " + json.dumps({"seconds": seconds}), flush=True)


async def measure(
    target: Target, namespace: str, *, workflows: int = 500, threads: int = 4
) -> Dbos:
    if util.find_spec("dbos") is None:
        raise Skipped("dbos is not installed (pip install -e '.[bench]')")
    schema = f"{target.schema}_dbos_{''.join(c for c in namespace if c.isalnum())}".lower()
    command = [
        sys.executable, __file__, "run", "--url", target.url, "--schema", schema,
        "--workflows", str(workflows), "--threads", str(threads),
    ]  # fmt: skip
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 120 + workflows * 0.1)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError("the DBOS process did not finish in time") from None
        result: dict[str, Any] | None = None
        for line in stdout.decode().splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line.removeprefix("RESULT "))
        if process.returncode or result is None:
            raise RuntimeError(f"the DBOS process failed: {stderr.decode()[-800:]}")
    finally:
        await drop_schema(target.url, schema)
    seconds = float(result["seconds"])
    return Dbos(
        version=metadata.version("dbos"),
        threads=threads,
        workflows=workflows,
        steps_per_workflow=STEPS,
        seconds=seconds,
        workflows_per_s=workflows / seconds,
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="the DBOS process of the benchmark")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--threads", type=int, default=4)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])

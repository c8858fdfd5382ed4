"""CPU accounting for "where does the time go": the server backends of one application name.

The worker process runs with ``PGAPPNAME`` set, so its connections are told apart from the
benchmark's own and from anything else using the server. Only meaningful when the server runs
on this host (loopback URL, readable ``/proc``); otherwise every figure is ``None``. Snapshots
are taken while the connections are still open (a backend that exits takes its CPU with it).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def is_local(url: str) -> bool:
    return (
        url.startswith(("postgresql://", "postgres://"))
        and (urlsplit(url).hostname or "") in _LOCAL_HOSTS
        and Path("/proc/self/stat").exists()
    )


def _process_cpu(stat: str) -> float:
    # fields after the ")" that ends the command name: utime and stime are the 12th and 13th
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def backend_cpu_seconds(url: str, application_name: str) -> float | None:
    """CPU seconds used so far by the live server backends of ``application_name``."""
    if not is_local(url):
        return None
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        )
        pids = [row[0] for row in await cur.fetchall()]
    total = 0.0
    for pid in pids:
        try:
            total += _process_cpu(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, IndexError, ValueError):
            return None  # not on this host after all, or not readable
    return total


def difference(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before

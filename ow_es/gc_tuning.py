"""The garbage collector of a process that is only a worker (``ow-es worker``).

Every step allocates many short-lived objects (events, rows, futures, tasks), and CPython's
first generation is collected every 700 net allocations: in a busy worker that is thousands of
collections a second, each walking every young object, almost none of which is in a cycle.
A dedicated worker process can afford a larger first generation (cycles are freed a little
later), and freezing what was loaded at startup (the app, ow-es, their modules) keeps the
older collections from walking it again and again. A library must not do this to a host
process of someone else's, so only the CLI (and the benchmark's worker, which stands for it)
calls it.
"""

from __future__ import annotations

import gc

DEFAULT_THRESHOLD = 50_000  # allocations between first-generation collections (CPython: 700)


def tune_for_worker(threshold: int = DEFAULT_THRESHOLD) -> None:
    """Freeze what is loaded now and collect the first generation every ``threshold``
    allocations (0: leave the collector as Python sets it)."""
    if threshold <= 0:
        return
    gc.collect()  # what startup left as garbage is freed, not frozen
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)

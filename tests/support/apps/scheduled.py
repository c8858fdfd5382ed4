"""A one-second schedule, served by ``ow-es worker tests.support.apps.scheduled`` processes
in the multi-process schedule test."""

from __future__ import annotations

import ow_es


@ow_es.workflow(name="every-second-proc", schedule=ow_es.Schedule("* * * * * *"))
async def every_second(ctx: ow_es.Context, tick: ow_es.Tick) -> str:
    return tick.scheduled_at.isoformat()

"""What the client does with schedules: the rows its workers store, the stored schedules
with their last run, pausing and triggering (the tick computation is ``schedule.py``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ow_es.durations import utcnow
from ow_es.errors import ValidationError
from ow_es.payload import to_json_value
from ow_es.schedule import Schedule, ScheduleInfo, next_tick, tick_input
from ow_es.store import Store
from ow_es.store.schedules_port import ScheduleRow

if TYPE_CHECKING:
    from ow_es.client import OpenWorkflow
    from ow_es.handle import RunHandle
    from ow_es.workflow import Workflow


def rows(
    schedules: dict[str, tuple[Workflow[Any], Schedule]], max_payload_bytes: int, now: datetime
) -> list[ScheduleRow]:
    """The schedules registered on a client, as rows whose next tick is the first after
    ``now``."""
    return [
        ScheduleRow(
            name=name,
            workflow_name=wf.name,
            version=wf.version,
            cron=spec.cron,
            timezone=spec.timezone,
            input=None if wf.takes_tick else to_json_value(spec.input, "input", max_payload_bytes),
            tick=wf.takes_tick,
            overlap=spec.overlap,
            catch_up=spec.catch_up,
            next_tick_at=next_tick(spec.cron, spec.timezone, now),
        )
        for name, (wf, spec) in schedules.items()
    ]


async def stored(store: Store) -> list[ScheduleInfo]:
    """The schedules stored in the namespace, with their last run's status."""
    infos = []
    for row in await store.schedules.all():
        last = await store.get_run(row.last_run_id) if row.last_run_id else None
        fields = msgspec.structs.asdict(row)
        del fields["input"], fields["tick"]
        infos.append(ScheduleInfo(**fields, last_run_status=last.status if last else None))
    return infos


async def set_paused(store: Store, name: str, paused: bool) -> None:
    if not await store.schedules.set_paused(name, paused):
        raise ValidationError(f"no schedule named {name!r}")


async def trigger(client: OpenWorkflow, name: str) -> RunHandle:
    """A run of the schedule now, outside its cron (key ``schedule:<name>:manual:<id>``)."""
    store = client.store
    row = next((r for r in await store.schedules.all() if r.name == name), None)
    if row is None:
        raise ValidationError(f"no schedule named {name!r}")
    value = tick_input(name, utcnow(), row.input, row.tick)
    key = f"schedule:{name}:manual:{uuid.uuid4().hex}"
    handle = await client.start(row.workflow_name, value, version=row.version, idempotency_key=key)
    await store.schedules.set_last_run(name, handle.run_id)
    return handle

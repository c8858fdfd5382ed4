"""The end-to-end path on both backends: define, start, execute, result."""

from __future__ import annotations

import msgspec

import ow_es
from tests.support.runs import event_types
from tests.support.workers import running_worker


class Order(msgspec.Struct):
    order_id: str
    amount_cents: int


async def test_run_completes_with_typed_input_and_steps(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="charge", version="2")
    async def charge(ctx: ow_es.Context, order: Order) -> dict[str, object]:
        card = await ctx.step.run("load-card", lambda: f"card-{order.order_id}")

        async def pay() -> int:
            return order.amount_cents * 2

        paid = await ctx.step.run("charge", pay)
        return {"card": card, "paid": paid}

    await ow.connect()
    async with running_worker(ow):
        handle = await charge.start(Order("o-1", 500))
        assert await handle.result(timeout=15) == {"card": "card-o-1", "paid": 1000}
    run = await handle.status()
    assert run.status == "completed"
    assert run.attempts == 1
    types = await event_types(ow, handle.run_id)
    assert types[0] == "run_created" and types[1] == "run_claimed"
    assert types[-1] == "run_completed"

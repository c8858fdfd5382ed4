"""ow-es quickstart: a worker and a client in one process, on the embedded SQLite default.

    python examples/quickstart.py

Set OW_ES_DATABASE_URL=postgresql://... to run the same code on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import random

import msgspec

import ow_es
from ow_es import Context, RetryPolicy

ow = ow_es.OpenWorkflow()  # URL from the environment, else ./openworkflow.db


class Order(msgspec.Struct):
    order_id: str
    amount_cents: int


class Receipt(msgspec.Struct):
    order_id: str
    charge_id: str
    attempts: int


attempts = 0


def charge_card(order: Order) -> str:
    """A flaky payment call: fails now and then, so the step retries."""
    global attempts
    attempts += 1
    if attempts < 2 or random.random() < 0.2:
        raise ConnectionError("payment gateway timed out")
    return f"ch_{order.order_id}_{order.amount_cents}"


@ow.workflow(name="charge-order", version="1")
async def charge_order(ctx: Context, order: Order) -> Receipt:
    await ctx.step.run("validate", lambda: order.amount_cents > 0)
    charge_id = await ctx.step.run(
        "charge",
        lambda: charge_card(order),
        retry=RetryPolicy(initial_interval="50ms", maximum_attempts=10),
    )
    await ctx.step.sleep("cool-off", "200ms")  # parks the run; the worker slot is freed
    return Receipt(order_id=order.order_id, charge_id=charge_id, attempts=attempts)


async def main() -> None:
    async with ow:
        worker = ow.worker(concurrency=4)
        serving = asyncio.create_task(worker.run())
        await worker.ready.wait()

        handle = await charge_order.start(Order(order_id="o-1", amount_cents=4200))
        receipt = await handle.result(timeout=30)
        print(f"run {handle.run_id} completed: {receipt}")
        print("its event history:")
        for event in await ow.history(handle.run_id):
            step = event.data.get("step_name") or ""
            print(f"  {event.seq:>2} {event.type:<16} {step}")

        await worker.stop()
        await serving


if __name__ == "__main__":
    asyncio.run(main())

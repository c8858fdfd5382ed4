"""The transaction-id barrier (Postgres): a log reader never passes over an event that is
still uncommitted below events that did commit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

import ow_es
from ow_es import events as ev
from ow_es.store import AppendRequest, rules
from ow_es.store.port import Primitives


def _create(run_id: str) -> AppendRequest:
    return AppendRequest(
        run_id=run_id, events=[ev.RunCreated(workflow_name="wf", available_at=datetime.now(UTC))]
    )


async def test_reader_waits_for_a_held_transaction(pg_url: str) -> None:
    import uuid

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    holder = await ow_es.connect(pg_url, schema=schema)
    other = await ow_es.connect(pg_url, schema=schema)
    reader = await ow_es.connect(pg_url, schema=schema)
    try:
        await holder.store.append([_create("before")])
        first = await reader.store.read_log(None, 100)
        assert [e.run_id for e in first.events] == ["before"]

        appended = asyncio.Event()
        release = asyncio.Event()

        async def hold(tx: Primitives) -> None:
            await rules.apply(tx, [_create("held")])
            appended.set()
            await release.wait()  # the transaction stays open, its event uncommitted

        held = asyncio.create_task(holder.store.adapter.transaction("holding", hold))
        await asyncio.wait_for(appended.wait(), 10)
        await other.store.append([_create("later")])  # commits after the held append

        blocked = await reader.store.read_log(first.cursor, 100)
        assert blocked.events == []  # "later" is committed but must not be read past "held"
        assert blocked.cursor == first.cursor

        release.set()
        await asyncio.wait_for(held, 10)
        after = await reader.store.read_log(first.cursor, 100)
        assert [e.run_id for e in after.events] == ["held", "later"]
        again = await reader.store.read_log(after.cursor, 100)
        assert again.events == []
    finally:
        for client in (holder, other, reader):
            await client.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_log_reads_follow_the_xid_order_index(pg_url: str) -> None:
    """Sorting by the text form of tx_id would put 1000000 before 999999 (skipping events when
    xids gain a digit), and could not walk the (tx_id, position) index."""
    import uuid

    import psycopg

    from ow_es.store.postgres.store import Q

    schema = f"t_{uuid.uuid4().hex[:16]}"
    client = await ow_es.connect(pg_url, schema=schema)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            for name in ("read_log", "read_log_unguarded"):
                plan = "\n".join(
                    row[0]
                    for row in conn.execute(
                        f"EXPLAIN {Q[name]}",
                        {"tx": "0", "pos": 0, "ns": "default", "limit": 10},
                    )
                )
                sort_keys = [line for line in plan.splitlines() if "Sort Key:" in line]
                assert all("text" not in line for line in sort_keys), plan
    finally:
        await client.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_lag_and_restored_transaction_ids(pg_url: str) -> None:
    """A long transaction anywhere holds the barrier back (its age is the readers' lag); a log
    whose transaction ids are ahead of the cluster's counter is refused, not silently stalled."""
    import uuid

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    client = await ow_es.connect(pg_url, schema=schema)
    try:
        await client.store.append([_create("r1")])
        assert len((await client.store.read_log(None, 10)).events) == 1
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT pg_current_xact_id()")  # an open transaction with an xid
            await asyncio.sleep(0.3)
            assert await client.store.log_lag() >= 0.3
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{schema}".events (namespace_id, run_id, seq, type, data, tx_id)'
                " VALUES ('default', 'restored', 1, 'run_created', '{}',"
                " (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text::xid8)"
            )
        with pytest.raises(ow_es.StoreUnavailable, match="ahead of this cluster"):
            await client.store.read_log(None, 10)
    finally:
        await client.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

"""Run by CI with a wheel installed into an empty venv: the packaged schema and projections
work outside the source tree (connect to SQLite, migrate, append, read back)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import tempfile
from datetime import UTC, datetime

import ow_es
from ow_es import events as ev
from ow_es.store import AppendRequest


async def main() -> None:
    assert "site-packages" in (ow_es.__file__ or ""), ow_es.__file__
    for generic in ("projections", "migrations", "dashboard_static"):
        assert importlib.util.find_spec(generic) is None, f"{generic} leaked into site-packages"
    with tempfile.TemporaryDirectory() as folder:
        client = await ow_es.connect(f"sqlite:///{folder}/wheel.db")
        run = AppendRequest(
            run_id="r1",
            events=[ev.RunCreated(workflow_name="w", available_at=datetime.now(UTC))],
        )
        await client.store.append([run])
        assert [e.type for e in await client.history("r1")] == ["run_created"]
        await client.close()
    print("wheel ok:", ow_es.__file__, file=sys.stderr)


asyncio.run(main())

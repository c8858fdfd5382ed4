"""Executable documentation: README's quickstart example really runs end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.processes import Processes

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_block_has_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.split("\n## ")[1].startswith("Quickstart")
    block = re.search(r"## Quickstart\n\n```sh\n(.*?)```", readme, re.S)
    assert block is not None
    commands = block.group(1).strip().splitlines()
    assert len(commands) == 2
    assert "examples/quickstart.py" in commands[0] and "pytest" in commands[1]


@pytest.mark.slow
async def test_quickstart_example_runs_on_embedded_sqlite(
    tmp_path: Path, processes: Processes
) -> None:
    result = await processes.run(str(ROOT / "examples" / "quickstart.py"), timeout=120)
    assert result.returncode == 0, result.stderr()
    assert "completed: Receipt(order_id='o-1'" in result.stdout()
    assert "run_completed" in result.stdout() and "step_failed" in result.stdout()
    assert (tmp_path / "openworkflow.db").exists()

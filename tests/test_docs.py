"""docs/events.md documents every event type and every key of its data."""

from __future__ import annotations

import re
from pathlib import Path

from ow_es.events import EVENT_TYPES

DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def test_every_event_type_and_key_is_documented() -> None:
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(\w+)` \|[^|]*\|(.*)\|$", DOC.read_text(), re.M)
    }
    assert set(rows) == set(EVENT_TYPES)
    for name, cls in EVENT_TYPES.items():
        documented = set(re.findall(r"`(\w+)`", rows[name]))
        missing = set(cls.__struct_fields__) - documented
        assert not missing, f"{name}: undocumented keys {missing}"

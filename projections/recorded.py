"""An event together with its place in the log: what the projectors consume."""

from __future__ import annotations

from datetime import datetime

import msgspec

from ow_es.events import EventData


class Recorded(msgspec.Struct, kw_only=True, gc=False):
    namespace_id: str
    run_id: str
    seq: int
    created_at: datetime
    data: EventData

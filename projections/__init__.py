"""Read models of the event log: pure folds from events to ``workflow_runs`` / ``step_attempts``.

The inline path (every append) and ``ow-es reproject`` use these same functions. No I/O here.
"""

from ow_es.projections.fold import fold_log, fold_run
from ow_es.projections.recorded import Recorded
from ow_es.projections.runs import apply_run
from ow_es.projections.steps import step_row

__all__ = ["Recorded", "apply_run", "fold_log", "fold_run", "step_row"]

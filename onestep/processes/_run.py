"""`app.run(processes=N)`: the app's own way into the `--processes` parent; called by
`OneStepApp.run`, it runs onestep.processes.ProcessSupervisor as the CLI does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from actors import AppFailed

from .._exit_codes import EXIT_OK
from ..core import JsonFormatter
from . import _worker_link
from ._preflight import resolve_processes, target_of
from ._supervisor import ProcessSupervisor

if TYPE_CHECKING:
    from ..core import AppCore as OneStepApp


def run_processes(app: OneStepApp, processes: Any) -> bool:
    """`app.run(processes=...)`: False when that is one process (the caller runs the app
    itself); otherwise run `app` in worker processes until they stop, and return True.
    Raises ValueError before anything starts (bad count, refused, not importable), and
    AppFailed when the workers failed (died too often, could not start)."""
    count = resolve_processes(processes)
    if count == 1:
        return False
    if _worker_link.current_worker is not None:
        raise RuntimeError(
            f"app.run(processes={processes!r}) ran inside worker {_worker_link.current_worker} "
            "while it imported the app: call it under `if __name__ == '__main__':`"
        )
    if not app.tasks:
        raise ValueError(f"app {app.name!r} has no tasks: nothing to run in {count} processes")
    target = target_of(app)
    level, fmt = _logging_of_this_process()
    supervisor = ProcessSupervisor(app, target, count, log_level=level, log_format=fmt)
    if supervisor.run() != EXIT_OK:
        raise AppFailed(supervisor.error or "the worker processes failed")
    return True


def _logging_of_this_process() -> tuple[str, str]:
    """The level and format workers log with under `app.run(processes=N)`: the root
    logger's level, and JSON when one of its handlers formats JSON."""
    root = logging.getLogger()
    level = logging.getLevelName(root.getEffectiveLevel())
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        level = "INFO"
    json_logs = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return level, "json" if json_logs else "text"

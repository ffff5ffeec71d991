"""The `onestep` command: `onestep run TARGET` runs an app, `onestep check TARGET` prints
its task graph (`--connect`: and opens every source and sink), `onestep dlq list|replay|
discard TARGET --task NAME` handles a task's dead letters, `onestep graph TARGET` draws
the pipeline (Mermaid, DOT or JSON). Installed as a console script; `python -m onestep`
runs it too. One module per command family: `_run`, `_check`, `_dlq`; `_common` holds the
group and what they share.

Commands stay thin: they parse options, call `load_app` and the app (or, for `run
--processes N`, `onestep.processes.ProcessSupervisor`), and map errors to exit codes
(onestep._exit_codes): 2 for a bad target or option (an app without tasks, an `--http`
address that cannot be resolved or bound included), 1 when the app crashed (or an
endpoint failed, for `check --connect` and `dlq`), 0 after a clean stop. The hidden
`_worker` command is what that supervisor starts in each worker process.
"""

from __future__ import annotations

from . import _check, _dlq, _run  # noqa: F401  (each registers its commands)
from ._common import onestep
from ._dlq import format_dead_letter

__all__ = ["format_dead_letter", "main", "onestep"]


def main() -> None:
    """Entry point of the `onestep` console script and of `python -m onestep`."""
    onestep()

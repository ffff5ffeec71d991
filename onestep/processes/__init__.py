"""`--processes N`: the supervisor of N worker processes, the worker's link to it, the
preflight checks and the inherited listening sockets. Imports the core, the state stores
and the sources; imported by the public app (`app.run(processes=N)`), the kit (the
inherited-socket helper) and the CLI.
"""

from ._preflight import (
    MAX_PROCESSES,
    ProcessesRefused,
    check_processes,
    resolve_processes,
    target_of,
)
from ._run import run_processes
from ._sockets import inherited_socket
from ._supervisor import START_TIMEOUT_S, ProcessSupervisor
from ._worker_link import RUN_DIR_ENV, WorkerLink

__all__ = [
    "MAX_PROCESSES",
    "RUN_DIR_ENV",
    "START_TIMEOUT_S",
    "ProcessSupervisor",
    "ProcessesRefused",
    "WorkerLink",
    "check_processes",
    "inherited_socket",
    "resolve_processes",
    "run_processes",
    "target_of",
]

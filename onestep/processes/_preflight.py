"""What running an app in N worker processes needs and means: the count (`--processes N`
or `auto`), the apps that must be refused or deserve a note, and the target by which a
worker imports an app started with `app.run(processes=N)`.

Called by the CLI (`onestep run/check --processes`) and by `onestep.processes._supervisor`, before
any worker starts; nothing here starts a process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..core import TARGET_MODULE_PREFIX, AppCore
from ..sources import MemoryQueue, ScheduleSource
from ..state import InMemoryStateStore

#: The most worker processes `--processes` accepts (a typo must not fork-bomb the host).
MAX_PROCESSES = 1024


class ProcessesRefused(ValueError):
    """The app cannot run correctly in several processes as configured."""


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, as a container's cpuset sets
    it), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_processes(value: Any) -> int:
    """`value` as a number of worker processes: an int from 1 to MAX_PROCESSES (a string
    of digits too, as the CLI gives it) or `"auto"` (the CPU count). ValueError naming
    `processes` otherwise."""
    if value == "auto":
        return cpu_count()
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_PROCESSES:
        raise ValueError(
            f"processes must be an int from 1 to {MAX_PROCESSES} or 'auto', got {value!r}"
        )
    return value


def check_processes(app: AppCore, count: int) -> list[str]:
    """What running `app` in `count` worker processes means, one note per line (a
    MemoryQueue source is per worker, a webhook port is shared). Raises ProcessesRefused
    when it would be wrong: schedules on the in-memory state store would fire every tick
    in every worker."""
    schedules = [
        name for name, spec in app.tasks.items() if isinstance(spec.source, ScheduleSource)
    ]
    if schedules and isinstance(app.state, InMemoryStateStore):
        names = ", ".join(repr(name) for name in schedules)
        raise ProcessesRefused(
            f"app {app.name!r} has schedule task(s) {names} but keeps its state in memory "
            f"(InMemoryStateStore): in {count} processes every worker would fire each tick. "
            f"Give the app a shared state store, where the workers claim each tick so it "
            f"fires once: OneStepApp({app.name!r}, state=SQLiteStateStore('onestep-state.db')) "
            f"for workers on one host, or state=MySQLConnector(...).state_store() "
            f"(MySQLStateStore)"
        )
    notes = []
    for name, spec in app.tasks.items():
        source = spec.source
        address = getattr(source, "listen_address", None)
        if address is not None:
            host, port = address
            notes.append(
                f"task {name!r}: {type(source).__name__} on {host}:{port} is one socket "
                f"shared by the {count} workers; each worker queues the requests it accepts"
            )
        elif isinstance(source, MemoryQueue):
            notes.append(
                f"task {name!r}: its source {type(source).__name__} {spec.source_name!r} is "
                f"per worker: each of the {count} workers has its own, fed only from inside "
                f"that worker"
            )
    return notes


def target_of(app: AppCore) -> str:
    """A target (`path/to/file.py:attr` or `module:attr`) by which a fresh interpreter
    imports `app`: a module-level name of the running script (preferred) or of an
    imported module. ValueError when there is none."""
    main = sys.modules.get("__main__")
    for module in [main, *list(sys.modules.values())]:
        if module is None:
            continue
        names = [name for name, value in list(vars(module).items()) if value is app]
        if not names:
            continue
        attr = "app" if "app" in names else sorted(names)[0]
        location = _module_location(module, is_main=module is main)
        if location is not None:
            return f"{location}:{attr}"
    raise ValueError(
        f"app {app.name!r} is not a module-level name of the running script or of an "
        f"imported module, so worker processes cannot import it: assign it at module level "
        f"(app = OneStepApp(...)), or run `onestep run module:factory --processes N`"
    )


def _module_location(module: Any, *, is_main: bool) -> str | None:
    name = getattr(module, "__name__", "")
    spec = getattr(module, "__spec__", None)
    file = getattr(module, "__file__", None)
    if is_main and spec is not None and spec.name and spec.name != "__main__":
        return str(spec.name)  # python -m package.module
    if is_main or name.startswith(TARGET_MODULE_PREFIX):  # a script, or a file the CLI loaded
        return str(Path(file).resolve()) if file else None
    return str(name) if name else None

"""A script that runs its app in worker processes from Python, for the tests:

    python tests/faults/processes_script.py run     # app.run(processes=2)
    python tests/faults/processes_script.py stuck   # a ProcessSupervisor, a short margin

Each worker imports this file as a module (not as `__main__`), finds `app` and runs it;
the code under `if __name__ == "__main__":` runs in the parent only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from onestep import MemoryQueue, OneStepApp


def say(line: str) -> None:
    os.write(1, f"{line}\n".encode())  # one write: the workers share this stdout


app = OneStepApp("procs-script", shutdown_timeout_s=5.0)
jobs = MemoryQueue("jobs")


@app.on_startup
def feed(app: OneStepApp) -> None:
    jobs.put("job")


@app.task(source=jobs)
def handle(ctx: Any, item: Any) -> None:
    say(f"handled {item} in {os.environ['ONESTEP_WORKER']}")
    ctx.app.request_shutdown()  # each worker stops by itself once its job is done


def stuck() -> int:
    """Two workers whose shutdown hook hangs: killed 1 s past shutdown_timeout_s."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from onestep import configure_logging
    from onestep.processes._supervisor import ProcessSupervisor
    from tests.faults.processes_apps import stuck_at_stop

    configure_logging("INFO", "text", worker="parent")
    target = "tests/faults/processes_apps.py:stuck_at_stop"
    supervisor = ProcessSupervisor(stuck_at_stop(), target, 2, stop_margin_s=1.0)
    code = supervisor.run()
    say(f"parent: exit {code}: {supervisor.error}")
    return code


if __name__ == "__main__":
    if sys.argv[1:] == ["stuck"]:
        sys.exit(stuck())
    app.run(processes=2)
    print("parent: done", flush=True)

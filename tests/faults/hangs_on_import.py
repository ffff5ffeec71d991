"""An app module that hangs while a worker of `onestep run --processes N` imports it:
once for each marker file `hang-wN` in TEST_HANG_DIR (the import removes it first), so a
test decides which worker's next start hangs. Loaded as a target by the start-timeout
tests in tests/faults/test_processes_signals.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from onestep import MemoryQueue, OneStepApp

_marker = Path(os.environ["TEST_HANG_DIR"]) / f"hang-{os.environ.get('ONESTEP_WORKER', 'parent')}"
if _marker.exists():
    _marker.unlink()
    os.write(1, f"hanging in {os.environ.get('ONESTEP_WORKER')}\n".encode())
    threading.Event().wait()  # the hang under test: only SIGKILL ends it

app = OneStepApp("procs-hangs", shutdown_timeout_s=2.0)


@app.task(source=MemoryQueue("jobs"))
def work(ctx: Any, item: Any) -> None: ...

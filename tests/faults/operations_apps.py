"""Apps for the operations tests (tests/faults/test_operations_http.py), loaded by
`onestep run tests/faults/operations_apps.py:NAME` in a real process."""

from __future__ import annotations

from typing import Any

from onestep import MemoryQueue, OneStepApp


def fifty_and_one() -> OneStepApp:
    """51 messages: 50 succeed, the last one fails for good into a dead-letter queue."""
    app = OneStepApp("ops-demo", shutdown_timeout_s=5.0)
    jobs = MemoryQueue("jobs")
    for n in range(51):
        jobs.put(n)

    @app.task(source=jobs, emit=MemoryQueue("done"), dead_letter=MemoryQueue("dead"), name="t")
    def t(ctx: Any, item: int) -> int:
        if item == 50:
            raise ValueError("fifty is refused")
        return item

    return app

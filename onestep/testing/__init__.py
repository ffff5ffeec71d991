"""Helpers for testing onestep apps: `run_until_idle(app)` runs an app until it has
nothing left to do and returns what each task did. Called from a test's thread.

Swap the brokers for MemoryQueues (a `MemoryQueue` is a Source, a Sink and a producer,
like the RabbitMQ and MySQL queues) and a pipeline runs in-process, in milliseconds:

    results = run_until_idle(app)
    assert results["resize"] == {"succeeded": 3, "failed": 0, "retried": 0, "dead_lettered": 0}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from actors import EventRecord

from .._app import OneStepApp
from .._checks import check_delay

#: The outcomes counted per task, as the event kinds that report them.
OUTCOMES = ("succeeded", "failed", "retried", "dead_lettered")

#: How often the app is looked at while it works.
POLL_S = 0.005
#: How long it must look idle, without one event, before it counts as idle. A message
#: is in neither its source nor the task's ledger for the few instructions between the
#: two (a worker that just took it); this outlasts that window even on a loaded machine.
QUIET_S = 0.05


def run_until_idle(app: OneStepApp, timeout_s: float = 10.0) -> dict[str, dict[str, int]]:
    """Start `app`, wait until it is idle, stop it, and return per-task outcome counts:
    `{"task": {"succeeded": n, "failed": n, "retried": n, "dead_lettered": n}}`
    (`failed` counts every message given up on, dead-lettered ones included).

    Idle means: every source that can tell how many messages wait for it is empty
    (`depth()`, else `qsize()`: a MemoryQueue counts its delayed retries, a RabbitMQ
    queue its delay queues, a table queue its pending rows), no task has a message in
    flight (fetched and not settled: running, waiting to retry or to be published), and
    this held for QUIET_S with no event. Sources that cannot tell (a schedule, a custom
    source without `depth`) do not hold it up. Results stay in their sinks.

    Raises TimeoutError naming what was still busy if the app is not idle within
    `timeout_s`, and whatever stopped the app if it failed (AppFailed). The app is
    always stopped (gracefully: in-flight work gets its `shutdown_timeout_s`), and
    the caller's event handlers see the same events as in a run.
    """
    timeout = check_delay("timeout_s", timeout_s, exclusive=True)
    counts = {name: dict.fromkeys(OUTCOMES, 0) for name in app.tasks}
    tally = _OutcomeCounter(counts)
    app._event_taps.append(tally)
    try:
        app.start()
        try:
            busy = _wait_idle(app, tally, time.monotonic() + timeout)
        finally:
            app.stop()
    finally:
        app._event_taps.remove(tally)
    if app.failure is not None:
        raise app.failure
    if busy:
        raise TimeoutError(f"app {app.name!r} was not idle after {timeout:g} s: {'; '.join(busy)}")
    return counts


class _OutcomeCounter:
    """Counts outcomes per task; called with each event record on the event actor's
    thread."""

    def __init__(self, counts: dict[str, dict[str, int]]) -> None:
        self.counts = counts
        self.events = 0
        #: Events of any kind per task, to name the tasks still working at a timeout.
        self.per_task: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, record: EventRecord) -> None:
        kind, task = record[0], record[1]
        with self._lock:
            self.events += 1
            self.per_task[task] = self.per_task.get(task, 0) + 1
            outcomes = self.counts.get(task)
            if outcomes is not None and kind in outcomes:
                outcomes[kind] += 1

    def active_since(self, before: dict[str, int]) -> list[str]:
        """The tasks with events since `before` (a copy of `per_task`)."""
        with self._lock:
            return [task for task, n in self.per_task.items() if before.get(task) != n]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.per_task)


def _wait_idle(app: OneStepApp, tally: _OutcomeCounter, deadline: float) -> list[str]:
    """Poll until the app has looked idle for QUIET_S; returns [] then, or what was
    busy at the deadline. Returns early ([]) when the app stops by itself."""
    pause = threading.Event()
    idle_since: float | None = None
    events_then = -1
    # what was busy when last something was, and the events per task a poll ago: a
    # message in transit between a source and a ledger shows in neither, so at the
    # deadline these name what kept working
    last_busy: list[str] = []
    per_task_then: dict[str, int] = {}
    while not app.wait_for_shutdown_request(0):
        now = time.monotonic()
        busy = _busy(app)
        events = tally.events
        if busy:
            last_busy = busy
        if busy or events != events_then:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= QUIET_S:
            return []
        events_then = events
        if now >= deadline:
            named = busy or last_busy
            named += [
                f"task {task!r} kept handling messages"
                for task in tally.active_since(per_task_then)
                if not any(f"task {task!r}" in phrase for phrase in named)
            ]
            return named or ["events kept coming"]
        per_task_then = tally.snapshot()
        pause.wait(POLL_S)
    return []


def _busy(app: OneStepApp) -> list[str]:
    """What keeps the app from being idle, one phrase per task or source."""
    system = app._system
    if system is None:
        return []
    busy = []
    for runtime in system.runtimes:
        in_flight = len(runtime.ledger)
        if in_flight:
            busy.append(f"task {runtime.task.name!r} has {in_flight} message(s) in flight")
    for spec in app.tasks.values():
        if spec.source is None:
            continue
        try:
            waiting = source_depth(spec.source)
        except Exception as exc:
            busy.append(
                f"source {spec.source_name!r} of task {spec.name!r} cannot tell its depth: "
                f"{type(exc).__name__}: {exc}"
            )
            continue
        if waiting:
            busy.append(
                f"source {spec.source_name!r} of task {spec.name!r} has {waiting} message(s) "
                "waiting"
            )
    return busy


def source_depth(source: Any) -> int | None:
    """How many messages wait in `source`: its `depth()`, else its `qsize()`, else None
    (it cannot tell). Runs on the calling thread."""
    depth: Callable[[], Any] | None = getattr(source, "depth", None)
    if not callable(depth):
        depth = getattr(source, "qsize", None)
    if not callable(depth):
        return None
    value = depth()
    return None if value is None else int(value)

"""The machinery under `onestep.testing.conformance`: one app run on one queue handle in a
thread of its own, and the record of every execution its handler saw.

Used by `check_queue` only, on the thread that calls it; handlers run on the app's worker
threads. It imports onestep's public names only, as a connector's own tests would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onestep import OneStepApp, RetryPolicy, TaskContext
from onestep.kit import Failure

#: What the handler does with one execution: None succeeds, a number fails it and asks
#: for a retry after that many seconds, GIVE_UP fails it for good (the source's `fail`),
#: HOLD keeps it running until the app has stopped (shutdown releases it).
Action = float | str | None
GIVE_UP = "give-up"
HOLD = "hold"


class RetryIn(Exception):
    """Raised by the suite's handler to have the message retried after `str(exc)` s."""


class GiveUp(Exception):
    """Raised by the suite's handler to have the message failed at its source."""


class ScriptedRetry(RetryPolicy):
    """Retries a RetryIn after the delay it names, gives up on anything else. Runs on the
    supervisor's thread."""

    def next_delay(self, attempts: int, failure: Failure) -> float | None:
        if failure.exception_type == RetryIn.__name__:
            return float(failure.message)
        return None


@dataclass(frozen=True)
class Execution:
    """One call of the handler with one of the suite's messages."""

    run: int
    label: str
    payload: Any
    meta: dict[str, Any]
    attempts: int
    #: time.monotonic() when the handler started.
    at: float


class Recorder:
    """Every execution of the suite's messages, in order. `add` runs on the apps' worker
    threads; the rest on the thread running the suite."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        # per (run, label), in order: a queue that redelivers without end (an ack that
        # puts the message back) makes thousands, and each wait looks at them often
        self._executions: dict[tuple[int, str], list[Execution]] = {}
        self._changed = threading.Condition()

    def label_of(self, payload: Any) -> str | None:
        """The label of one of this suite's message bodies; None for anything else (a
        message left in the queue by someone else)."""
        if isinstance(payload, dict) and payload.get("run") == self.run_id:
            label = payload.get("conformance")
            return label if isinstance(label, str) else None
        return None

    def add(self, execution: Execution) -> int:
        """Record `execution`; returns how many executions of its label its run saw
        before."""
        with self._changed:
            seen = self._executions.setdefault((execution.run, execution.label), [])
            seen.append(execution)
            self._changed.notify_all()
        return len(seen) - 1

    def of(self, label: str, run: int | None = None) -> list[Execution]:
        """The executions of `label` (in run `run` only, when given), in order."""
        with self._changed:
            if run is not None:
                return list(self._executions.get((run, label), ()))
            runs = sorted(key for key in self._executions if key[1] == label)
            return [seen for key in runs for seen in self._executions[key]]

    def wake(self) -> None:
        """Have `wait_for` look again (an app stopped)."""
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `predicate()` (called without the lock held) is true or `timeout_s`
        passed; returns its last value."""
        deadline = time.monotonic() + timeout_s
        while True:
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                # woken by each execution; the bound re-checks conditions that no
                # execution announces (an app that stopped between two looks)
                self._changed.wait(min(remaining, 0.1))


class AppRun:
    """One OneStepApp with one task on `queue`, run by `app.run()` in a thread of its own
    and stopped with `request_shutdown()`. The task's handler records each execution of
    the suite's messages and does what `script(label, run, index)` says."""

    def __init__(
        self,
        run: int,
        queue: Any,
        recorder: Recorder,
        script: Callable[[str, int, int], Action],
        *,
        shutdown_timeout_s: float,
    ) -> None:
        self.run = run
        self.recorder = recorder
        self.script = script
        #: Set once the app has stopped: a held execution may then return.
        self.gate = threading.Event()
        #: What `app.run()` raised, if anything.
        self.error: BaseException | None = None
        self.app = OneStepApp(f"conformance-{run}", shutdown_timeout_s=shutdown_timeout_s)
        self.app.task(source=queue, name="conformance", retry=ScriptedRetry(), concurrency=1)(
            self._handle
        )
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"conformance-app-{run}")

    def start(self) -> None:
        self._thread.start()

    @property
    def ended(self) -> bool:
        """Whether `app.run()` returned (stopped, or failed to start)."""
        return self._ended.is_set()

    def _run(self) -> None:
        """The thread running the app."""
        try:
            self.app.run()
        except BaseException as exc:
            self.error = exc
        finally:
            self._ended.set()
            self.recorder.wake()

    def _handle(self, ctx: TaskContext, item: Any) -> None:
        """The task's handler; runs on the app's worker thread."""
        label = self.recorder.label_of(item)
        if label is None:
            return  # not the suite's: acked and forgotten
        delivery = ctx.current
        execution = Execution(
            self.run, label, item, dict(delivery.meta), delivery.attempts, time.monotonic()
        )
        action = self.script(label, self.run, self.recorder.add(execution))
        if action is None:
            return
        if action == GIVE_UP:
            raise GiveUp(label)
        if action == HOLD:
            self.gate.wait(60.0)  # released by stop(); the bound frees a forgotten thread
            return
        raise RetryIn(repr(float(action)))

    def stop(self, timeout_s: float) -> str | None:
        """Ask the app to stop, wait for its thread, then let held executions return;
        returns what went wrong (the app failed, or did not stop in time), else None."""
        self.app.request_shutdown()
        self._thread.join(timeout_s + self.app.shutdown_timeout_s)
        self.gate.set()
        if self._thread.is_alive():
            return f"app {self.app.name!r} did not stop within {timeout_s:g} s"
        if self.error is not None:
            return f"app {self.app.name!r} failed: {type(self.error).__name__}: {self.error}"
        return None

"""Worker: a thread of a task that runs its sync handler, one delivery at a time.

Started and replaced by the TaskActor; in direct mode a worker also takes its deliveries
from the source and settles them itself. A worker whose thread ends on an error outside
the handler (the handler's own errors fail its message only) tells the TaskActor, which
has it replaced.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ._admission import run_gated_direct
from ._base import tell_quietly
from ._failure import failure_from

if TYPE_CHECKING:
    from ._runtime import TaskRuntime

logger = logging.getLogger("onestep.actors.task")

# Put on the work queue once per worker to stop it.
STOP_WORKER = object()
# How often an idle direct-mode worker looks at the stop flag.
_IDLE_CHECK_S = 0.1


class Worker:
    """One thread running a sync handler, one delivery at a time."""

    def __init__(self, runtime: TaskRuntime, index: int) -> None:
        self.runtime = runtime
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.current: Any = None
        self.deadline = 0.0
        self.watched = False
        self.abandoned = False
        # where the handler runs: the task's own invoke here, or its executor's run
        # (worker processes); chosen once, so the thread executor's path costs nothing
        executor = runtime.task.executor
        self.invoke = runtime.task.invoke if executor is None else executor.run
        self.thread = threading.Thread(
            target=self._main, name=f"onestep-{runtime.task.name}-worker-{index}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        """The thread's body: the worker loop, and a report if it dies of an error (a
        reply callback or an event emitter that raised, say) instead of returning."""
        try:
            self._run()
        except BaseException as exc:
            runtime = self.runtime
            if runtime.cutoff or runtime.ledger.stopping:
                logger.debug("task %r: a worker ended during shutdown: %r", runtime.task.name, exc)
                return
            logger.critical("task %r: worker thread died", runtime.task.name, exc_info=exc)
            tell_quietly(runtime.actor_ref, WorkerDied(self, exc))

    def _run(self) -> None:
        """The worker loop; runs on this worker's thread."""
        if self.runtime.direct:
            if self.runtime.admission is not None:
                run_gated_direct(self)  # flow control: actors/_admission.py
            else:
                self._run_direct()
            return
        runtime = self.runtime
        work = runtime.work
        # an executor enforces the deadline itself: its worker thread is never abandoned
        timed = runtime.task.timeout_s is not None and runtime.task.executor is None
        while True:
            delivery = work.get()
            if delivery is STOP_WORKER:
                return
            if runtime.cutoff:
                continue
            if timed:
                self._run_timed(delivery)
                if self.abandoned:
                    return
            else:
                self._run_untimed(delivery)

    def _run_direct(self) -> None:
        """Take from a thread-safe source one delivery at a time; settle inline.

        Each worker holds one credit: when its delivery is settled elsewhere (a failure
        through the supervisor, a result through a sink actor) it waits for that first.
        """
        runtime = self.runtime
        ledger = runtime.ledger
        source = runtime.source
        take = source.take
        # an executor enforces the deadline itself: its worker thread is never abandoned
        timed = runtime.task.timeout_s is not None and runtime.task.executor is None
        announce = runtime.announces
        settled = threading.Event()
        while not runtime.source_open.wait(_IDLE_CHECK_S):
            if ledger.stopping:
                return
        while not ledger.stopping:
            try:
                batch = take(1, _IDLE_CHECK_S)
            except Exception:
                logger.exception("task %r: take() on its source failed", runtime.task.name)
                continue
            if not batch:
                continue
            delivery = batch[0]
            if not ledger.add(delivery):  # stop() came while take() waited: given back
                return
            if (announce or delivery.error is not None) and not runtime.fetched(batch):
                ledger.wait_settled(delivery, settled)
                continue
            if timed:
                self._run_timed(delivery)
                if self.abandoned:
                    return
            else:
                self._run_untimed(delivery)
            ledger.wait_settled(delivery, settled)

    def _run_untimed(self, delivery: Any) -> None:
        runtime = self.runtime
        if runtime.events is None:
            # Durations only feed events: no clock reads without an event handler.
            try:
                result = self.invoke(delivery, self.cancelled, None)
            except BaseException as exc:  # SystemExit too: it fails this message only
                runtime.failed(delivery, failure_from(exc), None)
                return
            runtime.succeeded(delivery, result, 0.0)
            return
        if runtime.announces:  # not when the events only count (metrics)
            runtime.started(delivery)
        start = time.monotonic()
        try:
            result = self.invoke(delivery, self.cancelled, None)
        except BaseException as exc:  # SystemExit too: it fails this message only
            runtime.failed(delivery, failure_from(exc), time.monotonic() - start)
            return
        runtime.succeeded(delivery, result, time.monotonic() - start)

    def _run_timed(self, delivery: Any) -> None:
        runtime = self.runtime
        timeout_s = runtime.task.timeout_s
        assert timeout_s is not None
        runtime.started(delivery)
        start = time.monotonic()
        deadline = start + timeout_s
        with self.lock:
            self.current = delivery
            self.deadline = deadline
            self.cancelled.clear()
            if not self.watched:
                self.watched = True
                runtime.timer.call_later(
                    timeout_s, tell_quietly, runtime.actor_ref, CheckDeadline(self)
                )
        try:
            result = self.invoke(delivery, self.cancelled, deadline)
            failure = None
        except BaseException as exc:
            failure = failure_from(exc)
        with self.lock:
            if self.abandoned:
                return  # the TaskActor failed this delivery as a timeout already
            self.current = None
        if failure is not None:
            runtime.failed(delivery, failure, time.monotonic() - start)
        else:
            runtime.succeeded(delivery, result, time.monotonic() - start)


class WorkerDied:
    """Tells the TaskActor that a worker thread (or, with `worker` None, an async
    puller) ended on an error."""

    __slots__ = ("error", "worker")

    def __init__(self, worker: Worker | None, error: BaseException) -> None:
        self.worker = worker
        self.error = error


class CheckDeadline:
    __slots__ = ("worker",)

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

"""TaskActor: owns one task's workers, replaces a worker stuck past its deadline or one
that died, and stops them at shutdown.

A sync handler runs on the task's worker threads (one per unit of concurrency); an async
handler runs on the shared event-loop thread through an AsyncRunner. The workers start in
`start_up()`, so that a worker that cannot start (RuntimeError: can't start new thread)
fails `app.start()` naming the task instead of this actor alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ._admission import AdmitBatch, Readmit
from ._async_runner import AsyncRunner
from ._base import RESTART, EngineActor, Request, tell_quietly
from ._failure import timeout_failure
from ._failure_log import FAILURES
from ._runtime import TaskRuntime
from ._supervisor import ActorFailed, ActorRecovered
from ._worker import STOP_WORKER, CheckDeadline, Worker, WorkerDied

logger = logging.getLogger("onestep.actors.task")

# How long stopping a task waits for all its workers together.
_WORKER_JOIN_S = 0.5


class StopTask(Request):
    __slots__ = ()


class TaskActor(EngineActor):
    """Owns one task's workers; replaces a worker stuck past its deadline."""

    def __init__(self, runtime: TaskRuntime, supervisor: Any) -> None:
        super().__init__()
        self.runtime = runtime
        runtime.actor_ref = self.actor_ref  # before start_up(): workers report to it
        self.label = f"task {runtime.task.name!r}"
        self._supervisor = supervisor
        self._workers: list[Worker] = []
        self._abandoned: list[Worker] = []
        self._next_index = 0
        self._workers_released = False
        task = runtime.task
        self.max_abandoned = max(8, 4 * task.concurrency)
        self._handlers[CheckDeadline] = self._on_check_deadline
        self._handlers[WorkerDied] = self._on_worker_died
        self._handlers[StopTask] = self._on_stop
        self._handlers[RESTART] = self._on_restart
        admission = runtime.admission
        if admission is not None:  # flow control: the gate is asked here, off the hot path
            self._handlers[AdmitBatch] = lambda message: admission.admit_batch(message.batch)
            self._handlers[Readmit] = lambda message: admission.readmit(message.delivery)
        if task.is_async:
            runtime.runner = AsyncRunner(runtime)

    def start_up(self) -> None:
        """Start a sync task's workers; runs on the task actor's thread as it starts. If
        one cannot start, the ActorSystem's Ready gets the error and its teardown's
        StopTask stops the workers started before it."""
        task = self.runtime.task
        if not task.is_async:
            if task.executor is not None:
                task.executor.start(task.concurrency)
            self._top_up()

    def _top_up(self) -> None:
        """Start workers until there is one per unit of concurrency."""
        while len(self._workers) < self.runtime.task.concurrency and not self.runtime.cutoff:
            self._spawn()

    def _spawn(self) -> None:
        worker = Worker(self.runtime, self._next_index)
        self._next_index += 1
        worker.start()  # may raise (can't start new thread): then it is not one of ours
        self._workers.append(worker)

    def _on_worker_died(self, message: WorkerDied) -> None:
        """A worker thread (or an async puller) ended on an error outside the handler:
        the supervisor restarts this actor after a backoff, which starts a replacement;
        runs on the task actor's thread."""
        if message.worker in self._workers:
            self._workers.remove(message.worker)
        if self.runtime.cutoff:
            return
        self._supervisor.tell(ActorFailed(self.actor_ref, self.label, message.error))

    def on_crash(self, exc: BaseException) -> None:
        """A handler of this actor raised (a replacement worker that cannot start, say):
        an actor failure, restarted with backoff by the supervisor."""
        super().on_crash(exc)
        if not self.runtime.cutoff:
            self._supervisor.tell(ActorFailed(self.actor_ref, self.label, exc))

    def _on_check_deadline(self, message: CheckDeadline) -> None:
        """Runs on the task actor's thread when a worker's deadline may have passed."""
        worker = message.worker
        runtime = self.runtime
        with worker.lock:
            if worker.abandoned or worker.current is None:
                worker.watched = False
                return
            remaining = worker.deadline - time.monotonic()
            if remaining > 0:
                runtime.timer.call_later(remaining, tell_quietly, runtime.actor_ref, message)
                return
            delivery = worker.current
            worker.current = None
            worker.abandoned = True
            worker.cancelled.set()
        timeout_s = runtime.task.timeout_s or 0.0
        runtime.failed(delivery, timeout_failure(timeout_s, worker.thread.ident), timeout_s)
        self._workers.remove(worker)
        self._abandoned = [w for w in self._abandoned if w.thread.is_alive()]
        self._abandoned.append(worker)
        FAILURES.timed_out(
            runtime.task.name,
            delivery.attempts + 1,
            timeout_s,
            f"its thread is abandoned ({len(self._abandoned)} stuck)",
        )
        if not runtime.cutoff:
            self._spawn()
        if len(self._abandoned) > self.max_abandoned:
            self._supervisor.tell(
                ActorFailed(
                    self.actor_ref,
                    self.label,
                    RuntimeError(
                        f"{len(self._abandoned)} handler threads are stuck past their "
                        f"deadline (cap {self.max_abandoned})"
                    ),
                )
            )

    def _on_restart(self, _: Any) -> None:
        """Runs on the task actor's thread after a failure's backoff: replace the workers
        (or async pullers) that died, and report the task healthy again unless too many
        of its threads are still stuck past their deadline."""
        self._abandoned = [w for w in self._abandoned if w.thread.is_alive()]
        runtime = self.runtime
        if runtime.cutoff:
            return
        if len(self._abandoned) <= self.max_abandoned:
            # told first: a replacement that cannot start fails the actor again at once
            logger.info("%s restarted", self.label)
            self._supervisor.tell(ActorRecovered(self.label))
        runner = runtime.runner
        if runner is not None:
            if runtime.direct and runtime.source_open.is_set():
                runtime.loop.call_soon(runner.top_up_pullers)
        else:
            self._top_up()

    def _on_stop(self, _: StopTask) -> None:
        """Stop the workers after the shutdown cut-off; runs on the task actor's thread."""
        runtime = self.runtime
        if runtime.task.is_async:
            if runtime.runner is not None:
                runtime.loop.wait(_cancel(runtime.runner))
            return
        self._release_workers()
        for worker in self._abandoned:
            worker.cancelled.set()
        # One short budget for all of them: a handler still stuck after the cut-off has
        # had its delivery released already, and its daemon thread is left to finish.
        deadline = time.monotonic() + _WORKER_JOIN_S
        for worker in self._workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))
        self._stop_executor()

    def _stop_executor(self) -> None:
        executor = self.runtime.task.executor
        if executor is not None:
            executor.stop()

    def _release_workers(self) -> None:
        """Tell every worker to stop once its current delivery is done (once)."""
        workers, self._workers_released = self._workers, True
        for worker in workers:
            worker.cancelled.set()
            self.runtime.work.put(STOP_WORKER)

    def on_stop(self) -> None:
        """Runs on the task actor's thread as it stops. Normally StopTask has stopped the
        workers already; if something else stopped this actor (pykka's stop_all), its
        workers are told to stop here so that none outlives it."""
        if not self._workers_released:
            self._release_workers()
        self._stop_executor()


async def _cancel(runner: AsyncRunner) -> None:
    runner.cancel_all()
    if runner.tasks:
        await asyncio.wait(list(runner.tasks), timeout=1.0)

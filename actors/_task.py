"""TaskActor: owns one task's workers, replaces a worker stuck past its deadline, and
stops them at shutdown.

A sync handler runs on the task's worker threads (one per unit of concurrency); an async
handler runs on the shared event-loop thread through an AsyncRunner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ._async_runner import AsyncRunner
from ._base import RESTART, EngineActor, Request, tell_quietly
from ._failure import timeout_failure
from ._runtime import TaskRuntime
from ._worker import STOP_WORKER, CheckDeadline, Worker

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
        self.label = f"task {runtime.task.name!r}"
        self._supervisor = supervisor
        self._workers: list[Worker] = []
        self._abandoned: list[Worker] = []
        self._next_index = 0
        task = runtime.task
        self.max_abandoned = max(8, 4 * task.concurrency)
        self._handlers[CheckDeadline] = self._on_check_deadline
        self._handlers[StopTask] = self._on_stop
        self._handlers[RESTART] = self._on_restart
        if task.is_async:
            runtime.runner = AsyncRunner(runtime)

    def on_start(self) -> None:
        if not self.runtime.task.is_async:
            for _ in range(self.runtime.task.concurrency):
                self._spawn()

    def _spawn(self) -> None:
        worker = Worker(self.runtime, self._next_index)
        self._next_index += 1
        self._workers.append(worker)
        worker.start()

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
        logger.warning(
            "%s: handler exceeded timeout_s=%s; its thread is abandoned (%d stuck)",
            self.label,
            timeout_s,
            len(self._abandoned),
        )
        if not runtime.cutoff:
            self._spawn()
        if len(self._abandoned) > self.max_abandoned:
            from ._supervisor import ActorFailed

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
        self._abandoned = [w for w in self._abandoned if w.thread.is_alive()]

    @property
    def abandoned_threads(self) -> int:
        return sum(1 for w in self._abandoned if w.thread.is_alive())

    def _on_stop(self, _: StopTask) -> None:
        """Stop the workers after the shutdown cut-off; runs on the task actor's thread."""
        runtime = self.runtime
        if runtime.task.is_async:
            if runtime.runner is not None:
                runtime.loop.wait(_cancel(runtime.runner))
            return
        for worker in self._workers:
            worker.cancelled.set()
            runtime.work.put(STOP_WORKER)
        for worker in self._abandoned:
            worker.cancelled.set()
        # One short budget for all of them: a handler still stuck after the cut-off has
        # had its delivery released already, and its daemon thread is left to finish.
        deadline = time.monotonic() + _WORKER_JOIN_S
        for worker in self._workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))


async def _cancel(runner: AsyncRunner) -> None:
    runner.cancel_all()
    if runner.tasks:
        await asyncio.wait(list(runner.tasks), timeout=1.0)

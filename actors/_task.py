"""TaskActor and its workers: where handlers run and how a finished message leaves.

A sync handler runs on the task's worker threads (one per unit of concurrency); an async
handler runs on the shared event-loop thread. Results go to the emit sinks and then the
delivery is settled on its SourceActor; failures go to the Supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from ._base import ACK, FAIL, RESTART, RETRY, EngineActor, Request, Settle, tell_quietly
from ._events import EventEmitter
from ._failure import failure_from, timeout_failure
from ._ledger import Ledger
from ._loop import EventLoopThread
from ._ports import Failure, TaskPort
from ._sink import PublishJob, SinkRoute
from ._timer import Timer

logger = logging.getLogger("onestep.actors.task")

_STOP = object()
# How often an idle direct-mode worker looks at the stop flag.
_IDLE_CHECK_S = 0.1
# How long stopping a task waits for all its workers together.
_WORKER_JOIN_S = 0.5


class MessageFailed:
    """Tells the Supervisor that a handler failed on one delivery."""

    __slots__ = ("delivery", "duration_s", "failure", "runtime")

    def __init__(
        self, runtime: TaskRuntime, delivery: Any, failure: Failure, duration_s: float | None
    ) -> None:
        self.runtime = runtime
        self.delivery = delivery
        self.failure = failure
        self.duration_s = duration_s


def _supports_direct_mode(source: Any, is_async: bool) -> bool:
    if source is None or not getattr(source, "thread_safe", False):
        return False
    if is_async:
        return callable(getattr(source, "subscribe", None))
    return callable(getattr(source, "take", None))


class TaskRuntime:
    """Everything one task needs at run time, shared by its actor, workers and runner.

    Not an actor itself: its methods say which thread calls them.

    In *direct mode* (a source that declares `thread_safe`, such as MemoryQueue) the
    sync workers `take` and settle deliveries themselves, and an async task's coroutine
    pullers `fetch` on the event-loop thread and wait for the source's `subscribe`
    wakeup. A hand-off between two threads costs about 20 us here (a SimpleQueue
    ping-pong does 25,000 round trips/s), so routing every delivery through the
    SourceActor capped a concurrency-1 task near 20,000 msgs/s; direct mode runs the
    whole cycle on one thread (benchmarks/memory_pipeline.py: sync-c1 185,000 and
    async-c1 245,000 msgs/s).
    """

    def __init__(
        self,
        task: TaskPort,
        source: Any,
        *,
        loop: EventLoopThread,
        timer: Timer,
        emit: Sequence[SinkRoute],
        dead_letter: Sequence[SinkRoute],
        events: EventEmitter | None,
    ) -> None:
        self.task = task
        self.source = source
        self.loop = loop
        self.timer = timer
        self.emit = tuple(emit)
        self.dead_letter = tuple(dead_letter)
        self.events = events
        self.direct = _supports_direct_mode(source, task.is_async)
        self.ledger = Ledger(task.concurrency)
        # Direct mode: set once the SourceActor has opened the source.
        self.source_open = threading.Event()
        self.source_ref: Any = None
        self.supervisor_ref: Any = None
        self.actor_ref: Any = None
        # Set at the shutdown cut-off: what has not started by then is not started.
        self.cutoff = False
        self.work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.runner: AsyncRunner | None = None

    # -- called by the SourceActor (or a direct-mode worker) after a fetch ----------------

    def open_direct(self) -> None:
        """The source is open: let the workers (or coroutine pullers) take from it."""
        self.source_open.set()
        if self.runner is not None:
            self.loop.call_soon(self.runner.start_pullers)

    def fetched(self, batch: list[Any]) -> list[Any]:
        """Emit `fetched` events and route undecodable deliveries to the supervisor;
        return the deliveries for the handler."""
        events = self.events
        if events is not None:
            for delivery in batch:
                events.emit("fetched", delivery)
        ready = batch
        if any(delivery.error is not None for delivery in batch):
            ready = []
            for delivery in batch:
                if delivery.error is None:
                    ready.append(delivery)
                else:
                    self.failed(delivery, failure_from(delivery.error, "decode"), None)
        return ready

    def dispatch(self, ready: list[Any]) -> None:
        """Hand deliveries to the handler side; runs on the SourceActor's thread."""
        if self.task.is_async:
            if ready and self.runner is not None:
                self.loop.call_soon(self.runner.start_batch, ready)
        else:
            put = self.work.put
            for delivery in ready:
                put(delivery)

    def cancelled(self, delivery: Any) -> None:
        if self.events is not None:
            self.events.emit("cancelled", delivery)

    # -- settling: any thread ----------------------------------------------------------

    def settle(
        self,
        delivery: Any,
        action: str,
        delay_s: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Settle on the SourceActor, or right here for a direct-mode source."""
        if not self.direct:
            self.source_ref.tell(Settle(delivery, action, delay_s, error))
            return
        if not self.ledger.remove(delivery):
            return
        source = self.source
        try:
            if action is ACK:
                source.ack(delivery)
            elif action is RETRY:
                source.retry(delivery, delay_s)
                if delay_s and self.runner is not None:
                    # an async task's pullers sleep until woken: wake them when it is due
                    self.timer.call_later(delay_s, self.runner.wake_up)
            elif action is FAIL:
                source.fail(delivery, error)
            else:
                source.release(delivery)
        except Exception:
            logger.exception("task %r: %s on its source failed", self.task.name, action)

    # -- called where a handler finished: a worker thread or the event-loop thread --------

    def started(self, delivery: Any) -> None:
        if self.events is not None:
            self.events.emit("started", delivery)

    def succeeded(self, delivery: Any, result: Any, duration_s: float) -> None:
        if self.cutoff:
            return  # the SourceActor already released this delivery at shutdown
        if result is None or not self.emit:
            self.settle(delivery, ACK)
            if self.events is not None:
                self.events.emit("succeeded", delivery, duration_s)
            return
        PublishJob(result, None, self.emit, self._published, (delivery, duration_s)).advance()

    def _published(self, job: PublishJob, error: BaseException | None) -> None:
        """Runs where the last sink accepted: a worker, the loop or a SinkActor thread."""
        delivery, duration_s = job.context
        if error is not None:
            self.failed(delivery, failure_from(error), duration_s)
            return
        self.settle(delivery, ACK)
        if self.events is not None:
            self.events.emit("succeeded", delivery, duration_s)

    def failed(self, delivery: Any, failure: Failure, duration_s: float | None) -> None:
        if self.cutoff and failure.kind != "decode":
            return
        self.supervisor_ref.tell(MessageFailed(self, delivery, failure, duration_s))


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
        self.thread = threading.Thread(
            target=self._run, name=f"onestep-{runtime.task.name}-worker-{index}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        """The worker loop; runs on this worker's thread."""
        if self.runtime.direct:
            self._run_direct()
            return
        runtime = self.runtime
        work = runtime.work
        timed = runtime.task.timeout_s is not None
        while True:
            delivery = work.get()
            if delivery is _STOP:
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
        timed = runtime.task.timeout_s is not None
        events = runtime.events
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
            if ledger.is_stopping():  # stop() may have come while take() waited
                source.release(delivery)
                return
            ledger.add(delivery)
            if (events is not None or delivery.error is not None) and not runtime.fetched(batch):
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
        runtime.started(delivery)
        start = time.monotonic()
        try:
            result = runtime.task.invoke(delivery, self.cancelled, None)
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
            result = runtime.task.invoke(delivery, self.cancelled, deadline)
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


class CheckDeadline:
    __slots__ = ("worker",)

    def __init__(self, worker: Worker) -> None:
        self.worker = worker


class StopTask(Request):
    __slots__ = ()


class AsyncRunner:
    """Runs an async handler's deliveries as tasks on the shared event loop."""

    def __init__(self, runtime: TaskRuntime) -> None:
        self.runtime = runtime
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake: asyncio.Event | None = None

    def _track(self, coro: Any) -> None:
        task = self.runtime.loop.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start_batch(self, batch: list[Any]) -> None:
        """Runs on the event-loop thread."""
        for delivery in batch:
            self._track(self._run(delivery))

    # -- direct mode ---------------------------------------------------------------------

    def start_pullers(self) -> None:
        """Start one puller per credit; runs on the event-loop thread."""
        self.wake = asyncio.Event()
        self.runtime.source.subscribe(self.wake_up)
        self.runtime.ledger.on_free = self.wake_up
        for _ in range(self.runtime.task.concurrency):
            self._track(self._pull())

    def wake_up(self) -> None:
        """Called by the source when it has messages and by the ledger when a credit is
        free, from any thread."""
        loop = self.runtime.loop
        if threading.get_ident() == loop.thread.ident:
            if self.wake is not None:
                self.wake.set()
        else:
            loop.call_soon(self.wake_up)

    async def _pull(self) -> None:
        """Fetch one delivery at a time while a credit is free and run it inline; one
        thread hop fewer per message than dispatching from the SourceActor
        (async-c1: 19,000 -> see benchmarks/README.md)."""
        runtime = self.runtime
        ledger = runtime.ledger
        fetch = runtime.source.fetch
        wake = self.wake
        assert wake is not None
        events = runtime.events
        while not ledger.stopping:
            wake.clear()
            if ledger.free() <= 0:
                await wake.wait()
                continue
            batch = fetch(1)
            if not batch:
                await wake.wait()
                continue
            delivery = batch[0]
            ledger.add(delivery)
            if (events is not None or delivery.error is not None) and not runtime.fetched(batch):
                continue
            await self._run(delivery)

    async def _run(self, delivery: Any) -> None:
        runtime = self.runtime
        if runtime.cutoff:
            return
        timeout_s = runtime.task.timeout_s
        runtime.started(delivery)
        start = time.monotonic()
        try:
            if timeout_s is None:
                result = await runtime.task.invoke_async(delivery, None)
            else:
                scope = asyncio.timeout(timeout_s)
                try:
                    async with scope:
                        result = await runtime.task.invoke_async(delivery, start + timeout_s)
                except TimeoutError:
                    if not scope.expired():
                        raise
                    runtime.failed(delivery, timeout_failure(timeout_s), timeout_s)
                    return
        except asyncio.CancelledError:
            if self.runtime.cutoff:
                return  # shutdown released it back to its source
            cancelled = asyncio.CancelledError("handler was cancelled")
            runtime.failed(delivery, failure_from(cancelled), None)
            return
        except BaseException as exc:  # SystemExit too: it fails this message only
            runtime.failed(delivery, failure_from(exc), time.monotonic() - start)
            return
        runtime.succeeded(delivery, result, time.monotonic() - start)

    def cancel_all(self) -> None:
        """Runs on the event-loop thread at the shutdown cut-off."""
        for task in list(self.tasks):
            task.cancel()


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
            runtime.work.put(_STOP)
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

"""AsyncRunner: runs an async task's deliveries as coroutines on the shared event loop.

Every method runs on the event-loop thread unless it says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ._admission import pull_gated
from ._base import tell_quietly
from ._failure import failure_from, timeout_failure
from ._runtime import subscribe_source
from ._worker import WorkerDied

if TYPE_CHECKING:
    from ._runtime import TaskRuntime

logger = logging.getLogger("onestep.actors.task")


class AsyncRunner:
    """Runs an async handler's deliveries as tasks on the shared event loop."""

    def __init__(self, runtime: TaskRuntime) -> None:
        self.runtime = runtime
        self.tasks: set[asyncio.Task[None]] = set()
        self._pullers: set[asyncio.Task[None]] = set()
        self._parked: deque[asyncio.Future[None]] = deque()
        self._wake_scheduled = False
        # read once: wake_up() runs after every settled delivery (the ledger's on_free)
        self._loop_ident = runtime.loop.thread.ident

    def _track(self, coro: Any) -> asyncio.Task[None]:
        task = self.runtime.loop.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def start_batch(self, batch: list[Any]) -> None:
        """Runs on the event-loop thread."""
        for delivery in batch:
            self._track(self._run(delivery))

    # -- direct mode ---------------------------------------------------------------------

    def start_pullers(self) -> None:
        """Start one puller per credit; runs on the event-loop thread."""
        runtime = self.runtime
        runtime.source_wakes_when_due = subscribe_source(
            runtime.source, self.wake_up, runtime.timer
        )
        runtime.ledger.on_free = self.wake_up
        self.top_up_pullers()

    def top_up_pullers(self) -> None:
        """Start pullers until there is one per credit; runs on the event-loop thread (at
        start, and when the TaskActor restarts after a puller died)."""
        runtime = self.runtime
        while len(self._pullers) < runtime.task.concurrency and not runtime.ledger.stopping:
            gated = runtime.admission is not None  # flow control: actors/_admission.py
            puller = self._track(pull_gated(self) if gated else self._pull())
            self._pullers.add(puller)
            puller.add_done_callback(self._puller_done)

    def _puller_done(self, puller: asyncio.Task[None]) -> None:
        """A puller ended: at shutdown, or on an error outside the handler (a reply
        callback that raised, say), which the TaskActor hears of so that the supervisor
        restarts it (with a new puller) instead of the task losing a credit silently."""
        self._pullers.discard(puller)
        if puller.cancelled() or self.runtime.cutoff:
            return
        error = puller.exception()
        if error is None:
            return
        task_name = self.runtime.task.name
        logger.critical("task %r: a puller died", task_name, exc_info=error)
        tell_quietly(self.runtime.actor_ref, WorkerDied(None, error))

    def wake_up(self) -> None:
        """Called by the source when it has messages and by the ledger when a credit is
        free, from any thread: wakes as many parked pullers as there are free credits
        (at least one), not all of them (with 500 pullers, waking all cost more than
        the handlers: benchmarks/mysql.py sink case)."""
        if threading.get_ident() != self._loop_ident:
            if not self._wake_scheduled:
                # one call_soon_threadsafe (a write to the loop's self-pipe) per loop
                # turn, not one per settled message
                self._wake_scheduled = True
                self.runtime.loop.call_soon(self.wake_up)
            return
        self._wake_scheduled = False
        parked = self._parked
        if not parked:
            return  # the usual case after an inline settle: nobody waits (async-c1 +8%)
        for _ in range(min(len(parked), max(1, self.runtime.ledger.free()))):
            waiter = parked.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _park(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = self.runtime.loop.loop.create_future()
        self._parked.append(waiter)
        return waiter

    async def _pull(self) -> None:
        """Fetch one delivery at a time while a credit is free and run it inline; one
        thread hop fewer per message than dispatching from the SourceActor (async-c1:
        19,000 -> 250,000 msgs/s, benchmarks/memory_pipeline.py)."""
        runtime = self.runtime
        ledger = runtime.ledger
        fetch = runtime.source.fetch
        announce = runtime.announces
        plain = runtime.events is None and runtime.task.timeout_s is None
        run = self._run_plain if plain else self._run
        while not ledger.stopping:
            # checks and parking happen in one step of the loop: a wake_up that comes
            # later finds this puller parked
            if ledger.free() <= 0:
                await self._park()
                continue
            batch = fetch(1)
            if not batch:
                await self._park()
                continue
            delivery = batch[0]
            if not ledger.add(delivery):  # stop() came while we fetched it: given back
                return
            if (announce or delivery.error is not None) and not runtime.fetched(batch):
                continue
            await run(delivery)

    async def _run_plain(self, delivery: Any) -> None:
        """_run without a timeout or event handlers: durations only feed events, so no
        clock reads and no started() (async-c1: about 5% of the loop thread's samples)."""
        runtime = self.runtime
        if runtime.cutoff:
            return
        try:
            result = await runtime.task.invoke_async(delivery, None)
        except asyncio.CancelledError:
            self._cancelled(delivery)
            return
        except BaseException as exc:  # SystemExit too: it fails this message only
            runtime.failed(delivery, failure_from(exc), None)
            return
        runtime.succeeded(delivery, result, 0.0)

    def _cancelled(self, delivery: Any) -> None:
        if self.runtime.cutoff:
            return  # shutdown released it back to its source
        cancelled = asyncio.CancelledError("handler was cancelled")
        self.runtime.failed(delivery, failure_from(cancelled), None)

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
            self._cancelled(delivery)
            return
        except BaseException as exc:  # SystemExit too: it fails this message only
            runtime.failed(delivery, failure_from(exc), time.monotonic() - start)
            return
        runtime.succeeded(delivery, result, time.monotonic() - start)

    def cancel_all(self) -> None:
        """Runs on the event-loop thread at the shutdown cut-off."""
        for task in list(self.tasks):
            task.cancel()

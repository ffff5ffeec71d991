"""Admission: the seam through which flow control (rate limits, per-key slots, dedup keys)
stands in front of a task's handler, without the engine knowing what the limits are.

A task whose `gate` (an AdmissionPort) is not None gets an Admission: its direct-mode
workers ask it inline, the TaskActor asks it for the deliveries the SourceActor fetched,
and a delivery told to wait is parked on the timer and asked again later by the TaskActor,
so a waiting message holds no worker thread and no actor ever sleeps. A task without a
gate never reaches this module: its hot path is unchanged.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from ._base import RELEASE, tell_quietly
from ._failure import failure_from

if TYPE_CHECKING:
    from ._runtime import TaskRuntime

logger = logging.getLogger("onestep.actors.task")

# How often an idle gated direct-mode worker looks at the stop flag, and how long it
# waits for its source while deliveries of its task are parked (so that one admitted
# after waiting is picked up soon).
_IDLE_CHECK_S = 0.1
_PARKED_CHECK_S = 0.01
#: Direct mode: at least this many deliveries of a task may wait for its gate.
MIN_PARKED = 64


class AdmissionRefused(Exception):
    """Raised by `AdmissionPort.admit` for a delivery that must fail at once with the
    failure kind `kind` (`key`: the task's key function raised), built from `error`."""

    def __init__(self, kind: str, error: BaseException) -> None:
        super().__init__(f"{kind}: {type(error).__name__}: {error}")
        self.kind = kind
        self.error = error


class Readmit:
    """Tells the TaskActor to ask the gate again about a parked delivery."""

    __slots__ = ("delivery",)

    def __init__(self, delivery: Any) -> None:
        self.delivery = delivery


class AdmitBatch:
    """Tells the TaskActor to ask the gate about deliveries the SourceActor fetched."""

    __slots__ = ("batch",)

    def __init__(self, batch: list[Any]) -> None:
        self.batch = batch


class Admission:
    """The deliveries of one gated task that wait for the gate, and their re-admission.

    `admit` runs where a delivery first meets the gate (a direct-mode worker, or the
    TaskActor, or the event-loop thread for an async task whose gate never blocks);
    `readmit` on the TaskActor's thread; `release_parked` on the SourceActor's thread as
    it stops fetching. Parked deliveries keep their ledger entry (a credit): on the actor
    path the ledger's bound holds; in direct mode at most `max_parked` wait.
    """

    def __init__(self, runtime: TaskRuntime, gate: Any) -> None:
        self.runtime = runtime
        self.gate = gate
        self._lock = threading.Lock()
        self._parked: dict[int, Any] = {}
        self._closed = False
        # direct mode: deliveries admitted after waiting, for the workers to run
        self.ready: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # direct mode: how many may wait beside the running ones before the workers stop
        # taking new ones (a holder of a busy key may be a thread the GIL has not run for
        # 5-35 ms while the others went through thousands of messages)
        self.max_parked = max(MIN_PARKED, 4 * runtime.task.concurrency)
        if hasattr(gate, "wake"):
            gate.wake = self.wake

    def wake(self, delivery: Any) -> None:
        """The gate asks to be asked again now about a parked delivery (a slot it waits
        for was freed); any thread."""
        tell_quietly(self.runtime.actor_ref, Readmit(delivery))

    def parked(self) -> int:
        return len(self._parked)

    def admit(self, delivery: Any) -> bool:
        """Ask the gate; True when the caller may run the delivery now. Otherwise it was
        skipped (acked, event `skipped`), failed (the gate refused it) or parked."""
        try:
            wait_s = self.gate.admit(delivery)
        except Exception as exc:
            self.refused(delivery, exc)
            return False
        if wait_s == 0.0:
            return True
        self.not_now(delivery, wait_s)
        return False

    def refused(self, delivery: Any, exc: Exception) -> None:
        """The gate raised: fail the delivery (kind from AdmissionRefused, else `error`:
        a store that cannot be reached, and the retry policy applies)."""
        if isinstance(exc, AdmissionRefused):
            failure = failure_from(exc.error, exc.kind)
        else:
            failure = failure_from(exc)
        self.runtime.failed(delivery, failure, None)

    def not_now(self, delivery: Any, wait_s: float) -> None:
        """The gate said skip (below 0) or wait (above 0)."""
        runtime = self.runtime
        if wait_s < 0:
            runtime.skipped(delivery)
            return
        self._park(delivery, wait_s)

    def _park(self, delivery: Any, wait_s: float) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                self._parked[id(delivery)] = delivery
        if closed:
            self._give_back(delivery)
            return
        runtime = self.runtime
        runtime.timer.call_later(wait_s, tell_quietly, runtime.actor_ref, Readmit(delivery))

    def readmit(self, delivery: Any) -> None:
        """A parked delivery's wait is over: ask again and hand it on if admitted. Runs on
        the TaskActor's thread."""
        with self._lock:
            if self._parked.pop(id(delivery), None) is None:
                return  # released at shutdown meanwhile
        if self.admit(delivery):
            self.hand_on([delivery])

    def admit_batch(self, batch: list[Any]) -> None:
        """Deliveries the SourceActor fetched: hand on those admitted. Runs on the
        TaskActor's thread."""
        ready = [delivery for delivery in batch if self.admit(delivery)]
        if ready:
            self.hand_on(ready)

    def hand_on(self, ready: list[Any]) -> None:
        runtime = self.runtime
        if runtime.task.is_async:
            if runtime.runner is not None:
                runtime.loop.call_soon(runtime.runner.start_batch, ready)
        elif runtime.direct:
            for delivery in ready:
                self.ready.put(delivery)
        else:
            for delivery in ready:
                runtime.work.put(delivery)

    def release_parked(self) -> int:
        """Shutdown: give every waiting delivery back to its source now (attempts
        unchanged, reported `cancelled`), so that stopping never waits for a token or a
        slot. Runs on the SourceActor's thread (StopFetching); idempotent."""
        with self._lock:
            self._closed = True
            waiting = list(self._parked.values())
            self._parked.clear()
        while True:
            try:
                waiting.append(self.ready.get_nowait())
            except queue.Empty:
                break
        for delivery in waiting:
            self._give_back(delivery)
        return len(waiting)

    def _give_back(self, delivery: Any) -> None:
        self.gate.settled(delivery, RELEASE, None)  # it waited: the gate has a record
        runtime = self.runtime
        runtime.settle(delivery, RELEASE)
        runtime.cancelled(delivery)


def run_gated_direct(worker: Any) -> None:
    """The loop of a direct-mode worker whose task has a gate; runs on the worker's
    thread. It runs deliveries admitted after waiting first, takes a new one from the
    source only while fewer than `concurrency` wait, and never sleeps on a limit. While
    nothing waits, a message costs one `admit` more than in `Worker._run_direct`."""
    runtime = worker.runtime
    ledger = runtime.ledger
    admission: Admission = runtime.admission
    ready = admission.ready
    parked = admission._parked
    gate_admit = admission.gate.admit
    take = runtime.source.take
    timed = runtime.task.timeout_s is not None and runtime.task.executor is None
    announce = runtime.announces
    settled = threading.Event()
    while not runtime.source_open.wait(_IDLE_CHECK_S):
        if ledger.stopping:
            return
    while not ledger.stopping:
        if parked or not ready.empty():
            delivery = _next_after_wait(worker, admission)
            if delivery is None:
                continue
        else:
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
                continue
            try:  # Admission.admit, inlined: one call less a message
                wait_s = gate_admit(delivery)
            except Exception as exc:
                admission.refused(delivery, exc)
                continue
            if wait_s != 0.0:
                admission.not_now(delivery, wait_s)
                continue
        if timed:
            worker._run_timed(delivery)
            if worker.abandoned:
                return
        else:
            worker._run_untimed(delivery)
        ledger.wait_settled(delivery, settled)


def _next_after_wait(worker: Any, admission: Admission) -> Any:
    """While deliveries wait: one admitted after its wait, else (if fewer than
    `concurrency` wait) a new one from the source that the gate admits, else None."""
    try:
        return admission.ready.get_nowait()
    except queue.Empty:
        pass
    runtime = worker.runtime
    if admission.parked() >= admission.max_parked:
        try:
            return admission.ready.get(timeout=_IDLE_CHECK_S)
        except queue.Empty:
            return None
    try:
        batch = runtime.source.take(1, _PARKED_CHECK_S)
    except Exception:
        logger.exception("task %r: take() on its source failed", runtime.task.name)
        return None
    if not batch:
        return None
    delivery = batch[0]
    if not runtime.ledger.add(delivery):
        return None
    if (runtime.announces or delivery.error is not None) and not runtime.fetched(batch):
        return None
    return delivery if admission.admit(delivery) else None


async def pull_gated(runner: Any) -> None:
    """`AsyncRunner._pull` for a task with a gate that never blocks (an in-memory state
    store): the gate is asked on the event-loop thread, inline; a delivery told to wait
    is parked on the timer, and runs as a task of its own once admitted. Runs on the
    event-loop thread."""
    runtime = runner.runtime
    ledger = runtime.ledger
    fetch = runtime.source.fetch
    announce = runtime.announces
    admission: Admission = runtime.admission
    gate_admit = admission.gate.admit
    run = runner._run
    while not ledger.stopping:
        if ledger.free() <= 0:
            await runner._park()
            continue
        batch = fetch(1)
        if not batch:
            await runner._park()
            continue
        delivery = batch[0]
        if not ledger.add(delivery):  # stop() came while we fetched it: given back
            return
        if (announce or delivery.error is not None) and not runtime.fetched(batch):
            continue
        try:
            wait_s = gate_admit(delivery)
        except Exception as exc:
            admission.refused(delivery, exc)
            continue
        if wait_s != 0.0:
            admission.not_now(delivery, wait_s)
            continue
        await run(delivery)

"""TaskRuntime: what one task needs at run time, shared by its actor, workers and runner.

Not an actor: its methods say which thread calls them. It settles deliveries (on the
SourceActor, or inline in direct mode), publishes results and reports failures.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._admission import Admission, AdmitBatch
from ._base import ACK, FAIL, RELEASE, RETRY, Settle
from ._events import EventEmitter
from ._failure import failure_from
from ._ledger import new_ledger
from ._loop import EventLoopThread
from ._ports import Failure, TaskPort
from ._sink import PublishJob, SinkRoute
from ._timer import Timer

if TYPE_CHECKING:
    from ._async_runner import AsyncRunner

logger = logging.getLogger("onestep.actors.task")


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


def _supports_direct_mode(source: Any, is_async: bool, gate: Any = None) -> bool:
    if source is None or not getattr(source, "thread_safe", False):
        return False
    if is_async:
        if gate is not None and getattr(gate, "blocking", True):
            return False  # a gate that may block on its store: never on the loop thread
        return callable(getattr(source, "subscribe", None))
    return callable(getattr(source, "take", None))


def subscribe_source(source: Any, wakeup: Callable[[], None], timer: Timer) -> bool:
    """Call `source.subscribe(wakeup)`, passing `call_later=timer.call_later` when the
    source accepts it (MemoryQueue does: it then wakes `wakeup` itself when a delayed
    message falls due). True if it did. Runs on the subscriber's thread."""
    subscribe = source.subscribe
    try:
        parameters = inspect.signature(subscribe).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    if "call_later" in parameters:
        subscribe(wakeup, call_later=timer.call_later)
        return True
    subscribe(wakeup)
    return False


class TaskRuntime:
    """Everything one task needs at run time, shared by its actor, workers and runner.

    Not an actor itself: its methods say which thread calls them.

    In *direct mode* (a source that declares `thread_safe`, such as MemoryQueue) the
    sync workers `take` and settle deliveries themselves, and an async task's coroutine
    pullers `fetch` on the event-loop thread and wait for the source's `subscribe`
    wakeup. A hand-off between two threads costs about 20 us here (a SimpleQueue
    ping-pong does 25,000 round trips/s), so routing every delivery through the
    SourceActor capped a concurrency-1 task near 20,000 msgs/s; direct mode runs the
    whole cycle on one thread (benchmarks/memory_pipeline.py: sync-c1 230,000 and
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
        events: EventEmitter | Any,
    ) -> None:
        self.task = task
        self.source = source
        self.loop = loop
        self.timer = timer
        self.emit = tuple(emit)
        # One emit sink that accepts inline (MemoryQueue.offer): succeeded() publishes
        # without a PublishJob and its callbacks (sync-c1 +20%).
        self.single_offer = self.emit[0].offer if len(self.emit) == 1 else None
        self.dead_letter = tuple(dead_letter)
        # the meta of a returned result from its delivery (TaskPort.result_meta: tracing
        # sets it), or None: results then carry no meta
        self.result_meta: Callable[[Any], dict[str, Any] | None] | None = getattr(
            task, "result_meta", None
        )
        self.events = events
        # False when `events` only counts (metrics without event handlers, a TaskStats):
        # then no `fetched` or `started` is emitted, which nothing would read
        # (memory_pipeline --metrics, sync-c1 with/without metrics: 0.48 -> 0.85).
        self.announces = events is not None and not getattr(events, "counts_only", False)
        # Flow control (onestep's rate limits, per-key slots, dedup keys): None for a
        # task without any, which then never reaches actors/_admission.py.
        gate = getattr(task, "gate", None)
        self.direct = _supports_direct_mode(source, task.is_async, gate)
        # In direct mode a worker or puller whose add() comes after stop() has its
        # delivery given back by the ledger (thread-safe sources only, hence direct).
        self.ledger = new_ledger(task.concurrency, source.release if self.direct else None)
        # Set by subscribe_source: the source wakes its subscriber when a delayed
        # message falls due, so a delayed retry needs no wake-up of our own.
        self.source_wakes_when_due = False
        # Direct mode: set once the SourceActor has opened the source.
        self.source_open = threading.Event()
        self.source_ref: Any = None
        self.supervisor_ref: Any = None
        self.actor_ref: Any = None
        # Set at the shutdown cut-off: what has not started by then is not started.
        self.cutoff = False
        self.work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.runner: AsyncRunner | None = None
        self.gate = gate
        # the gate's `settled`, or None when it holds nothing a settle gives back
        self.gate_settled = (
            gate.settled if gate is not None and getattr(gate, "needs_settle", True) else None
        )
        self.gate_acks = getattr(gate, "settles_acks", True)
        self.admission: Admission | None = None
        if gate is not None:
            self.admission = Admission(self, gate)

    # -- called by the SourceActor (or a direct-mode worker) after a fetch ----------------

    def open_direct(self) -> None:
        """The source is open: let the workers (or coroutine pullers) take from it."""
        self.source_open.set()
        if self.runner is not None:
            self.loop.call_soon(self.runner.start_pullers)

    def fetched(self, batch: list[Any]) -> list[Any]:
        """Emit `fetched` events and route undecodable deliveries to the supervisor;
        return the deliveries for the handler."""
        if self.announces:  # implies events
            emit = self.events.emit
            for delivery in batch:
                emit("fetched", delivery)
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
        if self.admission is not None:
            if ready:
                self.actor_ref.tell(AdmitBatch(ready))  # the gate may block on its store
            return
        if self.task.is_async:
            if ready and self.runner is not None:
                self.loop.call_soon(self.runner.start_batch, ready)
        else:
            put = self.work.put
            for delivery in ready:
                put(delivery)

    def cancelled(self, delivery: Any) -> None:
        if self.gate_settled is not None:
            self.gate_settled(delivery, RELEASE, None)
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
        if self.gate_settled is not None and (
            self.gate_acks or action is not ACK or error is not None
        ):
            # frees the delivery's per-key slot, and its dedup key if it failed for good
            self.gate_settled(delivery, action, error)
        if not self.direct:
            self.source_ref.tell(Settle(delivery, action, delay_s, error))
            return
        if not self.ledger.remove(delivery):
            return
        source = self.source
        try:
            if action is ACK:
                dead_lettered = getattr(source, "dead_lettered", None)
                if error is not None and dead_lettered is not None:
                    dead_lettered(delivery, error)
                else:
                    source.ack(delivery)
            elif action is RETRY:
                source.retry(delivery, delay_s)
                if delay_s and self.runner is not None and not self.source_wakes_when_due:
                    # an async task's pullers sleep until woken: wake them when it is due
                    self.timer.call_later(delay_s, self.runner.wake_up)
            elif action is FAIL:
                source.fail(delivery, error)
            else:
                source.release(delivery)
        except Exception:
            logger.exception("task %r: %s on its source failed", self.task.name, action)

    # -- called where a handler finished: a worker thread or the event-loop thread --------

    def skipped(self, delivery: Any) -> None:
        """The gate found a duplicate: ack it without running, event `skipped`."""
        self.settle(delivery, ACK)
        if self.events is not None:
            self.events.emit("skipped", delivery)

    def started(self, delivery: Any) -> None:
        if self.announces:
            self.events.emit("started", delivery)

    def succeeded(self, delivery: Any, result: Any, duration_s: float) -> None:
        if self.cutoff:
            return  # the SourceActor already released this delivery at shutdown
        reply = getattr(delivery, "reply", None)
        if reply is not None and not self._reply_encodes(reply, delivery, result, duration_s):
            return
        if result is None or not self.emit:
            self._done(delivery, result, duration_s)
            return
        meta = None if self.result_meta is None else self.result_meta(delivery)
        offer = self.single_offer
        if offer is not None:
            try:
                accepted = offer(result, meta)
            except Exception as exc:
                self.failed(delivery, failure_from(exc), duration_s)
                return
            if accepted:
                self._done(delivery, result, duration_s)
                return
        PublishJob(result, meta, self.emit, self._published, (delivery, duration_s)).advance()

    def _reply_encodes(self, reply: Any, delivery: Any, result: Any, duration_s: float) -> bool:
        """Let a request-reply source encode the result before anything is acked or
        published: a reply with `encode(result)` that raises (an EncodeError for a result
        that is not valid JSON, say) fails the message, with kind `encode`."""
        encode = getattr(reply, "encode", None)
        if encode is None:
            return True
        try:
            encode(result)
        except Exception as exc:
            self.failed(delivery, failure_from(exc), duration_s)
            return False
        return True

    def _published(self, job: PublishJob, error: BaseException | None) -> None:
        """Runs where the last sink accepted: a worker, the loop or a SinkActor thread."""
        delivery, duration_s = job.context
        if error is not None:
            self.failed(delivery, failure_from(error), duration_s)
            return
        self._done(delivery, job.body, duration_s)

    def _done(self, delivery: Any, result: Any, duration_s: float) -> None:
        """The message succeeded and its results were accepted: ack it, report it, and
        answer a waiting requester."""
        self.settle(delivery, ACK)
        if self.events is not None:
            self.events.emit("succeeded", delivery, duration_s)
        reply = getattr(delivery, "reply", None)
        if reply is not None:
            reply(result, None)

    def gave_up(self, delivery: Any, failure: Failure) -> None:
        """The message failed for good: answer a waiting requester. Any thread."""
        reply = getattr(delivery, "reply", None)
        if reply is not None:
            reply(None, failure)

    def failed(self, delivery: Any, failure: Failure, duration_s: float | None) -> None:
        if self.cutoff and failure.kind != "decode":
            return
        self.supervisor_ref.tell(MessageFailed(self, delivery, failure, duration_s))

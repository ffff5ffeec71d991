"""MemoryQueue: the in-process queue that is both a Source and a Sink.

It is what a pipeline's stages pass messages through, and what tests run on. Every
method is thread-safe: producers call `put`/`put_many` from any thread or `await
publish` from any event loop; the runtime fetches and settles from the source actor's
thread, or, in direct mode, from the task's workers and the event-loop thread.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterable
from typing import Any

from .._values import check_delay, check_int, check_number, check_priority
from ..core import Delivery, Sink, Source, _encoding
from ..core._encoding import check_bodies, check_meta, encode_json, is_flat_json
from ._memory_store import MemoryStore

_monotonic = time.monotonic


class MemoryQueue(MemoryStore, Source, Sink):
    """A FIFO of deliveries, higher `priority` first when producers give one (a message
    without one has priority 0). `maxsize=0` means unbounded; otherwise producers (`put`,
    `put_many`, `offer`, `publish`) wait or are refused while `qsize()` (delayed messages
    included) is `maxsize` or more. Retries and releases of fetched messages always go in.

    The storage underneath (a lock-free deque, heaps of delayed and of prioritized
    messages, the waiting of consumers and of producers of a bounded queue) is
    `MemoryStore`, in `_memory_store.py`.
    """

    #: Every method may be called from any thread, so the runtime lets a sync task's
    #: workers `take` and settle directly instead of going through the source actor.
    thread_safe = True
    #: tracing's `messaging.system`
    messaging_system = "memory"

    def __init__(
        self,
        name: str,
        *,
        maxsize: int = 0,
        batch_size: int | None = None,
        poll_interval_s: float | None = None,
    ) -> None:
        """`batch_size` and `poll_interval_s` are upstream onestep's keywords, checked
        and unused: a put wakes the consumer at once (no polling), and a fetch takes as
        many messages as the task has room for."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        check_int("maxsize", maxsize, minimum=0)
        if batch_size is not None:
            check_int("batch_size", batch_size, minimum=1)
        if poll_interval_s is not None:
            check_number("poll_interval_s", poll_interval_s)
        self.name = name
        MemoryStore.__init__(self, maxsize)

    def __repr__(self) -> str:
        return f"MemoryQueue({self.name!r}, maxsize={self.maxsize}, qsize={self.qsize()})"

    def put(
        self,
        body: Any,
        meta: dict[str, Any] | None = None,
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Add a message; any thread, with or without a running app. `meta` reaches the
        handler as `ctx.current.meta`. With `delay_s` the message is ready that many
        seconds later (it counts in `qsize()` meanwhile). With `priority` (any int;
        None is 0) it is taken before every ready message of a lower priority, and a
        retry or release keeps it. A bounded queue that is full blocks until there is
        room; `queue.Full` after `timeout` seconds. The body may be any object; the meta
        is refused as on every queue: TypeError if it is not a mapping, EncodeError if
        JSON cannot hold it."""
        delivery = Delivery(body, meta=_checked_meta(meta))
        if type(delay_s) is not float or delay_s:
            delay_s = check_delay("delay_s", delay_s)
        deadline = _deadline(timeout)
        if priority is not None and check_priority(priority):
            delivery.handle = priority  # what retry and release read it from
            self._admit([delivery], delay_s, deadline, priority)
            return
        if self._lock_free_put and not delay_s:
            self._append_ready(delivery)
            return
        self._admit([delivery], delay_s, deadline)

    def put_many(
        self,
        bodies: Iterable[Any],
        meta: dict[str, Any] | None = None,
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Add one message per body, in order, each with its own copy of `meta` and the
        same `priority` (as in `put`); returns how many (all of them). Any thread, with
        or without a running app.

        On a bounded queue it puts as many as fit and waits for room for the rest. If
        `timeout` passes first, it raises `queue.Full` saying how many were put: those
        (the first ones, in order) stay in the queue, the rest were not put."""
        check_bodies(bodies)
        checked = _checked_meta(meta)
        delay = check_delay("delay_s", delay_s)
        deadline = _deadline(timeout)
        if priority is not None:
            priority = check_priority(priority)
        if checked is None:
            deliveries = [Delivery(body) for body in bodies]
        else:
            deliveries = [Delivery(body, meta=dict(checked)) for body in bodies]
        if not deliveries:
            return 0
        if priority:
            for delivery in deliveries:
                delivery.handle = priority
            self._admit(deliveries, delay, deadline, priority)
        elif self._lock_free_put and not delay:
            self._items.extend(deliveries)  # atomic: a list's items, no Python code
            if self._consumers_waiting or self._armed:
                self._wake(len(deliveries))
        else:
            self._admit(deliveries, delay, deadline)
        return len(deliveries)

    def offer(self, body: Any, meta: dict[str, Any] | None = None) -> bool:
        """Append without blocking; False if the queue is full. The runtime uses it to
        publish from any thread without a trip through the sink actor."""
        # Delivery(body) without the keyword when there is no meta: passing meta=None
        # made creating a Delivery about a third slower (timeit: 1.34 -> 1.76 us).
        delivery = Delivery(body) if meta is None else Delivery(body, meta=meta)
        if self._lock_free_put:
            # inlined _append_ready: this is every emitted result's path
            self._items.append(delivery)
            if self._consumers_waiting or self._armed:
                self._wake(1)
            return True
        return self.offer_delivery(delivery)

    def offer_delivery(self, delivery: Delivery) -> bool:
        """Append a ready-made Delivery (one carrying a `reply`, say) without blocking;
        False if the queue is full."""
        if self._lock_free_put:
            self._append_ready(delivery)
            return True
        with self._lock:
            if self.maxsize and self._size() >= self.maxsize:
                return False
            self._items.append(delivery)
            wake = self._wake_locked(1)
        if wake is not None:
            wake()
        return True

    async def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        """Append from async code; waits (off the event loop) while the queue is full."""
        if not self.offer(body, meta):
            await asyncio.to_thread(self.put, body, meta)

    def get(self, timeout: float | None = None) -> Any:
        """Remove and return the next payload, waiting up to `timeout` (`queue.Empty`)."""
        batch = self._take(1, _deadline(timeout))
        if not batch:
            raise queue.Empty(f"MemoryQueue {self.name!r} is empty")
        return batch[0].payload

    def fetch(self, limit: int) -> list[Delivery]:
        """Up to `limit` ready deliveries, without waiting; an empty fetch arms the
        subscriber's wakeup."""
        if not self._lock_free:
            return self._fetch_locked(limit)
        # The fast path inline, as in take(): an async puller's fetch(1) per message.
        if self._aside:  # a delayed or prioritized message waits
            self._ready_due()
            if self._prioritized:
                return self._fetch_locked(limit)
        items = self._items
        if not items:
            batch: list[Delivery] = []
        elif limit == 1:
            try:
                batch = [items.popleft()]
            except IndexError:  # another consumer took the last one
                batch = []
        else:
            batch = self._pop(limit)
        if not batch:
            # Arm, then look again: a producer that appended before this read `_armed`
            # as False, so the message would wait unseen until the next put.
            self._armed = True
            batch = self._pop(limit)
            if not batch:
                return batch
        if self._producers_waiting:
            self._room_freed(len(batch))
        return batch

    def take(self, limit: int, timeout: float) -> list[Delivery]:
        """Like `fetch`, but wait up to `timeout` seconds for a message to be ready."""
        if self._lock_free:
            # The fast path inline (a direct-mode worker's take(1) per message): three
            # calls and a clock read fewer made take(1) about a quarter faster (timeit,
            # same process: 2.1 -> 1.6 us on the loaded 2-core machine).
            if self._aside:  # a delayed or prioritized message waits
                self._ready_due()
                if self._prioritized:
                    return self._take_waiting(limit, _monotonic() + timeout)
            items = self._items
            if items:
                if limit == 1:
                    try:
                        batch = [items.popleft()]
                    except IndexError:  # another consumer took the last one
                        batch = []
                else:
                    batch = self._pop(limit)
                if batch:
                    if self._producers_waiting:
                        self._room_freed(len(batch))
                    return batch
        return self._take_waiting(limit, _monotonic() + timeout)

    def ack(self, delivery: Delivery) -> None:
        """Nothing to do: a fetched message has already left the queue."""

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        """Requeue at the back (of its priority) with one more attempt, after `delay_s` if
        given."""
        delivery.attempts += 1
        if delay_s:
            with self._lock:
                self._push_delayed(delivery, _monotonic() + delay_s)
            return
        priority = delivery.handle
        if type(priority) is int and priority:
            self._append_prioritized(delivery, priority)
            return
        self._append_ready(delivery)

    def _append_prioritized(self, delivery: Delivery, priority: int, front: bool = False) -> None:
        """Any thread: add a ready prioritized message (a retry or a release)."""
        with self._lock:
            self._push_prioritized(delivery, priority, front)
            wake = self._wake_locked(1)
        if wake is not None:
            wake()

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """Nothing to do: the message is dropped (the runtime has logged why)."""

    def release(self, delivery: Delivery) -> None:
        """Put an unfinished delivery back at the front (of its priority), attempts
        unchanged."""
        priority = delivery.handle
        if type(priority) is int and priority:
            self._append_prioritized(delivery, priority, front=True)
            return
        self._append_ready(delivery, front=True)

    def describe(self) -> dict[str, Any]:
        return {"type": "MemoryQueue", "name": self.name, "maxsize": self.maxsize}


def _checked_meta(meta: Any) -> dict[str, Any] | None:
    """The producer's meta, refused as every queue refuses it (see _encoding): a task
    tested on a MemoryQueue then fails the same way on a broker. The body is not
    checked: a MemoryQueue carries any Python object between the stages of one process."""
    if meta is None:
        # with tracing on, even a put without meta carries the caller's trace context
        return None if _encoding.meta_injector is None else check_meta(None)
    checked = check_meta(meta)
    # a flat meta of plain values (the usual trace ids) needs no encoding to be known
    # good: 0.2 us instead of 1.6 us for a two-key meta (timeit, this machine under load;
    # a put with meta then costs what it did before the check)
    if checked is not None and not is_flat_json(checked):
        encode_json(checked, "meta")
    return checked


def _deadline(timeout: Any) -> float | None:
    if timeout is None:
        return None
    return _monotonic() + check_delay("timeout", timeout)

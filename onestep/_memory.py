"""MemoryQueue: the in-process queue that is both a Source and a Sink.

It is what a pipeline's stages pass messages through, and what tests run on. Every
method is thread-safe: producers call `put` from any thread or `await publish` from
any event loop; the runtime fetches and settles from the source actor's thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._checks import check_int
from ._delivery import Delivery, Sink, Source


class MemoryQueue(Source, Sink):
    """A FIFO of deliveries; `maxsize=0` means unbounded, otherwise `put` blocks when full."""

    #: Every method may be called from any thread, so the runtime lets a sync task's
    #: workers `take` and settle directly instead of going through the source actor.
    thread_safe = True

    def __init__(self, name: str, *, maxsize: int = 0) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        check_int("maxsize", maxsize, minimum=0)
        self.name = name
        self.maxsize = maxsize
        self._items: deque[Delivery] = deque()
        self._delayed: list[tuple[float, int, Delivery]] = []
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._not_empty = threading.Condition(self._lock)
        self._wakeup: Callable[[], None] | None = None
        self._armed = False

    def __repr__(self) -> str:
        return f"MemoryQueue({self.name!r}, maxsize={self.maxsize}, qsize={self.qsize()})"

    # -- producer side (any thread) ------------------------------------------------------

    def put(self, body: Any, meta: dict[str, Any] | None = None, *, timeout: Any = None) -> None:
        """Append a message; blocks while the queue is full (`queue.Full` after `timeout`)."""
        delivery = Delivery(body, meta=meta)
        with self._not_full:
            if self.maxsize:
                deadline = None if timeout is None else time.monotonic() + timeout
                while len(self._items) >= self.maxsize:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise queue.Full(f"MemoryQueue {self.name!r} is full")
                    self._not_full.wait(remaining)
            self._items.append(delivery)
            wake = self._take_wakeup()
        if wake is not None:
            wake()

    def offer(self, body: Any, meta: dict[str, Any] | None = None) -> bool:
        """Append without blocking; False if the queue is full. The runtime uses it to
        publish from any thread without a trip through the sink actor."""
        return self.offer_delivery(Delivery(body, meta=meta))

    def offer_delivery(self, delivery: Delivery) -> bool:
        """Append a ready-made Delivery (one carrying a `reply`, say) without blocking;
        False if the queue is full."""
        with self._lock:
            if self.maxsize and len(self._items) >= self.maxsize:
                return False
            self._items.append(delivery)
            wake = self._take_wakeup()
        if wake is not None:
            wake()
        return True

    def remove_if(self, predicate: Callable[[Delivery], bool]) -> int:
        """Remove the waiting deliveries for which `predicate` is true; returns how many."""
        with self._lock:
            kept = [delivery for delivery in self._items if not predicate(delivery)]
            removed = len(self._items) - len(kept)
            self._items.clear()
            self._items.extend(kept)
            if removed and self.maxsize:
                self._not_full.notify(removed)
        return removed

    async def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        """Append from async code; waits (off the event loop) while the queue is full."""
        if not self.offer(body, meta):
            await asyncio.to_thread(self.put, body, meta)

    def _take_wakeup(self) -> Callable[[], None] | None:
        """Called with the lock held after adding an item."""
        self._not_empty.notify()
        if self._armed:
            self._armed = False
            return self._wakeup
        return None

    # -- reading without a task (tests, scripts) ----------------------------------------

    def get(self, timeout: float | None = None) -> Any:
        """Remove and return the next payload, waiting up to `timeout` (`queue.Empty`)."""
        batch = self._take(1, None if timeout is None else time.monotonic() + timeout)
        if not batch:
            raise queue.Empty(f"MemoryQueue {self.name!r} is empty")
        return batch[0].payload

    def drain(self) -> list[Any]:
        """Remove and return every ready payload."""
        with self._lock:
            self._move_due()
            items = [delivery.payload for delivery in self._items]
            self._items.clear()
            self._not_full.notify_all()
        return items

    def qsize(self) -> int:
        """Messages waiting, delayed retries included."""
        with self._lock:
            return len(self._items) + len(self._delayed)

    def empty(self) -> bool:
        return self.qsize() == 0

    def _move_due(self) -> None:
        delayed = self._delayed
        if delayed:
            now = time.monotonic()
            while delayed and delayed[0][0] <= now:
                self._items.append(heapq.heappop(delayed)[2])

    # -- source side (the source actor's thread) ----------------------------------------

    def subscribe(self, wakeup: Callable[[], None]) -> None:
        """Have `wakeup()` called when a message arrives after an empty fetch."""
        with self._lock:
            self._wakeup = wakeup
            self._armed = True

    def fetch(self, limit: int) -> list[Delivery]:
        with self._lock:
            self._move_due()
            items = self._items
            count = min(limit, len(items))
            if not count:
                self._armed = True
                return []
            popleft = items.popleft
            batch = [popleft() for _ in range(count)]
            if self.maxsize:
                self._not_full.notify(count)
            return batch

    def take(self, limit: int, timeout: float) -> list[Delivery]:
        """Like `fetch`, but wait up to `timeout` seconds for a message to be ready."""
        return self._take(limit, time.monotonic() + timeout)

    def _take(self, limit: int, deadline: float | None) -> list[Delivery]:
        with self._not_empty:
            while True:
                self._move_due()
                if self._items:
                    break
                wait_s = None if deadline is None else deadline - time.monotonic()
                if wait_s is not None and wait_s <= 0:
                    return []
                if self._delayed:  # wake when the next delayed retry falls due
                    due_in = self._delayed[0][0] - time.monotonic()
                    wait_s = due_in if wait_s is None else min(wait_s, due_in)
                self._not_empty.wait(None if wait_s is None else max(wait_s, 0.0))
            items = self._items
            popleft = items.popleft
            batch = [popleft() for _ in range(min(limit, len(items)))]
            if self.maxsize:
                self._not_full.notify(len(batch))
            return batch

    def ack(self, delivery: Delivery) -> None:
        """Nothing to do: a fetched message has already left the queue."""

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        """Requeue at the back with one more attempt, after `delay_s` if given."""
        delivery.attempts += 1
        with self._lock:
            if delay_s:
                due = time.monotonic() + delay_s
                heapq.heappush(self._delayed, (due, next(self._sequence), delivery))
                return
            self._items.append(delivery)
            wake = self._take_wakeup()
        if wake is not None:
            wake()

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """Nothing to do: the message is dropped (the runtime has logged why)."""

    def release(self, delivery: Delivery) -> None:
        """Put an unfinished delivery back at the front, attempts unchanged."""
        with self._lock:
            self._items.appendleft(delivery)
            wake = self._take_wakeup()
        if wake is not None:
            wake()

    def describe(self) -> dict[str, Any]:
        return {"type": "MemoryQueue", "name": self.name, "maxsize": self.maxsize}

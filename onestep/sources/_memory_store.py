"""MemoryStore: the thread-safe storage under MemoryQueue (a lock-free deque of ready
messages, heaps of delayed and of prioritized ones, waiting consumers and producers). Only
MemoryQueue uses it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from actors import GIL_ATOMIC

from ..core import Delivery
from ._memory_priority import Entry, pop_merged, remove_matching

_monotonic = time.monotonic


class MemoryStore:
    """The storage of a MemoryQueue: ready messages, delayed ones, and the waiting of
    consumers and producers; every method thread-safe.

    The per-message path takes no lock (under the GIL; see actors/_atomic.py): ready
    messages live in a deque whose `append`, `appendleft` and `popleft` are atomic, so
    eight workers taking from one queue no longer convoy on its lock (with the Ledger's
    lock-free path: benchmarks/memory_pipeline.py sync-c8 from 0.15 to 0.77 of the raw
    loop, sync-c1 from 0.32 to 0.78; benchmarks/README.md, "The lock convoy"). The lock
    and its Conditions serve the slow paths only: a consumer that waits because the
    queue is empty, a producer that waits for room in a bounded queue (such producers
    also append under the lock, so the bound is exact), delayed messages (a heap), drain
    and remove_if. A lock-free producer appends first and then reads
    whether anyone waits (`_consumers_waiting`, `_armed`); a consumer about to wait
    registers first and then looks at the deque again. Either the producer sees the
    waiter and wakes it under the lock, or the waiter sees the message: no wake-up is
    lost. On a free-threaded interpreter every operation takes the lock.

    Prioritized messages (a priority other than 0, carried in `Delivery.handle`) wait in
    a heap of their own, `_prioritized`, changed under the lock only. A consumer's fast
    path reads one flag, `_aside` (a delayed or a prioritized message waits), where it
    read whether a delayed one did: the path of messages without a priority costs what
    it did. When a prioritized message waits, the consumer takes the lock and merges:
    positive priorities before the deque (priority 0, every message put without one),
    negative ones after it. A producer of a prioritized message sets the flag and
    pushes under the lock, then wakes as `_wake_locked` does; a consumer arms or
    registers before it looks at the heap again: the same order as for the deque, so no
    wake-up is lost either.
    """

    #: The queue's name, for error messages (set by MemoryQueue).
    name: str

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Delivery] = deque()
        # Delayed messages (delayed puts and retries): a heap of (due, sequence, delivery),
        # changed under the lock; `_next_due` is its head's due time (inf when empty),
        # written under the lock and read without it.
        self._delayed: list[tuple[float, int, Delivery]] = []
        self._next_due = math.inf
        self._sequence = itertools.count()
        # Ready messages with a priority other than 0: a heap of (-priority, sequence,
        # delivery), changed under the lock; read without it only to see whether it is
        # empty. A released one gets a falling sequence, ahead of its peers.
        self._prioritized: list[Entry] = []
        # Whether a delayed or prioritized message waits: set under the lock before
        # either heap grows, cleared under the lock once both are empty; read without
        # it by the consumers' fast paths (a stale True only costs a look). With it,
        # take(1) costs what it did (timeit, best of 42: 216 ns before priorities, 214
        # after; eight threads taking: 591 and 561 ns a message).
        self._aside = False
        self._front_sequence = itertools.count(-1, -1)
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._not_empty = threading.Condition(self._lock)
        # Threads inside _take_waiting / waiting for room; changed under the lock.
        self._consumers_waiting = 0
        self._producers_waiting = 0
        # The subscriber (subscribe): called once after an empty fetch when a message
        # is ready; `_call_later(delay_s, callback)` is its timer, for delayed messages.
        self._wakeup: Callable[[], None] | None = None
        self._call_later: Callable[..., Any] | None = None
        self._due_wake_at = math.inf
        self._armed = False
        self._lock_free = GIL_ATOMIC
        # A bounded queue's producers append under the lock so that the bound is exact.
        self._lock_free_put = GIL_ATOMIC and not maxsize

    def remove_if(self, predicate: Callable[[Delivery], bool]) -> int:
        """Remove the waiting ready deliveries for which `predicate` is true; returns how
        many. The others keep their order, ahead of messages added meanwhile."""
        with self._lock:
            items = self._items
            kept: list[Delivery] = []
            removed = 0
            # pop what is there now, one at a time: lock-free producers may append and
            # workers may take meanwhile, and rebuilding the deque would lose their changes
            for _ in range(len(items)):
                try:
                    delivery = items.popleft()
                except IndexError:
                    break
                if predicate(delivery):
                    removed += 1
                else:
                    kept.append(delivery)
            items.extendleft(reversed(kept))
            if self._prioritized:
                removed += remove_matching(self._prioritized, predicate)
                self._aside = bool(self._prioritized or self._delayed)
            wake = self._wake_locked(len(kept)) if kept else None
            if removed and self._producers_waiting:
                self._not_full.notify(removed)
        if wake is not None:
            wake()
        return removed

    def _admit(
        self,
        deliveries: list[Delivery],
        delay_s: float,
        deadline: float | None,
        priority: int = 0,
    ) -> None:
        """Add producer messages under the lock, waiting for room in a bounded queue."""
        with self._lock:
            if not self.maxsize:
                self._add_locked(deliveries, delay_s, priority)
                return
            # Registered before the first look at the size: a lock-free consumer pops,
            # then reads `_producers_waiting` to know whether to notify `_not_full`.
            self._producers_waiting += 1
            try:
                done, count = 0, len(deliveries)
                while done < count:
                    room = min(count - done, self.maxsize - self._size())
                    if room <= 0:
                        self._wait_for_room(deadline, done, count)
                        continue
                    self._add_locked(deliveries[done : done + room], delay_s, priority)
                    done += room
            finally:
                self._producers_waiting -= 1

    def _add_locked(self, deliveries: list[Delivery], delay_s: float, priority: int = 0) -> None:
        """Lock held: add producer messages, ready now or after `delay_s`; those with a
        `priority` (already in their `handle`) go to the prioritized heap once ready."""
        if delay_s:
            due = _monotonic() + delay_s
            for delivery in deliveries:
                self._push_delayed(delivery, due)
            return
        if priority:
            for delivery in deliveries:
                self._push_prioritized(delivery, priority)
        else:
            self._items.extend(deliveries)
        wake = self._wake_locked(len(deliveries))
        if wake is not None:
            wake()  # never blocks and never calls back into this queue

    def _wait_for_room(self, deadline: float | None, done: int, count: int) -> None:
        """Lock held: wait until a consumer frees a slot; queue.Full past `deadline`."""
        remaining = None if deadline is None else deadline - _monotonic()
        if remaining is not None and remaining <= 0:
            what = "" if count == 1 else f"; the first {done} of the {count} messages were put"
            raise queue.Full(f"MemoryQueue {self.name!r} is full (maxsize={self.maxsize}){what}")
        self._not_full.wait(remaining)

    def _size(self) -> int:
        return len(self._items) + len(self._delayed) + len(self._prioritized)

    def _push_prioritized(self, delivery: Delivery, priority: int, front: bool = False) -> None:
        """Lock held: add a ready message with a priority other than 0 to its heap."""
        sequence = next(self._front_sequence if front else self._sequence)
        self._aside = True  # before the push: see the class docstring
        heapq.heappush(self._prioritized, (-priority, sequence, delivery))

    def _append_ready(self, delivery: Delivery, front: bool = False) -> None:
        """Add a ready message that needs no room; any thread."""
        if self._lock_free:
            if front:
                self._items.appendleft(delivery)
            else:
                self._items.append(delivery)
            # first the append, then these reads: see the class docstring
            if self._consumers_waiting or self._armed:
                self._wake(1)
            return
        with self._lock:
            if front:
                self._items.appendleft(delivery)
            else:
                self._items.append(delivery)
            wake = self._wake_locked(1)
        if wake is not None:
            wake()

    def _wake(self, count: int) -> None:
        """The slow path of a lock-free producer: someone waits for messages."""
        with self._lock:
            wake = self._wake_locked(count)
        if wake is not None:
            wake()

    def _wake_locked(self, count: int) -> Callable[[], None] | None:
        """Lock held, after adding `count` ready messages: wake that many waiting
        consumers, and return the subscriber's wakeup if it is armed (to call once the
        lock is released)."""
        if self._consumers_waiting:
            self._not_empty.notify(count)
        if self._armed:
            self._armed = False
            return self._wakeup
        return None

    def _room_freed(self, count: int) -> None:
        """A consumer took `count` messages from a bounded queue whose producers wait."""
        with self._lock:
            self._not_full.notify(count)

    def _push_delayed(self, delivery: Delivery, due: float) -> None:
        """Lock held: make `delivery` ready at `due` (monotonic time)."""
        self._aside = True
        heapq.heappush(self._delayed, (due, next(self._sequence), delivery))
        if due < self._next_due:
            self._next_due = due
            if self._consumers_waiting:
                self._not_empty.notify_all()  # their wait ends at the head: look again
            self._schedule_due_wake()

    def _move_due(self) -> None:
        """Lock held: move the delayed messages that are due to the ready ones."""
        delayed = self._delayed
        if not delayed:
            return
        now = _monotonic()
        while delayed and delayed[0][0] <= now:
            delivery = heapq.heappop(delayed)[2]
            priority = delivery.handle
            if type(priority) is int and priority:
                self._push_prioritized(delivery, priority)
            else:
                self._items.append(delivery)
        self._next_due = delayed[0][0] if delayed else math.inf
        self._aside = bool(delayed or self._prioritized)

    def _ready_due(self) -> None:
        """Any thread, without the lock: move the due delayed messages, if any are."""
        if self._delayed and self._next_due <= _monotonic():
            with self._lock:
                self._move_due()

    def _schedule_due_wake(self) -> None:
        """Lock held: have the subscriber's timer call `_on_due` when the head is due
        (an async task's pullers, or a source actor, sleep until woken)."""
        call_later = self._call_later
        if call_later is None or not self._delayed:
            return
        due = self._delayed[0][0]
        if due >= self._due_wake_at:
            return  # a wake-up at or before that time is scheduled already
        self._due_wake_at = due
        call_later(max(0.0, due - _monotonic()), self._on_due)

    def _on_due(self) -> None:
        """Runs on the subscriber's timer thread when a delayed message is due: make it
        ready and wake the subscriber if it waits."""
        with self._lock:
            self._due_wake_at = math.inf
            before = len(self._items) + len(self._prioritized)
            self._move_due()
            moved = len(self._items) + len(self._prioritized) - before
            self._schedule_due_wake()
            wake = self._wake_locked(moved) if moved > 0 else None
        if wake is not None:
            wake()

    def drain(self) -> list[Any]:
        """Remove and return every ready payload."""
        with self._lock:
            self._move_due()
            count = len(self._items) + len(self._prioritized)
            payloads = [delivery.payload for delivery in self._pop_locked(count)]
            if payloads and self._producers_waiting:
                self._not_full.notify_all()
        return payloads

    def qsize(self) -> int:
        """Messages waiting, delayed ones (puts with `delay_s`, delayed retries) included."""
        return len(self._items) + len(self._delayed) + len(self._prioritized)

    def depth(self) -> int:
        """The same as `qsize()`: the name every built-in queue answers to (RabbitMQ and
        MySQL queues too), read by metrics and `onestep.testing.run_until_idle`."""
        return len(self._items) + len(self._delayed) + len(self._prioritized)

    def empty(self) -> bool:
        return self.qsize() == 0

    def subscribe(
        self, wakeup: Callable[[], None], call_later: Callable[..., Any] | None = None
    ) -> None:
        """Have `wakeup()` called when a message is ready after an empty fetch. With
        `call_later(delay_s, callback)` (the subscriber's timer) the queue also wakes it
        when a delayed message falls due."""
        with self._lock:
            self._wakeup = wakeup
            self._call_later = call_later
            self._armed = True
            self._due_wake_at = math.inf
            self._schedule_due_wake()

    def _fetch_locked(self, limit: int) -> list[Delivery]:
        with self._lock:
            self._move_due()
            batch = self._pop_locked(limit)
            if not batch:
                self._armed = True
            elif self._producers_waiting:
                self._not_full.notify(len(batch))
            return batch

    def _take(self, limit: int, deadline: float | None) -> list[Delivery]:
        if self._lock_free:
            self._ready_due()
            batch = self._pop(limit)
            if batch:
                if self._producers_waiting:
                    self._room_freed(len(batch))
                return batch
        return self._take_waiting(limit, deadline)

    def _take_waiting(self, limit: int, deadline: float | None) -> list[Delivery]:
        """The slow path: wait under the lock until a message is ready or `deadline`."""
        with self._not_empty:
            # first register, then look at the deque: see the class docstring
            self._consumers_waiting += 1
            try:
                while True:
                    self._move_due()
                    batch = self._pop_locked(limit)
                    if batch:
                        break
                    wait_s = None if deadline is None else deadline - _monotonic()
                    if wait_s is not None and wait_s <= 0:
                        return []
                    if self._delayed:  # wake when the next delayed message falls due
                        due_in = self._next_due - _monotonic()
                        wait_s = due_in if wait_s is None else min(wait_s, due_in)
                    self._not_empty.wait(None if wait_s is None else max(wait_s, 0.0))
            finally:
                self._consumers_waiting -= 1
            if self._producers_waiting:
                self._not_full.notify(len(batch))
            return batch

    def _pop(self, limit: int) -> list[Delivery]:
        """Up to `limit` ready deliveries, highest priority first; without the lock."""
        if self._prioritized:
            with self._lock:
                return self._pop_locked(limit)
        return self._pop_ready(limit)

    def _pop_locked(self, limit: int) -> list[Delivery]:
        """Lock held: up to `limit` ready deliveries, highest priority first: positive
        priorities, then the deque (priority 0), then negative ones."""
        if self._prioritized:
            batch = pop_merged(self._prioritized, self._items, limit)
            if not self._prioritized:
                self._aside = bool(self._delayed)
            return batch
        return self._pop_ready(limit)

    def _pop_ready(self, limit: int) -> list[Delivery]:
        """Up to `limit` deliveries from the front of the deque; lock-free (or under the
        lock)."""
        items = self._items
        if not items:
            return []
        if limit == 1:  # every direct-mode take and fetch
            try:
                return [items.popleft()]
            except IndexError:  # another consumer took the last one
                return []
        popleft = items.popleft
        batch = []
        try:
            for _ in range(limit):
                batch.append(popleft())
        except IndexError:
            pass
        return batch

"""Ledger: the deliveries of one task that were fetched and are not settled yet.

Written by the SourceActor (fetch, settle), by the task's workers and pullers in direct
mode, and read at shutdown to release what is unfinished. `new_ledger` picks the
lock-free Ledger under the GIL and the LockedLedger on a free-threaded interpreter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._atomic import GIL_ATOMIC


class Ledger:
    """Unsettled deliveries by identity; the task's free credits are `concurrency` minus
    their number.

    No lock on the per-message path (add, remove, wait_settled): with eight direct-mode
    workers, three lock round trips a message on one shared lock made the workers convoy
    (benchmarks/memory_pipeline.py sync-c8: 24% of worker samples waited on it; this
    class and MemoryQueue's lock-free paths together took sync-c8 from 0.15 to 0.77 of
    the raw loop and from 1.7 to 0.012 context switches a message, medians of three runs;
    benchmarks/README.md, "The lock convoy"). It relies on `GIL_ATOMIC` (see
    actors/_atomic.py): each dict operation below is one atomic step, and where two
    threads race, each writes its own side first and then reads the other's, so at least
    one of them sees the other:

    - add() stores the delivery, then reads `stopping`; stop() sets `stopping`, then reads
      whether anything is unsettled. Either stop() sees the delivery (and does not call
      the ledger drained), or add() sees `stopping` and takes the delivery back out
      (`_refuse`), so no delivery is added after stop() has found the ledger empty.
    - wait_settled() registers its Event, then reads whether its delivery is still
      unsettled; remove() pops the delivery, then reads the registered Events. Either
      the waiter sees the delivery gone, or remove() sees and sets the Event.
    - remove() pops with `dict.pop`: of two threads settling one delivery, exactly one
      gets it. release_all() empties the dict with `popitem`, one entry at a time, so a
      delivery added meanwhile is either released by it or refused by add().

    The rare stop-time races that need more than one step (a refused add, release_all)
    take `_lock` between themselves.
    """

    def __init__(self, concurrency: int, give_back: Callable[[Any], Any] | None = None) -> None:
        self.concurrency = concurrency
        # Gives a refused delivery back to its source (direct mode: the source's thread-safe
        # `release`). None on the SourceActor, which calls add() and stop() on one thread
        # and so never sees a refusal.
        self.give_back = give_back
        self._lock = threading.Lock()
        self._unsettled: dict[int, Any] = {}
        # Events of direct-mode workers waiting for their delivery to be settled elsewhere.
        self._waiters: dict[int, threading.Event] = {}
        self.stopping = False
        self.drained = threading.Event()
        # Direct mode with an async task: wakes its pullers when a credit comes back.
        self.on_free: Callable[[], None] | None = None

    def free(self) -> int:
        """Credits free for the next fetch. Any thread."""
        return self.concurrency - len(self._unsettled)

    def __len__(self) -> int:
        return len(self._unsettled)

    def add(self, delivery: Any) -> bool:
        """Record a fetched delivery before its handler runs; any thread. False after
        stop(): the caller must not run it, and it has been given back to its source
        already (through `give_back`, or by whoever called release_all). (A direct worker
        or puller preempted between its take/fetch and this call would otherwise add it
        after stop() had seen the ledger empty, so that release_all missed it and the
        delivery was lost, or released while its handler ran.)"""
        key = id(delivery)
        self._unsettled[key] = delivery  # first write, then read `stopping`: see the class
        if not self.stopping:
            return True
        return self._refuse(key, delivery)

    def _refuse(self, key: int, delivery: Any) -> bool:
        """add() saw `stopping` after storing the delivery: take it back out, unless
        release_all got it first (then release_all's caller gives it back)."""
        with self._lock:
            mine = self._unsettled.pop(key, None) is not None
            if not self._unsettled:
                self.drained.set()  # stop() may have seen it and waited for it
        if mine and self.give_back is not None:
            self.give_back(delivery)
        return False

    def remove(self, delivery: Any) -> bool:
        """Forget a settled delivery; False if it was released or settled already. Any
        thread."""
        key = id(delivery)
        if self._unsettled.pop(key, None) is None:
            return False
        # first the pop, then these reads: see the class docstring
        if self.stopping and not self._unsettled:
            self.drained.set()
        if self._waiters:
            waiter = self._waiters.pop(key, None)
            if waiter is not None:
                waiter.set()
        on_free = self.on_free
        if on_free is not None:
            on_free()
        return True

    def wait_settled(self, delivery: Any, event: threading.Event) -> None:
        """Block a direct-mode worker until `delivery` is settled (by the supervisor or
        a sink actor), so that it never holds more than its one credit. Runs on the
        worker's thread; `event` is the worker's own."""
        key = id(delivery)
        unsettled = self._unsettled
        while key in unsettled:
            event.clear()
            self._waiters[key] = event  # first register, then look again: see the class
            if key not in unsettled:
                self._waiters.pop(key, None)
                return
            # Woken by remove() or release_all(), or late by the remove() of this worker's
            # previous delivery (it popped the Event just before that delivery was seen
            # settled here): the loop looks again instead of trusting the wake-up.
            event.wait()

    def stop(self) -> None:
        """No more adding: `drained` is set once nothing is unsettled. Any thread."""
        self.stopping = True  # first the flag, then the read: see the class docstring
        if not self._unsettled:
            self.drained.set()

    def release_all(self) -> list[Any]:
        """Take every unsettled delivery out, in the order they were added, for the
        caller to give back to its source; wakes every waiting worker. Called after
        stop()."""
        self.stopping = True
        released: list[Any] = []
        waiters: list[threading.Event] = []
        with self._lock:  # one at a time with a refused add()
            _pop_all(self._unsettled, released)
            _pop_all(self._waiters, waiters)
            self.drained.set()
        released.reverse()  # popitem() takes the newest first
        for waiter in waiters:
            waiter.set()
        if self.on_free is not None:
            self.on_free()
        return released


def _pop_all(entries: dict[int, Any], into: list[Any]) -> None:
    """Move every value out with `popitem`, which is atomic; `list(values())` then
    `clear()` would drop an entry another thread stored between the two."""
    while entries:
        try:
            into.append(entries.popitem()[1])
        except KeyError:
            return


class LockedLedger(Ledger):
    """The Ledger for a free-threaded interpreter: every operation under `_lock`."""

    def add(self, delivery: Any) -> bool:
        with self._lock:
            if not self.stopping:
                self._unsettled[id(delivery)] = delivery
                return True
        if self.give_back is not None:
            self.give_back(delivery)
        return False

    def remove(self, delivery: Any) -> bool:
        key = id(delivery)
        with self._lock:
            if self._unsettled.pop(key, None) is None:
                return False
            if self.stopping and not self._unsettled:
                self.drained.set()
            waiter = self._waiters.pop(key, None)
        if waiter is not None:
            waiter.set()
        if self.on_free is not None:
            self.on_free()
        return True

    def wait_settled(self, delivery: Any, event: threading.Event) -> None:
        key = id(delivery)
        with self._lock:
            if key not in self._unsettled:
                return
            event.clear()
            self._waiters[key] = event
        event.wait()

    def stop(self) -> None:
        with self._lock:
            self.stopping = True
            if not self._unsettled:
                self.drained.set()


def new_ledger(concurrency: int, give_back: Callable[[Any], Any] | None = None) -> Ledger:
    """The lock-free Ledger under the GIL, a LockedLedger without it."""
    kind = Ledger if GIL_ATOMIC else LockedLedger
    return kind(concurrency, give_back)

"""Ledger: the deliveries of one task that were fetched and are not settled yet.

Written by the SourceActor (fetch, settle), by the task's workers in direct mode, and
read at shutdown to release what is unfinished. Its lock is almost never contended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Ledger:
    """Unsettled deliveries by identity; the task's free credits are `concurrency` minus
    their number."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._unsettled: dict[int, Any] = {}
        # Events of direct-mode workers waiting for their delivery to be settled elsewhere.
        self._waiters: dict[int, threading.Event] = {}
        self.stopping = False
        self.drained = threading.Event()
        # Direct mode with an async task: wakes its pullers when a credit comes back.
        self.on_free: Callable[[], None] | None = None

    def free(self) -> int:
        """Credits free for the next fetch."""
        return self.concurrency - len(self._unsettled)

    def __len__(self) -> int:
        return len(self._unsettled)

    def add(self, delivery: Any) -> bool:
        """Record a fetched delivery before its handler runs. False after stop(): the
        caller gives the delivery back to its source instead of running it. (A direct
        worker or puller preempted between its take/fetch and this call would otherwise
        add it after stop() had seen the ledger empty, so that release_all missed it
        and the delivery was lost, or released while its handler ran.)"""
        with self._lock:
            if self.stopping:
                return False
            self._unsettled[id(delivery)] = delivery
        return True

    def remove(self, delivery: Any) -> bool:
        """Forget a settled delivery; False if it was released or settled already."""
        key = id(delivery)
        with self._lock:
            if self._unsettled.pop(key, None) is None:
                return False
            if self.stopping and not self._unsettled:
                self.drained.set()
            waiter = self._waiters.pop(key, None) if self._waiters else None
        if waiter is not None:
            waiter.set()
        if self.on_free is not None:
            self.on_free()
        return True

    def wait_settled(self, delivery: Any, event: threading.Event) -> None:
        """Block a direct-mode worker until `delivery` is settled (by the supervisor or
        a sink actor), so that it never holds more than its one credit."""
        key = id(delivery)
        with self._lock:
            if key not in self._unsettled:
                return
            event.clear()
            self._waiters[key] = event
        event.wait()

    def stop(self) -> None:
        """No more fetching: `drained` is set once nothing is unsettled."""
        with self._lock:
            self.stopping = True
            if not self._unsettled:
                self.drained.set()

    def release_all(self) -> list[Any]:
        """Take every unsettled delivery out, for the caller to give back to its source."""
        with self._lock:
            released = list(self._unsettled.values())
            self._unsettled.clear()
            waiters = list(self._waiters.values())
            self._waiters.clear()
            self.drained.set()
        for waiter in waiters:
            waiter.set()
        if self.on_free is not None:
            self.on_free()
        return released

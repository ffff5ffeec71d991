"""Ledger: the deliveries of one task that were fetched and are not settled yet.

Written by the SourceActor (fetch, settle), by the task's workers in direct mode, and
read at shutdown to release what is unfinished. Its lock is almost never contended.
"""

from __future__ import annotations

import threading
from typing import Any


class Ledger:
    """Unsettled deliveries by identity, plus the task's credits."""

    def __init__(self, concurrency: int, *, direct: bool) -> None:
        self.concurrency = concurrency
        self.direct = direct
        self._lock = threading.Lock()
        self._unsettled: dict[int, Any] = {}
        # Direct mode only: a worker takes a credit before it takes a delivery.
        self.credits = threading.Semaphore(concurrency)
        self.stopping = False
        self.drained = threading.Event()

    def free(self) -> int:
        """Credits free for the next fetch (actor mode)."""
        return self.concurrency - len(self._unsettled)

    def __len__(self) -> int:
        return len(self._unsettled)

    def add(self, delivery: Any) -> None:
        with self._lock:
            self._unsettled[id(delivery)] = delivery

    def remove(self, delivery: Any) -> bool:
        """Forget a settled delivery; False if it was released or settled already."""
        with self._lock:
            if self._unsettled.pop(id(delivery), None) is None:
                return False
            if self.stopping and not self._unsettled:
                self.drained.set()
        if self.direct:
            self.credits.release()
        return True

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
            self.drained.set()
        if self.direct:
            for _ in released:
                self.credits.release()
        return released

"""The shared-store contract of flow control: the token bucket, per-key slots and dedup
keys kept in one state store by two store objects (as two processes would), run against
SQLite (tests/unit/test_flow_stores.py) and the server stores (tests/integration)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from onestep import StateStore
from onestep.flow._limiters import StoreBucket, StoreDedup, StoreSlots


def check_shared_bucket(stores: list[StateStore], key: str) -> None:
    """Four threads over two stores take tokens at 40/s (burst 10) for 1.5 s: together
    they get the burst plus the rate, never more, and every store gets some."""
    rate, burst, window_s = 40.0, 10.0, 1.5
    buckets = [StoreBucket(store, key, rate, burst) for store in stores]
    taken = [0] * len(buckets)
    lock = threading.Lock()
    stop = threading.Event()
    begin = threading.Event()

    def worker(index: int) -> None:
        bucket = buckets[index]
        begin.wait(10.0)
        while not stop.is_set():
            wait_s = bucket.take()
            if wait_s == 0.0:
                with lock:
                    taken[index] += 1
            else:
                stop.wait(wait_s)  # a client waiting for its next token, as the gate does

    threads = [threading.Thread(target=worker, args=(i % len(buckets),)) for i in range(4)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    begin.set()
    stop.wait(window_s)
    stop.set()
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(10.0)
    total = sum(taken)
    most = burst + rate * elapsed + 2  # a take may finish just after the window ends
    least = burst + rate * window_s * 0.6
    assert least <= total <= most, (taken, elapsed)
    assert all(taken), taken


def check_shared_slots(stores: list[StateStore], prefix: str) -> None:
    """A key's one slot is held across stores, freed by a release or, for a holder that
    died without releasing, by its lease."""
    first = StoreSlots(stores[0], prefix, 1, lease_s=60.0)
    second = StoreSlots(stores[1], prefix, 1, lease_s=60.0)
    assert first.acquire("customer-1") == 0
    assert second.acquire("customer-1") is None
    assert second.acquire("customer-2") == 0  # other keys are free
    first.release("customer-1", 0)
    assert second.acquire("customer-1") == 0
    crashed = StoreSlots(stores[0], prefix + "lease:", 1, lease_s=0.3)
    other = StoreSlots(stores[1], prefix + "lease:", 1, lease_s=0.3)
    assert crashed.acquire("k") == 0  # and never released
    assert other.acquire("k") is None
    _wait_for(lambda: other.acquire("k") == 0, 10.0)


def check_shared_dedup(stores: list[StateStore], prefix: str) -> None:
    first = StoreDedup(stores[0], prefix, ttl_s=60.0)
    second = StoreDedup(stores[1], prefix, ttl_s=60.0)
    assert first.claim("order-1") is True
    assert second.claim("order-1") is False
    second.release("order-1")
    assert second.claim("order-1") is True
    long_key = "x" * 500  # hashed to fit every store's key column
    assert first.claim(long_key) is True
    assert second.claim(long_key) is False


def _wait_for(condition: Callable[[], Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)  # polling a condition with a deadline

"""concurrency=N: exactly N handlers in flight, and backpressure: no more than N
deliveries fetched and unsettled however fast the source is."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from typing import Any

import pytest

from onestep import Delivery, MemoryQueue, OneStepApp, Source
from tests.helpers import running

TIMEOUT = 5.0


class InFlight:
    """Counts handlers in flight under a lock and remembers the peak."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.full = threading.Event()  # `limit` handlers are in flight
        self.over = threading.Event()  # more than `limit` are in flight
        self.gate = threading.Event()  # the test lets the handlers finish

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            if self.now >= self.limit:
                self.full.set()
            if self.now > self.limit:
                self.over.set()

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


async def wait_async(event: threading.Event) -> None:
    """Wait for a threading.Event without blocking the event loop."""
    for _ in range(int(TIMEOUT / 0.005)):
        if event.is_set():
            return
        await asyncio.sleep(0.005)


def add_gated_task(app: OneStepApp, kind: str, source: Any, flight: InFlight, done: Any) -> None:
    """A task whose handlers stay in flight until `flight.gate` is set."""
    if kind == "sync":

        @app.task(source=source, concurrency=flight.limit)
        def handler(ctx, item):
            flight.enter()
            try:
                flight.gate.wait(TIMEOUT)
            finally:
                flight.leave()
            done.put(item)

    else:

        @app.task(source=source, concurrency=flight.limit)
        async def handler(ctx, item):
            flight.enter()
            try:
                await wait_async(flight.gate)
            finally:
                flight.leave()
            done.put(item)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_concurrency_4_runs_exactly_4_handlers_at_once(kind):
    incoming = MemoryQueue("in")
    flight = InFlight(4)
    done: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    add_gated_task(app, kind, incoming, flight, done)
    try:
        with running(app):
            for i in range(12):
                incoming.put(i)
            assert flight.full.wait(TIMEOUT)
            # no fifth handler starts while four are blocked
            assert not flight.over.wait(0.2)
            assert incoming.qsize() == 8
            flight.gate.set()
            assert sorted(done.get(timeout=TIMEOUT) for _ in range(12)) == list(range(12))
    finally:
        flight.gate.set()
    assert flight.peak == 4


class CountingSource(Source):
    """An endless-looking custom source that counts deliveries fetched and not settled."""

    poll_interval_s = 0.01

    def __init__(self, name: str, total: int) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pending: deque[Delivery] = deque(Delivery(i) for i in range(total))
        self.outstanding = 0
        self.max_outstanding = 0
        self.limits: list[int] = []
        self.settled: queue.Queue[Any] = queue.Queue()

    def fetch(self, limit: int) -> list[Delivery]:
        with self._lock:
            self.limits.append(limit)
            batch = [self._pending.popleft() for _ in range(min(limit, len(self._pending)))]
            self.outstanding += len(batch)
            self.max_outstanding = max(self.max_outstanding, self.outstanding)
            return batch

    def _settle(self, delivery: Delivery, how: str) -> None:
        with self._lock:
            self.outstanding -= 1
        self.settled.put((how, delivery.payload))

    def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, "ack")

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        self._settle(delivery, "retry")
        with self._lock:
            self._pending.append(delivery)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        self._settle(delivery, "fail")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_fast_custom_source_never_has_more_than_concurrency_unsettled(kind):
    source = CountingSource("in", total=30)
    flight = InFlight(3)
    done: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    add_gated_task(app, kind, source, flight, done)
    try:
        with running(app):
            assert flight.full.wait(TIMEOUT)
            assert not flight.over.wait(0.2)
            with source._lock:
                assert source.outstanding == 3
            flight.gate.set()
            settled = [source.settled.get(timeout=TIMEOUT) for _ in range(30)]
    finally:
        flight.gate.set()
    assert sorted(payload for _, payload in settled) == list(range(30))
    assert {how for how, _ in settled} == {"ack"}
    assert source.max_outstanding <= 3
    assert source.outstanding == 0
    # fetch is only ever asked for the free credits
    assert all(1 <= limit <= 3 for limit in source.limits)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_memory_queue_keeps_the_rest_queued_while_handlers_block(kind):
    incoming = MemoryQueue("in")
    flight = InFlight(2)
    done: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    add_gated_task(app, kind, incoming, flight, done)
    try:
        with running(app):
            for i in range(20):
                incoming.put(i)
            assert flight.full.wait(TIMEOUT)
            assert not flight.over.wait(0.2)
            # only `concurrency` deliveries left the queue
            assert incoming.qsize() == 18
            incoming.put(20)
            assert incoming.qsize() == 19
            flight.gate.set()
            assert sorted(done.get(timeout=TIMEOUT) for _ in range(21)) == list(range(21))
    finally:
        flight.gate.set()
    assert flight.peak == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_concurrency_1_runs_messages_in_order_one_at_a_time(kind):
    incoming = MemoryQueue("in")
    flight = InFlight(1)
    flight.gate.set()
    done: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    add_gated_task(app, kind, incoming, flight, done)
    with running(app):
        for i in range(50):
            incoming.put(i)
        assert [done.get(timeout=TIMEOUT) for _ in range(50)] == list(range(50))
    assert flight.peak == 1

"""MemoryQueue priorities: higher first, FIFO within a priority, kept by retries,
releases and delayed puts, refused when not an int; a running app takes them in order."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest

from onestep import Delivery, MaxAttempts, MemoryQueue, OneStepApp
from tests.helpers import running


def payloads(batch: list[Delivery]) -> list[Any]:
    return [delivery.payload for delivery in batch]


@pytest.mark.parametrize("locked", [False, True], ids=["lock-free", "locked"])
def test_higher_priorities_come_first_and_equal_ones_in_order(locked):
    q = MemoryQueue("prio")
    if locked:
        q._lock_free = q._lock_free_put = False
    q.put("plain-1")
    q.put("low", priority=-3)
    q.put_many(["mid-1", "mid-2"], priority=2)
    q.put("plain-2", priority=0)  # 0 is what a message without a priority has
    q.put("top", priority=10**12)
    q.put("mid-3", priority=2)
    assert q.qsize() == q.depth() == 7
    assert payloads(q.fetch(2)) == ["top", "mid-1"]
    assert payloads(q.take(3, 0.0)) == ["mid-2", "mid-3", "plain-1"]
    assert q.get(timeout=0) == "plain-2"
    assert q.drain() == ["low"]
    assert q.qsize() == 0


def test_a_retry_keeps_its_priority_and_goes_behind_its_peers():
    q = MemoryQueue("prio")
    q.put_many(["a", "b"], priority=5)
    q.put("plain")
    first = q.fetch(1)[0]
    q.retry(first)
    batch = q.fetch(3)
    assert payloads(batch) == ["b", "a", "plain"]
    assert batch[1].attempts == 1


def wait_past(due: float) -> None:
    """Spin on the clock (a millisecond): the delayed message is then due."""
    while time.monotonic() <= due:
        pass


def test_a_delayed_put_and_a_delayed_retry_keep_their_priority():
    q = MemoryQueue("prio")
    q.put("high", priority=7, delay_s=0.001)
    due = time.monotonic() + 0.001
    q.put("plain")
    wait_past(due)
    batch = q.take(2, 0.0)
    assert payloads(batch) == ["high", "plain"]
    q.retry(batch[0], delay_s=0.001)
    due = time.monotonic() + 0.001
    q.put("plain-2")
    wait_past(due)
    again = q.fetch(2)
    assert payloads(again) == ["high", "plain-2"]
    assert again[0].attempts == 1


def test_a_release_puts_a_prioritized_message_back_ahead_of_its_peers():
    q = MemoryQueue("prio")
    q.put_many(["a", "b", "c"], priority=1)
    a, b = q.fetch(2)
    q.release(b)
    q.release(a)
    assert q.drain() == ["a", "b", "c"]


def test_remove_if_sees_prioritized_messages():
    q = MemoryQueue("prio")
    q.put_many([1, 2, 3, 4], priority=3)
    q.put(5)
    assert q.remove_if(lambda delivery: delivery.payload % 2 == 0) == 2
    assert q.drain() == [1, 3, 5]


def test_a_bounded_queue_counts_prioritized_messages_against_maxsize():
    q = MemoryQueue("prio", maxsize=2)
    q.put(1, priority=1)
    q.put(2)
    with pytest.raises(queue.Full):
        q.put(3, priority=9, timeout=0.01)
    assert q.qsize() == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.put(1, priority="high"),
        lambda q: q.put(1, priority=1.5),
        lambda q: q.put(1, priority=True),
        lambda q: q.put_many([1, 2], priority="9"),
    ],
)
def test_a_priority_that_is_not_an_int_is_refused_naming_it(call):
    q = MemoryQueue("prio")
    with pytest.raises(ValueError, match="priority must be an int or None"):
        call(q)
    assert q.qsize() == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_high_priority_messages_put_before_the_app_starts_run_first(kind):
    incoming = MemoryQueue("in")
    for i in range(30):
        incoming.put(("low", i))
    incoming.put_many([("high", i) for i in range(5)], priority=9)
    order: list[Any] = []
    done = threading.Event()
    app = OneStepApp("priorities")

    def record(item: Any) -> None:
        order.append(tuple(item))
        if len(order) == 35:
            done.set()

    if kind == "sync":

        @app.task(source=incoming, concurrency=1)
        def handle(ctx, item):
            record(item)

    else:

        @app.task(source=incoming, concurrency=1)
        async def handle_async(ctx, item):
            record(item)

    with running(app):
        assert done.wait(10.0)
    assert order[:5] == [("high", i) for i in range(5)]
    assert order[5:] == [("low", i) for i in range(30)]


def test_a_failed_high_priority_message_is_retried_before_the_low_ones():
    incoming = MemoryQueue("in")
    for i in range(10):
        incoming.put(("low", i))
    incoming.put(("high", 0), priority=5)
    order: list[Any] = []
    done = threading.Event()
    app = OneStepApp("retry-priority")

    @app.task(source=incoming, concurrency=1, retry=MaxAttempts(3))
    def handle(ctx, item):
        order.append((tuple(item), ctx.current.attempts))
        if tuple(item) == ("high", 0) and ctx.current.attempts == 0:
            raise RuntimeError("first attempt fails")
        if len(order) == 12:
            done.set()

    with running(app):
        assert done.wait(10.0)
    assert order[:2] == [(("high", 0), 0), (("high", 0), 1)]

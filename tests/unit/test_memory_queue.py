"""MemoryQueue on its own: FIFO order, get/drain/qsize, a bounded queue that blocks,
delayed retries and releases at the front."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest

from onestep import Delivery, MemoryQueue


def test_put_get_is_fifo_and_qsize_counts_messages():
    q = MemoryQueue("q")
    assert q.qsize() == 0
    assert q.empty()
    for i in range(5):
        q.put(i)
    assert q.qsize() == 5
    assert not q.empty()
    assert [q.get(timeout=0) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.qsize() == 0


def test_get_on_an_empty_queue_raises_empty_after_the_timeout():
    q = MemoryQueue("q")
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    assert time.monotonic() - start >= 0.04


def test_get_waits_for_a_put_from_another_thread():
    q = MemoryQueue("q")
    waiting = threading.Event()
    got: queue.Queue[object] = queue.Queue()

    def consumer() -> None:
        waiting.set()
        got.put(q.get(timeout=5))

    thread = threading.Thread(target=consumer)
    thread.start()
    assert waiting.wait(2)
    q.put("hello")
    assert got.get(timeout=2) == "hello"
    thread.join(2)


def test_drain_returns_every_ready_payload_and_empties_the_queue():
    q = MemoryQueue("q")
    for i in range(3):
        q.put(i)
    assert q.drain() == [0, 1, 2]
    assert q.qsize() == 0
    assert q.drain() == []


def test_put_keeps_meta_and_starts_at_zero_attempts():
    q = MemoryQueue("q")
    q.put("body", {"k": "v"})
    [delivery] = q.fetch(10)
    assert isinstance(delivery, Delivery)
    assert delivery.payload == "body"
    assert delivery.meta == {"k": "v"}
    assert delivery.attempts == 0


def test_fetch_respects_limit():
    q = MemoryQueue("q")
    for i in range(5):
        q.put(i)
    assert [d.payload for d in q.fetch(2)] == [0, 1]
    assert q.qsize() == 3
    assert [d.payload for d in q.fetch(10)] == [2, 3, 4]
    assert q.fetch(10) == []


def test_full_queue_put_with_timeout_raises_full():
    q = MemoryQueue("q", maxsize=2)
    q.put(1)
    q.put(2)
    start = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    assert time.monotonic() - start >= 0.04
    assert q.qsize() == 2
    assert q.offer(3) is False
    assert q.drain() == [1, 2]


def test_full_queue_put_blocks_until_a_get_frees_a_slot():
    q = MemoryQueue("q", maxsize=1)
    q.put("first")
    about_to_put = threading.Event()
    put_done = threading.Event()

    def producer() -> None:
        about_to_put.set()
        q.put("second", timeout=5)
        put_done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert about_to_put.wait(2)
    # The producer is blocked on the full queue.
    assert not put_done.wait(0.1)
    assert q.get(timeout=1) == "first"
    assert put_done.wait(2)
    thread.join(2)
    assert q.get(timeout=1) == "second"


def test_fetch_frees_slots_of_a_bounded_queue():
    q = MemoryQueue("q", maxsize=1)
    q.put(1)
    assert len(q.fetch(1)) == 1
    q.put(2, timeout=0.5)  # would raise queue.Full if the slot were still taken
    assert q.qsize() == 1


def test_retry_without_delay_requeues_at_the_back_with_one_more_attempt():
    q = MemoryQueue("q")
    q.put("a")
    q.put("b")
    [first] = q.fetch(1)
    q.retry(first)
    assert first.attempts == 1
    assert [(d.payload, d.attempts) for d in q.fetch(10)] == [("b", 0), ("a", 1)]


def test_retry_with_delay_is_not_fetchable_before_the_delay():
    q = MemoryQueue("q")
    q.put("late")
    [delivery] = q.fetch(1)
    retried_at = time.monotonic()
    q.retry(delivery, 0.3)
    # Counted as waiting, but not ready.
    assert q.qsize() == 1
    assert q.fetch(10) == []
    assert q.take(1, 0.0) == []
    with pytest.raises(queue.Empty):
        q.get(timeout=0)
    assert q.drain() == []
    [again] = q.take(1, 2.0)
    assert time.monotonic() - retried_at >= 0.29
    assert (again.payload, again.attempts) == ("late", 1)
    assert q.qsize() == 0


def test_get_returns_a_delayed_retry_soon_after_it_is_due():
    q = MemoryQueue("q")
    q.put("late")
    [delivery] = q.fetch(1)
    retried_at = time.monotonic()
    q.retry(delivery, 0.05)
    assert q.get(timeout=0.6) == "late"
    assert time.monotonic() - retried_at < 0.5


def test_take_waits_for_a_delayed_retry_to_become_due():
    q = MemoryQueue("q")
    q.put("x")
    [delivery] = q.fetch(1)
    retried_at = time.monotonic()
    q.retry(delivery, 0.2)
    [again] = q.take(1, 2.0)
    assert time.monotonic() - retried_at >= 0.19
    assert again.payload == "x"
    assert again.attempts == 1


def test_take_returns_empty_after_its_timeout():
    q = MemoryQueue("q")
    start = time.monotonic()
    assert q.take(1, 0.05) == []
    assert time.monotonic() - start >= 0.04


def test_release_puts_the_delivery_back_at_the_front_with_attempts_unchanged():
    q = MemoryQueue("q")
    q.put("a")
    q.put("b")
    [first] = q.fetch(1)
    q.release(first)
    batch = q.fetch(10)
    assert [(d.payload, d.attempts) for d in batch] == [("a", 0), ("b", 0)]
    assert batch[0] is first


def test_ack_and_fail_leave_the_queue_unchanged():
    q = MemoryQueue("q")
    q.put("a")
    q.put("b")
    [first, second] = q.fetch(2)
    q.ack(first)
    q.fail(second, RuntimeError("x"))
    assert q.qsize() == 0


def test_async_publish_appends_and_waits_when_full():
    q = MemoryQueue("q", maxsize=1)

    async def main() -> None:
        await q.publish("one", {"n": 1})
        task = asyncio.ensure_future(q.publish("two"))
        await asyncio.sleep(0.05)
        assert not task.done()  # waiting for room, off the event loop
        assert q.get(timeout=1) == "one"
        await asyncio.wait_for(task, 2)

    asyncio.run(main())
    assert q.drain() == ["two"]


def test_subscribe_wakes_up_once_after_an_empty_fetch():
    q = MemoryQueue("q")
    woken: list[int] = []
    q.subscribe(lambda: woken.append(1))
    q.put("a")
    assert woken == [1]
    q.put("b")  # not re-armed: no second wake-up until a fetch comes back empty
    assert woken == [1]
    assert len(q.fetch(10)) == 2
    assert q.fetch(10) == []
    q.put("c")
    assert woken == [1, 1]


def test_offer_appends_without_blocking():
    q = MemoryQueue("q")
    assert q.offer("x", {"m": 1}) is True
    [delivery] = q.fetch(1)
    assert (delivery.payload, delivery.meta) == ("x", {"m": 1})

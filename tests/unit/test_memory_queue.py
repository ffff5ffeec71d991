"""MemoryQueue on its own: FIFO order, get/drain/qsize, a bounded queue that blocks,
delayed retries and releases at the front."""

from __future__ import annotations

import asyncio
import collections
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from actors import Timer
from onestep import Delivery, EncodeError, MemoryQueue, OneStepApp
from tests.helpers import preempting, running
from tests.interleave import SETTLE_S, Other, Stepper, each_stop


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


# -- the producer API: put / put_many with meta and delay_s ------------------------------


def test_put_many_puts_each_body_in_order_with_its_own_copy_of_meta():
    q = MemoryQueue("q")
    meta = {"source": "batch"}
    assert q.put_many(iter([1, 2, 3]), meta) == 3
    batch = q.fetch(10)
    assert [d.payload for d in batch] == [1, 2, 3]
    assert [d.meta for d in batch] == [meta] * 3
    batch[0].meta["changed"] = True  # a handler changing its meta changes no other's
    assert batch[1].meta == {"source": "batch"} and meta == {"source": "batch"}
    assert q.put_many([]) == 0
    assert q.qsize() == 0


def test_put_and_put_many_from_several_threads_without_an_app():
    q = MemoryQueue("q")
    start = threading.Barrier(4)

    def producer(n: int) -> None:
        start.wait(5)
        for i in range(50):
            q.put((n, i), {"n": n})
        assert q.put_many([(n, i) for i in range(50, 100)], {"n": n}) == 50

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    batch = q.fetch(1000)
    assert sorted(d.payload for d in batch) == [(n, i) for n in range(4) for i in range(100)]
    assert all(d.meta == {"n": d.payload[0]} for d in batch)
    for n in range(4):  # each producer's messages stay in its order
        mine = [d.payload[1] for d in batch if d.payload[0] == n]
        assert mine == list(range(100))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_put_and_put_many_from_several_threads_reach_a_running_task_with_their_meta(kind):
    incoming = MemoryQueue("in")
    seen: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("producers")

    if kind == "sync":

        @app.task(source=incoming, concurrency=4)
        def record(ctx, item):
            seen.put((item, dict(ctx.current.meta)))

    else:

        @app.task(source=incoming, concurrency=4)
        async def record_async(ctx, item):
            seen.put((item, dict(ctx.current.meta)))

    def producer(n: int) -> None:
        for i in range(20):
            incoming.put((n, i), {"producer": n, "i": i})
        incoming.put_many([(n, i) for i in range(20, 40)], {"producer": n})

    with running(app):
        threads = [threading.Thread(target=producer, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        got = [seen.get(timeout=5) for _ in range(3 * 40)]
        for thread in threads:
            thread.join(5)
    assert sorted(item for item, _ in got) == [(n, i) for n in range(3) for i in range(40)]
    for (n, i), meta in got:
        assert meta == ({"producer": n, "i": i} if i < 20 else {"producer": n})


def test_a_delayed_put_counts_in_qsize_and_is_ready_after_its_delay():
    q = MemoryQueue("q")
    put_at = time.monotonic()
    q.put("later", {"k": 1}, delay_s=0.2)
    q.put_many(["a", "b"], delay_s=0.2)
    assert q.qsize() == 3 and not q.empty()
    assert q.fetch(10) == []
    assert q.drain() == []
    first = q.take(3, 5.0)
    assert time.monotonic() - put_at >= 0.2
    rest = first[1:] + q.take(3, 5.0) if len(first) < 3 else first[1:]
    assert [d.payload for d in [first[0], *rest]] == ["later", "a", "b"]
    assert first[0].meta == {"k": 1}
    assert q.qsize() == 0


def test_a_delayed_put_wakes_a_take_that_waits_with_a_long_timeout():
    q = MemoryQueue("q")
    waiting = threading.Event()
    got: queue.Queue[Any] = queue.Queue()

    def consumer() -> None:
        waiting.set()
        got.put((q.take(1, 30.0), time.monotonic()))

    thread = threading.Thread(target=consumer)
    thread.start()
    assert waiting.wait(5)
    put_at = time.monotonic()
    q.put("x", delay_s=0.15)
    batch, taken_at = got.get(timeout=10)  # 30 s would mean the take was never woken
    thread.join(5)
    assert [d.payload for d in batch] == ["x"]
    assert taken_at - put_at >= 0.15


class ActorDrivenQueue(MemoryQueue):
    """A MemoryQueue the runtime drives through its SourceActor (not direct mode)."""

    thread_safe = False


@pytest.mark.parametrize(
    ("kind", "queue_class"),
    [("sync", MemoryQueue), ("async", MemoryQueue), ("sync", ActorDrivenQueue)],
    ids=["sync-direct", "async-direct", "source-actor"],
)
def test_a_delayed_put_to_an_idle_task_runs_after_the_delay(kind, queue_class):
    incoming = queue_class("in")
    handled: queue.Queue[tuple[Any, float]] = queue.Queue()
    app = OneStepApp("delayed")

    if kind == "sync":

        @app.task(source=incoming)
        def record(ctx, item):
            handled.put((item, time.monotonic()))

    else:

        @app.task(source=incoming)
        async def record_async(ctx, item):
            handled.put((item, time.monotonic()))

    with running(app):
        incoming.put("warm-up")  # the task has handled a message and sleeps on an empty queue
        assert handled.get(timeout=5)[0] == "warm-up"
        put_at = time.monotonic()
        incoming.put("late", delay_s=0.3)
        item, handled_at = handled.get(timeout=10)  # never woken: nothing would come
    assert item == "late"
    assert handled_at - put_at >= 0.3


def test_put_many_on_a_bounded_queue_waits_for_room_until_all_are_in():
    q = MemoryQueue("q", maxsize=3)
    consumed: list[Any] = []
    started = threading.Event()

    def consumer() -> None:
        started.set()
        while len(consumed) < 10:
            consumed.append(q.get(timeout=5))

    thread = threading.Thread(target=consumer)
    thread.start()
    assert started.wait(5)
    assert q.put_many(range(10), timeout=10) == 10
    thread.join(10)
    assert consumed == list(range(10))
    assert q.qsize() == 0


def test_put_many_on_a_full_bounded_queue_raises_full_after_its_timeout_keeping_what_fit():
    q = MemoryQueue("q", maxsize=3)
    q.put("first")
    start = time.monotonic()
    with pytest.raises(queue.Full, match="the first 2 of the 5 messages were put"):
        q.put_many(["a", "b", "c", "d", "e"], timeout=0.1)
    assert time.monotonic() - start >= 0.1
    assert q.drain() == ["first", "a", "b"]


def test_a_bounded_queue_counts_delayed_messages_against_maxsize():
    q = MemoryQueue("q", maxsize=2)
    q.put("now")
    q.put("later", delay_s=60)
    assert q.offer("more") is False
    with pytest.raises(queue.Full):
        q.put("more", timeout=0)
    assert q.qsize() == 2


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda q: q.put(1, delay_s=-1), ValueError, "delay_s must be a number >= 0"),
        (lambda q: q.put(1, delay_s=float("nan")), ValueError, "delay_s must be a finite number"),
        (lambda q: q.put(1, delay_s=True), ValueError, "delay_s must be a number"),
        (lambda q: q.put(1, delay_s=31 * 86_400), ValueError, "delay_s must be at most"),
        (lambda q: q.put(1, timeout=-1), ValueError, "timeout must be a number >= 0"),
        (lambda q: q.put(1, meta=["not", "a", "dict"]), TypeError, "meta must be a dict or None"),
        (lambda q: q.put(1, meta={"at": object()}), EncodeError, "meta is not valid JSON"),
        (lambda q: q.put_many("abc"), TypeError, "bodies must be an iterable of message bodies"),
        (lambda q: q.put_many(5), TypeError, "bodies must be an iterable of message bodies"),
        (lambda q: q.put_many({"a": 1}), TypeError, "bodies must be an iterable of message"),
        (lambda q: q.put_many([1], delay_s="soon"), ValueError, "delay_s must be a number"),
        (lambda q: q.put_many([1], meta=3), TypeError, "meta must be a dict or None"),
    ],
)
def test_bad_producer_arguments_raise_naming_the_parameter_and_put_nothing(call, error, match):
    q = MemoryQueue("q")
    with pytest.raises(error, match=match):
        call(q)
    assert q.qsize() == 0


# -- the lock-free paths under stress ----------------------------------------------------
#
# MemoryQueue appends and takes without its lock under the GIL (see its class docstring);
# "locked" forces the fallback of a free-threaded interpreter, where every operation takes
# the lock. These tests switch threads every microsecond (`preempting`) so that a race
# between two steps shows up, and count every message: one lost or delivered twice
# fails them, and so does a lost wake-up (consumers then sleep on while messages wait,
# and the test's deadline passes).

LOCK_MODES = ["lock-free", "locked"]
STOP = ("stop",)


def _nothing() -> None:
    """A Python call: a point where the interpreter may switch threads."""


def jitter(rng: random.Random) -> None:
    """A random number of switch points, so that two threads meet at every offset."""
    for _ in range(rng.randint(0, 12)):
        _nothing()


def memory_queue(mode: str, maxsize: int = 0) -> MemoryQueue:
    q = MemoryQueue("stress", maxsize=maxsize)
    if mode == "locked":
        q._lock_free = q._lock_free_put = False
    return q


class Tally:
    """Counts every payload consumed, from any thread; `complete` is set at `total`, or
    at the first error a thread reports (so the test fails at once)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.counts: collections.Counter[Any] = collections.Counter()
        self.seen = 0
        self.lock = threading.Lock()
        self.complete = threading.Event()
        self.errors: list[BaseException] = []

    def add(self, payload: Any) -> None:
        with self.lock:
            self.counts[payload] += 1
            self.seen += 1
            if self.seen >= self.total:
                self.complete.set()

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.complete.set()


class Bell:
    """What an async task's pullers do with `subscribe`: every fetcher waits for a ring."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rings = 0

    def ring(self) -> None:
        with self.cond:
            self.rings += 1
            self.cond.notify_all()

    def wait_past(self, seen: int, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.rings != seen, timeout)


def produce(q: MemoryQueue, producer: int, count: int, tally: Tally) -> None:
    rng = random.Random(producer)
    i = 0
    try:
        while i < count:
            jitter(rng)
            way = rng.random()
            if way < 0.25:
                n = min(rng.randint(2, 7), count - i)
                assert q.put_many([(producer, i + k) for k in range(n)], timeout=30) == n
                i += n
                continue
            if way < 0.45 and not q.maxsize:
                assert q.offer((producer, i))
            elif way < 0.55:
                q.put((producer, i), delay_s=rng.uniform(0.0, 0.002), timeout=30)
            elif way < 0.65:
                q.put((producer, i), priority=rng.choice([-1, 2]), timeout=30)
            else:
                q.put((producer, i), {"p": producer}, timeout=30)
            i += 1
    except BaseException as exc:
        tally.fail(exc)


def settle_batch(q: MemoryQueue, batch: list[Delivery], rng: random.Random, tally: Tally) -> bool:
    """Count each delivery, or give it back (release or retry) now and then; False once a
    STOP came (the rest of the batch goes back for the other consumers)."""
    jitter(rng)
    for index, delivery in enumerate(batch):
        if delivery.payload == STOP:
            for rest in batch[index + 1 :]:
                q.release(rest)
            return False
        way = rng.random()
        if way < 0.03:
            q.release(delivery)
        elif way < 0.06:
            q.retry(delivery, rng.choice([None, 0.001]))
        else:
            tally.add(delivery.payload)
    return True


def take_loop(q: MemoryQueue, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    try:
        while settle_batch(q, q.take(rng.randint(1, 3), 30.0), rng, tally):
            pass
    except BaseException as exc:
        tally.fail(exc)


def fetch_loop(q: MemoryQueue, seed: int, tally: Tally, bell: Bell) -> None:
    rng = random.Random(seed)
    try:
        while True:
            seen = bell.rings
            batch = q.fetch(rng.randint(1, 4))
            if not batch:
                bell.wait_past(seen, 30.0)
                continue
            if not settle_batch(q, batch, rng, tally):
                return
    except BaseException as exc:
        tally.fail(exc)


def remove_some(q: MemoryQueue, rng: random.Random) -> list[Any]:
    removed: list[Any] = []

    def pick(delivery: Delivery) -> bool:
        if rng.random() < 0.05:
            removed.append(delivery.payload)
            return True
        return False

    assert q.remove_if(pick) == len(removed)
    return removed


def meddle(q: MemoryQueue, tally: Tally, done: threading.Event) -> None:
    """remove_if, drain and qsize while everyone else works: what they take is counted."""
    rng = random.Random(99)
    try:
        while not done.is_set():
            way = rng.random()
            if way < 0.4:
                picked = remove_some(q, rng)
                for payload in picked:
                    tally.add(payload)
            elif way < 0.45:
                for payload in q.drain():
                    tally.add(payload)
            else:
                assert q.qsize() >= 0
            done.wait(0.001)
    except BaseException as exc:
        tally.fail(exc)


@pytest.mark.parametrize("consumers", ["take", "subscribe-fetch"])
@pytest.mark.parametrize("maxsize", [0, 8], ids=["unbounded", "bounded"])
@pytest.mark.parametrize("mode", LOCK_MODES)
def test_many_producers_and_consumers_see_every_message_exactly_once(mode, maxsize, consumers):
    q = memory_queue(mode, maxsize)
    producers, per_producer, consumer_count = 4, 1500, 4
    tally = Tally(producers * per_producer)
    bell = Bell()
    timer = Timer()
    timer.start()
    q.subscribe(bell.ring, call_later=timer.call_later)
    meddling_done = threading.Event()
    if consumers == "take":
        workers = [
            threading.Thread(target=take_loop, args=(q, seed, tally), daemon=True)
            for seed in range(consumer_count)
        ]
    else:
        workers = [
            threading.Thread(target=fetch_loop, args=(q, seed, tally, bell), daemon=True)
            for seed in range(consumer_count)
        ]
    meddler = threading.Thread(target=meddle, args=(q, tally, meddling_done), daemon=True)
    sources = [
        threading.Thread(target=produce, args=(q, p, per_producer, tally), daemon=True)
        for p in range(producers)
    ]
    try:
        with preempting():
            for thread in [*workers, meddler, *sources]:
                thread.start()
            complete = tally.complete.wait(20.0)
            meddling_done.set()
            for thread in [*sources, meddler]:
                thread.join(10.0)
            for _ in workers:
                q.put(STOP, timeout=10)
            for thread in workers:
                thread.join(10.0)
    finally:
        timer.stop()
    assert not tally.errors, tally.errors
    assert complete, f"{tally.seen} of {tally.total} consumed; qsize {q.qsize()}"
    assert not any(thread.is_alive() for thread in [*workers, meddler, *sources])
    expected = {(p, i): 1 for p in range(producers) for i in range(per_producer)}
    assert dict(tally.counts) == expected
    assert q.qsize() == 0


@pytest.mark.parametrize("producer", ["put", "put_many", "offer", "release"])
@pytest.mark.parametrize("consumer", ["take", "subscribe-fetch"])
@pytest.mark.parametrize("mode", LOCK_MODES)
def test_a_consumer_going_to_sleep_never_misses_the_next_message(mode, consumer, producer):
    """Ping-pong: each message lands on an empty queue just as its consumer goes to
    sleep, the moment where a lost wake-up would leave it waiting forever."""
    q = memory_queue(mode)
    bell = Bell()
    q.subscribe(bell.ring)
    got: queue.SimpleQueue[Any] = queue.SimpleQueue()
    rounds = 1500
    rng = random.Random(7)

    def consume() -> None:
        consumer_rng = random.Random(8)
        while True:
            jitter(consumer_rng)
            if consumer == "take":
                batch = q.take(1, 30.0)
            else:
                seen = bell.rings
                batch = q.fetch(1)
                if not batch:
                    bell.wait_past(seen, 30.0)
                    continue
            if batch:
                got.put(batch[0].payload)
                if batch[0].payload == STOP:
                    return

    def send(payload: Any) -> None:
        if producer == "put":
            q.put(payload)
        elif producer == "put_many":
            q.put_many([payload])
        elif producer == "offer":
            assert q.offer(payload)
        else:
            q.release(Delivery(payload))

    thread = threading.Thread(target=consume, daemon=True)
    with preempting():
        thread.start()
        try:
            for i in range(rounds):
                jitter(rng)
                send(i)
                assert got.get(timeout=5.0) == i, f"round {i}: the consumer was not woken"
        finally:
            q.put(STOP)
            thread.join(10.0)
    assert not thread.is_alive()


# -- every interleaving of two operations (tests/interleave.py) --------------------------
#
# One operation is stopped before each of its bytecodes in onestep.sources._memory in turn while
# the other runs; then it is resumed. Only points where the stopped side does not hold
# the queue's lock are tried when the other side may need that lock.

MEMORY = {
    "onestep.sources._memory",
    "onestep.sources._memory_store",
    "onestep.sources._memory_priority",
}
CONDITION_WAIT = {threading.Condition.wait.__code__}


def fetch_or_park(q: MemoryQueue, bell: Bell) -> Any:
    """What an async task's puller does: fetch, and on an empty fetch wait for the ring."""
    while True:
        seen = bell.rings
        batch = q.fetch(1)
        if batch:
            return batch[0].payload
        bell.wait_past(seen, SETTLE_S)
        if bell.rings == seen:
            return None  # never woken: the test fails on the missing payload


PARK = {Bell.wait_past.__code__}
PRODUCE_ONE = {
    "put": lambda q: q.put("m"),
    "put_many": lambda q: q.put_many(["m"]),
    "offer": lambda q: q.offer("m"),
    "offer_delivery": lambda q: q.offer_delivery(Delivery("m")),
    "release": lambda q: q.release(Delivery("m")),
    "retry": lambda q: q.retry(Delivery("m")),
    # prioritized messages take the heap under the lock (tests/unit/test_memory_priority.py)
    "put-priority": lambda q: q.put("m", priority=3),
    "put_many-priority": lambda q: q.put_many(["m"], priority=-2),
    "retry-priority": lambda q: q.retry(Delivery("m", handle=4)),
    "release-priority": lambda q: q.release(Delivery("m", handle=4)),
}


def subscribed(q: MemoryQueue) -> Bell:
    """Subscribe a Bell, and get past the first wake-up: subscribe() arms the wakeup,
    which would hide a race that leaves it unarmed."""
    bell = Bell()
    q.subscribe(bell.ring)
    q.put("warm-up")
    assert [d.payload for d in q.fetch(1)] == ["warm-up"]
    assert bell.rings == 1
    return bell


def unlocked(q: MemoryQueue) -> Callable[[], bool]:
    return lambda: not q._lock.locked()


@pytest.mark.parametrize("maxsize", [0, 4], ids=["unbounded", "bounded"])
@pytest.mark.parametrize("consumer", ["take", "subscribe-fetch"])
@pytest.mark.parametrize("produce", PRODUCE_ONE)
@pytest.mark.parametrize("mode", LOCK_MODES)
def test_a_producer_stopped_anywhere_still_wakes_a_consumer_going_to_sleep(
    mode, produce, consumer, maxsize
):
    def run(k: int) -> bool:
        q = memory_queue(mode, maxsize)
        bell = subscribed(q)
        producer = Stepper(lambda: PRODUCE_ONE[produce](q), k, MEMORY, unlocked(q)).start()
        if consumer == "take":
            other = Other(lambda: q.take(1, SETTLE_S), CONDITION_WAIT).start()
        else:
            other = Other(lambda: fetch_or_park(q, bell), PARK).start()
        producer.resume()
        assert producer.error is None, producer.error
        assert other.join(), f"stop point {k}: the consumer was never woken"
        got = other.result[0].payload if consumer == "take" else other.result
        assert got == "m", f"stop point {k}: consumer got {other.result!r}"
        return producer.stopped

    assert each_stop(run) > 3


@pytest.mark.parametrize("consumer", ["take", "subscribe-fetch"])
@pytest.mark.parametrize("produce", PRODUCE_ONE)
@pytest.mark.parametrize("mode", LOCK_MODES)
def test_a_consumer_stopped_anywhere_still_sees_a_message_put_meanwhile(mode, produce, consumer):
    def run(k: int) -> bool:
        q = memory_queue(mode)
        bell = subscribed(q)
        if consumer == "take":
            operation: Callable[[], Any] = lambda: q.take(1, SETTLE_S)[0].payload  # noqa: E731
            sleeps_in = CONDITION_WAIT
        else:
            operation = lambda: fetch_or_park(q, bell)  # noqa: E731
            sleeps_in = PARK
        stepped = Stepper(operation, k, MEMORY, unlocked(q), sleeps_in).start()
        other = Other(lambda: PRODUCE_ONE[produce](q)).start()
        assert other.join() and other.error is None, other.error
        stepped.resume()
        assert stepped.result == "m", f"stop point {k}: consumer got {stepped.result!r}"
        return stepped.stopped

    assert each_stop(run) > 3


def get_now(q: MemoryQueue) -> list[Any]:
    try:
        return [q.get(timeout=0)]
    except queue.Empty:
        return []


def remove_all(q: MemoryQueue) -> list[Any]:
    removed: list[Any] = []

    def take(delivery: Delivery) -> bool:
        removed.append(delivery.payload)
        return True

    assert q.remove_if(take) == len(removed)
    return removed


TAKE_TWO = {
    "fetch1": lambda q: [d.payload for d in q.fetch(1)],
    "fetch2": lambda q: [d.payload for d in q.fetch(2)],
    "take1": lambda q: [d.payload for d in q.take(1, 0.0)],
    "take2": lambda q: [d.payload for d in q.take(2, 0.0)],
    "get": lambda q: get_now(q),
    "drain": lambda q: q.drain(),
    "remove_if": lambda q: remove_all(q),
}


# drain and remove_if hold the lock throughout: stopped inside it, they meet only a
# consumer that needs no lock (fetch). The others take one or two messages of two.
CONSUMER_PAIRS = [
    *[
        (a, b)
        for a in ("fetch1", "fetch2", "take1", "take2", "get")
        for b in ("fetch1", "take2", "drain")
    ],
    *[(a, b) for a in ("drain", "remove_if") for b in ("fetch1", "fetch2")],
]


@pytest.mark.parametrize("prioritized", [False, True], ids=["plain", "prioritized"])
@pytest.mark.parametrize(("stepped_take", "other_take"), CONSUMER_PAIRS)
@pytest.mark.parametrize("mode", LOCK_MODES)
def test_two_consumers_interleaved_anywhere_take_each_message_once(
    mode, stepped_take, other_take, prioritized
):
    # the locked fallback's fetch takes the lock as well, and so does any fetch while a
    # prioritized message waits: stop outside it there
    holds_lock = stepped_take in ("drain", "remove_if") and mode == "lock-free"
    holds_lock = holds_lock and not prioritized

    def run(k: int) -> bool:
        q = memory_queue(mode)
        q.put("a", priority=1 if prioritized else None)
        q.put("b")
        may_stop = (lambda: True) if holds_lock else unlocked(q)
        stepped = Stepper(lambda: TAKE_TWO[stepped_take](q), k, MEMORY, may_stop).start()
        other = Other(lambda: TAKE_TWO[other_take](q)).start()
        assert other.join() and other.error is None, other.error
        stepped.resume()
        assert stepped.error is None, stepped.error
        got = [*stepped.result, *other.result, *q.drain()]
        assert sorted(got) == ["a", "b"], f"stop point {k}: {stepped.result} + {other.result}"
        return stepped.stopped

    assert each_stop(run) > 3


@pytest.mark.parametrize(
    "produce", ["put", "offer", "release", "put_many", "put-priority", "release-priority"]
)
@pytest.mark.parametrize("meddle_with", ["remove_if", "drain"])
@pytest.mark.parametrize("mode", LOCK_MODES)
def test_a_producer_meets_remove_if_or_drain_stopped_anywhere_and_nothing_is_lost(
    mode, meddle_with, produce
):
    def run(k: int) -> bool:
        q = memory_queue(mode)
        q.put("old")
        if meddle_with == "remove_if":
            operation: Callable[[], Any] = lambda: q.remove_if(lambda d: False)  # noqa: E731
        else:
            operation = q.drain
        # An unbounded queue's lock-free producer needs no lock while nobody waits: stop
        # remove_if or drain anywhere, under the lock too (not so in the locked fallback).
        # A prioritized message is added under the lock: not so for those.
        needs_lock = mode == "locked" or produce.endswith("-priority")
        may_stop = unlocked(q) if needs_lock else (lambda: True)
        stepped = Stepper(operation, k, MEMORY, may_stop).start()
        other = Other(lambda: PRODUCE_ONE[produce](q)).start()
        assert other.join() and other.error is None, other.error
        stepped.resume()
        taken = stepped.result if meddle_with == "drain" else []
        left = q.drain()
        assert sorted([*taken, *left]) == ["m", "old"], f"stop point {k}: {taken} + {left}"
        if meddle_with == "remove_if":
            # release puts back at the front; a positive priority goes ahead
            assert left[0] == "old" or produce in ("release", "put-priority", "release-priority")
        return stepped.stopped

    assert each_stop(run) > 3


@pytest.mark.parametrize("stepped_side", ["producer", "consumer"])
@pytest.mark.parametrize("mode", LOCK_MODES)
def test_a_producer_waiting_for_room_is_woken_by_a_consumer_interleaved_anywhere(
    mode, stepped_side
):
    room_freed = {MemoryQueue._room_freed.__code__}

    def run(k: int) -> bool:
        q = memory_queue(mode, maxsize=1)
        q.put("a")

        def consume() -> list[Any]:
            return [d.payload for d in q.fetch(1)]

        def produce() -> None:
            q.put("b", timeout=SETTLE_S)

        if stepped_side == "consumer":
            stepped = Stepper(consume, k, MEMORY, unlocked(q)).start()
            other = Other(produce, CONDITION_WAIT).start()
        else:
            # Stopped anywhere, under the lock too: the lock-free consumer needs the lock
            # only to notify a registered producer, and parks on `_room_freed` for it.
            may_stop = unlocked(q) if mode == "locked" else (lambda: True)
            stepped = Stepper(produce, k, MEMORY, may_stop, CONDITION_WAIT).start()
            other = Other(consume, room_freed).start()
        stepped.resume()
        assert other.join(), f"stop point {k}: the producer waiting for room was never woken"
        assert stepped.error is None and other.error is None, (stepped.error, other.error)
        consumed = stepped.result if stepped_side == "consumer" else other.result
        assert consumed == ["a"]
        assert q.drain() == ["b"]
        return stepped.stopped

    assert each_stop(run) > 3


def test_depth_is_qsize_delayed_messages_included():
    queue_ = MemoryQueue("depth")
    queue_.put(1)
    queue_.put(2, delay_s=60.0)
    assert queue_.depth() == queue_.qsize() == 2

"""Stopping an app at a random point mid-stream loses and duplicates nothing: what a
task had not finished goes back to its MemoryQueue (sync and async, concurrency 1 and 8;
and with producers putting meanwhile while threads are switched every 10 us, for the
lock-free paths of MemoryQueue and the Ledger)."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from onestep import MemoryQueue, OneStepApp
from tests.helpers import preempting

ROUNDS = 60
MESSAGES = 20_000


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_stop_at_any_point_loses_and_duplicates_nothing(is_async, concurrency):
    rng = random.Random(1234 + concurrency + is_async)
    lost = duplicated = 0
    for _ in range(ROUNDS):
        source, out = MemoryQueue("in"), MemoryQueue("out")
        for n in range(MESSAGES):
            source.put(n)
        app = OneStepApp("stop-midstream", shutdown_timeout_s=5.0)
        if is_async:

            @app.task(source=source, emit=out, concurrency=concurrency)
            async def passthrough_async(ctx, item):
                return item
        else:

            @app.task(source=source, emit=out, concurrency=concurrency)
            def passthrough(ctx, item):
                return item

        app.start()
        # Not synchronisation: the random wait picks where in the stream the stop lands.
        time.sleep(rng.uniform(0.0, 0.03))
        app.stop()
        seen = source.drain() + out.drain()
        lost += MESSAGES - len(set(seen))
        duplicated += len(seen) - len(set(seen))
    assert (lost, duplicated) == (0, 0)


def _collect(queue_: MemoryQueue) -> list[int]:
    """Every message left in `queue_`, delayed ones included (waiting for them to fall due)."""
    seen = queue_.drain()
    while queue_.qsize():
        seen.append(queue_.get(timeout=5.0))
    return seen


def _produce(queue_: MemoryQueue, numbers: range, seed: int) -> None:
    """Put `numbers` with every producer call: put, put_many, offer, delayed puts."""
    rng = random.Random(seed)
    it = iter(numbers)
    for n in it:
        way = rng.random()
        if way < 0.3:
            queue_.put_many([n, *itertools.islice(it, rng.randint(1, 5))])
        elif way < 0.5:
            assert queue_.offer(n)
        elif way < 0.55:
            queue_.put(n, delay_s=rng.uniform(0.0, 0.005))
        else:
            queue_.put(n, {"seed": seed})


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_stop_under_forced_preemption_with_producers_running_loses_nothing(is_async):
    """The lock-free paths at full size: a two-stage pipeline of concurrency-8 tasks
    (MemoryQueue -> task -> MemoryQueue -> task -> MemoryQueue), three producer threads
    putting all the while, threads switched every 10 us, and a stop at a random point;
    every message is in exactly one of the three queues afterwards."""
    rng = random.Random(77 + is_async)
    rounds, preloaded, per_producer = 20, 2_000, 1_000
    for _ in range(rounds):
        source, middle, out = MemoryQueue("in"), MemoryQueue("middle"), MemoryQueue("out")
        source.put_many(range(preloaded))
        app = OneStepApp("stop-preempted", shutdown_timeout_s=5.0)
        if is_async:

            @app.task(source=source, emit=middle, concurrency=8)
            async def first_async(ctx, item):
                return item

            @app.task(source=middle, emit=out, concurrency=8)
            async def second_async(ctx, item):
                return item
        else:

            @app.task(source=source, emit=middle, concurrency=8)
            def first(ctx, item):
                return item

            @app.task(source=middle, emit=out, concurrency=8)
            def second(ctx, item):
                return item

        producers = [
            threading.Thread(
                target=_produce,
                args=(source, range(start, start + per_producer), start),
                daemon=True,
            )
            for start in range(preloaded, preloaded + 3 * per_producer, per_producer)
        ]
        with preempting(1e-5):
            app.start()
            for producer in producers:
                producer.start()
            # Not synchronisation: the random wait picks where in the stream the stop lands.
            time.sleep(rng.uniform(0.0, 0.05))
            app.stop()
            for producer in producers:
                producer.join(30.0)
        assert not any(producer.is_alive() for producer in producers)
        seen = _collect(source) + _collect(middle) + _collect(out)
        total = preloaded + 3 * per_producer
        assert (total - len(set(seen)), len(seen) - len(set(seen))) == (0, 0)
        assert set(seen) == set(range(total))

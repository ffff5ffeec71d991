"""Stopping an app at a random point mid-stream loses and duplicates nothing: what a
task had not finished goes back to its MemoryQueue (sync and async, concurrency 1 and 8)."""

from __future__ import annotations

import random
import time

import pytest

from onestep import MemoryQueue, OneStepApp

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

"""timeout_s: stuck sync handlers are abandoned and replaced, async handlers are cancelled,
`ctx.cancelled` and `ctx.deadline` tell handlers about their deadline."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any

import pytest

from onestep import MemoryQueue, OneStepApp
from tests.helpers import ListSource, running

TIMEOUT = 5.0


@pytest.mark.parametrize("source_kind", ["memory", "custom"])
def test_a_stuck_sync_handler_times_out_and_a_fresh_worker_takes_over(source_kind):
    source: Any = MemoryQueue("in") if source_kind == "memory" else ListSource("in")
    dead = MemoryQueue("dead")
    release = threading.Event()
    ran: queue.Queue[tuple[Any, str]] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=1.0)

    @app.task(source=source, dead_letter=dead, timeout_s=0.2)
    def handler(ctx, item):
        ran.put((item, threading.current_thread().name))
        if item == "stuck":
            release.wait(10)  # set by the test at the end, so no thread outlives it

    try:
        with running(app):
            start = time.monotonic()
            source.put("stuck")
            source.put("next")
            [letter] = dead.take(1, TIMEOUT)
            elapsed = time.monotonic() - start
            stuck_item, stuck_thread = ran.get(timeout=TIMEOUT)
            next_item, next_thread = ran.get(timeout=TIMEOUT)
    finally:
        release.set()
    assert elapsed < 1.0
    assert (stuck_item, next_item) == ("stuck", "next")
    assert next_thread != stuck_thread
    assert next_thread.startswith("onestep-")
    failure = letter.payload["failure"]
    assert letter.payload["payload"] == "stuck"
    assert failure["kind"] == "timeout"
    assert failure["exception_type"] == "TimeoutError"
    assert "0.2" in failure["message"]
    # the traceback shows where the stuck thread was
    assert "release.wait" in failure["traceback"]


def test_capacity_stays_at_concurrency_after_timeouts():
    incoming, dead = MemoryQueue("in"), MemoryQueue("dead")
    release = threading.Event()
    done: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=1.0)

    @app.task(source=incoming, dead_letter=dead, timeout_s=0.2, concurrency=2)
    def handler(ctx, item):
        if item.startswith("stuck"):
            release.wait(10)
        done.put(item)

    try:
        with running(app):
            incoming.put("stuck-1")
            incoming.put("stuck-2")
            letters = dead.take(1, TIMEOUT) + dead.take(1, TIMEOUT)
            for i in range(4):
                incoming.put(f"ok-{i}")
            assert sorted(done.get(timeout=TIMEOUT) for _ in range(4)) == [
                f"ok-{i}" for i in range(4)
            ]
    finally:
        release.set()
    assert sorted(letter.payload["payload"] for letter in letters) == ["stuck-1", "stuck-2"]


def test_a_stuck_async_handler_is_cancelled_at_its_deadline():
    incoming, dead = MemoryQueue("in"), MemoryQueue("dead")
    done: queue.Queue[Any] = queue.Queue()
    cancelled: queue.Queue[bool] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=1.0)

    @app.task(source=incoming, dead_letter=dead, timeout_s=0.2)
    async def handler(ctx, item):
        if item == "stuck":
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.put(True)
                raise
        done.put(item)

    with running(app):
        start = time.monotonic()
        incoming.put("stuck")
        incoming.put("next")
        [letter] = dead.take(1, TIMEOUT)
        elapsed = time.monotonic() - start
        assert done.get(timeout=TIMEOUT) == "next"
    assert elapsed < 1.0
    assert cancelled.get_nowait() is True
    failure = letter.payload["failure"]
    assert failure["kind"] == "timeout"
    assert failure["exception_type"] == "TimeoutError"


def test_ctx_cancelled_is_set_at_the_deadline_for_a_cooperative_sync_handler():
    incoming, dead = MemoryQueue("in"), MemoryQueue("dead")
    observed: queue.Queue[tuple[bool, float, float]] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=1.0)

    @app.task(source=incoming, dead_letter=dead, timeout_s=0.2)
    def handler(ctx, item):
        start = time.monotonic()
        was_set = ctx.cancelled.wait(5)
        observed.put((was_set, time.monotonic() - start, start))

    with running(app):
        incoming.put("slow")
        was_set, waited, _ = observed.get(timeout=TIMEOUT)
        [letter] = dead.take(1, TIMEOUT)
    assert was_set
    assert 0.15 <= waited < 1.0
    assert letter.payload["failure"]["kind"] == "timeout"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ctx_deadline_is_set_under_timeout_s(kind):
    incoming = MemoryQueue("in")
    seen: queue.Queue[tuple[Any, Any, float]] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=1.0)

    if kind == "sync":

        @app.task(source=incoming, timeout_s=0.5)
        def handler(ctx, item):
            seen.put((ctx.deadline, ctx.remaining_s, time.monotonic()))

    else:

        @app.task(source=incoming, timeout_s=0.5)
        async def handler(ctx, item):
            seen.put((ctx.deadline, ctx.remaining_s, time.monotonic()))

    with running(app):
        incoming.put(1)
        deadline, remaining, now = seen.get(timeout=TIMEOUT)
    assert deadline is not None
    assert 0.0 < deadline - now <= 0.5
    assert 0.0 < remaining <= 0.5


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ctx_deadline_is_none_without_timeout(kind):
    incoming = MemoryQueue("in")
    seen: queue.Queue[tuple[Any, Any]] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=1.0)

    if kind == "sync":

        @app.task(source=incoming)
        def handler(ctx, item):
            seen.put((ctx.deadline, ctx.remaining_s))

    else:

        @app.task(source=incoming)
        async def handler(ctx, item):
            seen.put((ctx.deadline, ctx.remaining_s))

    with running(app):
        incoming.put(1)
        assert seen.get(timeout=TIMEOUT) == (None, None)


@pytest.mark.parametrize("source_kind", ["memory", "custom"])
def test_handlers_that_finish_in_time_never_time_out(source_kind):
    """Messages run back to back for longer than timeout_s in total, each within it:
    the deadline follows each message, not the worker's first one."""
    source: Any = MemoryQueue("in") if source_kind == "memory" else ListSource("in")
    dead = MemoryQueue("dead")
    done: queue.Queue[tuple[int, str]] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=1.0)

    @app.task(source=source, dead_letter=dead, timeout_s=0.25)
    def handler(ctx, item):
        time.sleep(0.08)  # simulated work, well within the deadline
        done.put((item, threading.current_thread().name))

    with running(app):
        for i in range(6):
            source.put(i)
        results = [done.get(timeout=TIMEOUT) for _ in range(6)]
    assert [item for item, _ in results] == list(range(6))
    assert len({thread for _, thread in results}) == 1
    assert dead.qsize() == 0

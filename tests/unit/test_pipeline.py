"""Messages flowing through tasks: multi-stage pipelines (sync, async, mixed), results
that are None, `ctx.emit`, and sinks that refuse a result."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from typing import Any

import pytest

from onestep import Delivery, MaxAttempts, MemoryQueue, OneStepApp, Sink, Source
from tests.helpers import running

TIMEOUT = 5.0


class ListSource(Source):
    """A custom source that is not thread-safe: the runtime drives it from its actor."""

    poll_interval_s = 0.01

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pending: deque[Delivery] = deque()
        self.acked: queue.Queue[Delivery] = queue.Queue()
        self.failed: queue.Queue[Delivery] = queue.Queue()

    def push(self, payload: Any) -> None:
        with self._lock:
            self._pending.append(Delivery(payload))

    def fetch(self, limit: int) -> list[Delivery]:
        with self._lock:
            return [self._pending.popleft() for _ in range(min(limit, len(self._pending)))]

    def ack(self, delivery: Delivery) -> None:
        self.acked.put(delivery)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        delivery.attempts += 1
        with self._lock:
            self._pending.append(delivery)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        self.failed.put(delivery)


def handler_of(kind: str, fn: Any) -> Any:
    """A `def` or `async def` handler computing `fn(item)`."""
    if kind == "sync":

        def sync_handler(ctx: Any, item: Any) -> Any:
            return fn(item)

        return sync_handler

    async def async_handler(ctx: Any, item: Any) -> Any:
        return fn(item)

    return async_handler


@pytest.mark.parametrize(
    "kinds",
    [
        ("sync", "sync", "sync"),
        ("async", "async", "async"),
        ("sync", "async", "sync"),
        ("async", "sync", "async"),
    ],
    ids=lambda kinds: "-".join(kinds),
)
def test_three_stage_pipeline_gives_2x_plus_1(kinds):
    app = OneStepApp("pipeline", shutdown_timeout_s=2.0)
    incoming = MemoryQueue("input")
    queue1 = MemoryQueue("stage1")
    queue2 = MemoryQueue("stage2")
    results: queue.Queue[Any] = queue.Queue()

    app.task(source=incoming, emit=queue1, name="stage1")(handler_of(kinds[0], lambda x: x * 2))
    app.task(source=queue1, emit=queue2, name="stage2")(handler_of(kinds[1], lambda x: x + 1))
    app.task(source=queue2, name="final")(handler_of(kinds[2], results.put))

    inputs = list(range(30))
    with running(app):
        for x in inputs:
            incoming.put(x)
        got = [results.get(timeout=TIMEOUT) for _ in inputs]
    assert sorted(got) == sorted(2 * x + 1 for x in inputs)
    assert results.empty()
    assert incoming.qsize() == queue1.qsize() == queue2.qsize() == 0


def test_pipeline_with_concurrent_stages_loses_and_duplicates_nothing():
    app = OneStepApp("pipeline", shutdown_timeout_s=2.0)
    incoming, queue1, queue2 = MemoryQueue("input"), MemoryQueue("q1"), MemoryQueue("q2")
    results: queue.Queue[Any] = queue.Queue()
    app.task(source=incoming, emit=queue1, name="stage1", concurrency=3)(
        handler_of("sync", lambda x: x * 2)
    )
    app.task(source=queue1, emit=queue2, name="stage2", concurrency=3)(
        handler_of("async", lambda x: x + 1)
    )
    app.task(source=queue2, name="final", concurrency=2)(handler_of("sync", results.put))

    inputs = list(range(200))
    with running(app):
        for x in inputs:
            incoming.put(x)
        got = [results.get(timeout=TIMEOUT) for _ in inputs]
    assert sorted(got) == [2 * x + 1 for x in inputs]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_none_result_publishes_nothing_and_acks(kind):
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    source = ListSource("in")
    out = MemoryQueue("out")
    app.task(source=source, emit=out, name="t")(
        handler_of(kind, lambda item: None if item == "nothing" else item)
    )
    with running(app):
        source.push("nothing")
        acked = source.acked.get(timeout=TIMEOUT)
        assert acked.payload == "nothing"
        assert out.qsize() == 0
        # A later message that returns a value is the only thing in the emit queue.
        source.push("something")
        assert source.acked.get(timeout=TIMEOUT).payload == "something"
        assert out.drain() == ["something"]
    assert source.failed.empty()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_none_result_on_memory_queue_leaves_the_emit_queue_empty(kind):
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    incoming, out = MemoryQueue("in"), MemoryQueue("out")
    done: queue.Queue[Any] = queue.Queue()
    app.on_event(lambda event: done.put(event) if event.kind == "succeeded" else None)
    app.task(source=incoming, emit=out, name="t")(handler_of(kind, lambda item: None))
    with running(app):
        incoming.put(1)
        event = done.get(timeout=TIMEOUT)
        assert event.kind == "succeeded"
        assert out.qsize() == 0
    # acked, not released back at shutdown
    assert incoming.qsize() == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ctx_emit_publishes_before_the_handler_returns(kind):
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    incoming, out = MemoryQueue("in"), MemoryQueue("out")
    proceed = threading.Event()
    returned: queue.Queue[Any] = queue.Queue()

    if kind == "sync":

        @app.task(source=incoming, emit=out)
        def handler(ctx, item):
            returned.put(ctx.emit(item * 10))
            proceed.wait(TIMEOUT)
            return item + 1

    else:

        @app.task(source=incoming, emit=out)
        async def handler(ctx, item):
            returned.put(await ctx.emit(item * 10))
            await _wait_async(proceed)
            return item + 1

    try:
        with running(app):
            incoming.put(1)
            # Published while the handler is still blocked.
            assert out.get(timeout=TIMEOUT) == 10
            assert returned.get(timeout=TIMEOUT) is None
            proceed.set()
            assert out.get(timeout=TIMEOUT) == 2
    finally:
        proceed.set()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ctx_emit_to_another_sink_with_meta(kind):
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    incoming, out, other = MemoryQueue("in"), MemoryQueue("out"), MemoryQueue("other")

    if kind == "sync":

        @app.task(source=incoming, emit=out)
        def handler(ctx, item):
            ctx.emit({"side": item}, sink=other, meta={"why": "audit"})
            return item

    else:

        @app.task(source=incoming, emit=out)
        async def handler(ctx, item):
            await ctx.emit({"side": item}, sink=other, meta={"why": "audit"})
            return item

    with running(app):
        incoming.put(7)
        assert out.get(timeout=TIMEOUT) == 7
        [side] = other.take(1, TIMEOUT)
    assert side.payload == {"side": 7}
    assert side.meta == {"why": "audit"}
    assert out.qsize() == 0


class RecordingSink(Sink):
    """A custom sink without `offer`: every publish goes through its SinkActor."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.published: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        self.published.put((body, meta))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ctx_emit_to_a_custom_sink_not_in_emit(kind):
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    incoming = MemoryQueue("in")
    side = RecordingSink("side")
    done: queue.Queue[Any] = queue.Queue()

    if kind == "sync":

        @app.task(source=incoming)
        def handler(ctx, item):
            ctx.emit(item, sink=side, meta={"n": item})
            done.put(item)

    else:

        @app.task(source=incoming)
        async def handler(ctx, item):
            await ctx.emit(item, sink=side, meta={"n": item})
            done.put(item)

    with running(app):
        incoming.put(3)
        # ctx.emit waited until the sink accepted the body.
        assert done.get(timeout=TIMEOUT) == 3
        assert side.published.get_nowait() == (3, {"n": 3})


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ctx_emit_without_emit_sinks_fails_the_message(kind):
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    incoming, dead = MemoryQueue("in"), MemoryQueue("dead")

    if kind == "sync":

        @app.task(source=incoming, dead_letter=dead)
        def handler(ctx, item):
            ctx.emit(item)

    else:

        @app.task(source=incoming, dead_letter=dead)
        async def handler(ctx, item):
            await ctx.emit(item)

    with running(app):
        incoming.put(1)
        [letter] = dead.take(1, TIMEOUT)
    assert letter.payload["failure"]["kind"] == "error"
    assert letter.payload["failure"]["exception_type"] == "ValueError"


class BrokenSink(Sink):
    def __init__(self, name: str, *, is_async: bool) -> None:
        self.name = name
        self.is_async = is_async
        self.calls = 0

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> Any:
        self.calls += 1
        if self.is_async:
            return self._publish_async()
        raise ConnectionError("sink is down")

    async def _publish_async(self) -> None:
        raise ConnectionError("sink is down")


@pytest.mark.parametrize("sink_kind", ["sync", "async"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_sink_that_raises_fails_the_message(kind, sink_kind):
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    incoming, dead = MemoryQueue("in"), MemoryQueue("dead")
    broken = BrokenSink("broken", is_async=sink_kind == "async")
    runs: list[int] = []

    def record(item: int) -> int:
        runs.append(item)
        return item

    app.task(source=incoming, emit=broken, dead_letter=dead, name="t")(handler_of(kind, record))
    with running(app):
        incoming.put(5, {"id": 5})
        [letter] = dead.take(1, TIMEOUT)
    failure = letter.payload["failure"]
    assert letter.payload["payload"] == 5
    assert failure["kind"] == "error"
    assert failure["exception_type"] == "ConnectionError"
    assert failure["message"] == "sink is down"
    assert letter.meta["original_meta"] == {"id": 5}
    assert runs == [5]  # NoRetry: one execution
    assert incoming.qsize() == 0


def test_a_failing_sink_with_retries_reruns_the_handler():
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    incoming, dead = MemoryQueue("in"), MemoryQueue("dead")
    broken = BrokenSink("broken", is_async=False)
    attempts: list[int] = []

    @app.task(source=incoming, emit=broken, dead_letter=dead, retry=MaxAttempts(2))
    def handler(ctx, item):
        attempts.append(ctx.current.attempts)
        return item

    with running(app):
        incoming.put("x")
        [letter] = dead.take(1, TIMEOUT)
    assert attempts == [0, 1]
    assert broken.calls == 2
    assert letter.meta["original_attempts"] == 2


async def _wait_async(event: threading.Event) -> None:
    """Wait for a threading.Event without blocking the event loop."""
    for _ in range(int(TIMEOUT / 0.005)):
        if event.is_set():
            return
        await asyncio.sleep(0.005)

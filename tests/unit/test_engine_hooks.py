"""The engine's optional hooks for connectors: batched sinks (`publish_batch`), sources
that buffer acks (`flush`), request-reply (`Delivery.reply`) and app health."""

from __future__ import annotations

import queue
import threading
from typing import Any

from actors import EventLoopThread
from actors._sink import PublishJob, SinkActor, SinkRoute
from onestep import Delivery, MaxAttempts, MemoryQueue, OneStepApp, Sink
from tests.helpers import ListSource, running

TIMEOUT = 5.0


class BatchSink(Sink):
    """Records each publish_batch call; the first call waits until released."""

    max_batch = 50

    def __init__(self, hold_first: bool = False) -> None:
        self.name = "batch"
        self.batches: list[list[Any]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.received: queue.Queue[int] = queue.Queue()

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        raise AssertionError("publish() must not be called when publish_batch exists")

    def publish_batch(self, items: list[tuple[Any, Any]]) -> None:
        self.entered.set()
        self.release.wait(TIMEOUT)
        self.batches.append([body for body, _ in items])
        for _ in items:
            self.received.put(1)


def test_jobs_waiting_in_the_sink_actors_mailbox_go_out_in_one_batch():
    loop = EventLoopThread()
    loop.start()
    sink = BatchSink(hold_first=True)
    ref = SinkActor.start(sink, loop)
    route = SinkRoute(sink, ref)
    done: queue.Queue[tuple[Any, Any]] = queue.Queue()
    try:
        jobs = [
            PublishJob(n, None, [route], lambda job, error: done.put((job.body, error)))
            for n in range(10)
        ]
        jobs[0].advance()
        assert sink.entered.wait(TIMEOUT)  # the first batch is being published...
        for job in jobs[1:]:
            job.advance()  # ...while nine more wait in the mailbox
        sink.release.set()
        results = [done.get(timeout=TIMEOUT) for _ in range(10)]
    finally:
        ref.stop()
        loop.stop()
    assert sorted(results) == [(n, None) for n in range(10)]
    assert sink.batches == [[0], list(range(1, 10))]


def test_batched_sink_publishes_every_result_once_in_fewer_calls():
    app = OneStepApp("batching")
    source = MemoryQueue("in")
    sink = BatchSink()
    total = 300

    @app.task(source=source, emit=sink, concurrency=8)
    def passthrough(ctx, item):
        return item

    with running(app):
        for n in range(total):
            source.put(n)
        for _ in range(total):
            sink.received.get(timeout=TIMEOUT)
    published = [body for batch in sink.batches for body in batch]
    assert sorted(published) == list(range(total))
    assert all(len(batch) <= BatchSink.max_batch for batch in sink.batches)


def test_a_failing_batch_fails_every_message_in_it():
    class BrokenBatchSink(Sink):
        def publish_batch(self, items: list[tuple[Any, Any]]) -> None:
            raise ConnectionError("broker gone")

    app = OneStepApp("batching")
    source = ListSource(items=range(5))
    dead = MemoryQueue("dead")

    @app.task(source=source, emit=BrokenBatchSink(), dead_letter=dead)
    def passthrough(ctx, item):
        return item

    with running(app):
        letters = [dead.get(timeout=TIMEOUT) for _ in range(5)]
    assert sorted(letter["payload"] for letter in letters) == [0, 1, 2, 3, 4]
    assert {letter["failure"]["exception_type"] for letter in letters} == {"ConnectionError"}


class BufferingSource(ListSource):
    """Buffers acks and writes them in flush(), as a broker source acks `multiple`."""

    def __init__(self, items: Any) -> None:
        super().__init__("buffering", items)
        self.pending: list[Any] = []
        self.flushes: list[list[Any]] = []
        self.flushed = queue.Queue[int]()

    def ack(self, delivery: Delivery) -> None:
        self.pending.append(delivery.payload)

    def flush(self) -> None:
        if self.pending:
            self.flushes.append(self.pending)
            for _ in self.pending:
                self.flushed.put(1)
            self.pending = []


def test_a_source_that_buffers_acks_gets_them_flushed():
    total = 200
    source = BufferingSource(range(total))
    app = OneStepApp("flush")

    @app.task(source=source, concurrency=4)
    def noop(ctx, item):
        return None

    with running(app):
        for _ in range(total):
            source.flushed.get(timeout=TIMEOUT)
    acked = [payload for batch in source.flushes for payload in batch]
    assert sorted(acked) == list(range(total))
    assert source.pending == []


def test_reply_is_called_with_the_result_after_success_and_with_the_failure_at_the_end():
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()

    class ReplySource(ListSource):
        def fetch(self, limit: int) -> list[Delivery]:
            batch = super().fetch(limit)
            for delivery in batch:
                delivery.reply = lambda result, failure, d=delivery: replies.put(
                    (d.payload, result, None if failure is None else failure.kind)
                )
            return batch

    app = OneStepApp("reply")
    source = ReplySource(items=[1, -1])

    @app.task(source=source, retry=MaxAttempts(2))
    def double(ctx, item):
        if item < 0:
            raise ValueError("negative")
        return item * 2

    with running(app):
        got = {replies.get(timeout=TIMEOUT) for _ in range(2)}
    assert got == {(1, 2, None), (-1, None, "error")}
    assert replies.empty()  # the retry did not answer early


def test_health_is_degraded_while_a_source_is_down_and_ok_after_it_recovers():
    class FlakySource(ListSource):
        def __init__(self) -> None:
            super().__init__("flaky")
            self.fail_next = threading.Event()
            self.down = threading.Event()
            self.reopened = threading.Event()
            self.allow_open = threading.Event()
            self.on_item = threading.Event()
            self.opens = 0

        def open(self) -> None:
            self.opens += 1
            if self.opens > 1:
                self.allow_open.wait(TIMEOUT)
                self.reopened.set()

        def fetch(self, limit: int) -> list[Delivery]:
            if self.fail_next.is_set():
                self.fail_next.clear()
                self.down.set()
                raise ConnectionError("connection reset")
            return super().fetch(limit)

    source = FlakySource()
    app = OneStepApp("health")

    @app.task(source=source)
    def noop(ctx, item):
        source.on_item.set()

    assert app.health() == {"status": "stopped", "problems": {}}
    with running(app):
        assert app.health()["status"] == "ok"
        source.fail_next.set()
        assert source.down.wait(TIMEOUT)
        health = app.health()
        assert health["status"] == "degraded"
        assert "connection reset" in next(iter(health["problems"].values()))
        source.allow_open.set()
        assert source.reopened.wait(TIMEOUT)
        processed = threading.Event()
        source.on_item = processed
        source.put("after")
        assert processed.wait(TIMEOUT)  # fetching resumed after the restart
        assert app.health() == {"status": "ok", "problems": {}}
    assert app.health()["status"] == "stopped"

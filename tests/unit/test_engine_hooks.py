"""The engine's optional hooks for connectors: batched sinks (`publish_batch`, refusing
single items), sources that buffer acks (`flush`), `keepalive`, request-reply
(`Delivery.reply`) and app health."""

from __future__ import annotations

import queue
import threading
from typing import Any

from actors import EncodeError, EventLoopThread, Timer
from actors._sink import PublishJob, SinkActor, SinkRoute
from onestep import Delivery, MaxAttempts, MemoryQueue, OneStepApp, Sink
from tests.helpers import FlakySource, ListSource, running

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
    timer = Timer()
    timer.start()
    sink = BatchSink(hold_first=True)
    ref = SinkActor.start(sink, loop, timer)
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
        timer.stop()
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


def test_a_batch_item_the_sink_refuses_fails_alone_with_kind_encode():
    class PickySink(Sink):
        max_batch = 1000

        def __init__(self) -> None:
            self.published: list[Any] = []
            self.done = threading.Event()

        def publish_batch(self, items: list[tuple[Any, Any]]) -> dict[int, Exception]:
            refused: dict[int, Exception] = {}
            for index, (body, _) in enumerate(items):
                if body == 13:
                    refused[index] = EncodeError("13 cannot be encoded")
                else:
                    self.published.append(body)
            if len(self.published) == 49:
                self.done.set()
            return refused

    app = OneStepApp("picky")
    source = ListSource(items=range(50))
    sink = PickySink()
    dead = MemoryQueue("dead")

    @app.task(source=source, emit=sink, dead_letter=dead, retry=MaxAttempts(3), concurrency=10)
    def passthrough(ctx, item):
        return item

    with running(app):
        letter = dead.get(timeout=TIMEOUT)
        assert sink.done.wait(TIMEOUT)
    assert letter["payload"] == 13
    assert letter["failure"]["kind"] == "encode"
    assert letter["failure"]["exception_type"] == "EncodeError"
    assert sorted(sink.published) == [n for n in range(50) if n != 13]
    assert dead.empty()  # an encode failure is not retried


class KeepaliveSource(ListSource):
    """Counts keepalive() calls and the threads they ran on."""

    keepalive_interval_s = 0.01

    def __init__(self) -> None:
        super().__init__("keepalive", items=["slow"])
        self.threads: set[str] = set()
        self.calls = 0
        self.enough = threading.Event()
        self.fetch_threads: set[str] = set()

    def fetch(self, limit: int) -> list[Delivery]:
        self.fetch_threads.add(threading.current_thread().name)
        return super().fetch(limit)

    def keepalive(self) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls += 1
        if self.calls >= 5:
            self.enough.set()


class KeepaliveSink(Sink):
    keepalive_interval_s = 0.01

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.publish_threads: set[str] = set()
        self.enough = threading.Event()
        self.calls = 0

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        self.publish_threads.add(threading.current_thread().name)

    def keepalive(self) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls += 1
        if self.calls >= 5:
            self.enough.set()


def test_keepalive_runs_on_the_owning_actors_threads_while_a_handler_is_busy():
    app = OneStepApp("keepalive")
    source = KeepaliveSource()
    sink = KeepaliveSink()
    release = threading.Event()
    finished = threading.Event()

    @app.task(source=source, emit=sink)
    def slow(ctx, item):
        release.wait(TIMEOUT)  # the only credit is taken: the source is not fetched
        finished.set()
        return item

    with running(app):
        assert source.enough.wait(TIMEOUT)
        assert sink.enough.wait(TIMEOUT)
        release.set()
        assert finished.wait(TIMEOUT)
    calls = source.calls
    assert source.threads == source.fetch_threads  # the source actor's own thread
    assert len(sink.threads) == 1 and "Sink" in next(iter(sink.threads))
    assert sink.publish_threads <= sink.threads
    assert source.calls == calls  # no keepalive once closed


def test_a_failing_keepalive_restarts_the_source():
    class FailingKeepalive(KeepaliveSource):
        def __init__(self) -> None:
            super().__init__()
            self.opens = 0
            self.reopened = threading.Event()

        def open(self) -> None:
            self.opens += 1
            if self.opens == 2:
                self.reopened.set()

        def keepalive(self) -> None:
            if self.opens == 1:
                raise ConnectionError("heartbeat missed")

    app = OneStepApp("keepalive-fails")
    source = FailingKeepalive()

    @app.task(source=source)
    def noop(ctx, item):
        return None

    with running(app):
        assert source.reopened.wait(TIMEOUT)


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


def test_a_reply_that_cannot_encode_the_result_fails_the_message_with_kind_encode():
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()

    class StrictReply:
        def __init__(self, payload: Any) -> None:
            self.payload = payload

        def encode(self, result: Any) -> None:
            if result == "bad":
                raise EncodeError("not encodable")

        def __call__(self, result: Any, failure: Any) -> None:
            replies.put((self.payload, result, None if failure is None else failure.kind))

    class ReplySource(ListSource):
        def fetch(self, limit: int) -> list[Delivery]:
            batch = super().fetch(limit)
            for delivery in batch:
                delivery.reply = StrictReply(delivery.payload)
            return batch

    app = OneStepApp("reply-encode")
    source = ReplySource(items=["good", "bad"])
    out = MemoryQueue("out")
    dead = MemoryQueue("dead")

    @app.task(source=source, emit=out, dead_letter=dead, retry=MaxAttempts(3))
    def echo(ctx, item):
        return item

    with running(app):
        got = {replies.get(timeout=TIMEOUT) for _ in range(2)}
        letter = dead.get(timeout=TIMEOUT)
    assert got == {("good", "good", None), ("bad", None, "encode")}
    assert letter["failure"]["kind"] == "encode"
    assert out.drain() == ["good"]  # the bad result was not published either


def test_health_is_degraded_while_a_source_is_down_and_ok_after_it_recovers():
    source = FlakySource(open_timeout_s=TIMEOUT)
    processed = threading.Event()
    app = OneStepApp("health")

    @app.task(source=source)
    def noop(ctx, item):
        processed.set()

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
        source.put("after")
        assert processed.wait(TIMEOUT)  # fetching resumed after the restart
        assert app.health() == {"status": "ok", "problems": {}}
    assert app.health()["status"] == "stopped"

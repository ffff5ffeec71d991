"""Task events: their order and fields, failing event handlers, InMemoryMetrics and
StructuredEventLogger."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import pytest

from onestep import (
    InMemoryMetrics,
    MaxAttempts,
    MemoryQueue,
    OneStepApp,
    StructuredEventLogger,
    TaskEvent,
)
from tests.helpers import ListSource, running

TIMEOUT = 5.0


def make_source(source_kind: str) -> Any:
    return MemoryQueue("in") if source_kind == "memory" else ListSource("in")


def wait_for_kind(events: queue.Queue[TaskEvent], kind: str) -> list[TaskEvent]:
    """Events up to and including the first of `kind`."""
    seen = []
    while True:
        event = events.get(timeout=TIMEOUT)
        seen.append(event)
        if event.kind == kind:
            return seen


def drain(events: queue.Queue[TaskEvent]) -> list[TaskEvent]:
    rest = []
    while not events.empty():
        rest.append(events.get_nowait())
    return rest


CASES = [("sync", "memory"), ("async", "memory"), ("sync", "custom"), ("async", "custom")]


def add_task(app: OneStepApp, kind: str, source: Any, fn: Any, **options: Any) -> None:
    if kind == "sync":

        def work(ctx, item):
            return fn(ctx, item)

    else:

        async def work(ctx, item):
            return fn(ctx, item)

    app.task(source=source, **options)(work)


@pytest.mark.parametrize(("kind", "source_kind"), CASES)
def test_a_success_emits_fetched_started_succeeded(kind, source_kind):
    source = make_source(source_kind)
    app = OneStepApp("shop", shutdown_timeout_s=1.0)
    events: queue.Queue[TaskEvent] = queue.Queue()
    app.on_event(events.put)
    add_task(app, kind, source, lambda ctx, item: None)
    before = time.time()
    with running(app):
        source.put("x", {"id": 7})
        seen = wait_for_kind(events, "succeeded")
    seen += drain(events)  # the app stopped: every event was delivered
    assert [e.kind for e in seen] == ["fetched", "started", "succeeded"]
    for event in seen:
        assert isinstance(event, TaskEvent)
        assert (event.app, event.task, event.source) == ("shop", "work", "in")
        assert event.attempts == 0
        assert event.meta == {"id": 7}
        assert event.failure is None
        assert before <= event.emitted_at <= time.time()
    assert [e.emitted_at for e in seen] == sorted(e.emitted_at for e in seen)
    assert seen[-1].duration_s is not None and seen[-1].duration_s >= 0


@pytest.mark.parametrize(("kind", "source_kind"), CASES)
def test_max_attempts_2_with_dead_letter_event_order(kind, source_kind):
    source = make_source(source_kind)
    dead = MemoryQueue("dead")
    app = OneStepApp("shop", shutdown_timeout_s=1.0)
    events: queue.Queue[TaskEvent] = queue.Queue()
    app.on_event(events.put)

    def fail(ctx: Any, item: Any) -> None:
        raise ValueError("broken")

    add_task(app, kind, source, fail, retry=MaxAttempts(2), dead_letter=dead)
    with running(app):
        source.put("x")
        history = wait_for_kind(events, "failed")
        assert dead.qsize() == 1
    history += drain(events)
    assert [e.kind for e in history] == [
        "fetched",
        "started",
        "retried",
        "fetched",
        "started",
        "dead_lettered",
        "failed",
    ]
    assert [e.attempts for e in history] == [0, 0, 0, 1, 1, 1, 1]
    for event in history:
        if event.kind in ("retried", "dead_lettered", "failed"):
            assert event.failure is not None
            assert event.failure["kind"] == "error"
            assert event.failure["exception_type"] == "ValueError"
            assert event.failure["message"] == "broken"
        else:
            assert event.failure is None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_no_retry_without_dead_letter_ends_with_failed(kind):
    source = MemoryQueue("in")
    app = OneStepApp("shop", shutdown_timeout_s=1.0)
    events: queue.Queue[TaskEvent] = queue.Queue()
    app.on_event(events.put)

    def fail(ctx: Any, item: Any) -> None:
        raise ValueError("broken")

    add_task(app, kind, source, fail)
    with running(app):
        source.put("x")
        history = wait_for_kind(events, "failed")
    history += drain(events)
    assert [e.kind for e in history] == ["fetched", "started", "failed"]


def test_a_timeout_is_reported_as_a_failed_event_of_kind_timeout():
    source = MemoryQueue("in")
    release = threading.Event()
    app = OneStepApp("shop", shutdown_timeout_s=1.0)
    events: queue.Queue[TaskEvent] = queue.Queue()
    app.on_event(events.put)

    @app.task(source=source, timeout_s=0.1)
    def stuck(ctx, item):
        release.wait(10)

    try:
        with running(app):
            source.put("x")
            history = wait_for_kind(events, "failed")
    finally:
        release.set()
    assert history[-1].failure is not None
    assert history[-1].failure["kind"] == "timeout"


def test_a_raising_event_handler_changes_nothing(caplog):
    incoming, out = MemoryQueue("in"), MemoryQueue("out")
    app = OneStepApp("shop", shutdown_timeout_s=1.0)
    metrics = InMemoryMetrics()

    def broken_handler(event: TaskEvent) -> None:
        raise RuntimeError("event handler bug")

    async def broken_async_handler(event: TaskEvent) -> None:
        raise RuntimeError("async event handler bug")

    app.on_event(broken_handler)
    app.on_event(broken_async_handler)
    app.on_event(metrics)

    @app.task(source=incoming, emit=out)
    def double(ctx, item):
        return item * 2

    with caplog.at_level(logging.ERROR, logger="onestep"), running(app):
        for i in range(10):
            incoming.put(i)
        assert sorted(out.get(timeout=TIMEOUT) for _ in range(10)) == [2 * i for i in range(10)]
    # the app stopped, so every event reached every handler
    assert metrics.count("fetched") == 10
    assert metrics.count("started") == 10
    assert metrics.count("succeeded", task="double") == 10
    assert metrics.count("failed") == 0
    assert any("broken_handler" in r.getMessage() for r in caplog.records)


def test_in_memory_metrics_in_a_running_app():
    incoming = MemoryQueue("in")
    other = MemoryQueue("other")
    app = OneStepApp("shop", shutdown_timeout_s=1.0)
    metrics = InMemoryMetrics()
    app.on_event(metrics)
    done: queue.Queue[Any] = queue.Queue()

    @app.task(source=incoming, retry=MaxAttempts(2))
    def flaky(ctx, item):
        done.put(item)
        if item == "bad":
            raise ValueError("bad")

    @app.task(source=other)
    async def fine(ctx, item):
        done.put(item)

    with running(app):
        incoming.put("good")
        incoming.put("bad")
        other.put("x")
        for _ in range(4):
            done.get(timeout=TIMEOUT)
    assert metrics.snapshot() == {
        "flaky": {"fetched": 3, "started": 3, "succeeded": 1, "retried": 1, "failed": 1},
        "fine": {"fetched": 1, "started": 1, "succeeded": 1},
    }
    assert metrics.count("fetched") == 4
    assert metrics.count("fetched", task="fine") == 1
    assert metrics.count("cancelled") == 0


def _event(kind: str, task: str = "t", **fields: Any) -> TaskEvent:
    return TaskEvent(kind, "app", task, "src", fields.pop("attempts", 0), 1.5, **fields)


def test_in_memory_metrics_count_and_snapshot():
    metrics = InMemoryMetrics()
    for event in [
        _event("fetched", "a"),
        _event("fetched", "a"),
        _event("succeeded", "a"),
        _event("fetched", "b"),
        _event("failed", "b"),
    ]:
        metrics(event)
    assert metrics.count("fetched") == 3
    assert metrics.count("fetched", task="a") == 2
    assert metrics.count("fetched", task="b") == 1
    assert metrics.count("fetched", task="nope") == 0
    assert metrics.count("dead_lettered") == 0
    assert metrics.snapshot() == {
        "a": {"fetched": 2, "succeeded": 1},
        "b": {"fetched": 1, "failed": 1},
    }
    with pytest.raises(ValueError, match="kind"):
        metrics.count("exploded")


def test_in_memory_metrics_is_thread_safe():
    metrics = InMemoryMetrics()
    event = _event("started")

    def hammer() -> None:
        for _ in range(2000):
            metrics(event)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert metrics.count("started") == 16000


def test_structured_event_logger_puts_the_fields_in_extra(caplog):
    logger = StructuredEventLogger()
    failure = {"kind": "error", "exception_type": "ValueError", "message": "m", "traceback": ""}
    with caplog.at_level(logging.INFO, logger="onestep.events"):
        logger(_event("succeeded", attempts=2, duration_s=0.25, meta={"id": 1}))
        logger(_event("failed", failure=failure))
    ok, bad = caplog.records
    assert ok.name == "onestep.events"
    assert ok.levelno == logging.INFO
    assert ok.event_kind == "succeeded"
    assert (ok.app, ok.task, ok.source) == ("app", "t", "src")
    assert ok.attempts == 2
    assert ok.emitted_at == 1.5
    assert ok.duration_s == 0.25
    assert ok.failure is None
    assert ok.meta == {"id": 1}
    assert "succeeded" in ok.getMessage()
    assert bad.levelno == logging.WARNING
    assert bad.event_kind == "failed"
    assert bad.failure == failure


def test_structured_event_logger_with_a_custom_logger(caplog):
    custom = logging.getLogger("tests.events")
    with caplog.at_level(logging.INFO, logger="tests.events"):
        StructuredEventLogger(custom)(_event("dead_lettered"))
        StructuredEventLogger("tests.events")(_event("started"))
    assert [(r.name, r.event_kind, r.levelno) for r in caplog.records] == [
        ("tests.events", "dead_lettered", logging.WARNING),
        ("tests.events", "started", logging.INFO),
    ]


def test_structured_event_logger_in_a_running_app(caplog):
    incoming = MemoryQueue("in")
    app = OneStepApp("shop", shutdown_timeout_s=1.0)
    app.on_event(StructuredEventLogger())
    done = threading.Event()

    @app.task(source=incoming)
    def handler(ctx, item):
        done.set()

    with caplog.at_level(logging.INFO, logger="onestep.events"):
        with running(app):
            incoming.put(1, {"k": "v"})
            assert done.wait(TIMEOUT)
        records = [r for r in caplog.records if r.name == "onestep.events"]
    assert [r.event_kind for r in records] == ["fetched", "started", "succeeded"]
    assert all(
        (r.app, r.task, r.source, r.meta) == ("shop", "handler", "in", {"k": "v"}) for r in records
    )


def test_an_async_event_handler_receives_every_event():
    incoming = MemoryQueue("in")
    app = OneStepApp("shop", shutdown_timeout_s=1.0)
    kinds: queue.Queue[str] = queue.Queue()

    @app.on_event
    async def on_event(event):
        kinds.put(event.kind)

    @app.task(source=incoming)
    def handler(ctx, item):
        pass

    with running(app):
        incoming.put(1)
        assert [kinds.get(timeout=TIMEOUT) for _ in range(3)] == [
            "fetched",
            "started",
            "succeeded",
        ]

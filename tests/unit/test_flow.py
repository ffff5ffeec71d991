"""Flow control on a running app: rate limits, per-key slots, dedup keys (issue 21).

Every test waits on Events or polls a condition with a deadline; timings are read from
the handler's own clock readings, never slept for.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from onestep import InMemoryMetrics, MaxAttempts, MemoryQueue, OneStepApp, RateLimit, TaskEvent
from onestep.flow import parse_rate_limit
from tests.helpers import ListSource


def _wait_for(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)  # polling a condition with a deadline, not synchronising


class _Run:
    """Starts an app and stops it at the end of the `with`."""

    def __init__(self, app: OneStepApp) -> None:
        self.app = app

    def __enter__(self) -> OneStepApp:
        self.app.start()
        return self.app

    def __exit__(self, *exc: Any) -> None:
        self.app.stop()


# -- rate limits -----------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_sixty_messages_at_twenty_per_second_span_two_seconds(is_async: bool) -> None:
    app = OneStepApp("rate")
    inbox = MemoryQueue("in")
    stamps: list[float] = []
    done = threading.Event()

    def record() -> None:
        stamps.append(time.monotonic())
        if len(stamps) == 60:
            done.set()

    if is_async:

        @app.task(source=inbox, concurrency=8, rate_limit="20/s")
        async def handle_async(ctx: Any, item: Any) -> None:
            record()

    else:

        @app.task(source=inbox, concurrency=8, rate_limit="20/s")
        def handle(ctx: Any, item: Any) -> None:
            record()

    for i in range(60):
        inbox.put(i)
    with _Run(app):
        assert done.wait(15.0)
    span = max(stamps) - min(stamps)
    # a burst of 20, then 40 more at 20 a second: 2 s
    assert 1.8 <= span <= 4.5, span


def test_rate_limit_forms_and_refusals() -> None:
    assert parse_rate_limit("20/s") == RateLimit(20, per_s=1)
    assert parse_rate_limit("600/m") == RateLimit(600, per_s=60)
    assert parse_rate_limit(" 1000 / h ") == RateLimit(1000, per_s=3600)
    assert str(RateLimit(5, per_s=2)) == "5/2s"
    app = OneStepApp("bad")
    for bad in ("20", "20/d", "0/s", "-1/s", "x/s", "20 per second", 20, 1.5, "2.5/s"):
        with pytest.raises(ValueError, match=r'rate_limit must be .*"N/s", "N/m" or "N/h"'):
            app.task(source=MemoryQueue("q"), rate_limit=bad)(lambda ctx, item: None)
    with pytest.raises(ValueError, match="RateLimit count"):
        RateLimit(0)
    with pytest.raises(ValueError, match="RateLimit per_s"):
        RateLimit(3, per_s=0)
    with pytest.raises(ValueError, match="max_per_key"):
        app.task(source=MemoryQueue("q"), max_per_key=2)(lambda ctx, item: None)
    with pytest.raises(ValueError, match="dedup_ttl_s"):
        app.task(source=MemoryQueue("q"), dedup_key=str, dedup_ttl_s=0)(lambda ctx, item: None)
    with pytest.raises(TypeError, match="concurrency_key"):
        app.task(source=MemoryQueue("q"), concurrency_key="customer")(lambda ctx, item: None)


def test_shutdown_does_not_wait_for_tokens() -> None:
    """Messages waiting for a token go back to their source at once, attempts unchanged."""
    app = OneStepApp("rate-stop", shutdown_timeout_s=20.0)
    inbox = MemoryQueue("in")
    ran: list[int] = []
    first = threading.Event()

    @app.task(source=inbox, concurrency=4, rate_limit="1/h")
    def handle(ctx: Any, item: int) -> None:
        ran.append(item)
        first.set()

    for i in range(10):
        inbox.put(i)
    app.start()
    assert first.wait(10.0)
    started = time.monotonic()
    app.stop()
    assert time.monotonic() - started < 5.0
    assert len(ran) == 1
    assert inbox.qsize() == 9  # nothing lost


# -- per-key slots ---------------------------------------------------------------------


@pytest.mark.parametrize("source_kind", ["memory", "actor"])
def test_max_per_key_one_never_overlaps_within_a_key(source_kind: str) -> None:
    """MemoryQueue (direct mode: the workers ask the gate) and a source that goes
    through the SourceActor (the task actor asks the gate)."""
    app = OneStepApp("keys")
    inbox: Any = MemoryQueue("in") if source_kind == "memory" else ListSource("in")
    lock = threading.Lock()
    running: dict[str, int] = {}
    overlap: list[str] = []
    peak = [0]
    done = threading.Event()
    count = [0]

    @app.task(
        source=inbox, concurrency=8, concurrency_key=lambda body: body["customer"], max_per_key=1
    )
    def handle(ctx: Any, body: dict[str, Any]) -> None:
        key = body["customer"]
        with lock:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlap.append(key)
            peak[0] = max(peak[0], sum(running.values()))
        time.sleep(0.03)  # the work itself
        with lock:
            running[key] -= 1
            count[0] += 1
            if count[0] == 40:
                done.set()

    for i in range(40):
        inbox.put({"customer": f"c{i % 4}", "n": i})
    with _Run(app):
        assert done.wait(20.0)
    assert overlap == []
    assert peak[0] >= 3


def test_key_function_that_raises_fails_with_kind_key_without_retry() -> None:
    app = OneStepApp("badkey")
    inbox = MemoryQueue("in")
    dead = MemoryQueue("dead")
    ran: list[Any] = []

    @app.task(
        source=inbox,
        concurrency=2,
        retry=MaxAttempts(5),
        dead_letter=dead,
        concurrency_key=lambda body: body["customer"],
    )
    def handle(ctx: Any, body: Any) -> None:
        ran.append(body)

    inbox.put({"n": 1})  # no customer: KeyError in the key function
    inbox.put({"customer": "a"})
    with _Run(app):
        _wait_for(lambda: dead.qsize() == 1 and len(ran) == 1)
    (letter,) = dead.drain()
    assert letter["failure"]["kind"] == "key"
    assert letter["failure"]["exception_type"] == "KeyError"
    assert letter["payload"] == {"n": 1}
    assert len(ran) == 1  # the other message ran; the bad one was not retried


# -- dedup keys ------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_fifty_distinct_keys_in_a_hundred_messages_run_fifty_times(is_async: bool) -> None:
    app = OneStepApp("dedup")
    inbox = MemoryQueue("in")
    metrics = InMemoryMetrics()
    skipped: list[TaskEvent] = []
    calls: list[int] = []
    app.on_event(metrics)

    @app.on_event
    def on_skip(event: TaskEvent) -> None:
        if event.kind == "skipped":
            skipped.append(event)

    options: dict[str, Any] = {"dedup_key": lambda body: body["id"], "dedup_ttl_s": 60}
    if is_async:

        @app.task(source=inbox, concurrency=4, name="handle", **options)
        async def handle_async(ctx: Any, body: dict[str, int]) -> None:
            calls.append(body["id"])

    else:

        @app.task(source=inbox, concurrency=4, **options)
        def handle(ctx: Any, body: dict[str, int]) -> None:
            calls.append(body["id"])

    for i in range(100):
        inbox.put({"id": i % 50})
    with _Run(app):
        _wait_for(lambda: len(calls) + len(skipped) >= 100)
    assert len(calls) == 50
    assert sorted(calls) == list(range(50))
    assert len(skipped) == 50
    assert metrics.count("skipped", "handle") == 50


def test_failed_for_good_releases_the_dedup_key_and_a_retry_keeps_it() -> None:
    app = OneStepApp("dedup-fail")
    inbox = MemoryQueue("in")
    attempts: dict[str, int] = {}
    outcomes: list[str] = []

    @app.on_event
    def on_event(event: TaskEvent) -> None:
        if event.kind in ("succeeded", "failed", "skipped", "retried"):
            outcomes.append(event.kind)

    @app.task(source=inbox, retry=MaxAttempts(2), dedup_key=lambda body: body["id"])
    def handle(ctx: Any, body: dict[str, Any]) -> None:
        attempts[body["v"]] = attempts.get(body["v"], 0) + 1
        if body["v"] == "bad":
            raise ValueError("bad body")

    inbox.put({"id": "x", "v": "bad"})
    with _Run(app):
        _wait_for(lambda: "failed" in outcomes)
        # the retry ran (its key was its own), then the failure released the key
        assert attempts == {"bad": 2}
        inbox.put({"id": "x", "v": "good"})  # a corrected resend runs
        _wait_for(lambda: "succeeded" in outcomes)
        inbox.put({"id": "x", "v": "again"})  # a duplicate of a success is skipped
        _wait_for(lambda: "skipped" in outcomes)
    assert attempts == {"bad": 2, "good": 1}


def test_check_output_names_the_limits_and_their_scope() -> None:
    app = OneStepApp("described")

    @app.task(source=MemoryQueue("in"), rate_limit="20/s", concurrency_key=str, max_per_key=2)
    def handle(ctx: Any, item: Any) -> None:
        return None

    limits = app.describe()["tasks"][0]["limits"]
    assert limits["rate_limit"] == "20/s"
    assert limits["max_per_key"] == 2
    assert limits["scope"] == "per process"


# -- what operators see ----------------------------------------------------------------


def test_metrics_and_status_page_show_waits_and_skips() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from onestep.cli._check import format_graph
    from onestep.ops._collector import OnestepCollector
    from onestep.ops._metrics import AppMonitor
    from onestep.ops._status_page import render_status_page

    app = OneStepApp("seen")
    inbox = MemoryQueue("in")
    handled: list[int] = []

    @app.task(source=inbox, concurrency=2, rate_limit="10/s", dedup_key=lambda body: body)
    def handle(ctx: Any, body: int) -> None:
        handled.append(body)

    monitor = AppMonitor(app)
    for i in (*range(15), 0, 1):  # 15 distinct keys, 2 duplicates
        inbox.put(i)
    with _Run(app):
        _wait_for(lambda: monitor.snapshot()["tasks"]["handle"]["counts"]["skipped"] == 2)
        _wait_for(lambda: len(handled) == 15)
        snapshot = monitor.snapshot()
    task = snapshot["tasks"]["handle"]
    assert task["waited"]["rate"] > 0.0  # 5 messages past the burst of 10 waited
    assert task["waited"]["key"] == 0.0
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OnestepCollector(monitor))
    text = generate_latest(registry).decode()
    assert 'onestep_flow_wait_seconds_total{app="seen",limit="rate",task="handle"}' in text
    assert 'onestep_messages_total{app="seen",outcome="skipped",task="handle"} 2.0' in text
    page = render_status_page(snapshot, app.describe(), {})
    assert '<table id="limits">' in page
    assert "rate 10/s" in page
    check = format_graph(app.describe())
    assert "limits       rate 10/s; dedup key" in check
    assert "per process" in check


def test_shutdown_releases_messages_waiting_for_a_busy_key() -> None:
    app = OneStepApp("keys-stop", shutdown_timeout_s=20.0)
    inbox = MemoryQueue("in")
    running = threading.Event()
    release = threading.Event()

    @app.task(source=inbox, concurrency=4, concurrency_key=lambda body: "same")
    def handle(ctx: Any, body: int) -> None:
        running.set()
        release.wait(10.0)

    for i in range(5):
        inbox.put(i)
    app.start()
    assert running.wait(10.0)
    stopper = threading.Thread(target=app.stop)
    started = time.monotonic()
    stopper.start()
    _wait_for(lambda: inbox.qsize() == 4)  # the four waiting ones went back at once
    assert time.monotonic() - started < 5.0
    release.set()
    stopper.join(20.0)
    assert inbox.qsize() == 4


@pytest.mark.parametrize("source_kind", ["memory", "actor"])
def test_a_message_that_fails_frees_its_key_slot(source_kind: str) -> None:
    app = OneStepApp("keys-fail")
    inbox: Any = MemoryQueue("in") if source_kind == "memory" else ListSource("in")
    ran: list[str] = []

    @app.task(source=inbox, concurrency=2, concurrency_key=lambda body: body["customer"])
    def handle(ctx: Any, body: dict[str, str]) -> None:
        ran.append(body["n"])
        if body["n"] == "first":
            raise RuntimeError("the first one fails")

    inbox.put({"customer": "a", "n": "first"})
    inbox.put({"customer": "a", "n": "second"})
    with _Run(app):
        _wait_for(lambda: len(ran) == 2, timeout_s=10.0)
    assert ran == ["first", "second"]


def test_async_handlers_keep_one_per_key_too() -> None:
    """An async task on the in-memory store asks its gate on the event-loop thread."""
    import asyncio

    app = OneStepApp("keys-async")
    inbox = MemoryQueue("in")
    running: dict[str, int] = {}
    overlap: list[str] = []
    peak = [0]
    done: list[int] = []

    @app.task(source=inbox, concurrency=8, concurrency_key=lambda body: body["customer"])
    async def handle(ctx: Any, body: dict[str, Any]) -> None:
        key = body["customer"]
        running[key] = running.get(key, 0) + 1  # one loop thread: no lock needed
        if running[key] > 1:
            overlap.append(key)
        peak[0] = max(peak[0], sum(running.values()))
        await asyncio.sleep(0.02)  # the work itself
        running[key] -= 1
        done.append(body["n"])

    for i in range(24):
        inbox.put({"customer": f"c{i % 3}", "n": i})
    with _Run(app):
        assert app.internals.system is not None
        assert app.internals.system.runtimes[0].direct
        _wait_for(lambda: len(done) == 24)
    assert overlap == []
    assert peak[0] >= 2

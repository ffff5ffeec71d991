"""onestep.testing.run_until_idle: counts per task, results left in their sinks,
retries waited for, a timeout naming what was busy, and the app always stopped."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from onestep import (
    AppFailed,
    InMemoryMetrics,
    IntervalSource,
    MaxAttempts,
    MemoryQueue,
    OneStepApp,
)
from onestep.testing import run_until_idle
from tests.helpers import ListSource


def test_a_two_stage_pipeline_returns_the_counts_and_every_result() -> None:
    app = OneStepApp("pipeline")
    numbers, squares, results, dead = (
        MemoryQueue("numbers"),
        MemoryQueue("squares"),
        MemoryQueue("results"),
        MemoryQueue("dead"),
    )
    flaky_seen: set[int] = set()

    @app.task(source=numbers, emit=squares, dead_letter=dead, retry=MaxAttempts(2, 0.01))
    def square(ctx, n):
        if n == 13:
            raise ValueError("unlucky")
        if n % 5 == 0 and n not in flaky_seen:  # fails once, then succeeds
            flaky_seen.add(n)
            raise RuntimeError("flaky")
        return n * n

    @app.task(source=squares, emit=results, concurrency=4)
    async def label(ctx, n):
        return f"sq={n}"

    for n in range(20):
        numbers.put(n)

    counts = run_until_idle(app, timeout_s=10)

    assert counts == {
        "square": {"succeeded": 19, "failed": 1, "retried": 5, "dead_lettered": 1},
        "label": {"succeeded": 19, "failed": 0, "retried": 0, "dead_lettered": 0},
    }
    expected = sorted(f"sq={n * n}" for n in range(20) if n != 13)
    assert sorted(results.drain()) == expected
    assert [letter.payload for letter in app.dead_letters("square").list()] == [13]
    assert not app.running


def test_a_source_that_cannot_tell_its_depth_is_waited_for_through_the_ledger() -> None:
    app = OneStepApp("slow-retry")
    source = ListSource("list", items=[1, 2, 3])
    out = MemoryQueue("out")
    seen: list[int] = []

    @app.task(source=source, emit=out, retry=MaxAttempts(2, delay_s=0.3))
    def work(ctx, item):
        seen.append(item)
        if item == 2 and ctx.current.attempts == 0:
            raise RuntimeError("later")
        return item

    # ListSource cannot tell its depth and goes through the SourceActor: the ledger and
    # the events are all that tell the app is busy
    counts = run_until_idle(app)
    assert counts["work"] == {"succeeded": 3, "failed": 0, "retried": 1, "dead_lettered": 0}
    assert sorted(out.drain()) == [1, 2, 3]


def test_a_memory_queue_delayed_retry_keeps_it_busy_until_it_ran() -> None:
    app = OneStepApp("delayed")
    jobs, out = MemoryQueue("jobs"), MemoryQueue("out")

    @app.task(source=jobs, emit=out, retry=MaxAttempts(2, delay_s=0.3))
    def work(ctx, item):
        if ctx.current.attempts == 0:
            raise RuntimeError("try again later")
        return item

    jobs.put("x")
    counts = run_until_idle(app)
    assert counts["work"] == {"succeeded": 1, "failed": 0, "retried": 1, "dead_lettered": 0}
    assert out.drain() == ["x"]


def test_a_pipeline_that_never_idles_raises_naming_the_busy_task() -> None:
    app = OneStepApp("forever", shutdown_timeout_s=5)
    loop = MemoryQueue("loop")

    @app.task(source=loop, emit=loop)
    def spin(ctx, item):
        return item + 1

    loop.put(0)
    with pytest.raises(TimeoutError) as raised:
        run_until_idle(app, timeout_s=0.3)
    message = str(raised.value)
    assert "app 'forever' was not idle after 0.3 s" in message
    assert "task 'spin'" in message
    assert not app.running
    # the autouse fixture checks that no actor or onestep thread is left


def test_a_stuck_handler_is_named_in_flight() -> None:
    app = OneStepApp("stuck", shutdown_timeout_s=0.2)
    jobs = MemoryQueue("jobs")

    @app.task(source=jobs)
    def wait(ctx, item):
        ctx.cancelled.wait(10)  # the stop after the timeout cancels it

    jobs.put(1)
    with pytest.raises(TimeoutError, match="task 'wait' has 1 message\\(s\\) in flight"):
        run_until_idle(app, timeout_s=0.3)
    assert not app.running


def test_the_users_event_handlers_see_the_events_and_are_unchanged() -> None:
    app = OneStepApp("events")
    metrics = InMemoryMetrics()
    app.on_event(metrics)
    jobs = MemoryQueue("jobs")

    @app.task(source=jobs)
    def work(ctx, item):
        return None

    for n in range(3):
        jobs.put(n)
    assert run_until_idle(app)["work"]["succeeded"] == 3
    assert metrics.count("succeeded", task="work") == 3
    assert app.describe()["event_handlers"] == ["InMemoryMetrics"]
    assert app._events.taps == []


def test_an_app_without_event_handlers_builds_no_events_after_it() -> None:
    app = OneStepApp("quiet")
    jobs = MemoryQueue("jobs")

    @app.task(source=jobs)
    def work(ctx, item):
        return None

    jobs.put(1)
    assert run_until_idle(app)["work"]["succeeded"] == 1
    jobs.put(2)
    app.start()
    try:
        assert app._system is not None
        assert all(runtime.events is None for runtime in app._system.runtimes)
    finally:
        app.stop()


def test_a_source_that_cannot_tell_does_not_hold_it_up() -> None:
    app = OneStepApp("schedule")
    ticks: list[Any] = []

    @app.task(source=IntervalSource(timedelta(hours=1)))
    def tick(ctx, item):
        ticks.append(item)

    assert run_until_idle(app, timeout_s=5)["tick"]["succeeded"] == 0
    assert ticks == []


def test_an_app_that_fails_raises_its_failure() -> None:
    app = OneStepApp("failing", max_restarts=0)

    class Broken(ListSource):
        def fetch(self, limit: int) -> list[Any]:
            raise OSError("disk gone")

    @app.task(source=Broken("broken"))
    def work(ctx, item):
        return None

    with pytest.raises(AppFailed, match="disk gone"):
        run_until_idle(app, timeout_s=5)
    assert not app.running


def test_timeout_s_is_checked() -> None:
    app = OneStepApp("bad-timeout")
    with pytest.raises(ValueError, match="timeout_s must be"):
        run_until_idle(app, timeout_s=0)
    assert not app.running

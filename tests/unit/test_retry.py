"""Retry and dead-letter policies: MaxAttempts, NoRetry (the default), ExponentialBackoff,
delayed retries, and handlers raising SystemExit."""

from __future__ import annotations

import asyncio
import queue
import re
import threading
import time
from typing import Any

import pytest

from onestep import (
    Delivery,
    ExponentialBackoff,
    Failure,
    MaxAttempts,
    MemoryQueue,
    NoRetry,
    OneStepApp,
    Source,
)
from tests.helpers import running

TIMEOUT = 5.0
ERROR = Failure("error", "ValueError", "boom", "")


class ListSource(Source):
    """A custom source that is not thread-safe, so the runtime drives it from its
    SourceActor (not MemoryQueue's direct mode). Honours retry delays."""

    poll_interval_s = 0.01

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pending: list[tuple[float, int, Delivery]] = []
        self._seq = 0
        self.acked: queue.Queue[Delivery] = queue.Queue()
        self.failed: queue.Queue[tuple[Delivery, BaseException | None]] = queue.Queue()
        self.retries: list[tuple[Any, float | None]] = []
        self.threads: set[str] = set()

    def push(self, payload: Any, meta: dict[str, Any] | None = None) -> None:
        self._add(Delivery(payload, meta=meta), 0.0)

    def _add(self, delivery: Delivery, delay_s: float) -> None:
        with self._lock:
            self._seq += 1
            self._pending.append((time.monotonic() + delay_s, self._seq, delivery))
            self._pending.sort(key=lambda entry: entry[:2])

    def fetch(self, limit: int) -> list[Delivery]:
        self.threads.add(threading.current_thread().name)
        now = time.monotonic()
        with self._lock:
            due = [entry for entry in self._pending if entry[0] <= now][:limit]
            for entry in due:
                self._pending.remove(entry)
        return [delivery for _, _, delivery in due]

    def ack(self, delivery: Delivery) -> None:
        self.threads.add(threading.current_thread().name)
        self.acked.put(delivery)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        self.threads.add(threading.current_thread().name)
        self.retries.append((delivery.payload, delay_s))
        delivery.attempts += 1
        self._add(delivery, delay_s or 0.0)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        self.threads.add(threading.current_thread().name)
        self.failed.put((delivery, error))


# -- MaxAttempts and the dead letter ------------------------------------------------------


def _check_dead_letter(letter: Delivery, *, source: str, attempts: int) -> None:
    body, meta = letter.payload, letter.meta
    assert set(body) == {"payload", "failure"}
    assert body["payload"] == {"order": 1}
    failure = body["failure"]
    assert set(failure) == {"kind", "exception_type", "message", "traceback"}
    assert failure["kind"] == "error"
    assert failure["exception_type"] == "ValueError"
    assert failure["message"] == "boom 1"
    assert "ValueError: boom 1" in failure["traceback"]
    assert "always_fails" in failure["traceback"]
    assert re.fullmatch(r"[0-9a-f]{32}", meta.pop("dead_letter_id"))
    assert meta == {
        "app": "shop",
        "task": "always_fails",
        "source": source,
        "original_meta": {"trace": "abc"},
        "original_attempts": attempts,
    }


def _failing_app(
    kind: str, source: Any, dead: MemoryQueue, retry: Any
) -> tuple[OneStepApp, list[int]]:
    """An app whose one task records `ctx.current.attempts` and always raises."""
    app = OneStepApp("shop", shutdown_timeout_s=2.0)
    seen: list[int] = []
    if kind == "sync":

        @app.task(source=source, dead_letter=dead, retry=retry)
        def always_fails(ctx, item):
            seen.append(ctx.current.attempts)
            raise ValueError(f"boom {item['order']}")

    else:

        @app.task(source=source, dead_letter=dead, retry=retry)
        async def always_fails(ctx, item):
            seen.append(ctx.current.attempts)
            raise ValueError(f"boom {item['order']}")

    return app, seen


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_max_attempts_3_runs_three_times_then_dead_letters(kind):
    incoming, dead = MemoryQueue("orders"), MemoryQueue("dead")
    app, seen = _failing_app(kind, incoming, dead, MaxAttempts(3))
    with running(app):
        incoming.put({"order": 1}, {"trace": "abc"})
        [letter] = dead.take(1, TIMEOUT)
        assert seen == [0, 1, 2]
    assert seen == [0, 1, 2]
    assert incoming.qsize() == 0
    assert dead.qsize() == 0
    _check_dead_letter(letter, source="orders", attempts=3)


def test_max_attempts_3_with_a_custom_source_goes_through_the_source_actor():
    source, dead = ListSource("orders"), MemoryQueue("dead")
    app, seen = _failing_app("sync", source, dead, MaxAttempts(3))
    with running(app):
        source.push({"order": 1}, {"trace": "abc"})
        [letter] = dead.take(1, TIMEOUT)
        # Only once the dead letter is stored is the original acked.
        acked = source.acked.get(timeout=TIMEOUT)
    assert seen == [0, 1, 2]
    assert acked.payload == {"order": 1}
    assert source.acked.empty()
    assert source.failed.empty()
    assert [payload for payload, _ in source.retries] == [{"order": 1}] * 2
    # Every call into the source ran on one thread: its actor's, not a worker's.
    assert len(source.threads) == 1
    assert not any(name.startswith("onestep-") for name in source.threads)
    _check_dead_letter(letter, source="orders", attempts=3)


def test_max_attempts_without_dead_letter_fails_the_message_at_its_source():
    source = ListSource("in")
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    seen: list[int] = []

    @app.task(source=source, retry=MaxAttempts(2))
    def handler(ctx, item):
        seen.append(ctx.current.attempts)
        raise KeyError("missing")

    with running(app):
        source.push("x")
        delivery, error = source.failed.get(timeout=TIMEOUT)
    assert seen == [0, 1]
    assert delivery.payload == "x"
    assert error is not None
    assert error.failure.kind == "error"  # type: ignore[attr-defined]
    assert error.failure.exception_type == "KeyError"  # type: ignore[attr-defined]
    assert source.acked.empty()


# -- the default: NoRetry ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_default_retry_runs_a_failing_message_exactly_once(kind):
    incoming, dead = MemoryQueue("orders"), MemoryQueue("dead")
    app, seen = _failing_app(kind, incoming, dead, None)
    assert isinstance(app.tasks["always_fails"].retry, NoRetry)
    with running(app):
        incoming.put({"order": 1}, {"trace": "abc"})
        [letter] = dead.take(1, TIMEOUT)
        # a second message proves the first one is not coming back
        incoming.put({"order": 2}, {"trace": "abc"})
        [second] = dead.take(1, TIMEOUT)
    assert seen == [0, 0]
    _check_dead_letter(letter, source="orders", attempts=1)
    assert second.payload["payload"] == {"order": 2}


def test_default_retry_with_a_custom_source_fails_it_once():
    source = ListSource("in")
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    runs: list[Any] = []

    @app.task(source=source)
    def handler(ctx, item):
        runs.append(item)
        raise ValueError("nope")

    with running(app):
        source.push("a")
        delivery, _ = source.failed.get(timeout=TIMEOUT)
    assert delivery.payload == "a"
    assert runs == ["a"]
    assert source.retries == []


# -- policies as units ---------------------------------------------------------------------


def test_no_retry_never_retries():
    assert NoRetry().next_delay(1, ERROR) is None


def test_max_attempts_counts_executions():
    policy = MaxAttempts(3, delay_s=0.5)
    assert policy.next_delay(1, ERROR) == 0.5
    assert policy.next_delay(2, ERROR) == 0.5
    assert policy.next_delay(3, ERROR) is None
    assert MaxAttempts(1).next_delay(1, ERROR) is None


def test_exponential_backoff_grows_then_caps_without_jitter():
    policy = ExponentialBackoff(
        max_attempts=100, min_delay_s=1.0, max_delay_s=10.0, multiplier=2.0, jitter=0.0
    )
    assert [policy.delay_for(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    # Huge retry numbers stay capped instead of overflowing.
    assert policy.delay_for(5000) == 10.0
    assert policy.delay_for(10**9) == 10.0


def test_exponential_backoff_jitter_shortens_by_up_to_the_jitter_fraction():
    policy = ExponentialBackoff(
        max_attempts=10, min_delay_s=1.0, max_delay_s=6.0, multiplier=3.0, jitter=0.5
    )
    assert policy.delay_for(1, rand=0.0) == 1.0
    assert policy.delay_for(1, rand=1.0) == 0.5
    assert policy.delay_for(2, rand=0.5) == pytest.approx(3.0 * 0.75)
    # capped first, then jittered
    assert policy.delay_for(3, rand=0.0) == 6.0
    assert policy.delay_for(3, rand=1.0) == 3.0
    delays = [policy.delay_for(3) for _ in range(200)]
    assert all(3.0 <= d <= 6.0 for d in delays)
    assert len(set(delays)) > 100  # really random, not a constant


def test_exponential_backoff_next_delay_gives_up_at_max_attempts():
    policy = ExponentialBackoff(
        max_attempts=3, min_delay_s=0.1, max_delay_s=1.0, multiplier=2.0, jitter=0.0
    )
    assert policy.next_delay(1, ERROR) == pytest.approx(0.1)
    assert policy.next_delay(2, ERROR) == pytest.approx(0.2)
    assert policy.next_delay(3, ERROR) is None


def test_exponential_backoff_delays_the_retry_in_a_running_app():
    incoming = MemoryQueue("in")
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    runs: queue.Queue[tuple[int, float]] = queue.Queue()
    policy = ExponentialBackoff(
        max_attempts=3, min_delay_s=0.1, max_delay_s=0.2, multiplier=2.0, jitter=0.0
    )

    @app.task(source=incoming, retry=policy)
    def handler(ctx, item):
        runs.put((ctx.current.attempts, time.monotonic()))
        raise ValueError("again")

    with running(app):
        incoming.put(1)
        (a0, t0), (a1, t1), (a2, t2) = (runs.get(timeout=TIMEOUT) for _ in range(3))
    assert (a0, a1, a2) == (0, 1, 2)
    assert t1 - t0 >= 0.09
    assert t2 - t1 >= 0.19


# -- delayed retries do not hold up other messages ------------------------------------------


def _delayed_retry_app(kind: str, source: Any) -> tuple[OneStepApp, queue.Queue[Any]]:
    app = OneStepApp("app", shutdown_timeout_s=2.0)
    runs: queue.Queue[tuple[str, int, float]] = queue.Queue()

    def body(ctx: Any, item: str) -> None:
        runs.put((item, ctx.current.attempts, time.monotonic()))
        if item == "bad" and ctx.current.attempts == 0:
            raise ValueError("first try fails")

    if kind == "sync":

        @app.task(source=source, retry=MaxAttempts(2, delay_s=0.5))
        def handler(ctx, item):
            body(ctx, item)

    else:

        @app.task(source=source, retry=MaxAttempts(2, delay_s=0.5))
        async def handler(ctx, item):
            body(ctx, item)

    return app, runs


def _check_delayed_retry(runs: queue.Queue[Any], put_good: Any) -> None:
    bad0 = runs.get(timeout=TIMEOUT)
    assert bad0[:2] == ("bad", 0)
    put_good()
    good = runs.get(timeout=TIMEOUT)
    bad1 = runs.get(timeout=1.5)  # due 0.5 s after the first try
    # the good message ran while the bad one waited for its retry
    assert good[:2] == ("good", 0)
    assert bad1[:2] == ("bad", 1)
    assert good[2] - bad0[2] < 0.45
    assert bad1[2] - bad0[2] >= 0.49


@pytest.mark.parametrize(
    "kind",
    ["sync", "async"],
)
def test_retry_delay_on_memory_queue_does_not_block_other_messages(kind):
    incoming = MemoryQueue("in")
    app, runs = _delayed_retry_app(kind, incoming)
    with running(app):
        incoming.put("bad")
        _check_delayed_retry(runs, lambda: incoming.put("good"))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_retry_delay_on_a_custom_source_does_not_block_other_messages(kind):
    source = ListSource("in")
    app, runs = _delayed_retry_app(kind, source)
    with running(app):
        source.push("bad")
        _check_delayed_retry(runs, lambda: source.push("good"))
    assert source.retries == [("bad", 0.5)]


# -- SystemExit in a handler ---------------------------------------------------------------


@pytest.mark.parametrize("source_kind", ["memory", "custom"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_system_exit_fails_only_that_message(kind, source_kind):
    source: Any = MemoryQueue("in") if source_kind == "memory" else ListSource("in")
    put = source.put if source_kind == "memory" else source.push
    dead = MemoryQueue("dead")
    done: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=2.0)

    if kind == "sync":

        @app.task(source=source, dead_letter=dead)
        def handler(ctx, item):
            if item == "exit":
                raise SystemExit(3)
            done.put(item)

    else:

        @app.task(source=source, dead_letter=dead)
        async def handler(ctx, item):
            await asyncio.sleep(0)
            if item == "exit":
                raise SystemExit(3)
            done.put(item)

    with running(app):
        put("before")
        put("exit")
        put("after1")
        put("after2")
        assert [done.get(timeout=TIMEOUT) for _ in range(3)] == ["before", "after1", "after2"]
        [letter] = dead.take(1, TIMEOUT)
        assert app.running
    assert letter.payload["payload"] == "exit"
    assert letter.payload["failure"]["kind"] == "error"
    assert letter.payload["failure"]["exception_type"] == "SystemExit"

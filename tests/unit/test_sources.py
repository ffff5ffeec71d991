"""Custom Source and Sink subclasses, with sync and async methods: thread affinity,
fetch without `limit`, fetch returning None, decode errors, restarts after a source
failure, and AppFailed when a source keeps failing."""

from __future__ import annotations

import asyncio
import queue
import re
import threading
import time
from collections import deque
from typing import Any

import pytest

from onestep import AppFailed, Delivery, MaxAttempts, MemoryQueue, OneStepApp, Sink, Source
from tests.helpers import running

TIMEOUT = 5.0


class Calls:
    """Which method ran on which thread, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[str, str]] = []

    def add(self, method: str) -> None:
        with self._lock:
            self.entries.append((method, threading.current_thread().name))

    def threads(self, *methods: str) -> set[str]:
        with self._lock:
            return {thread for method, thread in self.entries if not methods or method in methods}

    def methods(self) -> list[str]:
        with self._lock:
            return [method for method, _ in self.entries]


class SyncSource(Source):
    """A plain custom source: every method is `def`, fetch takes `limit`."""

    poll_interval_s = 0.01

    def __init__(self, name: str = "sync-src") -> None:
        self.name = name
        self.calls = Calls()
        self._lock = threading.Lock()
        self._pending: deque[Delivery] = deque()
        self.acked: queue.Queue[Any] = queue.Queue()
        self.failed: queue.Queue[Any] = queue.Queue()

    def put(self, payload: Any, *, error: BaseException | None = None) -> None:
        with self._lock:
            self._pending.append(Delivery(payload, meta={"p": payload}, error=error))

    def _take(self, limit: int) -> list[Delivery]:
        with self._lock:
            return [self._pending.popleft() for _ in range(min(limit, len(self._pending)))]

    def open(self) -> None:
        self.calls.add("open")

    def close(self) -> None:
        self.calls.add("close")

    def fetch(self, limit: int) -> list[Delivery]:
        self.calls.add("fetch")
        return self._take(limit)

    def ack(self, delivery: Delivery) -> None:
        self.calls.add("ack")
        self.acked.put(delivery.payload)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        self.calls.add("retry")
        delivery.attempts += 1
        with self._lock:
            self._pending.append(delivery)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        self.calls.add("fail")
        self.failed.put((delivery.payload, error))


class AsyncSource(Source):
    """The seed page's custom source: `async def fetch(self)` without `limit`, and async
    ack/retry/fail/open/close."""

    poll_interval_s = 0.01

    def __init__(self, name: str = "async-src") -> None:
        self.name = name
        self.calls = Calls()
        self._lock = threading.Lock()
        self._pending: deque[Delivery] = deque()
        self.acked: queue.Queue[Any] = queue.Queue()
        self.failed: queue.Queue[Any] = queue.Queue()

    def put(self, payload: Any) -> None:
        with self._lock:
            self._pending.append(Delivery(payload))

    async def open(self) -> None:
        await asyncio.sleep(0)
        self.calls.add("open")

    async def close(self) -> None:
        self.calls.add("close")

    async def fetch(self) -> list[Delivery]:
        self.calls.add("fetch")
        await asyncio.sleep(0)
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
        return batch

    async def ack(self, delivery: Delivery) -> None:
        self.calls.add("ack")
        self.acked.put(delivery.payload)

    async def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        self.calls.add("retry")
        delivery.attempts += 1
        with self._lock:
            self._pending.append(delivery)

    async def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        self.calls.add("fail")
        self.failed.put((delivery.payload, error))


def add_handler(app: OneStepApp, kind: str, source: Any, fn: Any, **options: Any) -> None:
    if kind == "sync":

        def handler(ctx, item):
            return fn(ctx, item)

    else:

        async def handler(ctx, item):
            return fn(ctx, item)

    app.task(source=source, **options)(handler)


# -- custom sources --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_call_into_a_custom_source_runs_on_its_actor_thread(kind):
    source = SyncSource()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    handler_threads: set[str] = set()
    add_handler(app, kind, source, lambda ctx, item: handler_threads.add(_thread_name()))
    with running(app):
        for i in range(10):
            source.put(i)
        assert sorted(source.acked.get(timeout=TIMEOUT) for _ in range(10)) == list(range(10))
    methods = source.calls.methods()
    assert methods[0] == "open"
    assert methods[-1] == "close"
    assert methods.count("ack") == 10
    [thread] = source.calls.threads()
    assert thread.startswith("SourceActor-")
    assert thread not in handler_threads


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_async_source_without_limit_is_fetched_and_acked(kind):
    source = AsyncSource()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    results: queue.Queue[Any] = queue.Queue()
    add_handler(app, kind, source, lambda ctx, item: results.put(item * 3))
    with running(app):
        for i in range(5):
            source.put(i)
        assert sorted(results.get(timeout=TIMEOUT) for _ in range(5)) == [0, 3, 6, 9, 12]
        assert sorted(source.acked.get(timeout=TIMEOUT) for _ in range(5)) == list(range(5))
    methods = source.calls.methods()
    assert methods[0] == "open"
    assert methods[-1] == "close"
    # async methods run on the shared event loop, which the source actor waits for
    assert source.calls.threads() == {"onestep-loop"}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_async_source_retries_and_fails(kind):
    source = AsyncSource()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    attempts: list[int] = []

    def always_fails(ctx: Any, item: Any) -> None:
        attempts.append(ctx.current.attempts)
        raise ValueError("nope")

    add_handler(app, kind, source, always_fails, retry=MaxAttempts(3))
    with running(app):
        source.put("x")
        payload, error = source.failed.get(timeout=TIMEOUT)
    assert payload == "x"
    assert attempts == [0, 1, 2]
    assert "ValueError" in str(error)
    assert source.calls.methods().count("retry") == 2
    assert source.acked.empty()


class NoneThenItems(SyncSource):
    """Returns None (not a list) from fetch until it has something."""

    def __init__(self) -> None:
        super().__init__()
        self.nones = 0
        self.came_back_empty = threading.Event()

    def fetch(self, limit: int) -> list[Delivery] | None:  # type: ignore[override]
        self.calls.add("fetch")
        batch = self._take(limit)
        if batch:
            return batch
        self.nones += 1
        if self.nones >= 2:
            self.came_back_empty.set()
        return None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_fetch_returning_none_is_treated_as_empty(kind):
    source = NoneThenItems()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    results: queue.Queue[Any] = queue.Queue()
    add_handler(app, kind, source, lambda ctx, item: results.put(item))
    with running(app):
        # fetch came back with None at least twice before there is anything
        assert source.came_back_empty.wait(TIMEOUT)
        source.put("late")
        assert results.get(timeout=TIMEOUT) == "late"
    assert "fail" not in source.calls.methods()
    assert source.calls.methods().count("open") == 1  # no restart: None is not an error


class GeneratorSource(SyncSource):
    """fetch returns any iterable, not only a list."""

    def fetch(self, limit: int) -> Any:  # type: ignore[override]
        self.calls.add("fetch")
        return iter(self._take(limit))


def test_a_fetch_returning_an_iterator_works():
    source = GeneratorSource()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    results: queue.Queue[Any] = queue.Queue()
    add_handler(app, "sync", source, lambda ctx, item: results.put(item))
    with running(app):
        source.put(1)
        source.put(2)
        assert sorted(results.get(timeout=TIMEOUT) for _ in range(2)) == [1, 2]


def test_an_undecodable_delivery_is_dead_lettered_with_kind_decode():
    source = SyncSource()
    dead = MemoryQueue("dead")
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    handled: queue.Queue[Any] = queue.Queue()

    @app.task(source=source, dead_letter=dead, retry=MaxAttempts(3))
    def handler(ctx, item):
        handled.put(item)

    with running(app):
        source.put(b"\xff", error=ValueError("not JSON"))
        source.put("fine")
        [letter] = dead.take(1, TIMEOUT)
        assert handled.get(timeout=TIMEOUT) == "fine"
        acked = {source.acked.get(timeout=TIMEOUT) for _ in range(2)}
        assert acked == {b"\xff", "fine"}
    assert handled.empty()  # the handler never saw the bad bytes
    failure = letter.payload["failure"]
    assert failure["kind"] == "decode"
    assert failure["exception_type"] == "ValueError"
    assert letter.payload["payload"] == b"\xff"
    assert letter.meta["original_attempts"] == 0
    assert "retry" not in source.calls.methods()


# -- source failures ---------------------------------------------------------------------------


class BreaksOnce(SyncSource):
    """fetch raises the first time; the runtime should reopen the source and go on."""

    def __init__(self) -> None:
        super().__init__("flaky-src")
        self.times: dict[str, list[float]] = {"open": [], "error": []}

    def open(self) -> None:
        super().open()
        self.times["open"].append(time.monotonic())

    def fetch(self, limit: int) -> list[Delivery]:
        if not self.times["error"]:
            self.times["error"].append(time.monotonic())
            self.calls.add("fetch-error")
            raise ConnectionResetError("connection reset")
        return super().fetch(limit)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_failing_source_is_restarted_with_backoff_and_processing_resumes(kind):
    source = BreaksOnce()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    results: queue.Queue[Any] = queue.Queue()
    add_handler(app, kind, source, lambda ctx, item: results.put(item))
    source.put("queued before the failure")
    with running(app):
        assert results.get(timeout=TIMEOUT) == "queued before the failure"
        source.put("after")
        assert results.get(timeout=TIMEOUT) == "after"
    methods = source.calls.methods()
    assert methods[:4] == ["open", "fetch-error", "close", "open"]
    assert len(source.times["open"]) == 2
    # restarted after the supervisor's backoff (0.5 s for a first failure), not at once
    assert source.times["open"][1] - source.times["error"][0] >= 0.49
    assert len(source.calls.threads()) == 1


class AlwaysBroken(Source):
    poll_interval_s = 0.01

    def __init__(self) -> None:
        self.name = "broken-src"
        self.opens = 0

    def open(self) -> None:
        self.opens += 1

    def fetch(self, limit: int) -> list[Delivery]:
        raise ConnectionRefusedError("broker is down")

    def ack(self, delivery: Delivery) -> None:
        pass

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        pass

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        pass


def test_a_source_failing_more_often_than_max_restarts_makes_run_raise_app_failed():
    """About 1.5 s: with max_restarts=2 the supervisor backs off 0.5 + 1 s before the
    third failure stops the app (the default, 5 restarts in 60 s, takes 15.5 s)."""
    source = AlwaysBroken()
    app = OneStepApp("app", shutdown_timeout_s=1.0, max_restarts=2)

    @app.task(source=source)
    def handler(ctx, item):
        pass

    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def run() -> None:
        try:
            app.run()
        except BaseException as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    runner = threading.Thread(target=run)
    begin = time.monotonic()
    runner.start()
    try:
        error = outcome.get(timeout=15)
    finally:
        app.request_shutdown()
        runner.join(TIMEOUT)
    elapsed = time.monotonic() - begin
    assert isinstance(error, AppFailed)
    assert app.failure is error
    assert "broken-src" in str(error)
    assert isinstance(error.__cause__, ConnectionRefusedError)
    assert source.opens == 3  # the first open and two restarts
    assert 1.5 <= elapsed < 4.5
    assert not app.running


# -- custom sinks ------------------------------------------------------------------------------


class RecordingSink(Sink):
    def __init__(self, name: str, *, is_async: bool) -> None:
        self.name = name
        self.is_async = is_async
        self.calls = Calls()
        self.published: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def open(self) -> Any:
        return self._call("open")

    def close(self) -> Any:
        return self._call("close")

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> Any:
        return self._call("publish", (body, meta))

    def _call(self, method: str, published: Any = None) -> Any:
        """Record the call here, or in a coroutine that the runtime awaits."""
        if self.is_async:
            return self._call_async(method, published)
        self._record(method, published)
        return None

    async def _call_async(self, method: str, published: Any) -> None:
        await asyncio.sleep(0)
        self._record(method, published)

    def _record(self, method: str, published: Any) -> None:
        self.calls.add(method)
        if published is not None:
            self.published.put(published)


@pytest.mark.parametrize("sink_kind", ["sync", "async"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_custom_sink_receives_results_on_its_own_thread(kind, sink_kind):
    incoming = MemoryQueue("in")
    sink = RecordingSink("out", is_async=sink_kind == "async")
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    add_handler(app, kind, incoming, lambda ctx, item: {"doubled": item * 2}, emit=sink)
    with running(app):
        for i in range(3):
            incoming.put(i)
        got = [sink.published.get(timeout=TIMEOUT) for _ in range(3)]
    assert sorted(body["doubled"] for body, _ in got) == [0, 2, 4]
    assert all(meta is None for _, meta in got)
    assert sink.calls.methods() == ["open", "publish", "publish", "publish", "close"]
    # async sink methods run on the shared loop, sync ones on the sink's actor thread
    [thread] = sink.calls.threads()
    if sink_kind == "async":
        assert thread == "onestep-loop"
    else:
        assert thread.startswith("SinkActor-")


def test_a_result_goes_to_every_emit_sink_before_the_ack():
    source = SyncSource()
    first = RecordingSink("first", is_async=False)
    second = RecordingSink("second", is_async=True)
    third = MemoryQueue("third")
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    add_handler(app, "sync", source, lambda ctx, item: item + 1, emit=[first, second, third])
    with running(app):
        source.put(1)
        assert source.acked.get(timeout=TIMEOUT) == 1
        # acked only after every sink accepted it
        assert first.published.get_nowait() == (2, None)
        assert second.published.get_nowait() == (2, None)
        assert third.drain() == [2]


def test_a_custom_sink_as_dead_letter_gets_body_and_meta():
    incoming = MemoryQueue("in")
    dead = RecordingSink("dead", is_async=True)
    app = OneStepApp("app", shutdown_timeout_s=1.0)

    @app.task(source=incoming, dead_letter=dead)
    def broken(ctx, item):
        raise LookupError("no such thing")

    with running(app):
        incoming.put("x", {"trace": 1})
        body, meta = dead.published.get(timeout=TIMEOUT)
    assert body["payload"] == "x"
    assert body["failure"]["exception_type"] == "LookupError"
    assert re.fullmatch(r"[0-9a-f]{32}", meta.pop("dead_letter_id"))
    assert meta == {
        "app": "app",
        "task": "broken",
        "source": "in",
        "original_meta": {"trace": 1},
        "original_attempts": 1,
    }


def _thread_name() -> str:
    return threading.current_thread().name

"""Start-up and shutdown: cleaning up after a failed start, releasing unfinished work at
the shutdown cut-off, request_shutdown, run() on a thread and `await serve()`."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from typing import Any

import pytest

from onestep import Delivery, MemoryQueue, OneStepApp, Sink, Source, StartupError
from tests.helpers import running

TIMEOUT = 5.0


def collect_events(app: OneStepApp) -> queue.Queue[Any]:
    events: queue.Queue[Any] = queue.Queue()
    app.on_event(events.put)
    return events


def drain_kinds(events: queue.Queue[Any]) -> list[str]:
    kinds = []
    while not events.empty():
        kinds.append(events.get_nowait().kind)
    return kinds


class Log:
    """A thread-safe record of what happened, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[str] = []

    def add(self, entry: str) -> None:
        with self._lock:
            self.entries.append(entry)


class LoggedSource(Source):
    """A custom source recording open/close; `fail_open` makes open() raise."""

    poll_interval_s = 0.01

    def __init__(self, name: str, log: Log, *, fail_open: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail_open = fail_open
        self._lock = threading.Lock()
        self._pending: deque[Delivery] = deque()
        self.released: queue.Queue[Delivery] = queue.Queue()

    def put(self, payload: Any) -> None:
        with self._lock:
            self._pending.append(Delivery(payload))

    def open(self) -> None:
        if self.fail_open:
            self.log.add(f"open-failed {self.name}")
            raise ConnectionRefusedError(f"{self.name} is unreachable")
        self.log.add(f"open {self.name}")

    def close(self) -> None:
        self.log.add(f"close {self.name}")

    def fetch(self, limit: int) -> list[Delivery]:
        with self._lock:
            return [self._pending.popleft() for _ in range(min(limit, len(self._pending)))]

    def ack(self, delivery: Delivery) -> None:
        pass

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        delivery.attempts += 1
        self.put(delivery.payload)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        pass

    def release(self, delivery: Delivery) -> None:
        self.log.add(f"release {self.name} {delivery.payload}")
        self.released.put(delivery)


class LoggedSink(Sink):
    def __init__(self, name: str, log: Log, *, fail_open: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail_open = fail_open

    def open(self) -> None:
        if self.fail_open:
            self.log.add(f"open-failed {self.name}")
            raise ConnectionRefusedError(f"{self.name} is unreachable")
        self.log.add(f"open {self.name}")

    def close(self) -> None:
        self.log.add(f"close {self.name}")

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        self.log.add(f"publish {self.name} {body}")


def _opened_and_closed(log: Log) -> tuple[list[str], list[str]]:
    opened = [e.split()[1] for e in log.entries if e.startswith("open ")]
    closed = [e.split()[1] for e in log.entries if e.startswith("close ")]
    return opened, closed


# -- a failed start closes what it opened ----------------------------------------------------


def test_a_source_that_fails_to_open_makes_start_raise_and_closes_everything_opened():
    log = Log()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    good_source = LoggedSource("good-src", log)
    bad_source = LoggedSource("bad-src", log, fail_open=True)
    out, dead = LoggedSink("out", log), LoggedSink("dead", log)

    @app.task(source=good_source, emit=out)
    def first(ctx, item):
        return item

    @app.task(source=bad_source, dead_letter=dead)
    def second(ctx, item):
        return item

    try:
        with pytest.raises(StartupError, match="bad-src"):
            app.start()
    finally:
        app.stop()  # a no-op after a failed start; cleans up if start did not raise
    assert not app.running
    opened, closed = _opened_and_closed(log)
    assert sorted(opened) == ["dead", "good-src", "out"]
    assert "open-failed bad-src" in log.entries
    assert sorted(closed) == sorted(opened)  # each closed exactly once


def test_a_sink_that_fails_to_open_makes_start_raise_and_closes_the_sinks_before_it():
    log = Log()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    source = LoggedSource("src", log)

    @app.task(source=source, emit=[LoggedSink("a", log), LoggedSink("b", log, fail_open=True)])
    def handler(ctx, item):
        return item

    try:
        with pytest.raises(StartupError, match="'b'"):
            app.start()
    finally:
        app.stop()
    opened, closed = _opened_and_closed(log)
    assert opened == ["a"]  # the source was never opened
    assert closed == ["a"]


def test_a_failing_startup_hook_makes_start_raise_and_closes_the_sinks():
    log = Log()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    source = LoggedSource("src", log)

    @app.task(source=source, emit=LoggedSink("out", log))
    def handler(ctx, item):
        return item

    @app.on_startup
    def boom(app):
        raise RuntimeError("no config")

    with pytest.raises(RuntimeError, match="no config"):
        app.start()
    opened, closed = _opened_and_closed(log)
    assert opened == ["out"]
    assert closed == ["out"]


def test_stop_closes_sources_then_sinks_then_runs_shutdown_hooks():
    log = Log()
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    source = LoggedSource("src", log)
    done: queue.Queue[Any] = queue.Queue()

    @app.task(source=source, emit=LoggedSink("out", log))
    def handler(ctx, item):
        done.put(item)
        return item

    app.on_startup(lambda app: log.add("startup-hook"))
    app.on_shutdown(lambda app: log.add("shutdown-hook"))
    with running(app):
        source.put("x")
        assert done.get(timeout=TIMEOUT) == "x"
    entries = log.entries
    assert entries.index("open out") < entries.index("startup-hook") < entries.index("open src")
    assert entries.index("close src") < entries.index("close out") < entries.index("shutdown-hook")
    assert entries.count("shutdown-hook") == 1


# -- the shutdown cut-off ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_running_past_shutdown_timeout_is_released_to_its_source(kind):
    incoming = MemoryQueue("in")
    started = threading.Event()
    release = threading.Event()
    app = OneStepApp("app", shutdown_timeout_s=0.2)
    events = collect_events(app)

    if kind == "sync":

        @app.task(source=incoming)
        def handler(ctx, item):
            started.set()
            release.wait(10)  # set by the test at the end

    else:

        @app.task(source=incoming)
        async def handler(ctx, item):
            started.set()
            await asyncio.sleep(10)

    try:
        app.start()
        try:
            incoming.put("work", {"id": 1})
            assert started.wait(TIMEOUT)
        finally:
            begin = time.monotonic()
            app.stop()
            elapsed = time.monotonic() - begin
        # back in its source, attempts unchanged
        assert incoming.qsize() == 1
        [delivery] = incoming.take(1, 0.0)
        assert (delivery.payload, delivery.meta, delivery.attempts) == ("work", {"id": 1}, 0)
    finally:
        release.set()
    assert 0.15 <= elapsed < 2.0
    kinds = drain_kinds(events)
    assert kinds == ["fetched", "started", "cancelled"]


def test_stop_with_several_stuck_sync_handlers_returns_promptly():
    incoming = MemoryQueue("in")
    started: queue.Queue[Any] = queue.Queue()
    release = threading.Event()
    app = OneStepApp("app", shutdown_timeout_s=0.2)

    @app.task(source=incoming, concurrency=2)
    def handler(ctx, item):
        started.put(item)
        release.wait(10)

    try:
        app.start()
        try:
            incoming.put(1)
            incoming.put(2)
            started.get(timeout=TIMEOUT)
            started.get(timeout=TIMEOUT)
        finally:
            begin = time.monotonic()
            app.stop()
            elapsed = time.monotonic() - begin
        assert incoming.qsize() == 2
    finally:
        release.set()
    assert elapsed < 1.0


def test_a_custom_source_gets_the_unfinished_delivery_back_through_release():
    log = Log()
    source = LoggedSource("src", log)
    started = threading.Event()
    app = OneStepApp("app", shutdown_timeout_s=0.2)
    events = collect_events(app)

    @app.task(source=source)
    def handler(ctx, item):
        started.set()
        # cooperative: returns when the runtime cancels it at stop, after the release
        ctx.cancelled.wait(10)

    with running(app):
        source.put("work")
        assert started.wait(TIMEOUT)
    delivery = source.released.get_nowait()
    assert (delivery.payload, delivery.attempts) == ("work", 0)
    assert log.entries.index("release src work") < log.entries.index("close src")
    assert "cancelled" in drain_kinds(events)


def test_in_flight_work_finishing_within_shutdown_timeout_completes_and_nothing_is_lost():
    incoming, out = MemoryQueue("in"), MemoryQueue("out")
    gate = threading.Event()
    started = threading.Event()
    app = OneStepApp("app", shutdown_timeout_s=5.0)

    @app.task(source=incoming, emit=out)
    def handler(ctx, item):
        started.set()
        gate.wait(TIMEOUT)
        return item

    app.start()
    stopper = threading.Thread(target=app.stop)
    try:
        for i in range(5):
            incoming.put(i)
        assert started.wait(TIMEOUT)
        stopper.start()
        assert app.wait_for_shutdown_request(TIMEOUT)
        gate.set()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
    finally:
        gate.set()
        app.stop()
    finished = out.drain()
    left = incoming.drain()
    assert finished[0] == 0  # the in-flight message completed
    assert sorted(finished + left) == [0, 1, 2, 3, 4]


def test_stop_with_nothing_running_is_quick_and_idempotent():
    incoming = MemoryQueue("in")
    other = MemoryQueue("other")
    app = OneStepApp("app", shutdown_timeout_s=5.0)

    @app.task(source=incoming)
    def sync_handler(ctx, item):
        pass

    @app.task(source=other)
    async def async_handler(ctx, item):
        pass

    app.stop()  # not started: nothing to do
    app.start()
    assert app.running
    begin = time.monotonic()
    app.stop()
    assert time.monotonic() - begin < 1.0
    assert not app.running
    app.stop()


def test_an_app_can_be_started_again_after_stop():
    incoming = MemoryQueue("in")
    done: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("app", shutdown_timeout_s=1.0)

    @app.task(source=incoming)
    def handler(ctx, item):
        done.put(item)

    for round_ in range(2):
        with running(app):
            incoming.put(round_)
            assert done.get(timeout=TIMEOUT) == round_


# -- request_shutdown, run() and serve() --------------------------------------------------------


def _app_with_hooks() -> tuple[OneStepApp, threading.Event, list[str]]:
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    started = threading.Event()
    hooks: list[str] = []

    @app.task(source=MemoryQueue("in"))
    def handler(ctx, item):
        pass

    @app.on_startup
    def on_start(app):
        started.set()

    @app.on_shutdown
    def on_stop(app):
        hooks.append("shutdown")

    return app, started, hooks


def test_run_on_a_thread_stops_on_request_shutdown_from_many_threads_at_once():
    app, started, hooks = _app_with_hooks()
    errors: queue.Queue[BaseException] = queue.Queue()

    def run() -> None:
        try:
            app.run()  # not the main thread: no signal handlers
        except BaseException as exc:
            errors.put(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert started.wait(TIMEOUT)
        barrier = threading.Barrier(8)

        def request() -> None:
            barrier.wait(TIMEOUT)
            app.request_shutdown()

        requesters = [threading.Thread(target=request) for _ in range(8)]
        for thread in requesters:
            thread.start()
        for thread in requesters:
            thread.join(TIMEOUT)
        runner.join(TIMEOUT)
        assert not runner.is_alive()
    finally:
        app.request_shutdown()
        runner.join(TIMEOUT)
    assert errors.empty()
    assert hooks == ["shutdown"]
    assert not app.running
    app.request_shutdown()  # still harmless after the app stopped


def test_request_shutdown_is_idempotent_and_returns_at_once():
    app, _, hooks = _app_with_hooks()
    app.start()
    try:
        begin = time.monotonic()
        for _ in range(3):
            app.request_shutdown()
        assert time.monotonic() - begin < 0.1
        assert app.wait_for_shutdown_request(0)
        assert app.running  # it asks; stop() does the work
    finally:
        app.stop()
    assert hooks == ["shutdown"]


def test_serve_inside_asyncio_run_stops_on_request_shutdown():
    app, started, hooks = _app_with_hooks()

    async def main() -> None:
        serving = asyncio.ensure_future(app.serve())
        assert await asyncio.to_thread(started.wait, TIMEOUT)
        assert app.running
        app.request_shutdown()
        await asyncio.wait_for(serving, TIMEOUT)

    asyncio.run(main())
    assert hooks == ["shutdown"]
    assert not app.running


def test_serve_stops_when_a_handler_requests_shutdown():
    incoming = MemoryQueue("in")
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    done: list[Any] = []

    @app.task(source=incoming)
    async def handler(ctx, item):
        done.append(item)
        ctx.app.request_shutdown()

    incoming.put("last")

    async def main() -> None:
        await asyncio.wait_for(app.serve(), TIMEOUT)

    asyncio.run(main())
    assert done == ["last"]
    assert not app.running


def test_cancelling_serve_stops_the_app():
    incoming = MemoryQueue("in")
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    handled = threading.Event()
    hooks: list[str] = []

    @app.task(source=incoming)
    def handler(ctx, item):
        handled.set()

    app.on_shutdown(lambda app: hooks.append("shutdown"))

    async def main() -> None:
        serving = asyncio.ensure_future(app.serve())
        incoming.put(1)
        assert await asyncio.to_thread(handled.wait, TIMEOUT)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving

    try:
        asyncio.run(main())
    finally:
        app.stop()
    assert hooks == ["shutdown"]


def test_cancelling_serve_during_start_up_leaves_nothing_running():
    app, started, hooks = _app_with_hooks()
    proceed = threading.Event()
    app.on_startup(lambda app: proceed.wait(TIMEOUT))

    async def main() -> None:
        serving = asyncio.ensure_future(app.serve())
        assert await asyncio.to_thread(started.wait, TIMEOUT)
        serving.cancel()
        proceed.set()
        with pytest.raises(asyncio.CancelledError):
            await serving

    try:
        asyncio.run(main())
        assert not app.running
        assert hooks == ["shutdown"]
    finally:
        proceed.set()
        app.stop()

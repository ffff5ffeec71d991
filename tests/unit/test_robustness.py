"""No silent deaths (issue 13).

- The timer thread survives any delay and any callback; a retry policy returning a
  delay the timer cannot honour gives up on that message only, and every other timer
  keeps firing (another task's sync timeout, say).
- A timer or event-loop thread that dies anyway stops the app with AppFailed, and
  `health()` says so; a worker thread or async puller that dies is restarted through the
  supervisor; an actor stopped behind the app's back is noticed by the watchdog.
- A part that cannot start (a worker thread, an actor's thread, the timer) fails
  `app.start()` with StartupError naming it, and leaves no thread behind.
- A shutdown requested by a startup hook opens no source: nothing is fetched.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from typing import Any

import pykka
import pytest

from actors import Timer
from actors._timer import MAX_DELAY_S as TIMER_MAX_DELAY_S
from onestep import (
    AppFailed,
    MaxAttempts,
    MemoryQueue,
    OneStepApp,
    RetryPolicy,
    StartupError,
)
from onestep._values import MAX_DELAY_S
from tests.helpers import ListSource, running

TIMEOUT = 10.0


def onestep_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.is_alive() and (t.name.startswith("onestep-") or "Actor-" in t.name)
    ]


def wait_for_no_onestep_threads(timeout: float = TIMEOUT) -> list[str]:
    """The onestep threads still alive once they had `timeout` to end (daemon threads
    finishing their last instructions after a join)."""
    deadline = time.monotonic() + timeout
    while onestep_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return onestep_threads()


# -- the timer ---------------------------------------------------------------------------


def test_the_engine_and_the_api_agree_on_the_longest_delay():
    assert TIMER_MAX_DELAY_S == MAX_DELAY_S


@pytest.mark.parametrize("delay", [1e10, 10**30, math.inf, math.nan, -5.0])
def test_the_timer_thread_survives_any_delay(delay):
    timer = Timer()
    timer.start()
    try:
        timer.call_later(delay, lambda: None)
        fired = threading.Event()
        timer.call_later(0.01, fired.set)
        assert fired.wait(TIMEOUT), "a later call did not fire: the timer thread died"
        assert timer.thread.is_alive()
    finally:
        timer.stop()


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), SystemExit(3), KeyboardInterrupt()], ids=type
)
def test_a_timer_callback_that_raises_does_not_stop_the_timer(error):
    def bad() -> None:
        raise error

    timer = Timer()
    timer.start()
    try:
        timer.call_later(0.0, bad)
        fired = threading.Event()
        timer.call_later(0.01, fired.set)
        assert fired.wait(TIMEOUT)
        assert timer.thread.is_alive()
    finally:
        timer.stop()


def test_a_stopped_timer_drops_new_calls_instead_of_keeping_them():
    timer = Timer()
    timer.start()
    timer.stop()
    handle = timer.call_later(0.0, lambda: None)
    assert handle.cancelled
    assert timer._heap == []


def test_a_delayed_put_after_the_app_stopped_leaves_nothing_on_its_timer():
    app = OneStepApp("late-put")
    source = MemoryQueue("in")

    @app.task(source=source)
    async def noop(ctx, item):
        return None

    with running(app):
        timer = app._system.timer
    for n in range(3):
        source.put(n, delay_s=60.0 - n)  # each becomes the earliest: asks the timer
    assert timer._heap == []
    assert source.qsize() == 3


def test_a_timer_thread_that_dies_calls_on_death(monkeypatch):
    def broken(self: Timer) -> None:
        raise OverflowError("timestamp out of range for platform time_t")

    monkeypatch.setattr(Timer, "_run", broken)
    died: queue.Queue[tuple[str, BaseException]] = queue.Queue()
    timer = Timer(on_death=lambda label, error: died.put((label, error)))
    timer.start()
    label, error = died.get(timeout=TIMEOUT)
    timer.stop()
    assert label == "timer"
    assert isinstance(error, OverflowError)


# -- a retry policy's delay the timer cannot honour ---------------------------------------


class FixedDelay(RetryPolicy):
    """A custom policy with a bug: it always answers `delay`."""

    def __init__(self, delay: Any) -> None:
        self.delay = delay

    def next_delay(self, attempts, failure):
        return self.delay

    def __repr__(self) -> str:
        return f"FixedDelay({self.delay!r})"


@pytest.mark.parametrize("delay", [1e10, math.inf, math.nan, -1.0, "5"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_policy_returning_a_bad_delay_gives_up_and_other_timeouts_still_fire(kind, delay, caplog):
    app = OneStepApp("bad-delay")
    jobs, slow_jobs = MemoryQueue("jobs"), MemoryQueue("slow-jobs")
    dead, timed_out = MemoryQueue("dead"), MemoryQueue("timed-out")
    calls: queue.Queue[int] = queue.Queue()

    if kind == "sync":

        @app.task(source=jobs, retry=FixedDelay(delay), dead_letter=dead)
        def fails(ctx, item):
            calls.put(item)
            raise RuntimeError("always")

    else:

        @app.task(source=jobs, retry=FixedDelay(delay), dead_letter=dead)
        async def fails(ctx, item):
            calls.put(item)
            raise RuntimeError("always")

    release = threading.Event()

    @app.task(source=slow_jobs, timeout_s=0.3, dead_letter=timed_out)
    def slow(ctx, item):
        release.wait(TIMEOUT)

    with caplog.at_level(logging.ERROR, logger="onestep.actors.supervisor"), running(app):
        jobs.put(1)
        letter = dead.get(timeout=TIMEOUT)
        assert letter["payload"] == 1
        assert letter["failure"]["message"] == "always"
        assert calls.qsize() == 1  # given up after the first execution, never retried
        slow_jobs.put("stuck")
        started = time.monotonic()
        timeout_letter = timed_out.get(timeout=TIMEOUT)
        assert timeout_letter["failure"]["kind"] == "timeout"
        assert time.monotonic() - started < 5.0
        assert app.health() == {"status": "ok", "problems": {}}
        release.set()
    [record] = [r for r in caplog.records if "returned delay" in r.getMessage()]
    assert f"FixedDelay({delay!r})" in record.getMessage()
    assert "giving up on the message" in record.getMessage()


class RecordsRetries(ListSource):
    """Puts each retry's (payload, delay_s) in a queue instead of running it again."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.retried: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def retry(self, delivery, delay_s=None):
        self.retried.put((delivery.payload, delay_s))


def test_a_policy_delay_of_30_days_is_honoured_not_given_up():
    app = OneStepApp("long-delay")
    jobs = RecordsRetries("jobs")

    @app.task(source=jobs, retry=MaxAttempts(2, delay_s=MAX_DELAY_S))
    def fails(ctx, item):
        raise RuntimeError("later")

    with running(app):
        jobs.put(1)
        assert jobs.retried.get(timeout=TIMEOUT) == (1, MAX_DELAY_S)
        assert jobs.failed == []
        assert app.health() == {"status": "ok", "problems": {}}


class NanPollSource(ListSource):
    poll_interval_s = math.nan


def test_a_source_with_a_nan_poll_interval_gets_the_default_and_works(caplog):
    app = OneStepApp("nan-poll")
    jobs = NanPollSource("jobs")
    seen: queue.Queue[Any] = queue.Queue()

    @app.task(source=jobs)
    def work(ctx, item):
        seen.put(item)

    with caplog.at_level(logging.WARNING, logger="onestep.actors.source"), running(app):
        jobs.put(1)
        assert seen.get(timeout=TIMEOUT) == 1
    assert "source 'jobs': poll_interval_s=nan is not a number of seconds" in caplog.text


# -- core threads that die: the app stops with AppFailed ----------------------------------


def test_a_timer_thread_that_dies_fails_the_app_and_shows_in_health(monkeypatch):
    trigger = threading.Event()

    def dies_later(self: Timer) -> None:
        trigger.wait()
        raise OverflowError("timestamp out of range for platform time_t")

    monkeypatch.setattr(Timer, "_run", dies_later)
    app = OneStepApp("timer-dies")

    @app.task(source=MemoryQueue("jobs"))
    def work(ctx, item):
        return None

    app.start()
    try:
        assert app.health() == {"status": "ok", "problems": {}}
        trigger.set()
        assert app.wait_for_shutdown_request(TIMEOUT)
        assert isinstance(app.failure, AppFailed)
        assert str(app.failure) == (
            "timer died: OverflowError: timestamp out of range for platform time_t"
        )
        health = app.health()
        assert health["status"] == "failed"
        assert "OverflowError" in health["problems"]["timer"]
    finally:
        app.stop()
    assert app.health()["status"] == "stopped"


def test_an_event_loop_stopped_by_a_handler_fails_the_app():
    app = OneStepApp("loop-dies")
    jobs = MemoryQueue("jobs")

    @app.task(source=jobs)
    async def rogue(ctx, item):
        asyncio.get_running_loop().stop()  # user code must not do this; it is noticed

    @app.on_startup
    def feed(app):
        jobs.put(1)

    with pytest.raises(AppFailed, match="event loop died: RuntimeError: the event loop was stop"):
        app.run()
    assert app.health()["status"] == "stopped"


def test_a_system_exit_escaping_an_async_event_handler_fails_the_app():
    app = OneStepApp("event-handler-exits")
    jobs = MemoryQueue("jobs")

    @app.task(source=jobs)
    def work(ctx, item):
        return None

    exited = threading.Event()

    @app.on_event
    async def exits(event):
        if not exited.is_set():
            exited.set()
            raise SystemExit(4)

    @app.on_startup
    def feed(app):
        jobs.put(1)

    with pytest.raises(AppFailed, match=r"event loop died: SystemExit: 4"):
        app.run()


@pytest.mark.parametrize("actor", ["SourceActor", "TaskActor", "SinkActor", "Supervisor"])
def test_an_actor_stopped_behind_the_apps_back_is_noticed_by_the_watchdog(actor):
    app = OneStepApp("watched")
    jobs = ListSource("jobs")

    @app.task(source=jobs, emit=MemoryQueue("out"))
    def work(ctx, item):
        return item

    app.start()
    try:
        # what pykka's ActorRegistry.stop_all() does when some other actor in the
        # process lets a BaseException escape
        [ref] = pykka.ActorRegistry.get_by_class_name(actor)
        ref.stop()
        assert app.wait_for_shutdown_request(TIMEOUT), "the stopped actor went unnoticed"
        assert isinstance(app.failure, AppFailed)
        assert "died: RuntimeError: actor has stopped" in str(app.failure)
        assert app.health()["status"] == "failed"
    finally:
        app.stop()


# -- worker threads and async pullers that die: restarted --------------------------------


def broken_reply(result: Any, failure: Any) -> None:
    """A request-reply callback with a bug: it raises after the message was acked."""
    if result == "bad":
        raise RuntimeError("reply callback bug")


class ReplyingList(ListSource):
    """A non-thread-safe source whose deliveries carry `broken_reply`."""

    def fetch(self, limit):
        batch = super().fetch(limit)
        for delivery in batch:
            delivery.reply = broken_reply
        return batch


class ReplyingQueue(MemoryQueue):
    """A MemoryQueue (direct mode) whose deliveries carry `broken_reply`."""

    def take(self, limit, timeout):
        batch = super().take(limit, timeout)
        for delivery in batch:
            delivery.reply = broken_reply
        return batch

    def fetch(self, limit):
        batch = super().fetch(limit)
        for delivery in batch:
            delivery.reply = broken_reply
        return batch


def replying_task(app: OneStepApp, kind: str, source: Any, seen: queue.Queue[Any]) -> None:
    if kind == "sync":

        @app.task(source=source)
        def work(ctx, item):
            seen.put(item)
            return item

    else:

        @app.task(source=source)
        async def work(ctx, item):
            seen.put(item)
            return item


SOURCES = {"direct": lambda: ReplyingQueue("jobs"), "actor": lambda: ReplyingList("jobs")}


@pytest.mark.parametrize("source_kind", ["direct", "actor"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_worker_that_dies_is_restarted_and_the_task_goes_on(kind, source_kind, caplog):
    app = OneStepApp("worker-dies")
    source = SOURCES[source_kind]()
    seen: queue.Queue[Any] = queue.Queue()
    replying_task(app, kind, source, seen)
    with caplog.at_level(logging.WARNING), running(app):
        source.put("bad")
        assert seen.get(timeout=TIMEOUT) == "bad"
        source.put("good")
        assert seen.get(timeout=TIMEOUT) == "good"
        assert app.health() == {"status": "ok", "problems": {}}
    restarts = [r.getMessage() for r in caplog.records if "restarting in" in r.getMessage()]
    if source_kind == "direct" or kind == "sync":
        # the worker thread (or the async puller) ran the reply and died of it
        assert len(restarts) == 1
        assert restarts[0].startswith("task 'work' failed (RuntimeError: reply callback bug)")
    else:
        # a batch coroutine of an async task on an actor-driven source: one per message,
        # so nothing is lost with it; asyncio logs the error
        assert restarts == []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_worker_that_dies_past_the_restart_limit_fails_the_app(kind):
    app = OneStepApp("worker-dies-for-good", max_restarts=0)
    source = ReplyingQueue("jobs")
    seen: queue.Queue[Any] = queue.Queue()
    replying_task(app, kind, source, seen)

    @app.on_startup
    def feed(app):
        source.put("bad")

    with pytest.raises(AppFailed, match=r"task 'work' failed 1 times .*reply callback bug"):
        app.run()


# -- parts that cannot start: StartupError naming them, no thread left ------------------


def fail_thread_starts(monkeypatch, name_part: str, after: int = 0) -> list[str]:
    """Make `threading.Thread.start` raise like an exhausted process for threads whose
    name contains `name_part`, after `after` of them started; returns the started names."""
    original = threading.Thread.start
    started: list[str] = []

    def start(self: threading.Thread) -> None:
        if name_part in self.name:
            if len(started) >= after:
                raise RuntimeError("can't start new thread")
            started.append(self.name)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


@pytest.mark.parametrize("source_kind", ["direct", "actor"])
def test_worker_threads_that_cannot_start_fail_start_and_leave_no_thread(monkeypatch, source_kind):
    started = fail_thread_starts(monkeypatch, "-worker-", after=2)
    app = OneStepApp("no-threads")
    source = MemoryQueue("jobs") if source_kind == "direct" else ListSource("jobs")
    source.put("kept")

    @app.task(source=source, emit=MemoryQueue("out"), concurrency=4)
    def work(ctx, item):
        return item

    with pytest.raises(StartupError) as raised:
        app.start()
    assert str(raised.value) == "task 'work' failed to start: RuntimeError: can't start new thread"
    assert len(started) == 2  # two workers had started: they were stopped again
    assert not app.running
    assert app.health() == {"status": "stopped", "problems": {}}
    assert wait_for_no_onestep_threads() == []
    assert pykka.ActorRegistry.get_all() == []
    monkeypatch.undo()
    left = source.qsize() if isinstance(source, MemoryQueue) else len(source.items)
    assert left == 1  # nothing was fetched


@pytest.mark.parametrize(
    ("thread_name", "message"),
    [
        ("onestep-timer", "timer thread failed to start"),
        ("onestep-loop", "event loop thread failed to start"),
        ("Supervisor-", "supervisor failed to start"),
        ("EventActor-", "event actor failed to start"),
        ("SinkActor-", "sink 'out' failed to start"),
        ("TaskActor-", "task 'work' failed to start"),
        ("SourceActor-", "source 'jobs' failed to start"),
    ],
)
def test_a_core_thread_or_actor_that_cannot_start_fails_start_naming_it(
    monkeypatch, thread_name, message
):
    fail_thread_starts(monkeypatch, thread_name)
    app = OneStepApp("no-threads")
    app.on_event(lambda event: None)

    @app.task(source=ListSource("jobs"), emit=MemoryQueue("out"))
    def work(ctx, item):
        return item

    with pytest.raises(StartupError, match=f"^{message}: RuntimeError: can't start new thread$"):
        app.start()
    assert not app.running
    assert wait_for_no_onestep_threads() == []
    assert pykka.ActorRegistry.get_all() == []


def test_an_actor_whose_start_up_raises_fails_start_naming_it(monkeypatch):
    from actors._task import TaskActor

    def start_up(self: TaskActor) -> None:
        raise MemoryError("no room for the workers")

    monkeypatch.setattr(TaskActor, "start_up", start_up)
    app = OneStepApp("start-up-fails")

    @app.task(source=ListSource("jobs"), emit=MemoryQueue("out"))
    def work(ctx, item):
        return item

    with pytest.raises(StartupError, match=r"^task 'work' failed to start: MemoryError: no room"):
        app.start()
    assert wait_for_no_onestep_threads() == []
    assert pykka.ActorRegistry.get_all() == []


def test_the_app_starts_normally_once_threads_can_start_again(monkeypatch):
    fail_thread_starts(monkeypatch, "-worker-")
    app = OneStepApp("second-try")
    jobs = MemoryQueue("jobs")
    done = threading.Event()

    @app.task(source=jobs)
    def work(ctx, item):
        done.set()

    with pytest.raises(StartupError):
        app.start()
    monkeypatch.undo()
    with running(app):
        jobs.put(1)
        assert done.wait(TIMEOUT)


# -- a shutdown requested while starting: no source fetches ------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_shutdown_requested_in_a_startup_hook_fetches_nothing(kind):
    app = OneStepApp("stops-at-once")
    memory, listed = MemoryQueue("memory"), ListSource("listed")
    handled: queue.Queue[Any] = queue.Queue()

    if kind == "sync":

        @app.task(source=memory)
        def from_memory(ctx, item):
            handled.put(item)

        @app.task(source=listed)
        def from_list(ctx, item):
            handled.put(item)

    else:

        @app.task(source=memory)
        async def from_memory(ctx, item):
            handled.put(item)

        @app.task(source=listed)
        async def from_list(ctx, item):
            handled.put(item)

    @app.on_startup
    def feed_then_stop(app):
        for n in range(20):
            memory.put(n)
            listed.put(n)
        app.request_shutdown()

    app.run()  # returns cleanly
    assert handled.empty()
    assert memory.qsize() == 20
    assert [d.payload for d in listed.items] == list(range(20))
    assert listed.acked == []


def test_a_shutdown_requested_before_run_fetches_nothing():
    app = OneStepApp("stopped-before-run")
    jobs = ListSource("jobs", items=range(5))

    @app.task(source=jobs)
    def work(ctx, item):
        raise AssertionError("nothing may be fetched")

    app.request_shutdown()
    app.run()
    assert len(jobs.items) == 5

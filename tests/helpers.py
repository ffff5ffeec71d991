"""Helpers shared by the test suites: running an app for the length of a block, forcing
thread switches (for stress tests of the lock-free paths), and a plain list-backed Source
that goes through the SourceActor (not MemoryQueue's direct mode)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import pytest

from onestep import Delivery, OneStepApp, Source


@contextlib.contextmanager
def running(app: OneStepApp) -> Iterator[OneStepApp]:
    """Run `app` on its background actors for the duration of the block."""
    app.start()
    try:
        yield app
    finally:
        app.stop()


@contextlib.contextmanager
def preempting(interval_s: float = 1e-6) -> Iterator[None]:
    """Make the interpreter switch threads every `interval_s` (its default is 5 ms), so
    that threads are preempted far more often and races between two steps of a lock-free
    operation have many more chances to show up. (A switch happens only where the
    interpreter checks for one, at a Python call or a loop's jump back: tests/interleave.py
    tries every bytecode instead.)"""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class ListSource(Source):
    """An in-memory source that is not thread-safe, so the runtime drives it through its
    SourceActor; it records what was acked, retried and failed."""

    poll_interval_s = 0.005

    def __init__(self, name: str = "list", items: Iterable[Any] = ()) -> None:
        self.name = name
        self.items: deque[Delivery] = deque(Delivery(item) for item in items)
        self.acked: list[Any] = []
        self.failed: list[Any] = []
        self.lock = threading.Lock()

    def put(self, item: Any, meta: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.items.append(Delivery(item, meta=meta))

    def fetch(self, limit: int) -> list[Delivery]:
        with self.lock:
            return [self.items.popleft() for _ in range(min(limit, len(self.items)))]

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery.payload)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        delivery.attempts += 1
        with self.lock:
            self.items.append(delivery)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        self.failed.append(delivery.payload)


class FlakySource(ListSource):
    """A ListSource whose next fetch fails once `fail_next` is set (then `down` is set),
    and whose reopening after that waits for `allow_open` (then `reopened` is set): a
    source whose connection broke and comes back when the test says so."""

    def __init__(self, name: str = "flaky", open_timeout_s: float = 10.0) -> None:
        super().__init__(name)
        self.fail_next = threading.Event()
        self.down = threading.Event()
        self.allow_open = threading.Event()
        self.reopened = threading.Event()
        self.open_timeout_s = open_timeout_s
        self.opens = 0

    def open(self) -> None:
        self.opens += 1
        if self.opens > 1:
            self.allow_open.wait(self.open_timeout_s)
            self.reopened.set()

    def fetch(self, limit: int) -> list[Delivery]:
        if self.fail_next.is_set():
            self.fail_next.clear()
            self.down.set()
            raise ConnectionError("connection reset")
        return super().fetch(limit)


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for a missing server or tool, or fail it when CI is set: CI starts
    every server and installs every tool, so there a skip would hide a broken setup."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: this test may not be skipped)")
    pytest.skip(reason)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, every: float = 0.05) -> Any:
    """Poll `predicate` (state in a server or in another process, which no Event can
    signal) until it is truthy; its value, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        pause.wait(every)


def require_chromium() -> str:
    """The path of headless Chromium (Debian's `chromium`); skips the test without it,
    or fails it when CI is set (.ci/run installs it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        skip_or_fail("headless Chromium is not installed (Debian package `chromium`)")
    return path

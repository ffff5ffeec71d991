"""What the `--processes` parent sleeps on: a selector over its workers' status pipes and a
self-pipe that signal handlers and other threads write to, to wake it. Used by
ProcessSupervisor (onestep.processes) on its supervising thread; `wake()` from anywhere.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any


class Wakeup:
    """The selector and the self-pipe; the stop signals caught while `catching()`."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self.selector.register(self._read, selectors.EVENT_READ, None)
        self._signals: list[int] = []

    def register(self, fd: int, data: Any) -> None:
        self.selector.register(fd, selectors.EVENT_READ, data)

    def unregister(self, fd: int) -> None:
        self.selector.unregister(fd)

    def wait(self, timeout: float) -> None:
        """Sleep until a registered pipe is readable, `wake()` or `timeout` seconds; what
        woke it is for the caller to look at."""
        for key, _ in self.selector.select(timeout):
            if key.fd == self._read:
                drain(self._read)

    def wake(self) -> None:
        """Wake the sleeping thread (from a signal handler or any thread)."""
        with contextlib.suppress(OSError):  # the pipe is full: it is awake already
            os.write(self._write, b"!")

    @contextlib.contextmanager
    def catching(self, signals: Iterable[int]) -> Iterator[None]:
        """Within the block, `signals` are recorded for `take_signals()` and wake the
        sleeper, instead of their usual handlers; only on the main thread (elsewhere
        Python allows no handler, and the block changes nothing)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: FrameType | None) -> None:
            self._signals.append(signum)
            self.wake()

        previous = {sig: signal.signal(sig, handle) for sig in signals}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def take_signals(self) -> list[int]:
        """The signals caught since the last call, oldest first."""
        taken, self._signals[:] = list(self._signals), []
        return taken

    def close(self) -> None:
        self.selector.close()
        os.close(self._read)
        os.close(self._write)


def drain(fd: int) -> tuple[bytes, bool]:
    """Everything readable now on a non-blocking pipe, and whether it reached end of
    file (every writer closed it)."""
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return b"".join(chunks), False
        if not data:
            return b"".join(chunks), True
        chunks.append(data)

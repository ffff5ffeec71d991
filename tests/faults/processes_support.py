"""Running `onestep run TARGET --processes N` as a real process for the tests: its output
read by threads into queues (a test waits for a line with a timeout, never sleeps), and
what the log lines say about the workers."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
APPS = "tests/faults/processes_apps.py"
WAIT_S = 30.0


class Lines:
    """Reads a pipe on its own thread; `wait_for` waits for a line with a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(
            target=self._read, args=(pipe,), name="test-pipe-reader", daemon=True
        )
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _take(self, deadline: float) -> bool:
        """Move one line into `lines`; False once the pipe closed."""
        if self._closed:
            return False
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return True
        if line is None:
            self._closed = True
            return False
        self.lines.append(line)
        return True

    def wait_until(
        self, done: Callable[[list[str]], bool], what: str, timeout: float = WAIT_S
    ) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.lines):
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.tail()}")
            if not self._take(deadline):
                raise AssertionError(f"the pipe closed before {what}: {self.tail()}")

    def wait_for(self, text: str, timeout: float = WAIT_S) -> str:
        self.wait_until(lambda lines: any(text in line for line in lines), repr(text), timeout)
        return next(line for line in self.lines if text in line)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def rest(self, timeout: float = WAIT_S) -> list[str]:
        """Every line, once the pipe has closed: when every process holding its write
        end (the parent and the workers, which inherit it) has exited."""
        deadline = time.monotonic() + timeout
        while self._take(deadline):
            if time.monotonic() >= deadline:
                raise AssertionError(f"the pipe is still open after {timeout} s: {self.tail()}")
        return self.lines

    def ready(self) -> list[str]:
        """Every line read so far, those the test has not waited for included."""
        while not self._closed:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._closed = True
            else:
                self.lines.append(line)
        return self.lines

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


class Parent:
    """`onestep run TARGET --processes N ...` as a child of the test."""

    def __init__(
        self,
        target: str,
        *args: str,
        env: dict[str, str] | None = None,
        new_session: bool = False,
        command: list[str] | None = None,
    ) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "onestep", "run", target, *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.out = Lines(self.process.stdout)
        self.err = Lines(self.process.stderr)

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = WAIT_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the parent did not exit in {timeout} s: {self.err.tail()}"
            ) from None

    def running_workers(self, count: int) -> dict[str, int]:
        """Wait until the parent logged that every worker runs; {name: pid}."""
        self.err.wait_for(f"all {count} workers are running")
        return worker_pids(self.err.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT_S)


_STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")


def worker_pids(lines: list[str]) -> dict[str, int]:
    """The latest pid of each worker the parent said it started."""
    pids: dict[str, int] = {}
    for line in lines:
        match = _STARTED.search(line)
        if match:
            pids[match.group(1)] = int(match.group(2))
    return pids


def all_started_pids(lines: list[str]) -> list[int]:
    return [int(m.group(2)) for line in lines if (m := _STARTED.search(line))]


def is_gone(pid: int) -> bool:
    """True once `pid` exited (a zombie that nobody reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        if not is_gone(pid):
            os.kill(pid, signal.SIGKILL)

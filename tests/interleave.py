"""Every interleaving of two operations, one bytecode at a time: for the lock-free paths
of MemoryQueue and the Ledger (tests/unit/test_memory_queue.py, test_ledger.py).

`Stepper` runs an operation on its own thread, traced opcode by opcode inside the named
modules, and stops it before its k-th opcode there until `resume()`. A test stops the
first operation at k = 1, 2, ... in turn, runs the second one meanwhile, resumes the
first, and checks the outcome; a race that a thread switch between two bytecodes could
trigger shows up at the k where the switch falls, every run, not by chance.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Collection
from types import FrameType
from typing import Any

# How long one side may take to reach its stop or its end. Generous: it only bounds how
# long a broken test hangs.
SETTLE_S = 10.0


class Stepper:
    """Runs `operation()` on a daemon thread and stops it before the `stop_at`-th opcode
    it executes in `modules` (module names) at which `may_stop()` is true. If it calls
    one of `blocking` (code objects of functions that wait, such as
    `threading.Condition.wait`) first, `start()` returns then too: it went to sleep, and
    the other operation is what should wake it."""

    def __init__(
        self,
        operation: Callable[[], Any],
        stop_at: int,
        modules: Collection[str],
        may_stop: Callable[[], bool] = lambda: True,
        blocking: Collection[Any] = (),
    ) -> None:
        self._operation = operation
        self._stop_at = stop_at
        self._modules = modules
        self._may_stop = may_stop
        self._blocking = blocking
        self._points = 0
        self._resume = threading.Event()
        # set when the thread has stopped at its point or finished
        self._settled = threading.Event()
        self.stopped = False
        self.finished = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Stepper:
        """Start and wait until the operation has stopped at its point, gone to sleep
        or finished."""
        self._thread.start()
        if not self._settled.wait(SETTLE_S):
            raise AssertionError("the stepped operation neither stopped nor finished")
        return self

    def resume(self, wait: bool = True) -> None:
        """Let the stopped operation run on, and (with `wait`) wait for its end."""
        self._resume.set()
        if wait and not self.finished.wait(SETTLE_S):
            raise AssertionError("the stepped operation did not finish once resumed")

    def _run(self) -> None:
        sys.settrace(self._trace_calls)
        try:
            self.result = self._operation()
        except BaseException as exc:
            self.error = exc
        finally:
            sys.settrace(None)
            self.finished.set()
            self._settled.set()

    def _trace_calls(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code in self._blocking:
            self._settled.set()
        if frame.f_globals.get("__name__") not in self._modules:
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self._trace_opcodes

    def _trace_opcodes(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and not self.stopped and self._may_stop():
            self._points += 1
            if self._points == self._stop_at:
                self.stopped = True
                self._settled.set()
                self._resume.wait()
        return self._trace_opcodes


class Other:
    """Runs the other operation on a daemon thread; `parked` is set when it finishes or
    calls one of `blocking` (the code objects of functions that wait, such as
    `threading.Condition.wait`), so the test knows it went to sleep."""

    def __init__(self, operation: Callable[[], Any], blocking: Collection[Any] = ()) -> None:
        self._operation = operation
        self._blocking = blocking
        self.parked = threading.Event()
        self.finished = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Other:
        """Start and wait until the operation has finished or gone to sleep."""
        self._thread.start()
        if not self.parked.wait(SETTLE_S):
            raise AssertionError("the other operation neither finished nor went to sleep")
        return self

    def _run(self) -> None:
        if self._blocking:
            sys.settrace(self._trace_calls)
        try:
            self.result = self._operation()
        except BaseException as exc:
            self.error = exc
        finally:
            sys.settrace(None)
            self.finished.set()
            self.parked.set()

    def _trace_calls(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code in self._blocking:
            self.parked.set()
        return None

    def join(self, timeout: float = SETTLE_S) -> bool:
        """True if the operation finished within `timeout`."""
        return self.finished.wait(timeout)


def each_stop(
    run_one: Callable[[int], bool],
    *,
    limit: int = 5_000,
) -> int:
    """Call `run_one(k)` for k = 1, 2, ... until it returns False (the stepped operation
    finished before reaching its k-th point); returns how many points were tried."""
    for k in range(1, limit + 1):
        if not run_one(k):
            return k - 1
    raise AssertionError(f"more than {limit} stop points: is the operation looping?")

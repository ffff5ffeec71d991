"""The conformance suite for queues: `check_queue(make_queue)` proves, through a real
OneStepApp, that a queue keeps onestep's delivery contract. Called from a connector's tests.

Every built-in queue runs it in onestep's own tests; a connector written outside onestep
runs it the same way (see the docs page "Write a connector").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from onestep.kit import check_delay

from . import source_depth
from ._conformance_run import GIVE_UP, HOLD, Action, AppRun, Recorder
from ._conformance_verdicts import ACKED, MANY, URGENT, Verdicts, redelivered

CHECKS = (
    "depth",
    "put-fetch-once",
    "put-many-count",
    "put-delay",
    "retry-counts-attempt",
    "retry-counts-attempt-new-handle",
    "retry-delay",
    "release-keeps-attempts",
    "ack-not-redelivered",
    "ack-not-redelivered-new-handle",
    "fail-not-redelivered",
    "fail-not-redelivered-new-handle",
)
"""The name of every check, in the order `check_queue` reports them."""

PRIORITY_CHECK = "priority"
"""The check `check_queue(..., priorities=True)` adds, reported after the others."""

MIN_DELAY_S = 1.0
"""The shortest delay the suite puts and retries with, in seconds; longer for a queue
that polls slowly (four `poll_interval_s`), so that a delay it ignores shows."""

MIN_GRACE_S = 0.2
"""The shortest time the suite watches for a redelivery it must not see, in seconds
(longer for a queue that polls slowly: two `poll_interval_s`)."""


def check_queue(
    make_queue: Callable[[], Any], *, timeout_s: float = 30, priorities: bool = False
) -> list[str]:
    """Run every conformance check on a queue; return the names of those that passed.

    `make_queue()` must return a new handle on one and the same backend queue each time
    it is called, empty before the first call: a second handle sees what the first left
    behind, as a restarted worker would (for an in-process queue, return the same object).
    The queue is a `Source` (usually a `Sink` too) with the producer API: `put(body,
    meta=None, *, delay_s=0.0)` and `put_many(bodies, meta=None, *, delay_s=0.0) -> int`,
    taking JSON bodies (the suite puts small dicts) and meta dicts of strings. Its
    delivered meta may hold more keys than were put (a row id), never fewer. The apps
    open and close the handles they consume from; the suite closes nothing else, so close
    your connector (its producer connections) after it.

    The suite runs two apps, each a `OneStepApp` with one task (a sync handler,
    `concurrency=1`) on its own handle, in a thread of its own, stopped with
    `request_shutdown()`. It puts a dozen messages through the first, then hands what is
    left to the second, and checks:

    - `depth`: `depth()` (or `qsize()`), where offered, is 0 at the start, counts what is
      put (a delayed put too) and is 0 again once everything is settled;
    - `put-fetch-once`: each `put` message is delivered once, with its body and meta and
      `attempts == 0`;
    - `put-many-count`: `put_many` of three bodies returns 3 and delivers each, with meta;
    - `put-delay`: `put(delay_s=d)` is not delivered before `d` seconds;
    - `retry-counts-attempt`: a retried message comes back with `attempts` one higher,
      body and meta intact;
    - `retry-counts-attempt-new-handle`: a message retried on the first handle reaches the
      second with `attempts` equal to the executions it had;
    - `retry-delay`: `retry(delay_s=d)` is not delivered before `d` seconds;
    - `release-keeps-attempts`: a message still running at shutdown is handed back by
      `release` with `attempts` unchanged, and the second handle gets it;
    - `ack-not-redelivered` / `-new-handle`: an acked message is never delivered again,
      nor to the second handle;
    - `fail-not-redelivered` / `-new-handle`: a message failed at its source (`fail`, the
      policy gave up with no dead-letter sink) is never delivered again, nor to the
      second handle;
    - `priority`, only with `priorities=True` (for a queue whose `put` takes a
      `priority`): a message put with `priority=1` after the first nine, before the
      first app starts, is the first one that app runs.

    The delays are `max(1 s, 4 * poll_interval_s)` (see `delay_for`), and a delayed
    message may come at most 20 ms early (backends round due times); a redelivery that
    must not happen is watched for `max(0.2 s, 2 * poll_interval_s)` after a marker
    message put behind it has arrived. Each step waits at most `timeout_s` for what it
    expects, so a queue that loses a message fails in bounded time; a conforming queue
    passes in a few seconds (MemoryQueue and RabbitMQ about 3, a MySQL table polled every
    0.5 s about 6).

    Raises AssertionError, after running every check, if any failed: one line per
    failed check, `  <check>: <reason>`, then the checks that passed. TypeError if
    `make_queue()` does not give a queue with `fetch`, `ack`, `retry`, `fail` and `put`;
    ValueError for a `timeout_s` that is not a positive number. Runs on the calling
    thread; the apps run on threads of their own.
    """
    timeout = check_delay("timeout_s", timeout_s, exclusive=True)
    if not callable(make_queue):
        raise TypeError(f"make_queue must be callable, got {type(make_queue).__name__}")
    suite = _Suite(make_queue, timeout)
    if not priorities:
        suite.skipped.add(PRIORITY_CHECK)
    suite.run()
    return suite.verdict()


def delay_for(queue: Any) -> float:
    """The delay in seconds that `check_queue` puts and retries with on `queue`:
    `max(MIN_DELAY_S, 4 * queue.poll_interval_s)`. A connector's tests use it to clean up
    what a delay makes on the server (a RabbitMQ delay queue). Any thread."""
    return max(MIN_DELAY_S, 4 * _poll_interval_s(queue))


def _poll_interval_s(queue: Any) -> float:
    poll_s = getattr(queue, "poll_interval_s", None)
    if isinstance(poll_s, int | float) and not isinstance(poll_s, bool) and poll_s > 0:
        return float(poll_s)
    return 0.05  # Source's default


class _Suite:
    """One run of the checks: the messages it put, what the apps saw, and the verdicts.
    Everything runs on the thread that called check_queue, except the apps' handlers."""

    def __init__(self, make_queue: Callable[[], Any], timeout_s: float) -> None:
        self.make_queue = make_queue
        self.timeout_s = timeout_s
        self.run_id = uuid.uuid4().hex[:12]
        self.recorder = Recorder(self.run_id)
        self.first = _checked_queue(make_queue())
        label = getattr(self.first, "name", None)
        self.name = f"{type(self.first).__name__} {label!r}" if label else repr(self.first)
        self.delay_s = delay_for(self.first)
        self.grace_s = max(MIN_GRACE_S, 2 * _poll_interval_s(self.first))
        self.failures: dict[str, str] = {}
        self.skipped: set[str] = set()
        self.notes: list[str] = []
        self.put_errors: dict[str, str] = {}
        self.put_at: dict[str, float] = {}
        self.many_count: Any = None
        self.depth_problem: str | None = None

    # -- the messages ------------------------------------------------------------------

    def body(self, label: str) -> dict[str, str]:
        return {"conformance": label, "run": self.run_id}

    def meta(self, label: str) -> dict[str, str]:
        return {"conformance-meta": label, "run": self.run_id}

    def put(self, queue: Any, label: str, delay_s: float = 0.0, priority: int = 0) -> None:
        """Put one message; a put that raises is noted against its label."""
        self.put_at[label] = time.monotonic()
        try:
            if priority:
                queue.put(self.body(label), self.meta(label), priority=priority)
            elif delay_s:
                queue.put(self.body(label), self.meta(label), delay_s=delay_s)
            else:
                queue.put(self.body(label), self.meta(label))
        except Exception as exc:
            self.put_errors[label] = f"put() raised {type(exc).__name__}: {exc}"

    def put_many(self, queue: Any) -> None:
        meta = {"conformance-meta": "many", "run": self.run_id}
        try:
            self.many_count = queue.put_many([self.body(label) for label in MANY], meta)
        except Exception as exc:
            for label in MANY:
                self.put_errors[label] = f"put_many() raised {type(exc).__name__}: {exc}"

    # -- the two apps ------------------------------------------------------------------

    def run(self) -> None:
        first = self.first
        self.expect_depth(first, 0, "at the start (make_queue() must give an empty queue)")
        for label in ("once-1", "once-2"):
            self.put(first, label)
        self.put_many(first)
        for label in ("retry", "retry-later", "fail", "carry"):
            self.put(first, label)
        self.expect_depth(first, 9, "after 9 messages were put")
        self.put(first, "delayed", self.delay_s)
        self.expect_depth(first, 10, f"after one more was put with delay_s={self.delay_s:g}")
        if PRIORITY_CHECK not in self.skipped:
            self.put(first, URGENT, priority=1)
        self.run_first(first)
        second = self.make_queue()
        self.run_second(second)
        self.expect_depth(second, 0, "once every message was settled")

    def script(self, label: str, run: int, index: int) -> Action:
        """What the handler does with the `index`th execution of `label` in `run`."""
        if run == 2:
            return None
        if label in ("retry", "release") and index == 0:
            return 0.0
        if label == "release":
            return HOLD
        if label == "retry-later" and index == 0:
            return self.delay_s
        if label == "carry":
            return self.delay_s  # every time: the second app finds it with its count
        if label == "fail":
            return GIVE_UP
        return None

    def run_first(self, queue: Any) -> None:
        """Settle everything put so far, watch for redeliveries behind a marker, then
        leave one message running at shutdown (released) and one waiting for its retry."""
        needed = {label: n for label, n in ACKED.items() if label != "marker-1"}
        needed.update(fail=1, carry=1)
        if PRIORITY_CHECK not in self.skipped:
            needed[URGENT] = 1
        app = AppRun(1, queue, self.recorder, self.script, shutdown_timeout_s=1.0)
        app.start()
        try:
            self.wait_for(app, lambda: self.seen_all(1, needed))
            self.put(queue, "marker-1")
            if self.wait_for(app, lambda: self.seen_all(1, {"marker-1": 1})):
                self.watch(app, 1)
            self.put(queue, "release")
            self.wait_for(app, lambda: self.seen_all(1, {"release": 2}))
        finally:
            problem = app.stop(self.timeout_s)
        if problem is not None:
            self.notes.append(problem)

    def run_second(self, queue: Any) -> None:
        """A new handle: it gets the released message and the one waiting for its retry,
        and nothing that the first app settled."""
        self.put(queue, "marker-2")
        app = AppRun(2, queue, self.recorder, self.script, shutdown_timeout_s=5.0)
        app.start()
        try:
            expected = {"carry": 1, "release": 1, "marker-2": 1}
            if self.wait_for(app, lambda: self.seen_all(2, expected)):
                self.watch(app, 2)
        finally:
            problem = app.stop(self.timeout_s)
        if problem is not None:
            self.notes.append(problem)

    def wait_for(self, app: AppRun, predicate: Callable[[], bool]) -> bool:
        """Wait up to timeout_s for `predicate`; stops waiting early if the app ended."""
        self.recorder.wait_for(lambda: predicate() or app.ended, self.timeout_s)
        return predicate()

    def watch(self, app: AppRun, run: int) -> None:
        """Give a redelivery that must not happen `grace_s` to show (returns as soon as
        one does)."""
        self.recorder.wait_for(
            lambda: bool(redelivered(self.recorder, run)) or app.ended, self.grace_s
        )

    def seen_all(self, run: int, counts: dict[str, int]) -> bool:
        return all(
            label in self.put_errors or len(self.recorder.of(label, run)) >= n
            for label, n in counts.items()
        )

    def expect_depth(self, queue: Any, count: int, when: str) -> None:
        """Wait up to timeout_s for the queue's depth to be `count`; the first miss is the
        `depth` check's failure. Queues without a depth skip the check."""
        if self.depth_problem is not None or "depth" in self.skipped:
            return
        seen: list[str] = []  # what depth() said last, for the failure

        def reached() -> bool:
            try:
                value = source_depth(queue)
            except Exception as exc:
                seen[:] = [f"raised {type(exc).__name__}: {exc}"]
                return False
            if value is None:
                self.skipped.add("depth")
                return True
            seen[:] = [f"was {value}"]
            return value == count

        if not self.recorder.wait_for(reached, self.timeout_s):
            self.depth_problem = f"depth() {seen[0]} {when}, expected {count}"

    # -- the verdicts ------------------------------------------------------------------

    def verdict(self) -> list[str]:
        """The checks that passed; AssertionError naming those that failed."""
        checks = Verdicts(self).by_check()
        passed = []
        for name in (*CHECKS, PRIORITY_CHECK):
            if name in self.skipped:
                continue
            try:
                problem = checks[name]()
            except Exception as exc:  # a verdict must not hide the others
                problem = f"the check itself raised {type(exc).__name__}: {exc}"
            if problem is None:
                passed.append(name)
            else:
                self.failures[name] = problem
        if self.failures:
            raise AssertionError(self.report(passed))
        return passed

    def report(self, passed: list[str]) -> str:
        lines = [f"{self.name} failed {len(self.failures)} conformance check(s):"]
        lines += [f"  {name}: {reason}" for name, reason in self.failures.items()]
        lines += [f"  (note: {note})" for note in self.notes]
        lines.append(f"passed: {', '.join(passed) or 'none'}")
        return "\n".join(lines)


def _checked_queue(queue: Any) -> Any:
    """`queue` if it has the methods the suite calls; TypeError naming the missing."""
    missing = [
        method
        for method in ("fetch", "ack", "retry", "fail", "put")
        if not callable(getattr(queue, method, None))
    ]
    if missing:
        raise TypeError(
            f"make_queue() must return a queue with fetch, ack, retry, fail and put; "
            f"{type(queue).__name__} has no {', '.join(missing)}"
        )
    return queue

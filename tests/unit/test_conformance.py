"""onestep.testing.conformance.check_queue: MemoryQueue passes every check, and queues
broken on purpose fail, each naming the property it breaks (and only that one)."""

from __future__ import annotations

import heapq
import itertools
import re
import threading
import time
from typing import Any

import pytest

import onestep.testing
from onestep import MemoryQueue
from onestep.kit import Delivery, Sink, Source, check_delay
from onestep.testing.conformance import CHECKS, PRIORITY_CHECK, check_queue

#: Generous for a loaded machine: a passing step waits only as long as it needs.
TIMEOUT_S = 8.0


def failed_checks(error: AssertionError) -> set[str]:
    """The check names that the AssertionError lists as failed."""
    return set(re.findall(r"^  ([a-z-]+): ", str(error), re.MULTILINE))


def passed_checks(error: AssertionError) -> list[str]:
    line = str(error).rsplit("\npassed: ", 1)[1]
    return [] if line == "none" else line.split(", ")


class AckPutsBack(MemoryQueue):
    """Broken: its ack puts the message back instead of removing it."""

    def ack(self, delivery: Delivery) -> None:
        self.put(delivery.payload, delivery.meta)


class RetryForgetsAttempts(MemoryQueue):
    """Broken: a retry republishes the message without counting the attempt."""

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        self.put(delivery.payload, delivery.meta, delay_s=delay_s or 0.0)


class DelayIgnored(MemoryQueue):
    """Broken: delays are ignored, both a retry's and a put's."""

    def put(self, body: Any, meta: Any = None, *, delay_s: float = 0.0, **kwargs: Any) -> None:
        super().put(body, meta, **kwargs)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        super().retry(delivery, None)


class HeapQueue(Source, Sink):
    """A queue written from scratch on onestep.kit, without `depth`: it keeps every
    contract but `release`, which it leaves to Source's default (a retry, so one attempt
    too many). Its methods are called from the source actor and the test's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[tuple[float, int, Delivery]] = []  # (due, sequence, delivery)
        self._sequence = itertools.count()

    def put(self, body: Any, meta: dict[str, Any] | None = None, *, delay_s: float = 0.0) -> None:
        self._add(Delivery(body, meta=dict(meta or {})), check_delay("delay_s", delay_s))

    def put_many(self, bodies: Any, meta: dict[str, Any] | None = None, *, delay_s: float = 0.0):
        count = 0
        for body in bodies:
            self.put(body, meta, delay_s=delay_s)
            count += 1
        return count

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        self.put(body, meta)

    def _add(self, delivery: Delivery, delay_s: float) -> None:
        with self._lock:
            due = time.monotonic() + delay_s
            heapq.heappush(self._waiting, (due, next(self._sequence), delivery))

    def fetch(self, limit: int) -> list[Delivery]:
        now, ready = time.monotonic(), []
        with self._lock:
            while self._waiting and len(ready) < limit and self._waiting[0][0] <= now:
                ready.append(heapq.heappop(self._waiting)[2])
        return ready

    def ack(self, delivery: Delivery) -> None:
        pass  # fetched messages have left the heap already

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        delivery.attempts += 1
        self._add(delivery, delay_s or 0.0)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        pass


def test_memory_queue_passes_every_check():
    queue = MemoryQueue("conformance")
    assert check_queue(lambda: queue, timeout_s=TIMEOUT_S) == list(CHECKS)
    assert queue.qsize() == 0


@pytest.mark.parametrize(
    ("make", "broken", "why", "timeout_s"),
    [
        (
            lambda: AckPutsBack("ack-puts-back"),
            # the message comes back after every ack: delivered many times, never gone
            {"ack-not-redelivered", "ack-not-redelivered-new-handle", "put-fetch-once", "depth"},
            "ack-not-redelivered: delivered again after it was settled: 'once-1' ",
            # the depth check waits this long for a depth of 0 that never comes
            4.0,
        ),
        (
            lambda: RetryForgetsAttempts("retry-forgets"),
            {"retry-counts-attempt", "retry-counts-attempt-new-handle"},
            "retry-counts-attempt: a message run with attempts=0 and retried came back with "
            "attempts=0",
            TIMEOUT_S,
        ),
        (
            lambda: DelayIgnored("delay-ignored"),
            {"retry-delay", "put-delay"},
            "retry-delay: 'retry-later' was delivered 0.",
            TIMEOUT_S,
        ),
        (
            HeapQueue,
            {"release-keeps-attempts"},
            "release-keeps-attempts: a message running with attempts=1 at shutdown came back "
            "with attempts=2",
            TIMEOUT_S,
        ),
    ],
    ids=["ack-puts-back", "retry-forgets-attempts", "delay-ignored", "release-by-retry"],
)
def test_a_broken_queue_fails_naming_what_it_breaks(make, broken, why, timeout_s):
    queue = make()
    with pytest.raises(AssertionError) as caught:
        check_queue(lambda: queue, timeout_s=timeout_s)
    report = str(caught.value)
    assert failed_checks(caught.value) == broken, report
    assert why in report
    # every other check ran and passed (a queue without depth() skips that one only)
    skipped = {"depth"} if isinstance(queue, HeapQueue) else set()
    assert set(passed_checks(caught.value)) == set(CHECKS) - broken - skipped, report


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ValueError, match="timeout_s"):
        check_queue(lambda: MemoryQueue("q"), timeout_s=0)
    with pytest.raises(TypeError, match="make_queue must be callable"):
        check_queue(MemoryQueue("q"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="has no fetch, ack, retry, fail, put"):
        check_queue(object)


def test_onestep_testing_keeps_its_names():
    for name in ("run_until_idle", "source_depth", "OUTCOMES"):
        assert callable(getattr(onestep.testing, name)) or name == "OUTCOMES"


class PriorityBlindQueue(MemoryQueue):
    """Takes a priority and ignores it: the opt-in `priority` check must catch it."""

    def put(self, body, meta=None, *, delay_s=0.0, priority=None, timeout=None):
        super().put(body, meta, delay_s=delay_s, timeout=timeout)


def test_the_priority_check_runs_only_when_asked_and_catches_a_queue_that_ignores_them():
    queue = MemoryQueue("conformance-priority")
    passed = check_queue(lambda: queue, timeout_s=TIMEOUT_S, priorities=True)
    assert passed == [*CHECKS, PRIORITY_CHECK]
    blind = PriorityBlindQueue("blind")
    assert check_queue(lambda: blind, timeout_s=TIMEOUT_S) == list(CHECKS)
    with pytest.raises(AssertionError, match="priority: the message put with priority=1 ran "):
        check_queue(lambda: blind, timeout_s=TIMEOUT_S, priorities=True)

"""The verdicts of the conformance suite: each check judged from what its two apps saw
(the executions recorded, the puts that raised). Used by onestep.testing.conformance, on the
thread that runs `check_queue`, after both apps have stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ._conformance_run import Execution, Recorder

if TYPE_CHECKING:
    from .conformance import _Suite

#: The messages put before the first app starts that end acked there, with how many
#: times each runs (a retried one twice); "marker-1" is put once the others are settled.
ACKED = {
    "once-1": 1,
    "once-2": 1,
    "many-0": 1,
    "many-1": 1,
    "many-2": 1,
    "delayed": 1,
    "retry": 2,
    "retry-later": 2,
    "marker-1": 1,
}
#: The bodies put with one put_many.
MANY = ("many-0", "many-1", "many-2")
#: The message put with priority=1 after the others (check_queue(priorities=True)).
URGENT = "urgent"
#: The messages ready before the urgent one was put, which it must overtake.
_OVERTAKEN = ("once-1", "once-2", *MANY, "retry", "retry-later", "fail", "carry")
#: How early a delayed message may come, for backends that round a due time (RabbitMQ
#: to the millisecond).
DELAY_TOLERANCE_S = 0.02


def redelivered(recorder: Recorder, run: int) -> list[str]:
    """The settled messages that app `run` executed more often than it should have: the
    first app each acked one as often as ACKED says and the failed one once, the second
    none of them."""
    limits = dict(ACKED, fail=1) if run == 1 else dict.fromkeys([*ACKED, "fail"], 0)
    return [label for label, limit in limits.items() if len(recorder.of(label, run)) > limit]


class Verdicts:
    """Judges one run of the suite: each method returns why its check failed, or None."""

    def __init__(self, suite: _Suite) -> None:
        self.suite = suite
        self.recorder = suite.recorder
        self.timeout_s = suite.timeout_s

    def by_check(self) -> dict[str, Callable[[], str | None]]:
        """Each check's name and the method that judges it."""
        suite = self.suite
        return {
            "depth": lambda: suite.depth_problem,
            "put-fetch-once": self.put_fetch_once,
            "put-many-count": self.put_many_count,
            "put-delay": lambda: self.not_early(
                "delayed", 0, suite.put_at.get("delayed"), "it was put"
            ),
            "retry-counts-attempt": self.retry_counts_attempt,
            "retry-counts-attempt-new-handle": self.retry_counts_attempt_new_handle,
            "retry-delay": self.retry_delay,
            "release-keeps-attempts": self.release_keeps_attempts,
            "ack-not-redelivered": lambda: self.not_again(1, ACKED),
            "ack-not-redelivered-new-handle": lambda: self.not_again(2, ACKED),
            "fail-not-redelivered": lambda: self.not_again(1, ["fail"]),
            "fail-not-redelivered-new-handle": lambda: self.not_again(2, ["fail"]),
            "priority": self.priority_first,
        }

    def delivered(self, label: str, run: int | None = 1) -> Execution | str:
        """The first execution of `label` (in `run`) with its body and meta intact, or
        why there is none."""
        if label in self.suite.put_errors:
            return self.suite.put_errors[label]
        seen = self.recorder.of(label, run)
        if not seen:
            where = "" if run is None else f" to handle {run}"
            return f"{label!r} was not delivered{where} within {self.timeout_s:g} s"
        first = seen[0]
        if first.payload != self.suite.body(label):
            return f"{label!r} arrived as {first.payload!r}, put as {self.suite.body(label)!r}"
        meta = {"conformance-meta": "many", "run": self.suite.run_id} if label in MANY else None
        expected = meta or self.suite.meta(label)
        if any(first.meta.get(key) != value for key, value in expected.items()):
            return f"{label!r} arrived with meta {first.meta!r}, put with {expected!r}"
        return first

    def put_fetch_once(self) -> str | None:
        for label in ("once-1", "once-2"):
            first = self.delivered(label, None)
            if isinstance(first, str):
                return first
            if first.attempts != 0:
                return f"{label!r} arrived with attempts={first.attempts}, expected 0"
            times = len(self.recorder.of(label))
            if times != 1:
                return f"{label!r} was delivered {times} times, expected once"
        return None

    def priority_first(self) -> str | None:
        """The urgent message ran before every message put ahead of it without one."""
        urgent = self.delivered(URGENT)
        if isinstance(urgent, str):
            return urgent
        before = [
            (seen[0].at, label)
            for label in _OVERTAKEN
            if (seen := self.recorder.of(label, 1)) and seen[0].at < urgent.at
        ]
        if before:
            ran = ", ".join(label for _, label in sorted(before))
            return f"the message put with priority=1 ran after {ran}, put before it without one"
        return None

    def put_many_count(self) -> str | None:
        if MANY[0] not in self.suite.put_errors and self.suite.many_count != len(MANY):
            return f"put_many() of {len(MANY)} bodies returned {self.suite.many_count!r}"
        for label in MANY:
            first = self.delivered(label)
            if isinstance(first, str):
                return first
        return None

    def not_early(self, label: str, index: int, since: float | None, what: str) -> str | None:
        """Why execution `index` of `label` in run 1 did not come `delay_s` or more after
        `since` (when `what` happened), or None."""
        first = self.delivered(label)
        if isinstance(first, str):
            return first
        seen = self.recorder.of(label, 1)
        if since is None or len(seen) <= index:
            return f"{label!r} did not come back within {self.timeout_s:g} s"
        early = seen[index].at - since
        if early < self.suite.delay_s - DELAY_TOLERANCE_S:
            return (
                f"{label!r} was delivered {early:.3f} s after {what}, before its delay of "
                f"{self.suite.delay_s:g} s"
            )
        return None

    def retry_delay(self) -> str | None:
        seen = self.recorder.of("retry-later", 1)
        return self.not_early("retry-later", 1, seen[0].at if seen else None, "it failed")

    def retry_counts_attempt(self) -> str | None:
        first = self.delivered("retry")
        if isinstance(first, str):
            return first
        seen = self.recorder.of("retry", 1)
        if len(seen) < 2:
            return f"a retried message did not come back within {self.timeout_s:g} s"
        again = seen[1]
        if again.attempts != first.attempts + 1:
            return (
                f"a message run with attempts={first.attempts} and retried came back with "
                f"attempts={again.attempts}"
            )
        if again.payload != first.payload or any(
            again.meta.get(key) != value for key, value in self.suite.meta("retry").items()
        ):
            return f"a retried message came back as {again.payload!r} with meta {again.meta!r}"
        return None

    def retry_counts_attempt_new_handle(self) -> str | None:
        before = self.recorder.of("carry", 1)
        if not before:
            first = self.delivered("carry")
            return first if isinstance(first, str) else None
        later = self.delivered("carry", 2)
        if isinstance(later, str):
            return f"a message retried on the first handle: {later}"
        if later.attempts != len(before):
            return (
                f"a message executed {len(before)} time(s) on the first handle reached a new "
                f"handle with attempts={later.attempts}"
            )
        return None

    def release_keeps_attempts(self) -> str | None:
        held = self.recorder.of("release", 1)
        if len(held) < 2:
            first = self.delivered("release")
            if isinstance(first, str):
                return first
            return (
                "could not be checked: the message to release did not come back from its "
                f"retry within {self.timeout_s:g} s"
            )
        later = self.delivered("release", 2)
        if isinstance(later, str):
            return f"a message released at shutdown: {later}"
        if later.attempts != held[1].attempts:
            return (
                f"a message running with attempts={held[1].attempts} at shutdown came back "
                f"with attempts={later.attempts}"
            )
        return None

    def not_again(self, run: int, labels: Iterable[str]) -> str | None:
        again = [label for label in redelivered(self.recorder, run) if label in labels]
        if not again:
            return None
        counts = ", ".join(f"{label!r} {len(self.recorder.of(label, run))}x" for label in again)
        where = "after it was settled" if run == 1 else "to a new handle, after it was settled"
        return f"delivered again {where}: {counts}"

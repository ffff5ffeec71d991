"""The status line of `onestep run --status-interval S`: one INFO record per task every S
seconds, from the monitor thread (onestep.ops._metrics) that reads the counters anyway."""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger("onestep.status")

#: The outcomes that end a handler execution: what "messages handled" counts.
HANDLED = ("succeeded", "retried", "failed", "dead_lettered")


def handled(counts: dict[str, Any]) -> int:
    """Handler executions that ended (succeeded, retried, failed or dead-lettered)."""
    return int(sum(counts.get(outcome, 0) for outcome in HANDLED))


class StatusLine:
    """Logs, per task, what happened since its last line. Used on one thread only."""

    def __init__(self, interval_s: float, started_at: float | None = None) -> None:
        self.interval_s = interval_s
        # the first line counts from the monitor's creation (time.monotonic())
        self._last_at = time.monotonic() if started_at is None else started_at
        self._last: dict[str, dict[str, int]] = {}

    def maybe_log(self, now: float, snapshot: dict[str, Any]) -> None:
        """Log the lines if `interval_s` passed since the last ones."""
        if now - self._last_at < self.interval_s:
            return
        previous_at, self._last_at = self._last_at, now
        current = {
            name: dict(task["counts"], inflight=task["inflight"])
            for name, task in snapshot["tasks"].items()
        }
        previous, self._last = self._last, current
        elapsed = max(now - previous_at, 1e-9)
        for name, counts in current.items():
            before = previous.get(name, {})

            def since(outcome: str, counts: dict[str, int] = counts, before: Any = before) -> int:
                return int(counts[outcome] - before.get(outcome, 0))

            messages = handled(counts) - handled(before)
            logger.info(
                "task %r: %d messages in %.0f s (%.1f/s), %d in flight, %d retried, "
                "%d dead-lettered",
                name,
                messages,
                elapsed,
                messages / elapsed,
                counts["inflight"],
                since("retried"),
                since("dead_lettered"),
                extra={
                    "task": name,
                    "messages": messages,
                    "rate": messages / elapsed,
                    "inflight": counts["inflight"],
                    "retried": since("retried"),
                    "dead_lettered": since("dead_lettered"),
                },
            )

"""Each task's rate over the last 15 minutes, for the status page's sparklines: a bounded
ring of samples that the monitor thread (onestep.ops._metrics) fills, and the points of the
polyline that onestep.ops._graph_svg draws."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence

#: One sample every 10 s, 90 of them: 15 minutes.
SAMPLE_INTERVAL_S = 10.0
SAMPLES = 90


class RateHistory:
    """Messages handled per second by task, one sample per `interval_s`, the last `size`
    samples kept (memory stays bounded however long the app runs)."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S, size: int = SAMPLES) -> None:
        if size < 2:
            raise ValueError(f"size must be at least 2, got {size!r}")
        self.interval_s = interval_s
        self.size = size
        self._lock = threading.Lock()
        self._series: dict[str, deque[float]] = {}
        self._last: tuple[float, dict[str, int]] | None = None

    def add(self, now: float, totals: Mapping[str, int]) -> None:
        """Runs on the monitor thread at each tick: `totals` are the messages each task
        handled so far (counters), `now` a monotonic time. A sample is taken once
        `interval_s` passed since the last one; the first call only sets the start."""
        with self._lock:
            if self._last is None:
                self._last = (now, dict(totals))
                return
            then, before = self._last
            elapsed = now - then
            if elapsed < self.interval_s or elapsed <= 0:
                return
            for task, total in totals.items():
                series = self._series.get(task)
                if series is None:
                    series = self._series[task] = deque(maxlen=self.size)
                # a counter never goes back; a smaller total means counting restarted
                series.append(max(0, total - before.get(task, 0)) / elapsed)
            self._last = (now, dict(totals))

    def series(self) -> dict[str, list[float]]:
        """The samples by task, oldest first (any thread)."""
        with self._lock:
            return {task: list(samples) for task, samples in self._series.items()}


def sparkline_points(
    values: Sequence[float],
    x: float,
    y: float,
    width: float,
    height: float,
    slots: int = SAMPLES,
) -> str:
    """The `points` of an SVG polyline for `values` in the box (x, y, width, height): the
    box holds `slots` samples, the last value at the right edge (so a young history
    fills the right part only), zero at the bottom, the peak at the top ("" for fewer
    than two values)."""
    values = values[-max(slots, 2) :]
    if len(values) < 2:
        return ""
    peak = max(max(values), 0.0)
    step = width / (max(slots, len(values)) - 1)
    start = x + width - (len(values) - 1) * step
    points = []
    for index, value in enumerate(values):
        level = 0.0 if peak <= 0 else max(0.0, value) / peak
        points.append(f"{start + index * step:.1f},{y + height - level * height:.1f}")
    return " ".join(points)

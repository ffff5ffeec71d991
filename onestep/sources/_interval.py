"""IntervalSource: a schedule firing every fixed interval of elapsed time.

Created by users (`IntervalSource.every(minutes=5)`); driven by its SourceActor.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from .._values import MAX_DELAY_S, check_number
from ._schedule import Clock, ScheduleSource

# An interval's anchor is kept "for ever" (a claim needs an expiry: a century).
_ANCHOR_TTL_S = 100 * 365 * 24 * 3600.0


class IntervalSource(ScheduleSource):
    """Fires every fixed interval of elapsed time, on a grid anchored at its first tick."""

    def __init__(
        self,
        interval: timedelta,
        *,
        payload: Any = None,
        immediate: bool = False,
        overlap: str = "skip",
        misfire: str = "run_once",
        timezone: Any = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(interval, timedelta) or interval <= timedelta(0):
            raise ValueError(f"interval must be a positive duration, got {interval!r}")
        if interval.total_seconds() > MAX_DELAY_S:
            raise ValueError(_too_long(f"got {interval!r}"))
        self.interval = interval
        self.immediate = bool(immediate)
        super().__init__(
            payload=payload,
            overlap=overlap,
            misfire=misfire,
            timezone=timezone,
            clock=clock,
            name=name,
        )

    @classmethod
    def every(
        cls,
        *,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        payload: Any = None,
        immediate: bool = False,
        overlap: str = "skip",
        misfire: str = "run_once",
        timezone: Any = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> IntervalSource:
        """`IntervalSource.every(minutes=5)`: the units add up; their sum must be > 0."""
        units = (("days", days, 86_400), ("hours", hours, 3_600), ("minutes", minutes, 60))
        total_s = check_number("seconds", seconds)
        for param, value, unit_s in units:
            total_s += check_number(param, value) * unit_s
        if total_s > MAX_DELAY_S:  # checked before timedelta(), which overflows past 1e9 days
            given = ", ".join(f"{p}={v!r}" for p, v, _ in (*units, ("seconds", seconds, 1)) if v)
            raise ValueError(_too_long(f"got {given}"))
        interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if interval <= timedelta(0):
            raise ValueError(
                "the interval must be longer than zero: give days, hours, minutes or seconds"
            )
        return cls(
            interval,
            payload=payload,
            immediate=immediate,
            overlap=overlap,
            misfire=misfire,
            timezone=timezone,
            clock=clock,
            name=name,
        )

    def _default_name(self) -> str:
        return f"every-{self.interval}"

    def _first_tick(self, now: datetime) -> datetime:
        # The grid is anchored where the first replica to open put it, so that replicas
        # started together claim the same tick keys.
        anchor_key = self._key + ":anchor"
        if self._state.claim(anchor_key, _ANCHOR_TTL_S, now.isoformat()):
            anchor = now
        else:
            anchor = datetime.fromisoformat(self._state.get(anchor_key)).astimezone(UTC)
        return anchor if self.immediate else anchor + self.interval

    def _tick_after(self, tick: datetime) -> datetime:
        return tick + self.interval

    def _due_ticks(self, first: datetime, now: datetime, keep: int) -> tuple[list[datetime], int]:
        count = int((now - first) / self.interval) + 1  # arithmetic: no walk over downtime
        start = max(0, count - keep)
        return [first + self.interval * k for k in range(start, count)], count

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "interval_s": self.interval.total_seconds()}


def _too_long(got: str) -> str:
    return (
        f"interval must be at most 30 days ({MAX_DELAY_S:,.0f} s), {got}; "
        "use a CronSource for longer periods"
    )

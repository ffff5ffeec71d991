"""CronSource: a schedule firing on a cron expression in a time zone's wall-clock time.

Created by users (`CronSource("0 * * * *")`); driven by its SourceActor.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter

from ._schedule import Clock, ScheduleSource

# Past this many missed cron ticks (about 1 s of walking), the newest are found walking
# backwards instead and the missed count stops there.
_MAX_CRON_WALK = 50_000


class CronSource(ScheduleSource):
    """Fires on a cron expression (5 fields, an optional 6th for seconds, or @hourly,
    @daily, @weekly, @monthly, @yearly) in wall-clock time of `timezone` (UTC default).

    Across DST changes a wall-clock time fires once: a time skipped by spring-forward
    fires at the same instant it would have had before the change (02:30 in
    Europe/Berlin on the spring-forward day fires at 03:30 CEST); a time that occurs
    twice at fall-back fires at its first occurrence only.
    """

    def __init__(
        self,
        expression: str,
        *,
        payload: Any = None,
        overlap: str = "skip",
        misfire: str = "run_once",
        timezone: Any = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(expression, str) or not croniter.is_valid(expression.strip()):
            raise ValueError(f"expression {expression!r} is not a valid cron expression")
        self.expression = expression.strip()
        _check_fires(self.expression)
        super().__init__(
            payload=payload,
            overlap=overlap,
            misfire=misfire,
            timezone=timezone,
            clock=clock,
            name=name,
        )

    def _default_name(self) -> str:
        return f"cron {self.expression}"

    def _tick_after(self, tick: datetime) -> datetime:
        # Walk wall-clock (naive) times in the zone, then map each to one instant
        # (fold=0); skip a result that is not later, as happens across spring-forward.
        # Within three hours after an offset change, also walk from the wall time under
        # the old offset: a time in the skipped hour maps to an instant after the change.
        local = tick.astimezone(self.tz)
        starts = [local.replace(tzinfo=None)]
        earlier = (tick - timedelta(hours=3)).astimezone(self.tz).utcoffset()
        if earlier is not None and earlier != local.utcoffset():
            starts.append((tick + earlier).replace(tzinfo=None))
        found = [self._next_instant(start, tick) for start in starts]
        return min(found)

    def _next_instant(self, wall_start: datetime, tick: datetime) -> datetime:
        it = croniter(self.expression, wall_start)
        for _ in range(1000):
            wall = it.get_next(datetime)
            instant: datetime = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
            if instant > tick:
                return instant
        raise RuntimeError(f"cron {self.expression!r}: no next tick after {tick.isoformat()}")

    def _first_tick(self, now: datetime) -> datetime:
        return self._tick_after(now)

    def _due_ticks(self, first: datetime, now: datetime, keep: int) -> tuple[list[datetime], int]:
        ticks: deque[datetime] = deque(maxlen=keep)
        count = 0
        tick = first
        while tick <= now:
            ticks.append(tick)
            count += 1
            if count >= _MAX_CRON_WALK:
                # a long downtime on a frequent schedule: take the newest ticks backwards
                return self._newest_ticks(now, keep), count
            tick = self._tick_after(tick)
        return list(ticks), count

    def _newest_ticks(self, now: datetime, keep: int) -> list[datetime]:
        it = croniter(self.expression, now.astimezone(self.tz).replace(tzinfo=None))
        instants: list[datetime] = []
        while len(instants) < keep:
            instant = it.get_prev(datetime).replace(tzinfo=self.tz, fold=0).astimezone(UTC)
            if not instants or instant < instants[-1]:
                instants.append(instant)
        return instants[::-1]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "expression": self.expression}


def _check_fires(expression: str) -> None:
    """Refuse a well-formed expression that matches no date, such as February 31st
    (`0 0 31 2 *`): croniter accepts it, then fails to find a next time when the
    schedule opens. About 10 ms for such an expression, once, at construction."""
    try:
        croniter(expression, datetime.now(UTC).replace(tzinfo=None)).get_next(datetime)
    except Exception as exc:  # CroniterBadDateError: no match within croniter's search
        raise ValueError(
            f"expression {expression!r} matches no date (like February 31st): "
            f"it would never fire ({type(exc).__name__}: {exc})"
        ) from None

"""ScheduleSource: what IntervalSource and CronSource share, so that schedules survive
restarts and fire once across replicas.

Schedules are Sources driven by the SourceActor (every method runs on its thread); they
keep their last fired tick in the app's state store and claim each tick there before
firing it.
"""

from __future__ import annotations

import copy
import logging
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core import Delivery, Source, SourceContext
from ..state import InMemoryStateStore, StateStore

logger = logging.getLogger("onestep.schedule")

OVERLAP_POLICIES = ("skip", "allow", "queue")
MISFIRE_POLICIES = ("skip", "run_once", "run_all")

#: How many due runs may wait (overlap "queue" or "allow") or be caught up (misfire
#: "run_all") at most; past that the oldest are dropped and reported as `skipped`.
MAX_BACKLOG = 100
#: How often a schedule looks at the clock at least, so that a wall-clock jump is noticed.
MAX_POLL_S = 1.0
#: How late a tick may fire and still count as on time rather than missed.
MAX_GRACE_S = 60.0
#: How often a running schedule looks for runs a replica handed back at its shutdown.
HANDBACK_CHECK_S = 60.0

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def _check_choice(param: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{param} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _zone(timezone: Any) -> tzinfo:
    if timezone is None:
        return UTC
    if isinstance(timezone, tzinfo):
        return timezone
    if not isinstance(timezone, str) or not timezone:
        raise ValueError(f"timezone must be an IANA name such as 'Europe/Berlin', got {timezone!r}")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {timezone!r} is not a known IANA time zone") from None


class _Run:
    """A tick waiting to be handed to the task (or a retried run waiting for its delay)."""

    __slots__ = ("delivery", "not_before")

    def __init__(self, delivery: Delivery, not_before: datetime | None = None) -> None:
        self.delivery = delivery
        self.not_before = not_before


class ScheduleSource(Source):
    """What IntervalSource and CronSource share: tick bookkeeping, overlap and misfire
    policies, the durable last tick and the per-tick claim."""

    def __init__(
        self,
        *,
        payload: Any,
        overlap: str,
        misfire: str,
        timezone: Any,
        clock: Clock | None,
        name: str | None,
    ) -> None:
        self.overlap = _check_choice("overlap", overlap, OVERLAP_POLICIES)
        self.misfire = _check_choice("misfire", misfire, MISFIRE_POLICIES)
        self.tz = _zone(timezone)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning an aware datetime, got {clock!r}")
        self.clock: Clock = clock or system_clock
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name or self._default_name()
        self.payload = payload
        self._state: StateStore = InMemoryStateStore()
        self._key = f"onestep:schedule:{self.name}"
        self._report: Callable[[str, dict[str, Any]], None] = lambda kind, meta: None
        self._next: datetime | None = None
        self._backlog: deque[_Run] = deque()
        self._in_flight = 0
        self._next_handback_check = 0.0
        self.skipped = 0

    # -- what a subclass defines ---------------------------------------------------------

    @abstractmethod
    def _default_name(self) -> str: ...

    @abstractmethod
    def _first_tick(self, now: datetime) -> datetime:
        """The first tick when no earlier one is on record."""

    @abstractmethod
    def _tick_after(self, tick: datetime) -> datetime:
        """The tick that follows `tick` (both aware, UTC)."""

    @abstractmethod
    def _due_ticks(self, first: datetime, now: datetime, keep: int) -> tuple[list[datetime], int]:
        """The last `keep` ticks from `first` up to `now` (oldest first) and their count."""

    # -- lifecycle (the source actor's thread) -------------------------------------------

    def attach(self, context: SourceContext) -> None:
        """Called when the app starts: use its state store and its event stream."""
        self._state = context.app.state
        self._key = f"onestep:schedule:{context.app.name}:{context.task}:{self.name}"
        self._report = context.report

    def open(self) -> None:
        now = self._now()
        last = (self._state.get(self._key + ":progress") or {}).get("last")
        self._backlog.clear()
        self._in_flight = 0
        if last is None:
            self._next = self._first_tick(now)
        else:
            self._next = self._tick_after(datetime.fromisoformat(last).astimezone(UTC))
        self._take_handed_back()

    def close(self) -> None:
        """Hand back the runs that were due but not started (a queued backlog, runs
        released at shutdown): they are kept in the state store, and the next open() of
        this schedule, here or in a replica sharing the store, runs them first."""
        backlog = list(self._backlog)
        self._backlog.clear()
        if not backlog:
            return
        runs = [
            {
                "payload": r.delivery.payload,
                "meta": r.delivery.meta,
                "attempts": r.delivery.attempts,
            }
            for r in backlog
        ]
        try:
            self._state.update(self._key + ":pending", lambda old: [*(old or []), *runs], [])
        except TypeError:  # a payload the store cannot encode: a fresh one is made on reopen
            for run in runs:
                run.pop("payload")
            self._state.update(self._key + ":pending", lambda old: [*(old or []), *runs], [])
        logger.info(
            "schedule %r: %d due run(s) not started; kept to run after a restart",
            self.name,
            len(runs),
        )

    def _take_handed_back(self) -> None:
        """Queue the runs a close() handed back (ours or a replica's), oldest first."""
        self._next_handback_check = time.monotonic() + HANDBACK_CHECK_S
        runs = self._state.pop(self._key + ":pending", None)
        if not runs:
            return
        runs.sort(key=lambda run: datetime.fromisoformat(run["meta"]["scheduled_at"]))
        for run in runs:
            payload = run["payload"] if "payload" in run else self._make_payload()
            delivery = Delivery(payload, meta=run["meta"], attempts=run["attempts"])
            self._backlog.append(_Run(delivery))
        logger.info("schedule %r: %d handed-back run(s) queued", self.name, len(runs))

    def _claim_key(self, tick: datetime) -> str:
        return f"{self._key}:tick:{tick.isoformat()}"

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError(f"schedule {self.name!r}: clock() returned a naive datetime")
        return now.astimezone(UTC)

    def poll_delay(self) -> float:
        """Seconds until the runtime should call fetch() again."""
        if self._next is None:
            return MAX_POLL_S
        wait_s = (self._next - self._now()).total_seconds()
        if self._backlog and self._backlog[0].not_before is not None:
            retry_s = (self._backlog[0].not_before - self._now()).total_seconds()
            wait_s = min(wait_s, retry_s)
        return min(MAX_POLL_S, max(0.0005, wait_s))

    # -- fetching ------------------------------------------------------------------------

    def fetch(self, limit: int) -> list[Delivery]:
        now = self._now()
        self._collect(now)
        out: list[Delivery] = []
        backlog = self._backlog
        while backlog and len(out) < limit:
            if self.overlap != "allow" and self._in_flight:
                break
            run = backlog[0]
            if run.not_before is not None and run.not_before > now:
                break
            backlog.popleft()
            self._in_flight += 1
            out.append(run.delivery)
        return out

    def _collect(self, now: datetime) -> None:
        """Turn the ticks that fell due into runs, applying misfire and overlap."""
        if self._next is None or self._next > now:
            return
        ticks, count = self._due_ticks(self._next, now, MAX_BACKLOG + 1)
        newest = ticks[-1]
        self._next = self._tick_after(newest)
        grace = self._grace_s(newest)
        on_time = (now - newest).total_seconds() <= grace
        missed = ticks[:-1] if on_time else ticks
        missed_count = count - 1 if on_time else count
        fire: list[tuple[datetime, int]] = []
        if missed_count:
            fire.extend(self._misfired(missed, missed_count, on_time))
        if on_time:
            fire.append((newest, missed_count if self.misfire == "run_once" else 0))
        busy = bool(self._in_flight or self._backlog)
        if time.monotonic() >= self._next_handback_check:
            self._take_handed_back()  # a replica may have handed runs back since
        runs = [(tick, covers) for tick, covers in fire if self._admit(tick, busy)]
        first = self._advance(newest, len(runs))
        for offset, (tick, covers) in enumerate(runs):
            self._queue_run(tick, covers, first + offset)

    def _advance(self, newest: datetime, fired: int) -> int:
        """Record `newest` as the last tick seen and take `fired` sequence numbers, in one
        atomic update of the store (each round trip on the firing path adds latency
        when another thread holds the GIL); returns the first number taken."""

        def advance(progress: dict[str, Any]) -> dict[str, Any]:
            last = progress.get("last")
            if last is None or datetime.fromisoformat(last) < newest:
                last = newest.isoformat()
            return {"last": last, "sequence": progress.get("sequence", 0) + fired}

        progress = self._state.update(self._key + ":progress", advance, {})
        return int(progress["sequence"]) - fired + 1

    def _misfired(
        self, missed: list[datetime], missed_count: int, on_time: bool
    ) -> list[tuple[datetime, int]]:
        if self.misfire == "skip":
            self._skip(missed[-1], "misfire", missed_count)
            return []
        if self.misfire == "run_once":
            return [] if on_time else [(missed[-1], missed_count)]
        kept = missed[-MAX_BACKLOG:]
        if missed_count > len(kept):
            self._skip(kept[0], "misfire-cap", missed_count - len(kept))
        return [(tick, 0) for tick in kept]

    def _grace_s(self, tick: datetime) -> float:
        period = (self._tick_after(tick) - tick).total_seconds()
        return min(MAX_GRACE_S, max(1.0, period / 2))

    def _admit(self, tick: datetime, busy: bool) -> bool:
        """Claim the tick in the shared store; with overlap "skip" drop a tick that fell
        due while an earlier run was in flight (`busy`)."""
        ttl_s = max(60.0, 2 * (self._tick_after(tick) - tick).total_seconds())
        if not self._state.claim(self._claim_key(tick), ttl_s):
            return False  # another replica fired it
        if self.overlap == "skip" and busy:
            self._skip(tick, "overlap", 1)
            return False
        return True

    def _queue_run(self, tick: datetime, covers: int, sequence: int) -> None:
        if len(self._backlog) >= MAX_BACKLOG:
            dropped = self._backlog.popleft()
            self._skip(None, "backlog-full", 1, dropped.delivery.meta.get("scheduled_at"))
        meta: dict[str, Any] = {
            "schedule": self.name,
            "scheduled_at": tick.astimezone(self.tz).isoformat(),
            "sequence": sequence,
        }
        if covers:
            meta["missed"] = covers
        self._backlog.append(_Run(Delivery(self._make_payload(), meta=meta)))

    def _make_payload(self) -> Any:
        if callable(self.payload):
            return self.payload()
        return copy.deepcopy(self.payload)

    def _skip(
        self, tick: datetime | None, reason: str, count: int, scheduled_at: str | None = None
    ) -> None:
        self.skipped += count
        when = scheduled_at or (tick.astimezone(self.tz).isoformat() if tick else None)
        logger.info("schedule %r skipped %d run(s) (%s) at %s", self.name, count, reason, when)
        self._report(
            "skipped",
            {"schedule": self.name, "reason": reason, "count": count, "scheduled_at": when},
        )

    # -- settling ------------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        self._in_flight = max(0, self._in_flight - 1)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        self._in_flight = max(0, self._in_flight - 1)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        """Run the same tick again (after `delay_s`), ahead of newer ticks."""
        self._in_flight = max(0, self._in_flight - 1)
        delivery.attempts += 1
        not_before = self._now() + timedelta(seconds=delay_s) if delay_s else None
        self._backlog.appendleft(_Run(delivery, not_before))

    def release(self, delivery: Delivery) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._backlog.appendleft(_Run(delivery))

    def describe(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "name": self.name,
            "overlap": self.overlap,
            "misfire": self.misfire,
            "timezone": str(self.tz),
        }

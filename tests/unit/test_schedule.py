"""IntervalSource and CronSource: ticks, payload and meta, the overlap and misfire
policies, durable last tick across restarts (SQLiteStateStore), claims shared by replicas,
DST in Europe/Berlin, bad input, and a real app.

Policy tests drive a source by hand with a fake clock (`open()`, `fetch(limit)`, `ack()`):
nothing waits for real time. Only the tests marked "real app" run actors.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import onestep.state._sqlite
import onestep.state._store
from onestep import (
    CronSource,
    Delivery,
    InMemoryMetrics,
    InMemoryStateStore,
    IntervalSource,
    OneStepApp,
    SourceContext,
    SQLiteStateStore,
    StateStore,
    TaskEvent,
)
from onestep.sources._schedule import MAX_BACKLOG, MAX_POLL_S, ScheduleSource
from tests.helpers import running

TIMEOUT = 5.0
T0 = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)  # a Thursday
FIVE_MIN = timedelta(minutes=5)
BERLIN = ZoneInfo("Europe/Berlin")


class FakeClock:
    """An aware datetime that only moves when the test says so."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **units: float) -> datetime:
        self.now += delta if delta is not None else timedelta(**units)
        return self.now

    def set(self, when: datetime) -> datetime:
        self.now = when
        return self.now


class Reports:
    """The `report(kind, meta)` a SourceContext carries, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, meta: dict[str, Any]) -> None:
        self.calls.append((kind, dict(meta)))

    def skipped(self, reason: str | None = None) -> list[dict[str, Any]]:
        return [
            meta
            for kind, meta in self.calls
            if kind == "skipped" and (reason is None or meta["reason"] == reason)
        ]


def attach(
    source: ScheduleSource,
    store: StateStore | None = None,
    *,
    app_name: str = "sched-app",
    task: str = "job",
) -> Reports:
    """Attach `source` the way OneStepApp.start does, to an app that is not started."""
    reports = Reports()
    app = OneStepApp(app_name, state=store if store is not None else InMemoryStateStore())
    source.attach(SourceContext(app, task, reports))
    return reports


def opened(source: ScheduleSource, store: StateStore | None = None) -> Reports:
    reports = attach(source, store)
    source.open()
    return reports


def when(delivery: Delivery) -> datetime:
    return datetime.fromisoformat(delivery.meta["scheduled_at"])


def fetch_one(source: ScheduleSource, limit: int = 10) -> Delivery:
    batch = source.fetch(limit)
    assert len(batch) == 1, batch
    return batch[0]


def drain(source: ScheduleSource, limit: int = 10) -> list[Delivery]:
    """Fetch and ack until nothing more is due at the current fake time."""
    runs: list[Delivery] = []
    while batch := source.fetch(limit):
        for delivery in batch:
            runs.append(delivery)
            source.ack(delivery)
    return runs


# -- interval ticks ------------------------------------------------------------------------


def test_immediate_fires_at_open_time_and_only_once():
    clock = FakeClock()
    source = IntervalSource.every(minutes=5, immediate=True, clock=clock)
    opened(source)
    run = fetch_one(source)
    assert when(run) == T0
    assert run.meta["sequence"] == 1
    assert run.payload is None
    source.ack(run)
    assert source.fetch(10) == []
    clock.advance(minutes=4, seconds=59)
    assert source.fetch(10) == []


def test_without_immediate_the_first_run_is_one_interval_after_open():
    clock = FakeClock()
    source = IntervalSource.every(minutes=5, clock=clock)
    opened(source)
    assert source.fetch(10) == []
    clock.advance(FIVE_MIN - timedelta(microseconds=1))
    assert source.fetch(10) == []
    clock.advance(microseconds=1)
    assert when(fetch_one(source)) == T0 + FIVE_MIN


def test_the_next_tick_follows_one_interval_later_on_a_fixed_grid():
    clock = FakeClock()
    source = IntervalSource.every(minutes=5, immediate=True, clock=clock)
    opened(source)
    source.ack(fetch_one(source))
    # picked up 20 s late (within the grace): the run keeps its grid time, and the
    # grid does not drift by the lateness
    clock.advance(FIVE_MIN + timedelta(seconds=20))
    second = fetch_one(source)
    assert when(second) == T0 + FIVE_MIN
    assert second.meta["sequence"] == 2
    assert "missed" not in second.meta
    source.ack(second)
    clock.set(T0 + 2 * FIVE_MIN)
    third = fetch_one(source)
    assert when(third) == T0 + 2 * FIVE_MIN
    assert third.meta["sequence"] == 3


def test_poll_delay_is_the_time_to_the_next_tick_capped():
    clock = FakeClock()
    source = IntervalSource.every(seconds=10, clock=clock)
    opened(source)
    assert source.poll_delay() == MAX_POLL_S
    clock.advance(seconds=9.75)
    assert source.poll_delay() == pytest.approx(0.25)
    clock.advance(seconds=0.25)
    assert 0 < source.poll_delay() <= 0.001  # due now: look at once


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ({"minutes": 5}, timedelta(minutes=5)),
        ({"seconds": 0.05}, timedelta(milliseconds=50)),
        ({"hours": 1, "minutes": 30}, timedelta(minutes=90)),
        ({"days": 1, "hours": 2, "minutes": 3, "seconds": 4.5}, timedelta(1, 7384.5)),
        ({"days": 0.5}, timedelta(hours=12)),
    ],
)
def test_every_adds_its_units_up(units, expected):
    clock = FakeClock()
    source = IntervalSource.every(**units, clock=clock)
    assert source.interval == expected
    opened(source)
    clock.advance(expected)
    assert when(fetch_one(source)) == T0 + expected


# -- cron ----------------------------------------------------------------------------------


def test_cron_hourly_fires_on_the_hour():
    clock = FakeClock(T0 + timedelta(minutes=17))
    source = CronSource("@hourly", clock=clock)
    opened(source)
    clock.set(T0 + timedelta(minutes=59, seconds=59))
    assert source.fetch(10) == []
    clock.set(T0 + timedelta(hours=1))
    first = fetch_one(source)
    assert when(first) == T0 + timedelta(hours=1)
    source.ack(first)
    clock.set(T0 + timedelta(hours=2))
    assert when(fetch_one(source)) == T0 + timedelta(hours=2)


def test_cron_six_fields_take_seconds_last():
    clock = FakeClock(T0 + timedelta(seconds=1))
    source = CronSource("* * * * * */15", clock=clock)
    opened(source)
    seen = []
    for second in range(2, 61):
        clock.set(T0 + timedelta(seconds=second))
        seen += [when(run) for run in drain(source)]
    assert seen == [T0 + timedelta(seconds=s) for s in (15, 30, 45, 60)]


def test_cron_six_fields_a_fixed_second():
    clock = FakeClock(T0)
    source = CronSource("*/2 * * * * 30", clock=clock)
    opened(source)
    seen = []
    for second in range(1, 5 * 60 + 1, 5):
        clock.set(T0 + timedelta(seconds=second))
        seen += [when(run) for run in drain(source)]
    # every two minutes, at second 30; each fetched within 5 s of its tick
    assert seen == [T0 + timedelta(minutes=m, seconds=30) for m in (0, 2, 4)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("@daily", datetime(2026, 1, 16, tzinfo=UTC)),
        ("@weekly", datetime(2026, 1, 18, tzinfo=UTC)),  # Sunday
        ("@monthly", datetime(2026, 2, 1, tzinfo=UTC)),
        ("@yearly", datetime(2027, 1, 1, tzinfo=UTC)),
        ("0 * * * *", datetime(2026, 1, 15, 11, tzinfo=UTC)),
        ("30 9 * * 1-5", datetime(2026, 1, 16, 9, 30, tzinfo=UTC)),
    ],
)
def test_cron_shorthands_and_five_fields(expression, expected):
    clock = FakeClock(T0)
    source = CronSource(expression, clock=clock)
    opened(source)
    clock.set(expected - timedelta(seconds=1))
    assert source.fetch(10) == []
    clock.set(expected)
    assert when(fetch_one(source)) == expected


def test_cron_runs_in_wall_clock_time_of_its_timezone():
    clock = FakeClock(datetime(2026, 1, 15, 12, tzinfo=UTC))  # 07:00 in New York
    source = CronSource("0 9 * * *", timezone="America/New_York", clock=clock)
    opened(source)
    clock.set(datetime(2026, 1, 15, 14, tzinfo=UTC))
    run = fetch_one(source)
    assert run.meta["scheduled_at"] == "2026-01-15T09:00:00-05:00"


# -- payload and meta ----------------------------------------------------------------------


def test_a_callable_payload_is_called_for_every_run():
    clock = FakeClock()
    calls = []

    def make() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    source = IntervalSource.every(minutes=5, immediate=True, payload=make, clock=clock)
    opened(source)
    payloads = []
    for _ in range(3):
        payloads += [run.payload for run in drain(source)]
        clock.advance(FIVE_MIN)
    assert payloads == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert len(calls) == 3


def test_a_value_payload_is_copied_for_every_run():
    clock = FakeClock()
    value = {"items": [], "nested": {"count": 0}}
    source = CronSource("*/5 * * * *", payload=value, clock=clock)
    opened(source)
    clock.advance(FIVE_MIN)
    first = fetch_one(source)
    first.payload["items"].append("mutated")
    first.payload["nested"]["count"] = 99
    source.ack(first)
    clock.advance(FIVE_MIN)
    second = fetch_one(source)
    assert second.payload == {"items": [], "nested": {"count": 0}}
    assert value == {"items": [], "nested": {"count": 0}}
    assert second.payload is not value


def test_meta_has_scheduled_at_with_the_zone_offset_and_an_increasing_sequence():
    clock = FakeClock()
    source = IntervalSource.every(
        minutes=5, immediate=True, timezone="Asia/Kolkata", clock=clock, name="report"
    )
    opened(source)
    runs = []
    for _ in range(4):
        runs += drain(source)
        clock.advance(FIVE_MIN)
    assert [run.meta["scheduled_at"] for run in runs] == [
        "2026-01-15T15:30:00+05:30",
        "2026-01-15T15:35:00+05:30",
        "2026-01-15T15:40:00+05:30",
        "2026-01-15T15:45:00+05:30",
    ]
    assert [run.meta["sequence"] for run in runs] == [1, 2, 3, 4]
    assert {run.meta["schedule"] for run in runs} == {"report"}
    for k, run in enumerate(runs):
        parsed = when(run)
        assert parsed.utcoffset() == timedelta(hours=5, minutes=30)
        assert parsed == T0 + k * FIVE_MIN


def test_utc_is_the_default_zone_of_scheduled_at():
    clock = FakeClock()
    source = IntervalSource.every(seconds=30, immediate=True, clock=clock)
    opened(source)
    assert fetch_one(source).meta["scheduled_at"] == "2026-01-15T10:00:00+00:00"


# -- overlap -------------------------------------------------------------------------------


def test_overlap_skip_drops_a_tick_due_while_a_run_is_in_flight():
    clock = FakeClock()
    source = IntervalSource.every(minutes=5, immediate=True, clock=clock)  # skip: default
    reports = opened(source)
    first = fetch_one(source)
    clock.advance(FIVE_MIN)
    assert source.fetch(10) == []  # the first run is still in flight
    assert source.skipped == 1
    [skipped] = reports.skipped()
    assert skipped["reason"] == "overlap"
    assert skipped["count"] == 1
    assert skipped["scheduled_at"] == (T0 + FIVE_MIN).isoformat()
    source.ack(first)
    assert source.fetch(10) == []  # dropped, not deferred
    clock.advance(FIVE_MIN)
    third = fetch_one(source)
    assert when(third) == T0 + 2 * FIVE_MIN
    assert source.skipped == 1


def test_overlap_allow_runs_overlap_up_to_the_limit_and_drops_none():
    clock = FakeClock()
    source = IntervalSource.every(minutes=5, immediate=True, overlap="allow", clock=clock)
    reports = opened(source)
    in_flight = [fetch_one(source, limit=3)]
    for _ in range(2):
        clock.advance(FIVE_MIN)
        in_flight.append(fetch_one(source, limit=3 - len(in_flight)))
    assert [when(run) for run in in_flight] == [T0 + k * FIVE_MIN for k in range(3)]
    # no free credit (limit 0): the due tick waits instead of being dropped
    clock.advance(FIVE_MIN)
    assert source.fetch(0) == []
    source.ack(in_flight.pop(0))
    fourth = fetch_one(source, limit=1)
    assert when(fourth) == T0 + 3 * FIVE_MIN
    assert source.skipped == 0
    assert reports.skipped() == []


def test_overlap_queue_runs_due_ticks_one_after_another():
    clock = FakeClock()
    source = IntervalSource.every(minutes=5, immediate=True, overlap="queue", clock=clock)
    reports = opened(source)
    first = fetch_one(source)
    for _ in range(3):
        clock.advance(FIVE_MIN)
        assert source.fetch(10) == []  # one run at a time, even with free credit
    assert source.skipped == 0
    runs = [first]
    while True:
        source.ack(runs[-1])
        batch = source.fetch(10)
        if not batch:
            break
        assert len(batch) == 1
        runs += batch
    assert [when(run) for run in runs] == [T0 + k * FIVE_MIN for k in range(4)]
    assert [run.meta["sequence"] for run in runs] == [1, 2, 3, 4]
    assert reports.skipped() == []


def test_overlap_queue_is_capped_and_drops_the_oldest_with_an_event():
    clock = FakeClock()
    source = IntervalSource.every(minutes=5, immediate=True, overlap="queue", clock=clock)
    reports = opened(source)
    first = fetch_one(source)
    extra = 5
    for _ in range(MAX_BACKLOG + extra):
        clock.advance(FIVE_MIN)
        assert source.fetch(10) == []
    assert source.skipped == extra
    full = reports.skipped("backlog-full")
    assert sum(meta["count"] for meta in full) == extra
    # the oldest waiting ticks were dropped
    assert [meta["scheduled_at"] for meta in full] == [
        (T0 + k * FIVE_MIN).isoformat() for k in range(1, extra + 1)
    ]
    source.ack(first)
    waited = drain(source)
    assert len(waited) == MAX_BACKLOG
    assert [when(run) for run in waited] == [
        T0 + k * FIVE_MIN for k in range(extra + 1, MAX_BACKLOG + extra + 1)
    ]


def test_a_retried_run_comes_back_ahead_of_newer_ticks_with_the_same_tick():
    clock = FakeClock()
    source = IntervalSource.every(minutes=5, immediate=True, overlap="queue", clock=clock)
    opened(source)
    first = fetch_one(source)
    clock.advance(FIVE_MIN)
    assert source.fetch(10) == []  # the second tick waits behind the first
    source.retry(first, delay_s=30)
    assert source.fetch(10) == []  # not before its delay
    clock.advance(seconds=30)
    again = fetch_one(source)
    assert again is first
    assert again.attempts == 1
    assert when(again) == T0
    source.ack(again)
    assert when(fetch_one(source)) == T0 + FIVE_MIN


# -- misfire after a restart (durable state in SQLite) -------------------------------------


class Replica:
    """One process's view: a new store object and a new source on the same file."""

    def __init__(self, path: Any, clock: FakeClock, **options: Any) -> None:
        self.store = SQLiteStateStore(path)
        options.setdefault("immediate", True)
        self.source = IntervalSource.every(minutes=5, clock=clock, name="job", **options)
        self.reports = attach(self.source, self.store)
        self.source.open()

    def close(self) -> None:
        self.source.close()
        self.store.close()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "state.db"


def fire_three_then_stop(db: Any, clock: FakeClock) -> None:
    """Run ticks T0, T0+5m, T0+10m, then stop with the clock at T0+10m."""
    first = Replica(db, clock)
    fired = drain(first.source)
    for _ in range(2):
        clock.advance(FIVE_MIN)
        fired += drain(first.source)
    assert [when(run) for run in fired] == [T0, T0 + FIVE_MIN, T0 + 2 * FIVE_MIN]
    first.close()


# Stopped at T0+10m, restarted at T0+39m: ticks T0+15m .. T0+35m (5) fell due while down,
# and the newest is 4 min old, past the grace of half an interval.
DOWN_UNTIL = T0 + timedelta(minutes=39)
MISSED = [T0 + timedelta(minutes=m) for m in (15, 20, 25, 30, 35)]


def test_misfire_skip_waits_for_the_next_tick(db):
    clock = FakeClock()
    fire_three_then_stop(db, clock)
    clock.set(DOWN_UNTIL)
    second = Replica(db, clock, misfire="skip")
    assert second.source.fetch(10) == []
    assert second.source.skipped == len(MISSED)
    [skipped] = second.reports.skipped("misfire")
    assert skipped["count"] == len(MISSED)
    clock.set(T0 + timedelta(minutes=40))
    run = fetch_one(second.source)
    assert when(run) == T0 + timedelta(minutes=40)
    assert "missed" not in run.meta
    assert run.meta["sequence"] == 4
    second.close()


def test_misfire_run_once_fires_one_catch_up_run(db):
    clock = FakeClock()
    fire_three_then_stop(db, clock)
    clock.set(DOWN_UNTIL)
    second = Replica(db, clock, misfire="run_once")
    catch_up = fetch_one(second.source)
    assert catch_up.meta["missed"] == len(MISSED)
    assert when(catch_up) == MISSED[-1]
    assert catch_up.meta["sequence"] == 4
    second.source.ack(catch_up)
    assert second.source.fetch(10) == []
    assert second.source.skipped == 0
    clock.set(T0 + timedelta(minutes=40))
    on_time = fetch_one(second.source)
    assert when(on_time) == T0 + timedelta(minutes=40)
    assert "missed" not in on_time.meta
    second.close()


def test_misfire_run_all_fires_every_missed_tick_oldest_first(db):
    clock = FakeClock()
    fire_three_then_stop(db, clock)
    clock.set(DOWN_UNTIL)
    second = Replica(db, clock, misfire="run_all")
    caught_up = drain(second.source)
    assert [when(run) for run in caught_up] == MISSED
    assert [run.meta["sequence"] for run in caught_up] == [4, 5, 6, 7, 8]
    assert second.source.skipped == 0
    second.close()


def test_misfire_run_all_is_capped_and_reports_the_rest(db):
    clock = FakeClock()
    fire_three_then_stop(db, clock)
    down = MAX_BACKLOG + 50
    clock.set(T0 + 2 * FIVE_MIN + down * FIVE_MIN + timedelta(minutes=4))
    second = Replica(db, clock, misfire="run_all")
    caught_up = drain(second.source)
    ticks = [when(run) for run in caught_up]
    assert len(ticks) == MAX_BACKLOG
    assert ticks == sorted(ticks)
    # the newest missed ticks are kept
    assert ticks[-1] == T0 + (2 + down) * FIVE_MIN
    assert ticks[0] == T0 + (2 + down - MAX_BACKLOG + 1) * FIVE_MIN
    reported = sum(meta["count"] for meta in second.reports.skipped())
    assert reported == down - MAX_BACKLOG == second.source.skipped
    assert second.reports.skipped("misfire-cap")
    second.close()


def test_a_restart_before_the_next_tick_fires_nothing_even_with_immediate(db):
    clock = FakeClock()
    fire_three_then_stop(db, clock)
    clock.advance(minutes=2)
    second = Replica(db, clock, immediate=True)
    assert second.source.fetch(10) == []
    clock.set(T0 + 3 * FIVE_MIN)
    run = fetch_one(second.source)
    assert when(run) == T0 + 3 * FIVE_MIN
    assert run.meta["sequence"] == 4
    second.close()


def test_a_restart_exactly_on_a_tick_fires_it_on_time_with_run_once(db):
    clock = FakeClock()
    fire_three_then_stop(db, clock)
    clock.set(T0 + 5 * FIVE_MIN)
    second = Replica(db, clock, misfire="run_once")
    run = fetch_one(second.source)
    assert when(run) == T0 + 5 * FIVE_MIN
    assert run.meta["missed"] == 2  # T0+15m and T0+20m fell due while down
    second.close()


def test_runs_still_queued_at_shutdown_are_collected_again_on_restart(db):
    clock = FakeClock()
    fire_three_then_stop(db, clock)
    clock.set(DOWN_UNTIL)
    second = Replica(db, clock, misfire="run_all")
    first_catch_up = fetch_one(second.source)
    assert when(first_catch_up) == MISSED[0]
    second.source.ack(first_catch_up)
    in_flight = fetch_one(second.source)
    second.source.release(in_flight)  # what the runtime does at shutdown, before close()
    second.close()
    third = Replica(db, clock, misfire="run_all")
    rerun = [when(run) for run in drain(third.source)]
    assert rerun == MISSED[1:]  # the finished T0+15m is not run again
    assert third.reports.skipped() == second.reports.skipped() == []
    third.close()


@pytest.mark.parametrize("misfire", ["run_all", "run_once", "skip"])
def test_a_queued_backlog_handed_back_at_close_runs_in_full_whatever_the_misfire(db, misfire):
    """Queued runs were due and accepted before the shutdown: the misfire policy, which is
    about ticks that fell due while nothing ran, does not collapse or drop them."""
    expected = [(T0 + k * FIVE_MIN, None) for k in range(4)]
    clock = FakeClock()
    first = Replica(db, clock, overlap="queue", misfire=misfire)
    in_flight = fetch_one(first.source)
    for _ in range(3):
        clock.advance(FIVE_MIN)
        assert first.source.fetch(10) == []  # queued behind the run in flight
    first.source.release(in_flight)
    first.close()
    second = Replica(db, clock, overlap="queue", misfire=misfire)
    runs = drain(second.source)
    assert [(when(run), run.meta.get("missed")) for run in runs] == expected
    second.close()


def test_cron_backlog_handed_back_at_close_is_collected_again():
    store = InMemoryStateStore()
    clock = FakeClock()
    first = CronSource("*/5 * * * *", overlap="queue", misfire="run_all", clock=clock, name="c")
    opened(first, store)
    clock.advance(FIVE_MIN)
    in_flight = fetch_one(first)
    clock.advance(FIVE_MIN)
    assert first.fetch(10) == []
    first.release(in_flight)
    first.close()
    again = CronSource("*/5 * * * *", overlap="queue", misfire="run_all", clock=clock, name="c")
    opened(again, store)
    assert [when(run) for run in drain(again)] == [T0 + FIVE_MIN, T0 + 2 * FIVE_MIN]


@pytest.fixture
def store_time(monkeypatch) -> list[float]:
    """The state stores' clock (claim expiry), advanced by the test: [seconds]."""
    now = [1_800_000_000.0]
    fake = SimpleNamespace(time=lambda: now[0], monotonic=lambda: now[0])
    monkeypatch.setattr(onestep.state._store, "time", fake)
    monkeypatch.setattr(onestep.state._sqlite, "time", fake)
    return now


def test_a_finished_run_does_not_run_again_after_a_restart(db, store_time):
    clock = FakeClock()
    options = {"overlap": "allow", "misfire": "run_all"}
    first = Replica(db, clock, **options)
    runs = [fetch_one(first.source)]
    for _ in range(3):
        clock.advance(FIVE_MIN)
        runs.append(fetch_one(first.source))
    first.source.ack(runs[0])
    first.source.ack(runs[2])  # T0+10m finishes while T0+5m is still running
    first.source.release(runs[1])
    first.source.release(runs[3])
    first.close()
    clock.advance(minutes=30)
    store_time[0] += 30 * 60  # the tick claims (10 min) have expired
    second = Replica(db, clock, **options)
    again = [when(run) for run in drain(second.source)]
    second.close()
    assert T0 + 2 * FIVE_MIN not in again, again


def test_runs_handed_back_by_a_replica_are_not_lost_while_another_runs(db):
    clock = FakeClock()
    a = Replica(db, clock, overlap="queue")
    b = Replica(db, clock, overlap="queue")
    first = fetch_one(a.source)  # A claims and runs T0
    assert b.source.fetch(10) == []
    clock.advance(FIVE_MIN)
    assert a.source.fetch(10) == []  # A claims T0+5m and queues it behind T0
    assert b.source.fetch(10) == []  # B lost the claim
    a.source.ack(first)
    a.close()  # A stops before T0+5m started: it hands it back
    clock.advance(FIVE_MIN)
    b_runs = [when(run) for run in drain(b.source)]
    a2 = Replica(db, clock, overlap="queue")
    a_runs = [when(run) for run in drain(a2.source)]
    reported = [meta["scheduled_at"] for meta in a2.reports.skipped() + b.reports.skipped()]
    b.close()
    a2.close()
    assert T0 + FIVE_MIN in b_runs + a_runs or (T0 + FIVE_MIN).isoformat() in reported, (
        f"B ran {b_runs}, A after restart ran {a_runs}, reported {reported}"
    )


def test_a_restart_in_a_real_app_catches_up_from_the_sqlite_file(db):
    """Real apps (actors) with a fake clock: the catch-up run comes at start."""
    clock = FakeClock()
    runs: queue.Queue[dict[str, Any]] = queue.Queue()

    def build() -> OneStepApp:
        app = OneStepApp("restart-app", state=SQLiteStateStore(db), shutdown_timeout_s=1.0)
        source = IntervalSource.every(minutes=5, immediate=True, clock=clock, name="job")

        @app.task(source=source)
        def job(ctx, item):
            runs.put(dict(ctx.current.meta))

        return app

    with running(build()):
        first = runs.get(timeout=TIMEOUT)
    assert datetime.fromisoformat(first["scheduled_at"]) == T0
    clock.set(DOWN_UNTIL)  # T0+5m .. T0+35m missed
    with running(build()):
        catch_up = runs.get(timeout=TIMEOUT)
    assert datetime.fromisoformat(catch_up["scheduled_at"]) == MISSED[-1]
    assert catch_up["missed"] == 7
    assert catch_up["sequence"] == 2
    assert runs.empty()


def per_second_cron_after_downtime(hours: int) -> tuple[int, Delivery]:
    """A per-second cron down for `hours`: (missed ticks reported, the on-time run)."""
    clock = FakeClock()
    source = CronSource("* * * * * *", misfire="skip", clock=clock, name="every-second")
    reports = opened(source)
    clock.advance(seconds=1)
    assert len(drain(source)) == 1
    clock.advance(hours=hours, seconds=0.5)  # the newest due tick is on time (0.5 s late)
    [on_time] = drain(source)
    assert when(on_time) == T0 + timedelta(seconds=1 + hours * 3600)
    return sum(meta["count"] for meta in reports.skipped("misfire")), on_time


def test_a_long_downtime_of_a_per_second_cron_counts_every_missed_tick():
    reported, _ = per_second_cron_after_downtime(hours=1)
    assert reported == 3600 - 1


def test_a_downtime_past_10000_cron_ticks_counts_every_missed_tick():
    reported, _ = per_second_cron_after_downtime(hours=5)
    assert reported == 5 * 3600 - 1


# -- once per tick across replicas (one process, shared store) -----------------------------


def test_cron_replicas_sharing_a_store_fire_each_tick_once():
    store = InMemoryStateStore()
    clock = FakeClock()
    replicas = [CronSource("*/5 * * * *", clock=clock, name="job") for _ in range(3)]
    for source in replicas:
        opened(source, store)
    fired: list[tuple[int, datetime]] = []
    for _ in range(6):
        clock.advance(FIVE_MIN)
        for index, source in enumerate(replicas):
            fired += [(index, when(run)) for run in drain(source)]
    assert sorted(tick for _, tick in fired) == [T0 + k * FIVE_MIN for k in range(1, 7)]


def test_an_interval_replica_that_joins_later_follows_the_same_grid(db):
    clock = FakeClock()
    first = Replica(db, clock)
    fired = [when(run) for run in drain(first.source)]
    clock.advance(seconds=70)
    joiner = Replica(db, clock)
    for _ in range(5):
        clock.advance(minutes=1)
        for replica in (first, joiner):
            fired += [when(run) for run in drain(replica.source)]
    assert fired == [T0, T0 + FIVE_MIN]
    first.close()
    joiner.close()


@pytest.mark.parametrize("immediate", [False, True])
def test_interval_replicas_that_start_together_share_one_grid(immediate):
    store = InMemoryStateStore()
    clock = FakeClock()
    a = IntervalSource.every(seconds=10, immediate=immediate, clock=clock, name="job")
    b = IntervalSource.every(
        seconds=10,
        immediate=immediate,
        clock=lambda: clock.now + timedelta(milliseconds=1),
        name="job",
    )
    opened(a, store)
    opened(b, store)  # before `a` fired: no last tick on record yet
    fired = []
    for _ in range(30):
        for source in (a, b):
            fired += [when(run) for run in drain(source)]
        clock.advance(seconds=1)
    first = 0 if immediate else 1
    assert fired == [T0 + timedelta(seconds=10 * k) for k in range(first, 3)]


# -- DST in Europe/Berlin ------------------------------------------------------------------


def walk_daily_0230(start: datetime, end: datetime) -> list[Delivery]:
    """Step a fake clock minute by minute from `start` to `end`, collecting the runs of
    a daily 02:30 Europe/Berlin schedule. The clock steps in UTC: adding a timedelta
    to a Berlin datetime would step wall-clock time, not elapsed time."""
    clock = FakeClock(start.astimezone(UTC))
    source = CronSource("30 2 * * *", timezone="Europe/Berlin", clock=clock)
    opened(source)
    runs = []
    while clock.now < end.astimezone(UTC):
        clock.advance(minutes=1)
        runs += drain(source)
    assert source.skipped == 0
    return runs


def runs_per_local_day(runs: list[Delivery]) -> dict[date, int]:
    days: dict[date, int] = {}
    for run in runs:
        local = when(run).astimezone(BERLIN).date()
        days[local] = days.get(local, 0) + 1
    return days


def test_dst_spring_forward_fires_0230_once_at_0330_cest():
    runs = walk_daily_0230(
        datetime(2026, 3, 27, 0, 0, tzinfo=BERLIN), datetime(2026, 3, 31, 12, 0, tzinfo=BERLIN)
    )
    assert [run.meta["scheduled_at"] for run in runs] == [
        "2026-03-27T02:30:00+01:00",
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:30:00+02:00",  # 02:30 does not exist that day
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    assert set(runs_per_local_day(runs).values()) == {1}
    assert all("missed" not in run.meta for run in runs)


def test_dst_fall_back_fires_0230_once_at_its_first_occurrence():
    runs = walk_daily_0230(
        datetime(2026, 10, 23, 0, 0, tzinfo=BERLIN), datetime(2026, 10, 27, 12, 0, tzinfo=BERLIN)
    )
    assert [run.meta["scheduled_at"] for run in runs] == [
        "2026-10-23T02:30:00+02:00",
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",  # 02:30 CEST; 02:30 CET an hour later does not fire
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    assert set(runs_per_local_day(runs).values()) == {1}
    assert all("missed" not in run.meta for run in runs)


def test_dst_a_restart_between_the_two_0230s_at_fall_back_does_not_fire_again(tmp_path):
    store_path = tmp_path / "dst.db"
    clock = FakeClock(datetime(2026, 10, 25, 0, 0, tzinfo=UTC))  # 02:00 CEST
    source = CronSource("30 2 * * *", timezone="Europe/Berlin", clock=clock, name="daily")
    store = SQLiteStateStore(store_path)
    opened(source, store)
    clock.set(datetime(2026, 10, 25, 0, 30, tzinfo=UTC))  # 02:30 CEST
    assert fetch_one(source).meta["scheduled_at"] == "2026-10-25T02:30:00+02:00"
    store.close()
    clock.set(datetime(2026, 10, 25, 1, 15, tzinfo=UTC))  # 02:15 CET, the second pass
    again = CronSource("30 2 * * *", timezone="Europe/Berlin", clock=clock, name="daily")
    store = SQLiteStateStore(store_path)
    opened(again, store)
    runs = []
    while clock.now < datetime(2026, 10, 26, 0, 0, tzinfo=UTC):
        clock.advance(minutes=1)
        runs += drain(again)
    store.close()
    assert runs == []


def test_dst_a_spring_forward_run_handed_back_at_close_is_collected_again():
    store = InMemoryStateStore()
    clock = FakeClock(datetime(2026, 3, 29, 0, 0, tzinfo=UTC))  # 01:00 CET
    options = {"timezone": "Europe/Berlin", "clock": clock, "name": "daily"}
    source = CronSource("30 2 * * *", misfire="run_all", **options)
    opened(source, store)
    clock.set(datetime(2026, 3, 29, 1, 30, tzinfo=UTC))  # 03:30 CEST
    run = fetch_one(source)
    assert run.meta["scheduled_at"] == "2026-03-29T03:30:00+02:00"
    clock.advance(minutes=1)
    source.release(run)  # in flight at shutdown
    source.close()
    again = CronSource("30 2 * * *", misfire="run_all", **options)
    reports = opened(again, store)
    runs = [run.meta["scheduled_at"] for run in drain(again)]
    reported = [meta["scheduled_at"] for meta in reports.skipped()]
    assert "2026-03-29T03:30:00+02:00" in runs + reported


def test_dst_a_schedule_opened_at_0310_cest_on_spring_forward_fires_at_0330():
    runs = walk_daily_0230(
        datetime(2026, 3, 29, 3, 10, tzinfo=BERLIN), datetime(2026, 3, 29, 12, 0, tzinfo=BERLIN)
    )
    assert [run.meta["scheduled_at"] for run in runs] == ["2026-03-29T03:30:00+02:00"]


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression", ["61 * * * *", "* * *", "", "@reboot", "@every 5m", "*/0 * * * *"]
)
def test_an_invalid_cron_expression_is_refused(expression):
    with pytest.raises(ValueError, match="not a valid cron expression") as info:
        CronSource(expression)
    assert repr(expression) in str(info.value)


def test_a_cron_expression_must_be_a_string():
    with pytest.raises(ValueError, match="cron expression"):
        CronSource(5)  # type: ignore[arg-type]


def test_every_with_no_interval_is_refused():
    with pytest.raises(ValueError, match="longer than zero"):
        IntervalSource.every()
    with pytest.raises(ValueError, match="longer than zero"):
        IntervalSource.every(days=0, hours=0, minutes=0, seconds=0)


@pytest.mark.parametrize(
    ("units", "message"),
    [
        ({"minutes": -5}, r"minutes must be a number >= 0, got -5"),
        ({"seconds": -0.5, "minutes": 1}, r"seconds must be a number >= 0, got -0.5"),
        ({"hours": "1"}, r"hours must be a number >= 0, got '1'"),
        ({"days": True}, r"days must be a number >= 0, got True"),
        ({"seconds": float("nan")}, r"seconds must be .*finite.*, got nan"),
        ({"seconds": float("inf")}, r"seconds must be .*finite.*, got inf"),
    ],
)
def test_every_with_a_bad_unit_names_it(units, message):
    with pytest.raises(ValueError, match=message):
        IntervalSource.every(**units)


@pytest.mark.parametrize("interval", [timedelta(0), timedelta(seconds=-1), 5])
def test_a_zero_or_negative_interval_is_refused(interval):
    with pytest.raises(ValueError, match="interval must be a positive duration"):
        IntervalSource(interval)


@pytest.mark.parametrize("make", [IntervalSource.every, CronSource], ids=["interval", "cron"])
def test_an_unknown_timezone_is_refused(make):
    args = ("@hourly",) if make is CronSource else ()
    units = {} if make is CronSource else {"minutes": 1}
    with pytest.raises(ValueError, match="'Mars/Olympus_Mons' is not a known IANA time zone"):
        make(*args, **units, timezone="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="timezone must be an IANA name"):
        make(*args, **units, timezone=3)


@pytest.mark.parametrize("param", ["overlap", "misfire"])
@pytest.mark.parametrize("make", [IntervalSource.every, CronSource], ids=["interval", "cron"])
def test_an_unknown_policy_is_refused_with_the_choices(make, param):
    args = ("@hourly",) if make is CronSource else ()
    units = {} if make is CronSource else {"minutes": 1}
    with pytest.raises(ValueError, match=f"{param} must be one of .*; got 'sometimes'"):
        make(*args, **units, **{param: "sometimes"})


def test_a_naive_clock_is_refused_naming_the_schedule():
    source = IntervalSource.every(minutes=1, clock=lambda: datetime(2026, 1, 1), name="naive")
    attach(source)
    with pytest.raises(ValueError, match="schedule 'naive': clock\\(\\) returned a naive"):
        source.open()


def test_a_clock_that_is_not_callable_or_a_blank_name_is_refused():
    with pytest.raises(TypeError, match="clock must be a callable"):
        IntervalSource.every(minutes=1, clock=T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        CronSource("@hourly", name="")


# -- real app ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_real_app_runs_a_short_interval_and_describes_it(kind):
    app = OneStepApp("interval-app", shutdown_timeout_s=1.0)
    source = IntervalSource.every(seconds=0.05, immediate=True, name="tick", payload={"k": 1})
    runs: queue.Queue[tuple[Any, dict[str, Any]]] = queue.Queue()

    if kind == "sync":

        @app.task(source=source)
        def job(ctx, item):
            runs.put((item, dict(ctx.current.meta)))

    else:

        @app.task(source=source)
        async def job(ctx, item):
            runs.put((item, dict(ctx.current.meta)))

    [described] = app.describe()["tasks"]
    assert described["source"] == {
        "type": "IntervalSource",
        "name": "tick",
        "overlap": "skip",
        "misfire": "run_once",
        "timezone": "UTC",
        "interval_s": 0.05,
    }
    with running(app):
        got = [runs.get(timeout=TIMEOUT) for _ in range(5)]
    assert [item for item, _ in got] == [{"k": 1}] * 5
    sequences = [meta["sequence"] for _, meta in got]
    assert sequences == sorted(sequences) and len(set(sequences)) == 5
    assert sequences[0] == 1
    ticks = [datetime.fromisoformat(meta["scheduled_at"]) for _, meta in got]
    assert ticks == sorted(ticks)
    for tick in ticks:  # all on one grid anchored at the first
        steps = (tick - ticks[0]) / timedelta(seconds=0.05)
        assert steps == pytest.approx(round(steps))


def test_real_app_describes_a_cron_schedule():
    app = OneStepApp("cron-app")
    app.task(source=CronSource("*/15 * * * *", timezone="Europe/Berlin"))(lambda ctx, item: None)
    [described] = app.describe()["tasks"]
    assert described["source"] == {
        "type": "CronSource",
        "name": "cron */15 * * * *",
        "overlap": "skip",
        "misfire": "run_once",
        "timezone": "Europe/Berlin",
        "expression": "*/15 * * * *",
    }


def test_real_app_reports_an_overlap_skip_as_an_event():
    app = OneStepApp("skip-app", shutdown_timeout_s=1.0)
    metrics = InMemoryMetrics()
    app.on_event(metrics)
    skipped: queue.Queue[TaskEvent] = queue.Queue()
    app.on_event(lambda event: skipped.put(event) if event.kind == "skipped" else None)
    release = threading.Event()
    started: queue.Queue[dict[str, Any]] = queue.Queue()
    source = IntervalSource.every(seconds=0.02, immediate=True, name="busy")

    @app.task(source=source)
    def slow(ctx, item):
        started.put(dict(ctx.current.meta))
        release.wait(TIMEOUT)

    with running(app):
        first = started.get(timeout=TIMEOUT)
        event = skipped.get(timeout=TIMEOUT)
        release.set()
        second = started.get(timeout=TIMEOUT)
    assert event.task == "slow"
    assert event.source == "busy"
    assert event.meta["reason"] == "overlap"
    assert event.meta["schedule"] == "busy"
    assert datetime.fromisoformat(event.meta["scheduled_at"]) > datetime.fromisoformat(
        first["scheduled_at"]
    )
    assert second["sequence"] == first["sequence"] + 1  # skipped ticks take no sequence
    assert metrics.count("skipped", "slow") >= 1
    assert source.skipped >= 1


def test_real_app_overlap_allow_runs_up_to_the_task_concurrency():
    app = OneStepApp("allow-app", shutdown_timeout_s=1.0)
    metrics = InMemoryMetrics()
    app.on_event(metrics)
    together = threading.Barrier(3)
    passed: queue.Queue[int] = queue.Queue()

    @app.task(
        source=IntervalSource.every(seconds=0.02, immediate=True, overlap="allow"),
        concurrency=3,
    )
    def overlapping(ctx, item):
        if ctx.current.meta["sequence"] <= 3:
            together.wait(TIMEOUT)  # passes only with three runs in flight at once
            passed.put(ctx.current.meta["sequence"])

    with running(app):
        got = sorted(passed.get(timeout=TIMEOUT) for _ in range(3))
    assert got == [1, 2, 3]
    assert metrics.count("skipped") == 0


def test_a_tzinfo_object_is_accepted_as_the_timezone():
    clock = FakeClock()
    source = IntervalSource.every(minutes=5, immediate=True, timezone=BERLIN, clock=clock)
    assert source.describe()["timezone"] == "Europe/Berlin"
    opened(source)
    assert fetch_one(source).meta["scheduled_at"] == "2026-01-15T11:00:00+01:00"


# -- examples/schedules.py -----------------------------------------------------------------


def test_the_schedules_example_runs_and_stops_by_itself(tmp_path):
    """`python examples/schedules.py` and `onestep run examples/schedules.py`, side by
    side: both exit 0 by themselves and leave no state file behind."""
    repo = Path(__file__).resolve().parents[2]
    script = shutil.which("onestep", path=str(Path(sys.executable).parent))
    onestep = [script] if script else [sys.executable, "-m", "onestep"]
    launchers = {"python": [sys.executable], "onestep run": [*onestep, "run"]}
    procs = {}
    for name, command in launchers.items():
        tmpdir = tmp_path / name.replace(" ", "-")
        tmpdir.mkdir()
        procs[name] = (
            tmpdir,
            subprocess.Popen(
                [*command, "examples/schedules.py"],
                cwd=repo,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmpdir)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    for name, (tmpdir, proc) in procs.items():
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{name}: examples/schedules.py did not stop by itself")
        assert proc.returncode == 0, err
        lines = out.splitlines()
        assert "schedule: nightly -> 30 2 * * * (Europe/Berlin, overlap=skip, " in out
        assert "schedule: heartbeat -> every 0.5 s (UTC" in out
        heartbeats = [line for line in lines if line.startswith("heartbeat: run ")]
        assert [line.split()[2] for line in heartbeats] == ["1", "2", "3", "4"]
        reports = [line for line in lines if line.startswith("report: run ")]
        assert len(reports) >= 2
        for line in reports:  # Berlin wall-clock time on whole seconds
            scheduled_at = datetime.fromisoformat(line.split()[5].rstrip(","))
            assert scheduled_at.microsecond == 0
            assert scheduled_at.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
        assert any(line.startswith("skipped: sync_inventory tick") for line in lines)
        assert "nightly: runs" not in out
        assert lines[-1].startswith("shutdown: heartbeat ran 4, report ran ")
        assert list(tmpdir.iterdir()) == [], "the example left its state behind"

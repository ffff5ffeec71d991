"""SQLiteStateStore, and its parity with InMemoryStateStore: get/set/delete/incr, JSON
values, `claim` (set-if-absent with an expiry), bad paths, threads sharing a file, and
`ctx.state` in sync and async handlers.

Expiry is tested with an injected time (the stores' `time` module is replaced by a fake
that the test advances), never by sleeping.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

import onestep.state._sqlite
import onestep.state._store
from onestep import (
    InMemoryStateStore,
    IntervalSource,
    MemoryQueue,
    OneStepApp,
    SourceContext,
    SQLiteStateStore,
    StateStore,
)
from tests.helpers import running

TIMEOUT = 5.0


class FakeTime:
    """Stands for the `time` module inside the two state-store modules."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch) -> FakeTime:
    fake = FakeTime()
    namespace = SimpleNamespace(time=fake.time, monotonic=fake.monotonic)
    monkeypatch.setattr(onestep.state._store, "time", namespace)
    monkeypatch.setattr(onestep.state._sqlite, "time", namespace)
    return fake


@pytest.fixture
def db(tmp_path):
    return tmp_path / "state.db"


@pytest.fixture(params=["memory", "sqlite"])
def store(request, db) -> Iterator[StateStore]:
    if request.param == "memory":
        yield InMemoryStateStore()
        return
    sqlite_store = SQLiteStateStore(db)
    yield sqlite_store
    sqlite_store.close()


def count_rows(path: Any, like: str = "%") -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        [(n,)] = conn.execute("SELECT COUNT(*) FROM onestep_state WHERE key LIKE ?", (like,))
    return int(n)


# -- get / set / delete / incr (both stores) -----------------------------------------------


JSON_VALUES = [
    0,
    -7,
    2.5,
    "text with ünïcode",
    "",
    True,
    False,
    None,
    [1, "two", [3.0]],
    {"a": {"b": [1, 2, {"c": None}]}, "n": 1},
]


@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_set_then_get_gives_the_value_back(store, value):
    store.set("key", value)
    assert store.get("key", "absent") == value
    assert type(store.get("key", "absent")) is type(value)


def test_get_of_a_missing_key_gives_the_default(store):
    assert store.get("missing") is None
    assert store.get("missing", 42) == 42


def test_set_overwrites_and_delete_removes(store):
    store.set("key", 1)
    store.set("key", {"x": 2})
    assert store.get("key") == {"x": 2}
    store.delete("key")
    assert store.get("key", "gone") == "gone"
    store.delete("key")  # deleting a missing key is fine
    store.delete("never-set")


def test_values_are_copies_not_aliases(store):
    value = {"list": [1]}
    store.set("key", value)
    value["list"].append(2)
    got = store.get("key")
    assert got == {"list": [1]}
    got["list"].append(3)
    assert store.get("key") == {"list": [1]}


def test_incr_counts_from_zero_and_returns_the_new_value(store):
    assert store.incr("n") == 1
    assert store.incr("n") == 2
    assert store.incr("n", 10) == 12
    assert store.incr("n", -20) == -8
    assert store.get("n") == -8
    assert store.incr("other", 5) == 5
    store.set("preset", 100)
    assert store.incr("preset") == 101


def test_keys_do_not_collide(store):
    store.set("a:b", 1)
    store.set("a", 2)
    store.set("A:B", 3)
    assert (store.get("a:b"), store.get("a"), store.get("A:B")) == (1, 2, 3)


# -- claim (both stores) -------------------------------------------------------------------


def test_claim_sets_a_key_only_if_it_is_absent(store):
    assert store.claim("tick:1", 60) is True
    assert store.claim("tick:1", 60) is False
    assert store.claim("tick:1", 60, value="someone else") is False
    assert store.get("tick:1") is True
    assert store.claim("tick:2", 60, value={"by": "replica-a"}) is True
    assert store.get("tick:2") == {"by": "replica-a"}


def test_claim_of_a_key_that_was_set_fails(store):
    store.set("taken", "plain value")
    assert store.claim("taken", 60) is False
    assert store.get("taken") == "plain value"


def test_a_claim_expires_after_its_ttl(store, fake_time):
    assert store.claim("lock", 10, value="first")
    fake_time.advance(9.999)
    assert store.claim("lock", 10, value="second") is False
    assert store.get("lock") == "first"
    fake_time.advance(0.001)  # exactly at the expiry: gone
    assert store.get("lock", "expired") == "expired"
    assert store.claim("lock", 10, value="third") is True
    assert store.get("lock") == "third"


def test_delete_releases_a_claim(store):
    assert store.claim("lock", 60)
    store.delete("lock")
    assert store.claim("lock", 60)


@pytest.mark.parametrize("ttl", [0, -1, True, "5", None, float("nan")])
def test_claim_refuses_a_bad_ttl(store, ttl):
    with pytest.raises(ValueError, match="ttl_s must be"):
        store.claim("key", ttl)
    assert store.get("key", "absent") == "absent"


def test_many_threads_claiming_one_key_have_one_winner(store):
    barrier = threading.Barrier(8)
    wins: queue.Queue[bool] = queue.Queue()

    def contend() -> None:
        barrier.wait(TIMEOUT)
        wins.put(store.claim("the-tick", 60))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    results = [wins.get_nowait() for _ in threads]
    assert results.count(True) == 1


def test_set_after_an_expired_claim_is_readable_in_memory(fake_time):
    store = InMemoryStateStore()
    assert store.claim("key", 1)
    fake_time.advance(2)
    store.set("key", "fresh")
    assert store.get("key") == "fresh"


def test_in_memory_claims_expire_after_pruning(fake_time):
    store = InMemoryStateStore()
    for n in range(1030):
        assert store.claim(f"old:{n}", 1)
    fake_time.advance(5)
    assert store.claim("new", 1)  # more than 1024 claims: prunes the expired ones
    assert store.get("old:0", "expired") == "expired"
    assert store.claim("old:0", 1)


def test_a_schedule_does_not_grow_its_store_by_one_key_per_tick_forever(store, fake_time):
    app = OneStepApp("grow", state=store)

    def clock() -> datetime:
        return datetime.fromtimestamp(fake_time.now, UTC)

    source = IntervalSource.every(seconds=1, immediate=True, clock=clock, name="job")
    source.attach(SourceContext(app, "job", lambda kind, meta: None))
    source.open()
    ticks = 600  # ten minutes of a 1 s schedule; each claim lives 60 s
    for _ in range(ticks):
        for run in source.fetch(1):
            source.ack(run)
        fake_time.advance(1)
    if isinstance(store, SQLiteStateStore):
        kept = count_rows(store.path, "%:tick:%")
    else:
        assert isinstance(store, InMemoryStateStore)
        kept = sum(":tick:" in key for key in store.keys("onestep:schedule:"))
    assert kept <= ticks // 2, f"{kept} tick claims kept after {ticks} ticks"


# -- SQLite specifics ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", {"a": object()}])
def test_a_value_that_is_not_json_raises_type_error_naming_the_key(db, value):
    store = SQLiteStateStore(db)
    with pytest.raises(TypeError, match="'my-key' is not JSON-serialisable"):
        store.set("my-key", value)
    with pytest.raises(TypeError, match="'my-key' is not JSON-serialisable"):
        store.claim("my-key", 60, value=value)
    assert store.get("my-key", "absent") == "absent"
    store.close()


def test_sqlite_round_trips_through_json(db):
    store = SQLiteStateStore(db)
    store.set("tuple", (1, 2))
    store.set("int-keys", {1: "one"})
    assert store.get("tuple") == [1, 2]
    assert store.get("int-keys") == {"1": "one"}
    store.close()


def test_sqlite_values_and_claims_outlive_the_store_object(db):
    first = SQLiteStateStore(db)
    first.set("kept", {"v": 1})
    first.incr("counter", 3)
    assert first.claim("claimed", 60)
    first.close()
    second = SQLiteStateStore(db)
    assert second.get("kept") == {"v": 1}
    assert second.incr("counter") == 4
    assert second.claim("claimed", 60) is False
    second.close()


def test_sqlite_purge_expired_removes_only_expired_claims(db, fake_time):
    store = SQLiteStateStore(db)
    store.set("plain", 1)
    assert store.claim("short", 5)
    assert store.claim("long", 50)
    fake_time.advance(10)
    assert store.purge_expired() == 1
    assert count_rows(db) == 2
    assert store.get("plain") == 1
    assert store.get("long") is True
    store.close()


def test_sqlite_store_describes_itself(db):
    store = SQLiteStateStore(db)
    assert repr(store) == f"SQLiteStateStore({str(db)!r})"
    assert store.blocking is True
    assert OneStepApp("described", state=store).describe()["state"] == "SQLiteStateStore"
    store.close()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "path must name a file"),
        (":memory:", "':memory:' is not shared"),
    ],
)
def test_a_bad_path_is_refused(path, message):
    with pytest.raises(ValueError, match=message):
        SQLiteStateStore(path)


def test_a_path_in_a_missing_directory_is_refused_naming_it(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "state.db"
    with pytest.raises(ValueError, match="does not exist") as info:
        SQLiteStateStore(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "no").exists()


def _not_a_database(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not the rows you are looking for\n" * 100)
    return path


@pytest.mark.parametrize("make", [lambda tmp: tmp, _not_a_database], ids=["directory", "text"])
def test_a_path_that_is_no_database_file_fails_at_construction(tmp_path, make):
    with pytest.raises((ValueError, sqlite3.Error)):
        SQLiteStateStore(make(tmp_path))


@pytest.mark.parametrize("make", [lambda tmp: tmp, _not_a_database], ids=["directory", "text"])
def test_a_path_that_is_no_database_file_is_named_in_the_error(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(Exception) as info:  # any error, as long as it names the path
        SQLiteStateStore(path)
    assert str(path) in str(info.value)


# -- threads -------------------------------------------------------------------------------


def _hammer(incr_fns: list[Any], per_thread: int) -> list[int]:
    barrier = threading.Barrier(len(incr_fns))
    results: queue.Queue[list[int]] = queue.Queue()

    def work(incr: Any) -> None:
        barrier.wait(TIMEOUT)
        results.put([incr("counter") for _ in range(per_thread)])

    threads = [threading.Thread(target=work, args=(fn,)) for fn in incr_fns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    return [n for _ in threads for n in results.get_nowait()]


def test_two_threads_incrementing_one_store_get_a_consistent_total(store):
    returned = _hammer([store.incr, store.incr], per_thread=500)
    assert store.get("counter") == 1000
    assert sorted(returned) == list(range(1, 1001))  # every value returned exactly once


def test_two_store_objects_on_one_file_increment_atomically(db):
    stores = [SQLiteStateStore(db), SQLiteStateStore(db)]
    returned = _hammer([s.incr for s in stores], per_thread=500)
    assert stores[0].get("counter") == stores[1].get("counter") == 1000
    assert sorted(returned) == list(range(1, 1001))
    for s in stores:
        s.close()


def test_store_objects_on_one_file_claim_a_key_once(db):
    stores = [SQLiteStateStore(db) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    wins: queue.Queue[tuple[int, bool]] = queue.Queue()

    def contend(index: int, s: SQLiteStateStore) -> None:
        barrier.wait(TIMEOUT)
        for tick in range(50):
            wins.put((tick, s.claim(f"tick:{tick}", 60, value=index)))

    threads = [threading.Thread(target=contend, args=pair) for pair in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    results = [wins.get_nowait() for _ in range(len(stores) * 50)]
    for tick in range(50):
        assert [won for t, won in results if t == tick].count(True) == 1
    for s in stores:
        s.close()


# -- processes opening one new file at the same instant (issue 9) ---------------------------

PROCESSES = 8
ROUNDS = 5


def _open_and_claim(index: int, paths: list[str], barrier: Any, start_at: Any, out: Any) -> None:
    """Runs in a child process: for each round, wait for the others, then open the
    round's new file at the same instant as they do and claim one key in it."""
    for round_no, path in enumerate(paths):
        barrier.wait(30)
        while time.time() < start_at.value:  # a spin, so that the opens really coincide
            pass
        try:
            store = SQLiteStateStore(path)
            won = store.claim("first", 60, value=index)
            store.close()
            out.put((round_no, "won" if won else "lost"))
        except Exception as exc:
            out.put((round_no, f"{type(exc).__name__}: {exc}"))


def test_processes_opening_one_new_file_together_all_succeed_and_one_claims(tmp_path):
    context = multiprocessing.get_context("fork")
    start_at = context.Value("d", 0.0)

    def next_start() -> None:  # run by one process once all have reached the barrier
        start_at.value = time.time() + 0.05

    barrier = context.Barrier(PROCESSES, action=next_start)
    out = context.Queue()
    paths = [str(tmp_path / f"round-{n}.db") for n in range(ROUNDS)]
    children = [
        context.Process(target=_open_and_claim, args=(i, paths, barrier, start_at, out))
        for i in range(PROCESSES)
    ]
    for child in children:
        child.start()
    try:
        results = [out.get(timeout=60) for _ in range(PROCESSES * ROUNDS)]
    finally:
        for child in children:
            child.join(30)
    for round_no in range(ROUNDS):
        outcomes = sorted(outcome for r, outcome in results if r == round_no)
        assert outcomes == ["lost"] * (PROCESSES - 1) + ["won"], f"round {round_no}: {outcomes}"
    assert [child.exitcode for child in children] == [0] * PROCESSES


def test_the_first_open_waits_while_another_connection_writes(db, monkeypatch):
    # SQLite's busy timeout does not cover the switch to WAL: with another connection
    # holding a write lock it failed at once with "database is locked" (issue 9).
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("CREATE TABLE other (x)")
    blocker.execute("BEGIN IMMEDIATE")
    retrying = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the opener's pause between two tries
        retrying.set()
        real_sleep(seconds)

    monkeypatch.setattr(
        onestep.state._sqlite,
        "time",
        SimpleNamespace(time=time.time, monotonic=time.monotonic, sleep=sleep),
    )
    opened: queue.Queue[Any] = queue.Queue()

    def open_store() -> None:
        try:
            opened.put(SQLiteStateStore(db, timeout_s=30))
        except Exception as exc:
            opened.put(exc)

    opener = threading.Thread(target=open_store)
    opener.start()
    try:
        assert retrying.wait(TIMEOUT), f"the open did not wait: {opened.get(timeout=TIMEOUT)!r}"
    finally:
        blocker.execute("COMMIT")
        blocker.close()
        opener.join(TIMEOUT)
    store = opened.get(timeout=TIMEOUT)
    assert isinstance(store, SQLiteStateStore)
    assert store.claim("first", 60)
    store.close()


def test_the_first_open_gives_up_after_timeout_s_naming_the_path(db):
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("CREATE TABLE other (x)")
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ValueError, match=r"is not a usable SQLite database: database is lock"):
            SQLiteStateStore(db, timeout_s=0.2)
    finally:
        blocker.execute("COMMIT")
        blocker.close()


# -- ctx.state in handlers ------------------------------------------------------------------


def test_sync_and_async_handlers_share_state_in_sqlite(db):
    app = OneStepApp("sqlite-app", state=SQLiteStateStore(db), shutdown_timeout_s=1.0)
    sync_in, async_in = MemoryQueue("sync-in"), MemoryQueue("async-in")
    seen: queue.Queue[tuple[str, Any]] = queue.Queue()

    @app.task(source=sync_in)
    def sync_counter(ctx, item):
        count = ctx.state.get("count", 0)
        assert not inspect.isawaitable(count)
        ctx.state.set("count", count + 1)
        ctx.state.set("last", {"item": item})
        seen.put(("sync", ctx.state.incr("total")))

    @app.task(source=async_in)
    async def async_counter(ctx, item):
        pending = ctx.state.get("count", 0)
        assert inspect.isawaitable(pending)
        count = await pending
        await ctx.state.set("count", count + 1)
        await ctx.state.set("last", {"item": item})
        await ctx.state.delete("never-set")
        seen.put(("async", await ctx.state.incr("total")))

    with running(app):
        for i in range(4):
            sync_in.put(i)
        for i in range(3):
            async_in.put(i)
        results = [seen.get(timeout=TIMEOUT) for _ in range(7)]
    assert [n for kind, n in results if kind == "sync"] == [1, 2, 3, 4]
    assert [n for kind, n in results if kind == "async"] == [1, 2, 3]

    reopened = SQLiteStateStore(db)
    assert reopened.get("sqlite-app:sync_counter:count") == 4
    assert reopened.get("sqlite-app:async_counter:count") == 3
    assert reopened.get("sqlite-app:sync_counter:last") == {"item": 3}
    assert reopened.get("sqlite-app:async_counter:last") == {"item": 2}
    reopened.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_non_json_value_from_a_handler_fails_the_message_naming_the_key(db, kind):
    app = OneStepApp("bad-value", state=SQLiteStateStore(db), shutdown_timeout_s=1.0)
    jobs = MemoryQueue("jobs")
    errors: queue.Queue[BaseException] = queue.Queue()

    if kind == "sync":

        @app.task(source=jobs)
        def store_it(ctx, item):
            try:
                ctx.state.set("obj", object())
            except TypeError as exc:
                errors.put(exc)

    else:

        @app.task(source=jobs)
        async def store_it(ctx, item):
            try:
                await ctx.state.set("obj", object())
            except TypeError as exc:
                errors.put(exc)

    with running(app):
        jobs.put(1)
        error = errors.get(timeout=TIMEOUT)
    assert "'bad-value:store_it:obj' is not JSON-serialisable" in str(error)


def test_set_after_an_expired_claim_is_readable_in_sqlite(db, fake_time):
    store = SQLiteStateStore(db)
    assert store.claim("key", 1)
    fake_time.advance(2)
    store.set("key", "fresh")
    assert store.get("key") == "fresh"
    fake_time.advance(3600)  # a plain value never expires
    assert store.get("key") == "fresh"
    store.close()

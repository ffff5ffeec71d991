"""The PostgreSQL adapter against a real PostgreSQL: table queue -> task -> table sink,
exact attempts and dead letters, retry delays, decode failures, wake-ups by
LISTEN/NOTIFY (onestep's puts and plain SQL inserts), upserts, bad URLs, odd names.

Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust, database `test`): skipped when
it is unreachable, failed instead when CI is set (see postgres_support.require_server).
"""

from __future__ import annotations

import asyncio
import json
import queue
import statistics
import threading
import time
from collections import Counter
from typing import Any

import pytest
from postgres_support import (
    TIMEOUT,
    URL,
    connector,
    postgres_url,
    preload,
    query,
    quote,
    statuses,
    tables,
    wait_until,
)

from onestep import MaxAttempts, MemoryQueue, OneStepApp, PostgresConnector, StartupError
from onestep.kit import EncodeError

pytestmark = pytest.mark.integration
__all__ = ["connector", "postgres_url", "tables"]  # fixtures used by name


class Running:
    def __init__(self, app: OneStepApp) -> None:
        self.app = app

    def __enter__(self) -> OneStepApp:
        self.app.start()
        return self.app

    def __exit__(self, *exc: Any) -> None:
        self.app.stop()


def count_events(app: OneStepApp, kind: str, n: int) -> threading.Event:
    """An Event set once `n` events of `kind` were emitted."""
    done = threading.Event()
    seen = Counter[str]()

    @app.on_event
    def on_event(event: Any) -> None:
        if event.kind == kind:
            seen[kind] += 1
            if seen[kind] >= n:
                done.set()

    return done


# -- queue -> task -> sink -------------------------------------------------------------------


def test_round_trip_of_300_rows_from_a_table_through_a_task_to_a_table_sink(connector, tables):
    jobs, results = tables("jobs"), tables("results")
    source = preload(connector, jobs, 300, batch_size=50, poll_interval_s=0.05)
    query(f"CREATE TABLE {quote(results)} (n int PRIMARY KEY, square bigint, info jsonb)")
    app = OneStepApp("round-trip")
    done = count_events(app, "succeeded", 300)

    @app.task(source=source, emit=connector.table_sink(results), concurrency=8)
    def square(ctx: Any, item: Any) -> Any:
        n = item["n"]
        return {"n": n, "square": n * n, "info": {"attempts": ctx.current.attempts, "tags": [n]}}

    with Running(app):
        assert done.wait(TIMEOUT * 2)
    rows = query(f"SELECT n, square, info FROM {quote(results)} ORDER BY n")
    assert [(n, sq) for n, sq, _ in rows] == [(n, n * n) for n in range(300)]
    assert rows[7][2] == {"attempts": 0, "tags": [7]}
    assert statuses(jobs) == {"done": 300}
    assert query(f"SELECT min(attempts), max(attempts) FROM {quote(jobs)}") == [(1, 1)]


def test_max_attempts_3_dead_letters_after_attempts_0_1_2(connector, tables):
    jobs, dead_table = tables("jobs"), tables("dead")
    source = preload(connector, jobs, 1, poll_interval_s=0.05)
    dead = connector.table_sink(dead_table, auto_create=True)
    executions: queue.Queue[int] = queue.Queue()
    app = OneStepApp("attempts")
    done = count_events(app, "dead_lettered", 1)

    @app.task(source=source, retry=MaxAttempts(3), dead_letter=dead)
    def always_fails(ctx: Any, item: Any) -> None:
        executions.put(ctx.current.attempts)
        raise RuntimeError("boom")

    with Running(app):
        assert done.wait(TIMEOUT)
    assert [executions.get_nowait() for _ in range(executions.qsize())] == [0, 1, 2]
    [(payload, failure)] = query(f"SELECT payload, failure FROM {quote(dead_table)}")
    assert json.loads(payload) == {"n": 0}
    assert json.loads(failure)["kind"] == "error" and json.loads(failure)["message"] == "boom"
    # every execution is counted in the row; the dead-lettered row ends `dead` with its
    # error, so whoever reads the table tells it from a success
    [(status, attempts, error)] = query(f"SELECT status, attempts, last_error FROM {quote(jobs)}")
    assert (status, attempts) == ("dead", 3)
    assert "RuntimeError: boom" in error


def test_dead_status_names_the_status_of_a_dead_lettered_row(connector, tables):
    jobs = tables("jobs")
    source = preload(connector, jobs, 1, poll_interval_s=0.05, dead_status="gave_up")
    app = OneStepApp("dead-status")
    done = count_events(app, "dead_lettered", 1)

    @app.task(source=source, dead_letter=MemoryQueue("dead"))
    def always_fails(ctx: Any, item: Any) -> None:
        raise ValueError("no")

    with Running(app):
        assert done.wait(TIMEOUT)
    [(status, error)] = query(f"SELECT status, last_error FROM {quote(jobs)}")
    assert status == "gave_up" and "ValueError: no" in error
    for bad in ("pending", "leased", "", "x" * 17, 3):
        with pytest.raises(ValueError, match="dead_status"):
            connector.table_queue(jobs, dead_status=bad)


def test_a_failed_message_without_dead_letter_is_marked_failed_with_its_error(connector, tables):
    jobs = tables("jobs")
    source = preload(connector, jobs, 1, poll_interval_s=0.05)
    app = OneStepApp("fails")
    done = count_events(app, "failed", 1)

    @app.task(source=source, retry=MaxAttempts(2))
    def always_fails(ctx: Any, item: Any) -> None:
        raise ValueError("bad item")

    with Running(app):
        assert done.wait(TIMEOUT)
    wait_until(lambda: statuses(jobs) == {"failed": 1})
    [(attempts, error)] = query(f"SELECT attempts, last_error FROM {quote(jobs)}")
    assert attempts == 2
    assert "bad item" in error


def test_a_retry_delay_is_honoured_without_blocking_other_rows(connector, tables):
    jobs = tables("jobs")
    source = preload(connector, jobs, 2, poll_interval_s=5)
    seen: queue.Queue[tuple[int, int, float]] = queue.Queue()
    app = OneStepApp("delay")

    @app.task(source=source, retry=MaxAttempts(2, delay_s=1.0))
    def first_try_of_0_fails(ctx: Any, item: Any) -> None:
        seen.put((item["n"], ctx.current.attempts, time.monotonic()))
        if item["n"] == 0 and ctx.current.attempts == 0:
            raise RuntimeError("later, please")

    with Running(app):
        runs = [seen.get(timeout=TIMEOUT) for _ in range(3)]
        wait_until(lambda: statuses(jobs) == {"done": 2})
    assert [(n, attempts) for n, attempts, _ in runs] == [(0, 0), (1, 0), (0, 1)]
    assert runs[1][2] - runs[0][2] < 0.5  # row 1 did not wait for row 0's delay
    # due after 1 s, and picked up then although the queue polls only every 5 s
    assert 0.95 <= runs[2][2] - runs[0][2] < 3.0


def test_a_delayed_put_is_picked_up_when_due_not_at_the_next_poll(connector, tables):
    jobs = tables("jobs")
    source = connector.table_queue(jobs, poll_interval_s=30)
    source.create_table()
    got: queue.Queue[float] = queue.Queue()
    app = OneStepApp("delayed-put")

    @app.task(source=source)
    def handle(ctx: Any, item: Any) -> None:
        got.put(time.monotonic())

    with Running(app):
        wait_until(source.listening.is_set)
        put_at = time.monotonic()
        source.put({"n": 1}, delay_s=1.0)
        ran_at = got.get(timeout=TIMEOUT)
    assert 0.9 <= ran_at - put_at < 3.0


def test_a_payload_that_is_not_json_is_dead_lettered_as_decode(connector, tables):
    jobs = tables("jobs")
    source = preload(connector, jobs, 0, poll_interval_s=0.05)
    query(f"INSERT INTO {quote(jobs)} (payload) VALUES ('{{not json')")
    dead = MemoryQueue("dead")
    app = OneStepApp("decode")

    @app.task(source=source, dead_letter=dead)
    def never_called(ctx: Any, item: Any) -> None:
        raise AssertionError("the handler must not see an undecodable row")

    with Running(app):
        record = dead.get(timeout=TIMEOUT)
        wait_until(lambda: statuses(jobs) == {"dead": 1})
    assert record["failure"]["kind"] == "decode"
    assert record["payload"] == "{not json"


# -- wake-ups by LISTEN/NOTIFY ---------------------------------------------------------------


def _latencies(source: Any, put: Any, count: int) -> list[float]:
    """Seconds from each put into the idle queue to its handler's start."""
    started: queue.Queue[tuple[int, float]] = queue.Queue()
    app = OneStepApp("wake")

    @app.task(source=source)
    def handle(ctx: Any, item: Any) -> None:
        started.put((item["n"], time.monotonic()))

    latencies = []
    pause = threading.Event()
    with Running(app):
        wait_until(source.listening.is_set)
        for n in range(count):
            pause.wait(0.05)  # let the source go idle again (its fetch found nothing)
            put_at = time.monotonic()
            put(n)
            got, at = started.get(timeout=TIMEOUT)
            assert got == n
            latencies.append(at - put_at)
    return latencies


def test_15_puts_into_an_idle_queue_wake_the_handler_in_milliseconds(connector, tables):
    jobs = tables("wake")
    source = connector.table_queue(jobs, poll_interval_s=5)
    source.create_table()
    latencies = _latencies(source, lambda n: source.put({"n": n}), 15)
    median = statistics.median(latencies)
    print(
        f"put -> handler start: median {median * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    assert median < 0.2


def test_a_row_inserted_by_plain_sql_wakes_the_source_too(connector, tables):
    jobs = tables("wake_sql")
    source = connector.table_queue(jobs, poll_interval_s=5)
    source.create_table()

    def insert(n: int) -> None:
        query(f"INSERT INTO {quote(jobs)} (payload) VALUES (%s)", (json.dumps({"n": n}),))

    latencies = _latencies(source, insert, 5)
    assert statistics.median(latencies) < 0.2


def test_without_notify_the_source_polls_and_no_trigger_is_installed(connector, tables):
    jobs = tables("no_notify")
    source = connector.table_queue(jobs, notify=False, poll_interval_s=0.05)
    source.create_table()
    assert query(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s)", (quote(jobs),)
    ) == [(0,)]
    assert "pg_notify" not in source.create_table_sql()
    got: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("polls")

    @app.task(source=source)
    def handle(ctx: Any, item: Any) -> None:
        got.put(item)

    with Running(app):
        source.put({"n": 1})
        assert got.get(timeout=TIMEOUT) == {"n": 1}


def test_shutdown_is_not_held_up_by_the_listening_connection(connector, tables):
    jobs = tables("stop")
    source = connector.table_queue(jobs, poll_interval_s=60)
    source.create_table()
    app = OneStepApp("stop")

    @app.task(source=source)
    def handle(ctx: Any, item: Any) -> None: ...

    app.start()
    wait_until(source.listening.is_set)
    started = time.monotonic()
    app.stop()
    assert time.monotonic() - started < 3.0
    assert not any(t.name.startswith("onestep-listen-") for t in threading.enumerate())


# -- producers ---------------------------------------------------------------------------------


def test_put_and_put_many_from_threads_without_an_app_then_an_app_consumes_them(connector, tables):
    jobs = tables("producers")
    source = connector.table_queue(jobs, poll_interval_s=0.05)  # the table made by put

    def produce(worker: int) -> None:
        for n in range(25):
            source.put({"w": worker, "n": n}, {"trace": f"{worker}-{n}"})
        source.put_many([{"w": worker, "n": 100 + n} for n in range(25)])

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert source.depth() == 200
    other = asyncio.run(source.publish({"w": 9, "n": 0}, {"trace": "async"}))
    assert isinstance(other, int)
    seen: list[tuple[Any, Any]] = []
    app = OneStepApp("consume")
    done = count_events(app, "succeeded", 201)

    @app.task(source=source, concurrency=4)
    def handle(ctx: Any, item: Any) -> None:
        seen.append((item, ctx.current.meta.get("trace")))

    with Running(app):
        assert done.wait(TIMEOUT)
    assert len({(item["w"], item["n"]) for item, _ in seen}) == 201
    assert ({"w": 2, "n": 3}, "2-3") in seen and ({"w": 9, "n": 0}, "async") in seen


def test_bad_bodies_and_meta_raise_before_anything_is_written(connector, tables):
    jobs = tables("bad_put")
    source = connector.table_queue(jobs)
    source.create_table()
    with pytest.raises(EncodeError, match="body"):
        source.put({"x": object()})
    with pytest.raises(EncodeError, match="body"):
        source.put(float("nan"))
    with pytest.raises(TypeError, match="meta must be a dict"):
        source.put(1, meta=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="NUL"):
        source.put(1, meta={"k": "a\x00b"})
    with pytest.raises(EncodeError, match=r"bodies\[1\]"):
        source.put_many([1, {2, 3}, 4])
    with pytest.raises(ValueError, match="delay_s"):
        source.put(1, delay_s=-1)
    with pytest.raises(ValueError, match="attempts"):
        source.put(1, attempts=-1)
    assert source.depth() == 0


# -- the sink ----------------------------------------------------------------------------------


def test_an_upsert_sink_replayed_40_times_over_10_keys_leaves_10_rows(connector, tables):
    results = tables("upsert")
    query(f"CREATE TABLE {quote(results)} (k int PRIMARY KEY, v text, hits int, extra jsonb)")
    source = MemoryQueue("numbers")
    for n in range(40):
        source.put(n)
    app = OneStepApp("upsert")
    done = count_events(app, "succeeded", 40)
    sink = connector.table_sink(results, mode="upsert", keys=("k",), batch_size=16)

    @app.task(source=source, emit=sink, concurrency=8)
    def upsert(ctx: Any, n: int) -> Any:
        return {"k": n % 10, "v": f"v{n}", "hits": n, "extra": {"n": n}}

    with Running(app):
        assert done.wait(TIMEOUT)
    rows = query(f"SELECT k, v, hits, extra FROM {quote(results)} ORDER BY k")
    assert [row[0] for row in rows] == list(range(10))
    for k, v, hits, extra in rows:
        assert hits % 10 == k and v == f"v{hits}" and extra == {"n": hits}


def test_a_batch_naming_one_key_twice_keeps_the_later_row(connector, tables):
    results = tables("upsert_dup")
    query(f"CREATE TABLE {quote(results)} (k int PRIMARY KEY, v text)")
    sink = connector.table_sink(results, mode="upsert", keys="k")
    sink.open()
    try:
        refused = sink.publish_batch(
            [({"k": 1, "v": "a"}, None), ({"k": 1, "v": "b"}, None), ({"v": "no key"}, None)]
        )
    finally:
        sink.close()
    assert refused is not None and list(refused) == [2]
    assert query(f"SELECT k, v FROM {quote(results)}") == [(1, "b")]


def test_insert_mode_fails_the_whole_batch_on_a_duplicate_key(connector, tables):
    results = tables("insert")
    query(f"CREATE TABLE {quote(results)} (k int PRIMARY KEY)")
    sink = connector.table_sink(results)
    sink.open()
    try:
        sink.publish({"k": 1})
        with pytest.raises(Exception, match="duplicate key"):
            sink.publish_batch([({"k": 2}, None), ({"k": 1}, None)])
    finally:
        sink.close()
    assert query(f"SELECT k FROM {quote(results)}") == [(1,)]  # k=2 rolled back


def test_the_sink_can_create_its_table(connector, tables):
    results = tables("created")
    sink = connector.table_sink(results, mode="upsert", keys=("id",), auto_create=True)
    sink.open()
    try:
        sink.publish({"id": "a", "n": 1, "x": 0.5, "ok": True, "tags": ["t"]})
        sink.publish({"id": "a", "n": 2, "x": 1.5, "ok": False, "tags": []})
    finally:
        sink.close()
    assert query(f"SELECT id, n, x, ok, tags FROM {quote(results)}") == [("a", 2, 1.5, False, "[]")]


# -- arguments, URLs and credentials -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "url must be"),
        ("mysql://u@h/db", "url must start with postgresql://"),
        ("postgresql://u@h:notaport/db", "invalid port"),
        ("postgresql://u@h:5432", "no database"),
        ("postgresql://h/db", "no user"),
        (None, "url must be"),
    ],
)
def test_a_bad_url_is_refused_naming_the_parameter(url, message):
    with pytest.raises(ValueError, match=message):
        PostgresConnector(url)


def test_other_bad_arguments_name_their_parameter():
    connector = PostgresConnector(URL)
    with pytest.raises(ValueError, match="pool_size"):
        PostgresConnector(URL, pool_size=0)
    with pytest.raises(ValueError, match="connect_timeout_s"):
        PostgresConnector(URL, connect_timeout_s=0)
    with pytest.raises(ValueError, match="batch_size"):
        connector.table_queue("t", batch_size=0)
    with pytest.raises(ValueError, match="lease_s"):
        connector.table_queue("t", lease_s=-1)
    with pytest.raises(ValueError, match="table"):
        connector.table_queue("")
    with pytest.raises(ValueError, match="status_column"):
        connector.table_queue("t", status_column="")
    with pytest.raises(ValueError, match="mode"):
        connector.table_sink("t", mode="replace")
    with pytest.raises(ValueError, match="keys"):
        connector.table_sink("t", mode="upsert")


def test_both_url_schemes_and_encoded_credentials_with_the_password_masked():
    for scheme in ("postgresql", "postgresql+psycopg"):
        connector = PostgresConnector(f"{scheme}://us%40er:p%40ss%3Aw0rd@db.example:5433/my%20db")
        assert (connector.user, connector.host, connector.port) == ("us@er", "db.example", 5433)
        assert connector.database == "my db"
        assert "p@ss" not in repr(connector) and "p%40ss" not in repr(connector)
        assert "***" in repr(connector)
        assert "p@ss" not in repr(connector.table_queue("t"))
        assert "p@ss" not in json.dumps(connector.table_queue("t").describe())


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://nobody:s3cret-pw@127.0.0.1:5432/test",
        "postgresql://postgres:s3cret-pw@127.0.0.1:1/test",
    ],
    ids=["unknown-user", "closed-port"],
)
def test_bad_credentials_or_address_fail_at_startup_without_the_password(postgres_url, url):
    connector = PostgresConnector(url, connect_timeout_s=3)
    app = OneStepApp("bad-credentials")

    @app.task(source=connector.table_queue("never"))
    def handle(ctx: Any, item: Any) -> None: ...

    with pytest.raises(StartupError) as info:
        app.start()
    text = str(info.value) + repr(info.value.__cause__)
    assert "s3cret" not in text
    assert "127.0.0.1" in text


@pytest.mark.parametrize("odd", ['with"dquote', "with'quote", "pct%s;--", "Mixed Case"])
def test_odd_table_and_column_names_are_quoted_safely(connector, tables, odd):
    jobs = tables("jobs") + odd
    results = tables("res") + odd
    source = preload(connector, jobs, 5, poll_interval_s=0.05)
    sink = connector.table_sink(results, mode="upsert", keys=("n",), auto_create=True)
    app = OneStepApp("odd-names")
    done = count_events(app, "succeeded", 5)

    @app.task(source=source, emit=sink)
    def copy(ctx: Any, item: Any) -> Any:
        return {"n": item["n"], "odd\"col'%s": odd}

    try:
        with Running(app):
            assert done.wait(TIMEOUT)
        wait_until(lambda: statuses(jobs) == {"done": 5})
        assert query(f"SELECT count(*) FROM {quote(results)}") == [(5,)]
        column = quote("odd\"col'%s").replace("%", "%%")
        assert query(f"SELECT DISTINCT {column} FROM {quote(results)}".replace("%%", "%")) == [
            (odd,)
        ]
    finally:
        query(f"DROP TABLE IF EXISTS {quote(jobs)}")
        query(f"DROP TABLE IF EXISTS {quote(results)}")

"""The MySQL adapter against a real MariaDB: table queue -> task -> table sink, exact
attempts and dead letters, retry delays, decode failures, upserts, bad URLs, odd table
names, two worker processes sharing a table, and the state-store contract.

Needs MariaDB at 127.0.0.1:3306 (root, no password, database `test`): skipped when it is
unreachable, failed instead when CI is set (see mysql_support.require_server).
"""

from __future__ import annotations

import importlib.util
import json
import math
import multiprocessing
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mysql_support import (
    TIMEOUT,
    URL,
    Worker,
    connector,
    mysql_url,
    preload,
    query,
    quote,
    statuses,
    tables,
    wait_until,
)

import adapters.mysql._state
from actors import EncodeError
from onestep import (
    MaxAttempts,
    MemoryQueue,
    MySQLConnector,
    OneStepApp,
    StartupError,
    StateStore,
)

pytestmark = pytest.mark.integration
__all__ = ["connector", "mysql_url", "tables"]  # fixtures used by name


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


def test_round_trip_from_a_table_through_a_task_to_a_table_sink(connector, tables):
    jobs, results = tables("jobs"), tables("results")
    source = preload(connector, jobs, 200, batch_size=50, poll_interval_s=0.05)
    query(f"CREATE TABLE {quote(results)} (n INT PRIMARY KEY, square BIGINT, info LONGTEXT)")
    app = OneStepApp("round-trip")
    done = count_events(app, "succeeded", 200)

    @app.task(source=source, emit=connector.table_sink(results), concurrency=8)
    def square(ctx: Any, item: Any) -> Any:
        n = item["n"]
        return {"n": n, "square": n * n, "info": {"attempts": ctx.current.attempts, "tags": [n]}}

    with Running(app):
        assert done.wait(TIMEOUT)
    rows = query(f"SELECT n, square, info FROM {quote(results)} ORDER BY n")
    assert [(n, sq) for n, sq, _ in rows] == [(n, n * n) for n in range(200)]
    assert json.loads(rows[7][2]) == {"attempts": 0, "tags": [7]}
    assert statuses(jobs) == {"done": 200}
    assert query(f"SELECT MIN(attempts), MAX(attempts) FROM {quote(jobs)}") == [(1, 1)]


def test_a_list_of_dicts_is_written_as_one_batch(connector, tables):
    jobs, results = tables("jobs"), tables("results")
    source = preload(connector, jobs, 3, poll_interval_s=0.05)
    query(f"CREATE TABLE {quote(results)} (n INT, k INT, PRIMARY KEY (n, k))")
    app = OneStepApp("fan-out")
    done = count_events(app, "succeeded", 3)

    @app.task(source=source, emit=connector.table_sink(results))
    def fan_out(ctx: Any, item: Any) -> Any:
        return [{"n": item["n"], "k": k} for k in range(4)]

    with Running(app):
        assert done.wait(TIMEOUT)
    assert query(f"SELECT COUNT(*) FROM {quote(results)}") == [(12,)]


def test_max_attempts_3_dead_letters_after_exactly_3_executions(connector, tables):
    jobs = tables("jobs")
    source = preload(connector, jobs, 1, poll_interval_s=0.05)
    dead = MemoryQueue("dead")
    executions: queue.Queue[int] = queue.Queue()
    app = OneStepApp("attempts")

    @app.task(source=source, retry=MaxAttempts(3), dead_letter=dead)
    def always_fails(ctx: Any, item: Any) -> None:
        executions.put(ctx.current.attempts)
        raise RuntimeError("boom")

    with Running(app):
        record = dead.get(timeout=TIMEOUT)
    assert [executions.get_nowait() for _ in range(executions.qsize())] == [0, 1, 2]
    assert record["payload"] == {"n": 0}
    assert record["failure"]["kind"] == "error"
    assert record["failure"]["message"] == "boom"
    # every execution is counted in the row; the dead-lettered row ends `dead` with its
    # error, so whoever watches the table tells it from a success (issue 23)
    [(status, attempts, error)] = query(f"SELECT status, attempts, last_error FROM {quote(jobs)}")
    assert (status, attempts) == ("dead", 3)
    assert "boom" in error


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
    [(status, attempts, error)] = query(f"SELECT status, attempts, last_error FROM {quote(jobs)}")
    assert (status, attempts) == ("failed", 2)
    assert "bad item" in error


def test_a_retry_delay_is_honoured_without_blocking_other_rows(connector, tables):
    jobs = tables("jobs")
    source = preload(connector, jobs, 2, poll_interval_s=0.05)
    seen: queue.Queue[tuple[int, int, float]] = queue.Queue()
    app = OneStepApp("delay")

    @app.task(source=source, retry=MaxAttempts(2, delay_s=1.0))
    def first_try_of_0_fails(ctx: Any, item: Any) -> None:
        seen.put((item["n"], ctx.current.attempts, time.monotonic()))
        if item["n"] == 0 and ctx.current.attempts == 0:
            raise RuntimeError("later, please")

    with Running(app):
        runs = [seen.get(timeout=TIMEOUT) for _ in range(3)]
    assert [(n, attempts) for n, attempts, _ in runs] == [(0, 0), (1, 0), (0, 1)]
    assert runs[1][2] - runs[0][2] < 0.5  # row 1 did not wait for row 0's delay
    assert runs[2][2] - runs[0][2] >= 0.95
    assert statuses(jobs) == {"done": 2}


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
    assert record["failure"]["kind"] == "decode"
    assert record["payload"] == "{not json"
    assert statuses(jobs) == {"dead": 1}


def test_put_and_publish_enqueue_from_any_thread_and_async_code(connector, tables):
    import asyncio

    jobs = tables("jobs")
    source = connector.table_queue(jobs)
    source.create_table()
    row_id = source.put({"from": "sync"})
    other = asyncio.run(source.publish({"from": "async"}))
    threads = [threading.Thread(target=source.put, args=({"from": i},)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert other > row_id
    assert statuses(jobs) == {"pending": 6}


def test_an_existing_table_with_its_own_column_names(connector, tables):
    jobs = tables("legacy")
    query(
        f"CREATE TABLE {quote(jobs)} (job_id BIGINT AUTO_INCREMENT PRIMARY KEY, body JSON, "
        "state VARCHAR(20) NOT NULL DEFAULT 'pending', tries INT NOT NULL DEFAULT 0, "
        "run_after DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
        "lease_end DATETIME(6) NULL, error TEXT NULL, headers JSON NULL, owner CHAR(32) NULL)"
    )
    source = connector.table_queue(
        jobs,
        auto_create=False,
        id_column="job_id",
        payload_column="body",
        status_column="state",
        attempts_column="tries",
        available_at_column="run_after",
        leased_until_column="lease_end",
        last_error_column="error",
        meta_column="headers",
        lease_token_column="owner",
        poll_interval_s=0.05,
    )
    row_id = source.put({"n": 1}, {"trace": "abc"})
    got: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("legacy")

    @app.task(source=source)
    def handle(ctx: Any, item: Any) -> None:
        got.put((item, dict(ctx.current.meta)))

    with Running(app):
        assert got.get(timeout=TIMEOUT) == ({"n": 1}, {"trace": "abc", "id": row_id})
    [(state, tries, lease_end, owner)] = query(
        f"SELECT state, tries, lease_end, owner FROM {quote(jobs)}"
    )
    assert (state, tries, lease_end) == ("done", 1, None)
    assert len(owner) == 32  # the token of the claim that settled it


def test_an_existing_table_without_a_named_column_fails_at_startup(connector, tables):
    jobs = tables("legacy")
    query(f"CREATE TABLE {quote(jobs)} (id BIGINT PRIMARY KEY, payload TEXT)")
    app = OneStepApp("missing-column")

    @app.task(source=connector.table_queue(jobs, auto_create=False))
    def handle(ctx: Any, item: Any) -> None: ...

    with pytest.raises(StartupError, match="lacks column") as info:
        app.start()
    message = str(info.value)
    for option in ("status_column", "attempts_column", "available_at_column"):
        assert option in message
    assert "ADD COLUMN `meta` LONGTEXT NULL" in message
    # the ALTER TABLE adds every missing column and runs as printed (issue 23)
    [alter] = [line.strip() for line in message.splitlines() if "ALTER TABLE" in line]
    query(alter)
    app.start()
    app.stop()


# -- the sink ----------------------------------------------------------------------------------


def test_upsert_mode_updates_rows_by_key_and_json_encodes_nested_values(connector, tables):
    results = tables("upsert")
    query(f"CREATE TABLE {quote(results)} (k INT PRIMARY KEY, v LONGTEXT, hits INT)")
    sink = connector.table_sink(results, mode="upsert", keys=("k",))
    sink.open()
    try:
        sink.publish({"k": 1, "v": "first", "hits": 1})
        sink.publish_batch(
            [
                ({"k": 1, "v": "second", "hits": 2}, None),
                ([{"k": 2, "v": {"nested": [1, 2]}, "hits": 1}, {"k": 3, "v": None}], None),
            ]
        )
    finally:
        sink.close()
    rows = query(f"SELECT k, v, hits FROM {quote(results)} ORDER BY k")
    assert rows == [(1, "second", 2), (2, '{"nested":[1,2]}', 1), (3, None, None)]


def test_insert_mode_fails_the_whole_batch_on_a_duplicate_key(connector, tables):
    results = tables("insert")
    query(f"CREATE TABLE {quote(results)} (k INT PRIMARY KEY)")
    sink = connector.table_sink(results)
    sink.open()
    try:
        sink.publish({"k": 1})
        with pytest.raises(Exception, match="Duplicate"):
            sink.publish_batch([({"k": 2}, None), ({"k": 1}, None)])
    finally:
        sink.close()
    assert query(f"SELECT k FROM {quote(results)}") == [(1,)]  # k=2 rolled back


def test_the_sink_can_create_its_table(connector, tables):
    results = tables("created")
    sink = connector.table_sink(results, mode="upsert", keys=("id",), auto_create=True)
    sink.open()
    try:
        sink.publish({"id": "a", "n": 1, "x": 0.5, "tags": ["t"]})
        sink.publish({"id": "a", "n": 2, "x": 1.5, "tags": []})
    finally:
        sink.close()
    assert query(f"SELECT id, n, x, tags FROM {quote(results)}") == [("a", 2, 1.5, "[]")]


def test_one_unencodable_result_of_200_fails_alone_with_kind_encode(connector, tables):
    results = tables("results")
    query(f"CREATE TABLE {quote(results)} (n INT PRIMARY KEY, half DOUBLE, info LONGTEXT)")
    source = MemoryQueue("numbers")
    for n in range(200):
        source.put(n)
    dead = MemoryQueue("dead")
    app = OneStepApp("encode")
    done = count_events(app, "succeeded", 199)

    @app.task(source=source, emit=connector.table_sink(results), dead_letter=dead, concurrency=50)
    def to_row(ctx: Any, n: int) -> Any:
        # n=123 holds a NaN in its JSON column: it cannot be written, the others can
        return {"n": n, "half": n / 2, "info": {"bad": math.nan} if n == 123 else {"ok": n}}

    with Running(app):
        record = dead.get(timeout=TIMEOUT)
        assert done.wait(TIMEOUT)
    assert record["payload"] == 123
    assert record["failure"]["kind"] == "encode"
    assert "column 'info'" in record["failure"]["message"]
    assert dead.qsize() == 0
    rows = query(f"SELECT n FROM {quote(results)} ORDER BY n")
    assert [n for (n,) in rows] == [n for n in range(200) if n != 123]


def test_publish_batch_writes_the_encodable_items_and_returns_the_others(connector, tables):
    results = tables("results")
    query(f"CREATE TABLE {quote(results)} (k INT PRIMARY KEY, x DOUBLE, j LONGTEXT)")
    sink = connector.table_sink(results)
    sink.open()
    try:
        refused = sink.publish_batch(
            [
                ({"k": 1, "x": 0.5}, None),
                ({"k": 2, "x": math.inf}, None),
                ([{"k": 3}, {"k": 4, "j": {"v": math.nan}}], None),  # one bad row: both out
                ({"k": 5, "j": [1, "two"]}, None),
                ({7: "not a column name"}, None),
                ("text", None),
            ]
        )
    finally:
        sink.close()
    assert refused is not None and sorted(refused) == [1, 2, 4, 5]
    assert all(isinstance(error, EncodeError) for error in refused.values())
    assert "column 'x'" in str(refused[1]) and "not a finite number" in str(refused[1])
    assert "column 'j'" in str(refused[2]) and "not valid JSON" in str(refused[2])
    assert query(f"SELECT k, x, j FROM {quote(results)} ORDER BY k") == [
        (1, 0.5, None),
        (5, None, '[1,"two"]'),
    ]


@pytest.mark.parametrize("body", [1, "text", [1, 2], {}], ids=repr)
def test_the_sink_refuses_what_is_not_a_dict_or_list_of_dicts(connector, tables, body):
    sink = connector.table_sink(tables("refuse"))
    refused = sink.publish_batch([(body, None)])
    assert refused is not None and isinstance(refused[0], EncodeError)
    with pytest.raises(EncodeError, match="dict"):
        sink.publish(body)


# -- arguments, URLs and credentials -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "url must be"),
        ("postgres://u@h/db", "url must start with mysql://"),
        ("mysql://u@h:notaport/db", "invalid port"),
        ("mysql://u@h:3306", "no database"),
        ("mysql://h/db", "no user"),
        (None, "url must be"),
    ],
)
def test_a_bad_url_is_refused_naming_the_parameter(url, message):
    with pytest.raises(ValueError, match=message):
        MySQLConnector(url)


def test_other_bad_arguments_name_their_parameter():
    connector = MySQLConnector(URL)
    with pytest.raises(ValueError, match="pool_size"):
        MySQLConnector(URL, pool_size=0)
    with pytest.raises(ValueError, match="connect_timeout_s"):
        MySQLConnector(URL, connect_timeout_s=0)
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


def test_url_encoded_credentials_are_decoded_and_the_password_is_masked():
    connector = MySQLConnector("mysql://us%40er:p%40ss%3Aw0rd@db.example:3307/my%20db")
    assert (connector.user, connector.host, connector.port) == ("us@er", "db.example", 3307)
    assert connector.database == "my db"
    assert "p@ss" not in repr(connector) and "p%40ss" not in repr(connector)
    assert "***" in repr(connector)
    assert "p@ss" not in repr(connector.table_queue("t"))
    assert "p@ss" not in json.dumps(connector.table_queue("t").describe())


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root:s3cret-pw@127.0.0.1:3306/test",
        "mysql://nobody:s3cret-pw@127.0.0.1:3306/test",
        "mysql://root:s3cret-pw@127.0.0.1:1/test",
    ],
    ids=["wrong-password", "unknown-user", "closed-port"],
)
def test_bad_credentials_or_address_fail_at_startup_without_the_password(mysql_url, url):
    connector = MySQLConnector(url, connect_timeout_s=3)
    app = OneStepApp("bad-credentials")

    @app.task(source=connector.table_queue("never"))
    def handle(ctx: Any, item: Any) -> None: ...

    with pytest.raises(StartupError) as info:
        app.start()
    text = str(info.value) + repr(info.value.__cause__)
    assert "s3cret" not in text
    assert "127.0.0.1" in text
    assert "test" in text


def test_a_wrong_password_through_the_cli_prints_one_clean_line(mysql_url, tmp_path):
    app_file = tmp_path / "wrong_password_app.py"
    app_file.write_text(
        "from onestep import MySQLConnector, OneStepApp\n"
        "db = MySQLConnector('mysql://root:s3cret-pw@127.0.0.1:3306/test', "
        "connect_timeout_s=3)\n"
        "app = OneStepApp('wrong-password')\n"
        "@app.task(source=db.table_queue('never_made'))\n"
        "def handle(ctx, item):\n"
        "    pass\n"
    )
    completed = subprocess.run(
        [sys.executable, "-m", "onestep", "run", str(app_file)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    assert "s3cret" not in completed.stderr + completed.stdout
    [line] = completed.stderr.strip().splitlines()
    assert "Access denied for user 'root'" in line
    assert "127.0.0.1:3306" in line and "'test'" in line


# -- quoting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("odd", ["with`backtick", "with'quote", 'with"dquote', "pct%s;--"])
def test_a_table_name_with_a_backtick_or_quote_is_handled_safely(connector, tables, odd):
    jobs = tables("jobs") + odd
    results = tables("res") + odd
    tables  # noqa: B018
    source = preload(connector, jobs, 5, poll_interval_s=0.05)
    sink = connector.table_sink(results, mode="upsert", keys=("n",), auto_create=True)
    app = OneStepApp("odd-names")
    done = count_events(app, "succeeded", 5)

    @app.task(source=source, emit=sink)
    def copy(ctx: Any, item: Any) -> Any:
        return {"n": item["n"], "odd`col'": odd}

    try:
        with Running(app):
            assert done.wait(TIMEOUT)
        assert statuses(jobs) == {"done": 5}
        assert query(f"SELECT COUNT(*) FROM {quote(results)}") == [(5,)]
        assert query(f"SELECT DISTINCT {quote('odd`col' + chr(39))} FROM {quote(results)}") == [
            (odd,)
        ]
    finally:
        query(f"DROP TABLE IF EXISTS {quote(jobs)}")
        query(f"DROP TABLE IF EXISTS {quote(results)}")


# -- two worker processes ----------------------------------------------------------------------


def test_two_worker_processes_process_every_row_once(connector, tables, tmp_path):
    jobs = tables("shared")
    count = 600
    preload(connector, jobs, count)
    options = {"lease_s": 30, "batch_size": 10, "concurrency": 4, "work_s": 0.002}
    workers = [Worker(jobs, tmp_path / f"w{i}.log", **options) for i in range(2)]
    try:
        wait_until(lambda: statuses(jobs) == {"done": count}, timeout=45)
    finally:
        outcomes = [worker.stop() for worker in workers]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    per_worker = [worker.executed() for worker in workers]
    executed = Counter(n for log in per_worker for n in log)
    print(f"executions per worker: {[len(log) for log in per_worker]}")
    assert sorted(executed) == list(range(count))
    assert set(executed.values()) == {1}  # never twice, so never twice at once
    assert all(per_worker), "both workers should have taken rows"


# -- the state store ---------------------------------------------------------------------------

_contract_path = Path(__file__).resolve().parents[1] / "unit" / "test_sqlite_state.py"
_spec = importlib.util.spec_from_file_location("_state_contract", _contract_path)
assert _spec is not None and _spec.loader is not None
_contract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_contract)

# The store-agnostic contract tests of the SQLite store, run against the MySQL store.
test_set_then_get_gives_the_value_back = _contract.test_set_then_get_gives_the_value_back
test_get_of_a_missing_key_gives_the_default = _contract.test_get_of_a_missing_key_gives_the_default
test_set_overwrites_and_delete_removes = _contract.test_set_overwrites_and_delete_removes
test_values_are_copies_not_aliases = _contract.test_values_are_copies_not_aliases
test_incr_counts_from_zero = _contract.test_incr_counts_from_zero_and_returns_the_new_value
test_keys_do_not_collide = _contract.test_keys_do_not_collide
test_claim_sets_a_key_only_if_absent = _contract.test_claim_sets_a_key_only_if_it_is_absent
test_claim_of_a_key_that_was_set_fails = _contract.test_claim_of_a_key_that_was_set_fails
test_a_claim_expires_after_its_ttl = _contract.test_a_claim_expires_after_its_ttl
test_delete_releases_a_claim = _contract.test_delete_releases_a_claim
test_claim_refuses_a_bad_ttl = _contract.test_claim_refuses_a_bad_ttl
test_many_threads_claim_one_winner = _contract.test_many_threads_claiming_one_key_have_one_winner
test_two_threads_incrementing = (
    _contract.test_two_threads_incrementing_one_store_get_a_consistent_total
)


@pytest.fixture
def store(connector, tables) -> Any:
    return connector.state_store(tables("state"))


@pytest.fixture
def fake_time(monkeypatch) -> Any:
    """The contract's FakeTime as the database server's clock (the store's only clock):
    every pooled operation runs with its session's TIMESTAMP set to the fake time, so
    NOW() returns it, and reset afterwards."""
    fake = _contract.FakeTime()
    run_pooled = MySQLConnector.run_pooled

    def at_fake_time(self: MySQLConnector, operation: Any) -> Any:
        def on(conn: Any) -> Any:
            with conn.cursor() as cursor:
                cursor.execute("SET TIMESTAMP = %s", (fake.now,))
            try:
                return operation(conn)
            finally:
                with conn.cursor() as cursor:
                    cursor.execute("SET TIMESTAMP = DEFAULT", ())

        return run_pooled(self, on)

    monkeypatch.setattr(MySQLConnector, "run_pooled", at_fake_time)
    return fake


def test_claims_expire_by_the_database_clock_not_the_hosts(store, monkeypatch):
    """A host whose clock is a day off claims as if it were right: the expiry is the
    server's NOW() plus the ttl."""
    real_time = time.time
    skewed = SimpleNamespace(time=lambda: real_time() + 86_400.0, monotonic=time.monotonic)
    monkeypatch.setattr(adapters.mysql._state, "time", skewed)
    [(before,)] = query("SELECT UNIX_TIMESTAMP(NOW(6))")
    assert store.claim("tick", 30)
    [(after,)] = query("SELECT UNIX_TIMESTAMP(NOW(6))")
    [(expires_at,)] = query(
        f"SELECT expires_at FROM {quote(store.table)} WHERE `key` = %s", ("tick",)
    )
    assert float(before) + 30 <= expires_at <= float(after) + 30
    assert store.claim("tick", 30) is False
    # expired by the server's clock: another claim wins
    query(f"UPDATE {quote(store.table)} SET expires_at = UNIX_TIMESTAMP(NOW(6)) - 0.001")
    assert store.get("tick", "gone") == "gone"
    assert store.claim("tick", 30) is True


def test_the_store_is_a_blocking_state_store(store):
    assert isinstance(store, StateStore)
    assert store.blocking is True
    assert "***" not in repr(store) or "root" in repr(store)


def test_update_and_pop_are_atomic_read_modify_writes(store):
    assert store.update("list", lambda v: [*v, 1], default=[]) == [1]
    assert store.update("list", lambda v: [*v, 2], default=[]) == [1, 2]
    assert store.pop("list") == [1, 2]
    assert store.pop("list", "gone") == "gone"
    with pytest.raises(ZeroDivisionError):
        store.update("broken", lambda v: 1 / 0)
    assert store.get("broken", "absent") == "absent"


def test_a_value_that_is_not_json_raises_type_error_naming_the_key(store):
    with pytest.raises(TypeError, match="'my-key' is not JSON-serialisable"):
        store.set("my-key", object())
    assert store.get("my-key", "absent") == "absent"


def test_values_outlive_the_store_object_and_purge_keeps_live_ones(connector, tables, fake_time):
    table = tables("state")
    first = connector.state_store(table)
    first.set("kept", {"v": 1})
    first.incr("counter", 3)
    assert first.claim("short", 5)
    assert first.claim("long", 50)
    second = MySQLConnector(URL).state_store(table)
    assert second.get("kept") == {"v": 1}
    assert second.incr("counter") == 4
    assert second.claim("long", 50) is False
    fake_time.advance(10)
    assert second.purge_expired() == 1
    assert second.get("long") is True
    second.close()


def test_ctx_state_in_sync_and_async_handlers(connector, tables):
    store = connector.state_store(tables("state"))
    source = MemoryQueue("in")
    for n in range(5):
        source.put(n)
    app = OneStepApp("stateful", state=store)
    done = count_events(app, "succeeded", 5)

    @app.task(source=source)
    def count(ctx: Any, item: Any) -> None:
        ctx.state.incr("seen")

    with Running(app):
        assert done.wait(TIMEOUT)
    assert store.get("stateful:count:seen") == 5


def _claim_in_process(table: str, start: Any, results: Any) -> None:
    store = MySQLConnector(URL).state_store(table)
    start.wait(TIMEOUT)
    results.put([store.claim(f"tick:{tick}", 60) for tick in range(40)])


def test_claim_has_one_winner_across_processes(tables, connector):
    table = tables("state")
    connector.state_store(table)  # create the table once
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(table, start, results)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(TIMEOUT)
    for tick in range(40):
        assert sum(outcome[tick] for outcome in outcomes) == 1, f"tick {tick}"


def test_the_mysql_jobs_example_runs_and_stops_by_itself(mysql_url: str) -> None:
    repo = Path(__file__).resolve().parents[2]
    completed = subprocess.run(
        [sys.executable, "examples/mysql_jobs.py"],
        cwd=repo,
        env={**os.environ, "ONESTEP_MYSQL_URL": mysql_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip(), "the example printed nothing"

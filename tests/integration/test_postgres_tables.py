"""Tables an application already has, on a real PostgreSQL: the business-table mode of
`table_queue` (where/claim/ack/nack: only those columns change, retry then nack, the row
and its failure dead-lettered, attempts in a column, claims given back at shutdown) and
the `incremental` cursor source (100 rows on one timestamp once, a restart repeats
nothing, a failing row holds the stored cursor back).

Needs PostgreSQL at 127.0.0.1:5432 (postgres, trust, database `test`): skipped when it
is unreachable, failed instead when CI is set (see postgres_support.require_server).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import threading
from collections import Counter
from typing import Any

import pytest
from postgres_support import TIMEOUT, connector, postgres_url, query, quote, tables, wait_until

from onestep import MaxAttempts, MemoryQueue, OneStepApp

pytestmark = pytest.mark.integration
__all__ = ["connector", "postgres_url", "tables"]  # fixtures used by name

ORDERS_DDL = """CREATE TABLE {} (
    id serial PRIMARY KEY,
    status smallint NOT NULL DEFAULT 0,
    amount numeric(10, 2) NOT NULL,
    placed_at timestamp(6) NOT NULL,
    note varchar(40) NULL,
    claimed_at timestamptz NULL,
    tries integer NOT NULL DEFAULT 0
)"""

PLACED = datetime.datetime(2026, 3, 1, 12, 30, 0, 250000)


def make_orders(table: str, pending: int, other: int = 0) -> None:
    """`pending` rows with status 0 (notes 'bad' on ids 5 and 17), then `other` with 7."""
    query(ORDERS_DDL.format(quote(table)))
    rows = [
        (0, decimal.Decimal(f"{n}.50"), PLACED, "bad" if n in (5, 17) else f"order {n}")
        for n in range(1, pending + 1)
    ] + [(7, decimal.Decimal("1.00"), PLACED, "not ours") for _ in range(other)]
    values = ", ".join(["(%s, %s, %s, %s)"] * len(rows))
    query(
        f"INSERT INTO {quote(table)} (status, amount, placed_at, note) VALUES {values}",
        [value for row in rows for value in row],
    )


def snapshot(table: str) -> dict[int, dict[str, Any]]:
    """Every row, whole, by id."""
    rows = query(f"SELECT to_jsonb(t) FROM {quote(table)} AS t ORDER BY id")
    return {row[0]["id"]: row[0] for row in rows}


class Running:
    def __init__(self, app: OneStepApp) -> None:
        self.app = app

    def __enter__(self) -> OneStepApp:
        self.app.start()
        return self.app

    def __exit__(self, *exc: Any) -> None:
        self.app.stop()


def business(connector: Any, table: str, **options: Any) -> Any:
    return connector.table_queue(
        table,
        key="id",
        where="status = 0",
        claim={"status": 9},
        ack={"status": 1},
        nack={"status": 2},
        batch_size=8,
        poll_interval_s=0.05,
        **options,
    )


# -- business tables --------------------------------------------------------------------------


def test_a_business_run_writes_only_the_ack_and_nack_values(connector, tables):
    orders = tables("orders")
    make_orders(orders, 30, other=10)
    before = snapshot(orders)
    dead = MemoryQueue("dead")
    runs: Counter[int] = Counter()
    attempts_seen: dict[int, list[int]] = {}
    payloads: dict[int, Any] = {}
    lock = threading.Lock()
    app = OneStepApp("business")

    @app.task(source=business(connector, orders), retry=MaxAttempts(3), dead_letter=dead)
    def charge(ctx: Any, order: dict[str, Any]) -> None:
        with lock:
            runs[order["id"]] += 1
            attempts_seen.setdefault(order["id"], []).append(ctx.current.attempts)
            payloads[order["id"]] = order
        json.dumps(order)  # the whole row, JSON-able
        if order["note"] == "bad":
            raise RuntimeError(f"card declined for {order['id']}")

    with Running(app):
        letters = [dead.get(timeout=TIMEOUT) for _ in range(2)]
        wait_until(
            lambda: query(f"SELECT count(*) FROM {quote(orders)} WHERE status IN (1, 2)") == [(30,)]
        )
    after = snapshot(orders)
    assert set(after) == set(before)
    for row_id, row in before.items():
        if row["status"] == 7:
            assert after[row_id] == row, f"row {row_id} is not ours: untouched"
            continue
        # the whole row compared: only the status column changed, to the ack or nack value
        expected = {**row, "status": 2 if row["note"] == "bad" else 1}
        assert after[row_id] == expected, f"row {row_id}: only the status column changes"
    # each good row ran once; the bad ones ran three times, then got the nack values
    assert {row_id: n for row_id, n in runs.items() if n != 1} == {5: 3, 17: 3}
    assert attempts_seen[5] == [0, 1, 2] and attempts_seen[17] == [0, 1, 2]
    assert sorted(runs) == list(range(1, 31))
    # the handler gets the whole row as read, numerics as strings, timestamps in ISO 8601
    assert payloads[3] == {
        "id": 3,
        "status": 0,
        "amount": "3.50",
        "placed_at": "2026-03-01T12:30:00.250000",
        "note": "order 3",
        "claimed_at": None,
        "tries": 0,
    }
    # the dead-letter sink gets the row and the failure
    by_id = {letter["payload"]["id"]: letter for letter in letters}
    assert set(by_id) == {5, 17}
    assert by_id[5]["payload"] == payloads[5]
    assert by_id[5]["failure"]["kind"] == "error"
    assert by_id[5]["failure"]["message"] == "card declined for 5"


def test_without_a_dead_letter_sink_a_given_up_row_gets_nack(connector, tables):
    orders = tables("orders")
    make_orders(orders, 6)
    app = OneStepApp("nack")

    @app.task(source=business(connector, orders), retry=MaxAttempts(2))
    def charge(ctx: Any, order: dict[str, Any]) -> None:
        if order["note"] == "bad":
            raise RuntimeError("declined")

    with Running(app):
        wait_until(
            lambda: (
                query(f"SELECT status, count(*) FROM {quote(orders)} GROUP BY status ORDER BY 1")
                == [(1, 5), (2, 1)]
            )
        )


def test_an_attempts_column_counts_executions_in_the_row(connector, tables):
    orders = tables("orders")
    make_orders(orders, 6)
    seen: list[tuple[int, int]] = []
    app = OneStepApp("tries")

    @app.task(source=business(connector, orders, attempts_column="tries"), retry=MaxAttempts(3))
    def charge(ctx: Any, order: dict[str, Any]) -> None:
        seen.append((order["id"], ctx.current.attempts))
        if order["id"] == 2 and ctx.current.attempts == 0:
            raise RuntimeError("once")

    with Running(app):
        wait_until(
            lambda: query(f"SELECT count(*) FROM {quote(orders)} WHERE status = 1") == [(6,)]
        )
    tries = dict(query(f"SELECT id, tries FROM {quote(orders)}"))
    # the retry and the final ack each count one: row 2 ran twice, the others once
    assert tries == {1: 1, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1}
    assert (2, 1) in seen


def test_shutdown_gives_claimed_rows_back_with_their_old_values(connector, tables):
    orders = tables("orders")
    make_orders(orders, 4)
    started = threading.Semaphore(0)
    app = OneStepApp("release", shutdown_timeout_s=0.2)

    @app.task(source=business(connector, orders), concurrency=4)
    async def hang(ctx: Any, order: dict[str, Any]) -> None:
        started.release()
        await asyncio.sleep(3600)  # cancelled by the shutdown

    with Running(app):
        for _ in range(4):
            assert started.acquire(timeout=TIMEOUT)
        assert query(f"SELECT DISTINCT status FROM {quote(orders)}") == [(9,)]
        assert query(f"SELECT count(*) FROM {quote(orders)} WHERE claimed_at IS NULL") == [(4,)]
    assert query(f"SELECT DISTINCT status FROM {quote(orders)}") == [(0,)]


def test_two_sources_never_claim_the_same_row(connector, tables):
    orders = tables("orders")
    make_orders(orders, 60)
    first, second = business(connector, orders), business(connector, orders)
    for source in (first, second):
        source.open()
    try:
        taken: list[Any] = []
        while True:
            batch = first.fetch(8) + second.fetch(8)
            if not batch:
                break
            taken.extend(delivery.handle for delivery in batch)
        assert sorted(taken) == list(range(1, 61))  # every row once, by one of the two
    finally:
        for source in (first, second):
            source.close()


def test_a_lease_column_gives_back_only_rows_whose_lease_expired(connector, tables):
    orders = tables("orders")
    make_orders(orders, 10)
    options = {"lease_column": "claimed_at", "lease_s": 60}
    sources = [business(connector, orders, **options) for _ in range(3)]
    for source in sources:
        source.open()
    try:
        first = [d.handle for d in sources[0].fetch(4)]
        assert first == [1, 2, 3, 4]
        # a live lease is respected: another worker takes only the unclaimed rows
        assert [d.handle for d in sources[1].fetch(100)] == list(range(5, 11))
        # rows 1 and 2 as a dead worker leaves them: their lease ran out (server clock)
        query(
            f"UPDATE {quote(orders)} SET claimed_at = claimed_at - interval '61 seconds' "
            "WHERE id IN (1, 2)"
        )
        again = sources[2].fetch(100)
        assert [(d.handle, d.attempts) for d in again] == [(1, 1), (2, 1)]
        # taken back means claimed afresh: a new lease, status still the claim value
        rows = query(
            f"SELECT id, status, claimed_at > clock_timestamp() - interval '5 seconds' "
            f"FROM {quote(orders)} WHERE id IN (1, 2, 3) ORDER BY id"
        )
        assert rows == [(1, 9, True), (2, 9, True), (3, 9, True)]
    finally:
        for source in sources:
            source.close()


def test_a_bad_where_or_a_missing_column_fails_at_start_naming_it(connector, tables):
    from onestep import StartupError

    orders = tables("orders")
    make_orders(orders, 1)
    for options, named in (
        ({"where": "no_such_column = 1"}, "where="),
        ({"where": "status = 'abc'"}, "where="),
        ({"nack": {"state": 2}}, '"state" (nack)'),
        ({"nack": {"Status": 2}}, '"Status" (nack)'),
        ({"lease_column": "leased"}, '"leased" (lease_column)'),
        ({"lease_column": "note"}, "lease_column 'note'"),
        ({"attempts_column": "note"}, "attempts_column 'note'"),
    ):
        spec = {
            "where": "status = 0",
            "claim": {"status": 9},
            "ack": {"status": 1},
            "nack": {"status": 2},
            **options,
        }
        app = OneStepApp("bad")

        @app.task(source=connector.table_queue(orders, **spec))
        def never(ctx: Any, order: Any) -> None: ...

        with pytest.raises(StartupError, match=named.replace("(", r"\(").replace(")", r"\)")):
            app.start()
    missing = connector.table_queue(
        tables("none"),
        where="status = 0",
        claim={"status": 9},
        ack={"status": 1},
        nack={"status": 2},
    )
    with pytest.raises(ValueError, match="does not exist"):
        missing.open()
    assert query(f"SELECT status FROM {quote(orders)}") == [(0,)]


def test_claim_without_nack_and_long_names_are_refused_at_construction(connector):
    with pytest.raises(ValueError, match="nack"):
        connector.table_queue("orders", where="status = 0", claim={"status": 9}, ack={"status": 1})
    with pytest.raises(ValueError, match="63"):
        connector.table_queue(
            "orders", key="k" * 64, where="status = 0", ack={"status": 1}, nack={"status": 2}
        )
    with pytest.raises(ValueError, match="63"):
        connector.incremental("events", cursor=("u" * 64, "id"))


# -- the incremental source -----------------------------------------------------------------


EVENTS_DDL = """CREATE TABLE {} (
    id serial PRIMARY KEY,
    updated_at timestamptz NOT NULL,
    v varchar(20) NOT NULL
)"""

SHARED = datetime.datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=datetime.UTC)


def insert_events(table: str, count: int, at: datetime.datetime = SHARED) -> None:
    values = ", ".join(["(%s, %s)"] * count)
    query(
        f"INSERT INTO {quote(table)} (updated_at, v) VALUES {values}",
        [value for n in range(count) for value in (at, f"v{n}")],
    )


def follow(
    connector: Any, table: str, store: Any, seen: list[int], fail: set[int] = frozenset(), **task
) -> tuple[OneStepApp, Any]:
    source = connector.incremental(
        table, cursor=("updated_at", "id"), batch_size=30, poll_interval_s=0.05, state=store
    )
    app = OneStepApp("follow")
    lock = threading.Lock()

    @app.task(source=source, concurrency=4, **task)
    def record(ctx: Any, row: dict[str, Any]) -> None:
        with lock:
            seen.append(row["id"])
        if row["id"] in fail:
            raise RuntimeError(f"row {row['id']} fails")

    return app, source


def test_incremental_sees_rows_sharing_a_timestamp_once_and_none_twice_after_a_restart(
    connector, tables
):
    events, cursors = tables("events"), tables("cursors")
    query(EVENTS_DDL.format(quote(events)))
    query(f"CREATE INDEX ON {quote(events)} (updated_at, id)")
    insert_events(events, 100)
    store = connector.cursor_store(table=cursors)
    seen: list[int] = []
    app, source = follow(connector, events, store, seen)
    with Running(app):
        wait_until(lambda: source.position() == (SHARED, 100))
    assert sorted(seen) == list(range(1, 101)) and len(seen) == 100

    insert_events(events, 10)
    app, source = follow(connector, events, store, seen)
    with Running(app):
        wait_until(lambda: source.position() == (SHARED, 110))
        later = SHARED + datetime.timedelta(seconds=1)
        query(f"UPDATE {quote(events)} SET updated_at = %s WHERE id = 7", (later,))
        wait_until(lambda: source.position() == (later, 7))
    counts = Counter(seen)
    assert sorted(counts) == list(range(1, 111))
    # every row once, and the updated row once more
    assert {row_id: n for row_id, n in counts.items() if n != 1} == {7: 2}
    assert seen[-1] == 7


def test_a_failing_row_holds_the_stored_cursor_back_until_a_restart(connector, tables):
    events, cursors = tables("events"), tables("cursors")
    query(EVENTS_DDL.format(quote(events)))
    insert_events(events, 20)
    store = connector.cursor_store(table=cursors)
    seen: list[int] = []
    app, source = follow(connector, events, store, seen, fail={5})
    failed = threading.Event()
    app.on_event(lambda event: event.kind == "failed" and failed.set())
    with Running(app):
        assert failed.wait(TIMEOUT)
        wait_until(lambda: len(seen) == 20)
        wait_until(lambda: len(source._progress.unfinished()) == 1)  # the rest finished
    assert source.position() == (SHARED, 4)  # not past the failed row

    again: list[int] = []
    app, source = follow(connector, events, store, again)
    with Running(app):
        wait_until(lambda: source.position() == (SHARED, 20))
    # only the row that had not finished runs again
    assert again == [5]


def test_a_dead_lettered_row_lets_the_cursor_pass(connector, tables):
    events, cursors = tables("events"), tables("cursors")
    query(EVENTS_DDL.format(quote(events)))
    insert_events(events, 10)
    store = connector.cursor_store(table=cursors)
    dead = MemoryQueue("dead")
    seen: list[int] = []
    app, source = follow(connector, events, store, seen, fail={3}, dead_letter=dead)
    with Running(app):
        assert dead.get(timeout=TIMEOUT)["payload"]["id"] == 3
        wait_until(lambda: source.position() == (SHARED, 10))
    assert sorted(seen) == list(range(1, 11))


def test_incremental_uses_the_apps_state_store_when_given_none(connector, tables):
    events = tables("events")
    query(EVENTS_DDL.format(quote(events)))
    insert_events(events, 3)
    source = connector.incremental(events, poll_interval_s=0.05)
    app = OneStepApp("own-state")
    done = threading.Event()

    @app.task(source=source)
    def record(ctx: Any, row: dict[str, Any]) -> None:
        if row["id"] == 3:
            done.set()

    with Running(app):
        assert done.wait(TIMEOUT)
        wait_until(lambda: source.position() == (SHARED, 3))
    assert source.state is app.state
    assert source.state_key == f"own-state:record:cursor:{events}"

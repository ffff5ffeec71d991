"""Leases of the MySQL table queue against a real MariaDB: renewal while a handler runs
longer than lease_s, fencing by the lease token (a worker that lost a row cannot settle
it, and says so), queues without fencing, and the columns an older managed table lacks.

Rival workers here are second TableQueue objects driven from the test thread (claim,
ack, flush, keepalive by hand); tests/faults/test_mysql_lease_faults.py does the same with
real processes.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mysql_support import TIMEOUT, connector, mysql_url, query, quote, statuses, tables

from onestep import OneStepApp
from tests.helpers import running

pytestmark = pytest.mark.integration
__all__ = ["connector", "mysql_url", "tables"]  # fixtures used by name

# The managed table as the first release of the MySQL adapter created it.
WAVE_ONE_DDL = """CREATE TABLE {} (
    `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    `payload` LONGTEXT NOT NULL,
    `status` VARCHAR(16) NOT NULL DEFAULT 'pending',
    `attempts` INT UNSIGNED NOT NULL DEFAULT 0,
    `available_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    `leased_until` DATETIME(6) NULL,
    `last_error` TEXT NULL,
    `created_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    `updated_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
        ON UPDATE CURRENT_TIMESTAMP(6),
    KEY `onestep_claim` (`status`, `available_at`),
    KEY `onestep_lease` (`status`, `leased_until`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""


class Opened:
    """A queue driven by hand on the test thread, as a rival worker."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def __enter__(self) -> Any:
        self.queue.open()
        return self.queue

    def __exit__(self, *exc: Any) -> None:
        self.queue.close()


def expire_leases(table: str) -> None:
    """Let every lease of `table` run out now (as if its worker had paused)."""
    query(
        f"UPDATE {quote(table)} SET leased_until = NOW(6) - INTERVAL 1 SECOND "
        "WHERE status = 'leased'"
    )


def lease_row(table: str, row_id: int) -> tuple[str, Any, str | None]:
    [(status, leased_until, token)] = query(
        f"SELECT status, leased_until, lease_token FROM {quote(table)} WHERE id = %s", (row_id,)
    )
    return status, leased_until, token


@pytest.fixture
def lost_lease_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="onestep.mysql"):
        yield caplog


def lost_lease_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "lost the lease" in r.getMessage()]


# -- renewal ---------------------------------------------------------------------------------


def test_a_handler_longer_than_the_lease_keeps_its_row(connector, tables):
    """lease_s=1 and a 4 s handler: the lease is renewed (leased_until moves forward) and
    a rival worker polling all along never gets the row."""
    jobs = tables("renew")
    worker = connector.table_queue(jobs, lease_s=1, poll_interval_s=0.05)
    row_id = worker.put({"n": 1})
    started, finished, acked = threading.Event(), threading.Event(), threading.Event()
    app = OneStepApp("renewal")
    app.on_event(lambda event: acked.set() if event.kind == "succeeded" else None)

    @app.task(source=worker)
    def slow(ctx: Any, item: Any) -> None:
        started.set()
        threading.Event().wait(4.0)  # the work itself: four lease lengths
        finished.set()

    rival_claims: list[Any] = []
    with running(app), Opened(connector.table_queue(jobs, lease_s=1)) as rival:
        assert started.wait(TIMEOUT)
        status, first_lease, token = lease_row(jobs, row_id)
        assert status == "leased" and token
        last_lease = first_lease
        while not finished.wait(0.1):
            rival_claims += rival.fetch(10)
            status, leased_until, still = lease_row(jobs, row_id)
            if finished.is_set():
                break  # read after the row: the ack only follows the handler's end
            assert (status, still) == ("leased", token)
            last_lease = leased_until
        assert acked.wait(TIMEOUT)
    assert rival_claims == []
    assert (last_lease - first_lease).total_seconds() >= 2.0
    [(status, attempts)] = query(f"SELECT status, attempts FROM {quote(jobs)}")
    assert (status, attempts) == ("done", 1)  # executed once, never re-claimed


def test_keepalive_renews_only_the_rows_still_held(connector, tables):
    jobs = tables("renew")
    queue = connector.table_queue(jobs, lease_s=30)
    queue.put_many([{"n": n} for n in range(3)])
    with Opened(queue):
        first, second, third = queue.fetch(3)
        before = {d.handle: lease_row(jobs, d.handle)[1] for d in (first, second, third)}
        queue.ack(first)
        queue.keepalive()  # flushes the ack, then renews the two others
        after = {d.handle: lease_row(jobs, d.handle) for d in (first, second, third)}
        queue.release(second)
        queue.release(third)
    assert after[first.handle][0] == "done"
    for delivery in (second, third):
        status, leased_until, _ = after[delivery.handle]
        assert status == "leased" and leased_until > before[delivery.handle]
    assert queue.keepalive_interval_s == pytest.approx(10.0)


@pytest.fixture
def host_clock_an_hour_behind() -> Iterator[None]:
    """This process's local clock an hour behind the database's (TZ=Etc/GMT+1 here; the
    server keeps its own time zone), as on a host whose time zone differs from the
    database's: code that took the host's clock for the database's leases an hour short."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Etc/GMT+1"
    time.tzset()
    try:
        [(server_now,)] = query("SELECT NOW(6)")
        skew = (server_now - datetime.datetime.now()).total_seconds()
        assert abs(skew) > 1800, f"the host clock is not skewed from the database's: {skew} s"
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_renewal_extends_the_lease_by_the_databases_clock(
    connector, tables, host_clock_an_hour_behind
):
    """The renewed `leased_until` is the database's NOW(6) plus lease_s, whatever the
    host's clock says (a lease an hour short would let a rival take a running row)."""
    jobs = tables("skew")
    queue = connector.table_queue(jobs, lease_s=30)
    row_id = queue.put({"n": 1})
    with Opened(queue):
        (delivery,) = queue.fetch(1)
        # the handler has run for most of the lease: it runs out in a second
        query(
            f"UPDATE {quote(jobs)} SET leased_until = NOW(6) + INTERVAL 1 SECOND WHERE id = %s",
            (row_id,),
        )
        queue.keepalive()
        [(leased_until, server_now)] = query(
            f"SELECT leased_until, NOW(6) FROM {quote(jobs)} WHERE id = %s", (row_id,)
        )
        queue.release(delivery)
    left = (leased_until - server_now).total_seconds()
    assert 25.0 < left <= 30.0, f"the renewed lease runs out in {left} s, not about 30 s"


# -- fencing ---------------------------------------------------------------------------------


def test_a_worker_that_lost_its_lease_cannot_ack_the_row(connector, tables, lost_lease_log):
    jobs = tables("fence")
    paused, other = connector.table_queue(jobs), connector.table_queue(jobs)
    row_id = paused.put({"n": 1})
    with Opened(paused), Opened(other):
        [mine] = paused.fetch(1)
        expire_leases(jobs)  # the first worker stalled past its lease ...
        [theirs] = other.fetch(1)  # ... and another worker took the row
        assert theirs.handle == row_id and theirs.attempts == 1
        paused.ack(mine)
        paused.flush()  # matches nothing: the token is the other worker's
        assert lease_row(jobs, row_id)[0] == "leased"
        assert mine.meta["lease_lost"] is True
        assert "lease_lost" not in theirs.meta
        [warning] = lost_lease_warnings(lost_lease_log)
        assert f"row(s) {row_id} " in warning and "ack was not written" in warning
        other.ack(theirs)
    [(status, attempts)] = query(f"SELECT status, attempts FROM {quote(jobs)}")
    assert (status, attempts) == ("done", 2)  # the lost execution and the other one


@pytest.mark.parametrize("settle", ["retry", "release", "fail"])
def test_retry_release_and_fail_are_fenced_too(connector, tables, lost_lease_log, settle):
    jobs = tables("fence")
    paused, other = connector.table_queue(jobs), connector.table_queue(jobs)
    row_id = paused.put({"n": 1})
    with Opened(paused), Opened(other):
        [mine] = paused.fetch(1)
        expire_leases(jobs)
        [theirs] = other.fetch(1)
        token = lease_row(jobs, row_id)[2]
        if settle == "retry":
            paused.retry(mine, 60.0)
        elif settle == "release":
            paused.release(mine)
        else:
            paused.fail(mine, RuntimeError("late"))
        paused.flush()
        assert lease_row(jobs, row_id)[0::2] == ("leased", token)
        assert mine.meta["lease_lost"] is True
        assert len(lost_lease_warnings(lost_lease_log)) == 1
        other.ack(theirs)
    assert statuses(jobs) == {"done": 1}


def test_renewal_finds_a_lost_row_and_marks_the_delivery(connector, tables, lost_lease_log):
    """The success event is emitted before the buffered ack is written: a renewal that
    finds the row taken marks the delivery while its handler still runs."""
    jobs = tables("fence")
    paused, other = connector.table_queue(jobs), connector.table_queue(jobs)
    ids = [paused.put({"n": n}) for n in range(2)]
    with Opened(paused), Opened(other):
        kept, lost = paused.fetch(2)
        query(
            f"UPDATE {quote(jobs)} SET leased_until = NOW(6) - INTERVAL 1 SECOND WHERE id = %s",
            (lost.handle,),
        )
        [theirs] = other.fetch(5)
        assert theirs.handle == lost.handle
        paused.keepalive()
        assert lost.meta["lease_lost"] is True
        assert "lease_lost" not in kept.meta
        [warning] = lost_lease_warnings(lost_lease_log)
        assert f"row(s) {lost.handle} " in warning and "another worker claimed" in warning
        paused.ack(lost)  # dropped: not ours
        paused.ack(kept)
        paused.flush()
        assert len(lost_lease_warnings(lost_lease_log)) == 1  # no second warning
        assert lease_row(jobs, lost.handle)[0] == "leased"
        other.ack(theirs)
    assert statuses(jobs) == {"done": 2}
    assert sorted(ids) == sorted([kept.handle, lost.handle])


def test_delete_on_ack_is_fenced(connector, tables, lost_lease_log):
    jobs = tables("fence")
    paused = connector.table_queue(jobs, delete_on_ack=True)
    other = connector.table_queue(jobs, delete_on_ack=True)
    row_id = paused.put({"n": 1})
    with Opened(paused), Opened(other):
        [mine] = paused.fetch(1)
        expire_leases(jobs)
        [theirs] = other.fetch(1)
        paused.ack(mine)
        paused.flush()
        assert lease_row(jobs, row_id)[0] == "leased"  # not deleted under the other worker
        assert mine.meta["lease_lost"] is True
        other.ack(theirs)
    assert query(f"SELECT COUNT(*) FROM {quote(jobs)}") == [(0,)]


def test_without_a_token_column_a_lost_row_can_be_settled_twice(connector, tables):
    """lease_token_column=None: no fencing. What the README warns about: a worker that
    lost its lease acks the row while another worker still runs it."""
    jobs = tables("nofence")
    query(WAVE_ONE_DDL.format(quote(jobs)))
    options = {"auto_create": False, "lease_token_column": None, "meta_column": None}
    paused = connector.table_queue(jobs, **options)
    other = connector.table_queue(jobs, **options)
    row_id = paused.put({"n": 1})
    with Opened(paused), Opened(other):
        [mine] = paused.fetch(1)
        expire_leases(jobs)
        [theirs] = other.fetch(1)
        paused.ack(mine)
        paused.flush()
        assert lease_row_status(jobs, row_id) == "done"  # acked under the other worker
        other.ack(theirs)
    assert paused.describe()["fenced"] is False


def lease_row_status(table: str, row_id: int) -> str:
    [(status,)] = query(f"SELECT status FROM {quote(table)} WHERE id = %s", (row_id,))
    return str(status)


def test_a_row_claimed_again_by_the_same_worker_drops_the_older_claim(
    connector, tables, lost_lease_log
):
    jobs = tables("fence")
    queue = connector.table_queue(jobs)
    row_id = queue.put({"n": 1})
    with Opened(queue):
        [first] = queue.fetch(1)
        expire_leases(jobs)
        [again] = queue.fetch(1)
        assert (first.handle, again.handle) == (row_id, row_id)
        assert first.meta["lease_lost"] is True
        queue.ack(first)  # the older claim settles nothing
        queue.flush()
        assert lease_row(jobs, row_id)[0] == "leased"
        queue.ack(again)
    assert query(f"SELECT status, attempts FROM {quote(jobs)}") == [("done", 2)]


# -- tables from an older onestep, and existing tables -----------------------------------------


def test_a_managed_table_from_the_first_release_gets_the_new_columns(
    connector, tables, caplog: pytest.LogCaptureFixture
):
    jobs = tables("wave1")
    query(WAVE_ONE_DDL.format(quote(jobs)))
    query(f"INSERT INTO {quote(jobs)} (payload) VALUES ('{{\"old\": true}}')")
    queue = connector.table_queue(jobs, poll_interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="onestep.mysql"):
        row_id = queue.put({"new": True}, {"trace": "t-1"})  # adds them on first use
    added = [r.getMessage() for r in caplog.records if "added column" in r.getMessage()]
    assert len(added) == 3 and "`meta`" in added[0] and "`lease_token`" in added[1]
    assert "`priority`" in added[2]
    columns = {row[0] for row in query(f"SHOW COLUMNS FROM {quote(jobs)}")}
    assert {"meta", "lease_token", "priority"} <= columns
    got: list[Any] = []
    app = OneStepApp("upgraded")
    done = threading.Event()

    @app.task(source=queue)
    def handle(ctx: Any, item: Any) -> None:
        got.append((item, dict(ctx.current.meta)))
        if len(got) == 2:
            done.set()

    with running(app):
        assert done.wait(TIMEOUT)
    assert sorted(got, key=lambda pair: pair[1]["id"])[1] == (
        {"new": True},
        {"trace": "t-1", "id": row_id},
    )
    assert statuses(jobs) == {"done": 2}
    queue.create_table()  # idempotent once upgraded


def test_an_existing_table_without_the_token_column_is_refused_with_the_fix(connector, tables):
    jobs = tables("legacy")
    query(WAVE_ONE_DDL.format(quote(jobs)))
    queue = connector.table_queue(jobs, auto_create=False, meta_column=None)
    with pytest.raises(ValueError, match="lacks column") as info:
        queue.create_table()
    message = str(info.value)
    assert "`lease_token` (lease_token_column)" in message
    assert f"ALTER TABLE `{jobs}` ADD COLUMN `lease_token` VARCHAR(64) NULL" in message
    assert "lease_token_column=None" in message
    # the table is left as it was; producers do not need the column, workers do
    assert "lease_token" not in {row[0] for row in query(f"SHOW COLUMNS FROM {quote(jobs)}")}
    assert queue.put({"n": 1}) > 0
    with pytest.raises(ValueError, match="lease_token_column"):
        queue.open()
    query(f"ALTER TABLE {quote(jobs)} ADD COLUMN `lease_token` VARCHAR(64) NULL")
    with Opened(queue):
        [delivery] = queue.fetch(1)
        queue.ack(delivery)
    assert statuses(jobs) == {"done": 1}


def test_a_missing_table_with_auto_create_false_is_named(connector, tables):
    queue = connector.table_queue(tables("absent"), auto_create=False)
    with pytest.raises(ValueError, match="does not exist \\(auto_create=False\\)"):
        queue.put({"n": 1})

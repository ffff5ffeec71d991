"""Leases of the PostgreSQL table queue against a real PostgreSQL: renewal by the server's
clock while a handler runs longer than lease_s, fencing by the lease token (a worker that
lost a row cannot settle it, and says so), queues without fencing, existing tables.

Rival workers here are second TableQueue objects driven from the test thread (fetch,
ack, flush, keepalive by hand); tests/faults/test_postgres_faults.py does the same with
real processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from postgres_support import TIMEOUT, connector, postgres_url, query, quote, statuses, tables

from onestep import OneStepApp, StartupError
from tests.helpers import running

pytestmark = pytest.mark.integration
__all__ = ["connector", "postgres_url", "tables"]  # fixtures used by name

# An existing table with the queue's columns under other names, and no token column.
LEGACY_DDL = """CREATE TABLE {} (
    job_id bigserial PRIMARY KEY,
    body text NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    tries int NOT NULL DEFAULT 0,
    run_after timestamptz NOT NULL DEFAULT now(),
    lease_end timestamptz NULL
)"""


class Opened:
    """A queue driven by hand on the test thread, as a rival worker."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def __enter__(self) -> Any:
        self.queue.open()
        return self.queue

    def __exit__(self, *exc: Any) -> None:
        self.queue.close()


def expire_leases(table: str, column: str = "leased_until", status: str = "status") -> None:
    """Let every lease of `table` run out now (as if its worker had paused)."""
    query(
        f"UPDATE {quote(table)} SET {column} = clock_timestamp() - interval '1 second' "
        f"WHERE {status} = 'leased'"
    )


def lease_row(table: str, row_id: int) -> tuple[str, Any, str | None]:
    [(status, leased_until, token)] = query(
        f"SELECT status, leased_until, lease_token FROM {quote(table)} WHERE id = %s", (row_id,)
    )
    return status, leased_until, token


@pytest.fixture
def lost_lease_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="onestep.postgres"):
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
    assert query(f"SELECT status, attempts FROM {quote(jobs)}") == [("done", 1)]


def test_leases_are_reckoned_by_the_servers_clock(connector, tables):
    """The lease ends lease_s after the server's clock at the claim or renewal, whatever
    the clock of the host that claims."""
    jobs = tables("clock")
    queue = connector.table_queue(jobs, lease_s=30)
    queue.put({"n": 1})
    with Opened(queue):
        [(before,)] = query("SELECT clock_timestamp()")
        [delivery] = queue.fetch(1)
        queue.keepalive()
        [(after,)] = query("SELECT clock_timestamp()")
        _, leased_until, _ = lease_row(jobs, delivery.handle)
        assert (leased_until - before).total_seconds() >= 30
        assert (leased_until - after).total_seconds() <= 30
        queue.ack(delivery)


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
    assert statuses(jobs) == {"done": 1, "pending": 2}


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
        paused.keepalive()  # writes the ack: it matches nothing, the token is theirs
        assert lease_row(jobs, row_id)[0] == "leased"
        assert mine.meta["lease_lost"] is True
        assert "lease_lost" not in theirs.meta
        [warning] = lost_lease_warnings(lost_lease_log)
        assert f"row(s) {row_id} " in warning and "ack was not written" in warning
        other.ack(theirs)
    assert query(f"SELECT status, attempts FROM {quote(jobs)}") == [("done", 2)]


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
        paused.keepalive()  # writes the buffered settlements
        assert lease_row(jobs, row_id)[0::2] == ("leased", token)
        assert mine.meta["lease_lost"] is True
        assert len(lost_lease_warnings(lost_lease_log)) == 1
        other.ack(theirs)
    assert statuses(jobs) == {"done": 1}


def test_renewal_finds_a_lost_row_and_marks_the_delivery(connector, tables, lost_lease_log):
    jobs = tables("fence")
    paused, other = connector.table_queue(jobs), connector.table_queue(jobs)
    paused.put_many([{"n": n} for n in range(2)])
    with Opened(paused), Opened(other):
        kept, lost = paused.fetch(2)
        query(
            f"UPDATE {quote(jobs)} SET leased_until = clock_timestamp() - interval '1 second' "
            "WHERE id = %s",
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
        paused.keepalive()  # writes the buffered settlements
        assert len(lost_lease_warnings(lost_lease_log)) == 1  # no second warning
        assert lease_row(jobs, lost.handle)[0] == "leased"
        other.ack(theirs)
    assert statuses(jobs) == {"done": 2}


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
        paused.keepalive()  # writes the buffered settlements
        assert lease_row(jobs, row_id)[0] == "leased"  # not deleted under the other worker
        assert mine.meta["lease_lost"] is True
        other.ack(theirs)
    assert query(f"SELECT count(*) FROM {quote(jobs)}") == [(0,)]


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
        queue.keepalive()  # writes the buffered settlements
        assert lease_row(jobs, row_id)[0] == "leased"
        queue.ack(again)
    assert query(f"SELECT status, attempts FROM {quote(jobs)}") == [("done", 2)]


def test_concurrent_claims_never_hand_out_one_row_twice(connector, tables):
    """Four rivals claim from one table at once (SKIP LOCKED): every row goes to one."""
    jobs = tables("skip")
    connector.table_queue(jobs).put_many([{"n": n} for n in range(400)])
    claimed: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def claim(index: int) -> None:
        queue = connector.table_queue(jobs, batch_size=7)
        with Opened(queue):
            start.wait(TIMEOUT)
            while batch := queue.fetch(7):
                claimed[index] += [delivery.payload["n"] for delivery in batch]
                for delivery in batch:
                    queue.ack(delivery)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [n for batch in claimed for n in batch]
    assert sorted(every) == list(range(400))
    assert statuses(jobs) == {"done": 400}


# -- existing tables ---------------------------------------------------------------------------


def test_an_existing_table_with_its_own_column_names_and_no_fencing(connector, tables):
    jobs = tables("legacy")
    query(LEGACY_DDL.format(quote(jobs)))
    options = {
        "auto_create": False,
        "id_column": "job_id",
        "payload_column": "body",
        "status_column": "state",
        "attempts_column": "tries",
        "available_at_column": "run_after",
        "leased_until_column": "lease_end",
        "last_error_column": None,
        "meta_column": None,
        "lease_token_column": None,
    }
    paused = connector.table_queue(jobs, **options)
    other = connector.table_queue(jobs, **options)
    row_id = paused.put({"n": 1})
    with Opened(paused), Opened(other):
        [mine] = paused.fetch(1)
        assert mine.payload == {"n": 1} and mine.meta == {"id": row_id}
        expire_leases(jobs, "lease_end", "state")
        [theirs] = other.fetch(1)
        paused.ack(mine)
        paused.keepalive()  # writes the ack: without a token, under the other worker
        assert query(f"SELECT state, tries FROM {quote(jobs)}") == [("done", 2)]
        other.ack(theirs)
    assert paused.describe()["fenced"] is False


def test_an_existing_table_without_named_columns_is_refused_with_the_fix(connector, tables):
    jobs = tables("legacy")
    query(f"CREATE TABLE {quote(jobs)} (id bigserial PRIMARY KEY, payload text)")
    app = OneStepApp("missing-columns")

    @app.task(source=connector.table_queue(jobs, auto_create=False))
    def handle(ctx: Any, item: Any) -> None: ...

    with pytest.raises(StartupError, match="lacks column") as info:
        app.start()
    message = str(info.value)
    for option in ("status_column", "attempts_column", "available_at_column"):
        assert option in message
    assert "lease_token_column=None" in message
    # the suggested ALTER TABLE adds every missing column, and then the queue works
    fix = str(info.value.__cause__).split("add them with: ")[1].split("; ")[0]
    assert fix.startswith(f'ALTER TABLE "{jobs}" ADD COLUMN "status" text NOT NULL')
    query(fix)
    queue = connector.table_queue(jobs, auto_create=False, poll_interval_s=0.05)
    queue.put({"n": 1})
    with Opened(queue):
        [delivery] = queue.fetch(1)
        queue.ack(delivery)
    assert statuses(jobs) == {"done": 1}


def test_a_missing_table_with_auto_create_false_is_named(connector, tables):
    queue = connector.table_queue(tables("absent"), auto_create=False)
    with pytest.raises(ValueError, match="does not exist \\(auto_create=False\\)"):
        queue.put({"n": 1})

"""Leases of the MySQL table queue with real worker processes (mysql_worker.py): handlers
that run longer than lease_s keep their rows (renewal), and a worker paused past its
lease (SIGSTOP, then SIGCONT) cannot settle the row another worker took (fencing).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from mysql_support import (
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

pytestmark = pytest.mark.integration
__all__ = ["connector", "mysql_url", "tables"]  # fixtures used by name


def assert_leased_until(table: str, finished: Callable[[], bool]) -> None:
    """Poll the table until `finished()`; the row must be leased at every look before."""
    pause = threading.Event()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = statuses(table)  # read before finished(): an ack only follows the end
        if finished():
            return
        assert seen == {"leased": 1}, f"settled while its holder still ran: {seen}"
        pause.wait(0.05)
    raise AssertionError("the holder's handler did not finish within 30 s")


def test_two_workers_with_handlers_longer_than_the_lease_run_each_row_once(
    connector, tables, tmp_path
):
    """lease_s=2 and a 5 s handler: without renewal every row would be claimed again
    by the other worker after 2 s."""
    jobs, count = tables("long"), 6
    preload(connector, jobs, count)
    options = {"lease_s": 2, "batch_size": 3, "concurrency": 3, "work_s": 5}
    workers = [Worker(jobs, tmp_path / f"w{i}.log", **options) for i in range(2)]
    try:
        wait_until(lambda: statuses(jobs) == {"done": count}, timeout=60)
    finally:
        outcomes = [worker.stop() for worker in workers]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    executed = Counter(n for worker in workers for n in worker.executed())
    print(f"executions per worker: {[len(worker.executed()) for worker in workers]}")
    assert sorted(executed) == list(range(count))
    assert set(executed.values()) == {1}
    assert query(f"SELECT DISTINCT attempts FROM {quote(jobs)}") == [(1,)]
    assert not any("lost the lease" in output for _, output in outcomes)


def test_a_paused_worker_cannot_settle_the_row_another_worker_took(connector, tables, tmp_path):
    """Worker A claims the row and is stopped (SIGSTOP) past its 2 s lease; worker B
    claims it and runs it; A is continued while B still runs. A's handler finishes
    first, but the row stays B's until B's handler returns: B settles it, once, and A
    logs the lost lease (and its delivery's meta says so)."""
    jobs = tables("paused")
    queue = connector.table_queue(jobs)
    queue.create_table()
    options = {"lease_s": 2, "batch_size": 1, "concurrency": 1, "work_s": 8}
    workers = [Worker(jobs, tmp_path / f"w{i}.log", **options) for i in range(2)]
    try:
        wait_until(lambda: all(worker.ready() for worker in workers), timeout=30)
        row_id = queue.put({"n": 0})
        # whichever worker claims the row first is A
        first = wait_until(lambda: next((w for w in workers if w.executed() == [0]), None))
        second = workers[1 - workers.index(first)]
        os.kill(first.process.pid, signal.SIGSTOP)
        wait_until(lambda: second.executed() == [0], timeout=30)  # A's lease expired
        os.kill(first.process.pid, signal.SIGCONT)
        wait_until(lambda: first.finished() == {0: True}, timeout=30)
        # A's handler is done, B's still runs: the row must stay leased until B's
        # handler returned (its "end" line is written before its ack)
        assert_leased_until(jobs, lambda: bool(second.finished()))
        wait_until(lambda: statuses(jobs) == {"done": 1}, timeout=30)
    finally:
        outcomes = {worker.log: worker.stop() for worker in workers}
    first_code, first_output = outcomes[first.log]
    second_code, second_output = outcomes[second.log]
    assert (first_code, second_code) == (0, 0), first_output + second_output
    assert first.succeeded() == {0: True}  # A's success event carries lease_lost
    assert second.finished() == {0: False} and second.succeeded() == {0: False}
    [(status, attempts)] = query(f"SELECT status, attempts FROM {quote(jobs)}")
    # one execution lost with A's lease (counted when B claimed it), one settled by B
    assert (status, attempts) == ("done", 2)
    assert f"lost the lease of row(s) {row_id} " in first_output
    assert "lost the lease" not in second_output

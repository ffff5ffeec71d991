"""Faults on the PostgreSQL table queue, with real worker processes (postgres_worker.py):
two workers and a SIGKILL of one mid-batch (its leases expire, the other takes its
rows), handlers three times longer than the lease (renewal: each row runs once), a
worker paused past its lease (SIGSTOP: it cannot settle the row another worker took),
SIGTERM (claimed rows are released at once), and a PostgreSQL restart mid-stream.
Each counts lost and duplicated rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from postgres_support import (
    Worker,
    connector,
    postgres_url,
    preload,
    query,
    quote,
    server_problem,
    statuses,
    tables,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["connector", "postgres_url", "tables"]  # fixtures used by name


def report(table: str, count: int, executed: list[int]) -> tuple[int, int]:
    """Print and return (lost, duplicated) for rows {"n": 0..count-1}."""
    seen = Counter(executed)
    done = statuses(table).get("done", 0)
    lost = count - done
    duplicated = sum(seen.values()) - len(seen)
    print(f"{table}: {count} rows, {done} done, lost {lost}, duplicated executions {duplicated}")
    return lost, duplicated


def test_two_workers_and_a_sigkill_lose_no_row(connector, tables, tmp_path):
    jobs, count = tables("kill"), 400
    preload(connector, jobs, count)
    options = {"lease_s": 2, "batch_size": 20, "concurrency": 4, "work_s": 0.005}
    killed = Worker(jobs, tmp_path / "killed.log", **options)
    survivor = Worker(jobs, tmp_path / "survivor.log", **options)
    try:
        wait_until(lambda: len(killed.executed()) >= 40 and len(survivor.executed()) >= 40)
        os.kill(killed.process.pid, signal.SIGKILL)
        killed.kill()
        wait_until(lambda: statuses(jobs) == {"done": count}, timeout=60)
    finally:
        code, output = survivor.stop()
    assert code == 0, output
    executed = killed.executed() + survivor.executed()
    lost, duplicated = report(jobs, count, executed)
    assert lost == 0
    assert sorted(set(executed)) == list(range(count))
    assert duplicated <= 20 * 2  # at most the killed worker's claimed batches ran twice
    # a row whose lease expired counts the lost execution: attempts 2 where it ran twice
    twice = [n for n, k in Counter(executed).items() if k > 1]
    if twice:
        rows = query(
            f"SELECT min(attempts) FROM {quote(jobs)} WHERE (payload::jsonb->>'n')::int = ANY(%s)",
            (twice,),
        )
        assert rows[0][0] >= 2


def test_sigterm_releases_claimed_rows_at_once(connector, tables, tmp_path):
    jobs, count = tables("term"), 8
    preload(connector, jobs, count)
    worker = Worker(
        jobs,
        tmp_path / "w.log",
        lease_s=600,
        batch_size=count,
        concurrency=count,
        mode="block",
        shutdown_timeout_s=0.2,
    )
    wait_until(lambda: len(worker.executed()) == count)
    assert statuses(jobs) == {"leased": count}
    started = time.monotonic()
    code, output = worker.stop(timeout=15)
    took = time.monotonic() - started
    assert code == 0, output
    assert took < 10, f"shutdown took {took:.1f} s"
    rows = query(f"SELECT status, attempts, leased_until FROM {quote(jobs)}")
    assert rows == [("pending", 0, None)] * count  # back at once, no attempt counted


# -- leases ----------------------------------------------------------------------------------


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


def test_handlers_three_times_longer_than_the_lease_run_each_row_once(connector, tables, tmp_path):
    """lease_s=2 and a 6 s handler, two workers: without renewal every row would be
    claimed again by the other worker after 2 s."""
    jobs, count = tables("long"), 6
    preload(connector, jobs, count)
    options = {"lease_s": 2, "batch_size": 3, "concurrency": 3, "work_s": 6}
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


# -- PostgreSQL restart ----------------------------------------------------------------------


def _cluster() -> tuple[str, str] | None:
    """(version, name) of the local cluster this user may restart, else None."""
    if os.geteuid() != 0 or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    if not versions or not Path(f"/etc/postgresql/{versions[-1]}/main").is_dir():
        return None
    return versions[-1], "main"


@pytest.fixture
def restartable_postgres(postgres_url) -> Iterator[tuple[str, str]]:
    cluster = _cluster()
    if cluster is None:
        pytest.skip("needs a local PostgreSQL cluster that this (root) user can restart")
    yield cluster
    if server_problem() is not None:  # whatever happened, leave the server running
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "start"], check=False
        )
        wait_until(lambda: server_problem() is None, timeout=60, every=0.2)


def test_a_postgres_restart_mid_stream_loses_nothing(
    restartable_postgres, connector, tables, tmp_path
):
    jobs, count = tables("restart"), 400
    preload(connector, jobs, count)
    worker = Worker(jobs, tmp_path / "w.log", lease_s=30, batch_size=20, work_s=0.05)
    try:
        wait_until(lambda: len(worker.executed()) >= 80)
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", *restartable_postgres, "restart"],
            check=True,
            timeout=120,
        )
        wait_until(lambda: server_problem() is None, timeout=60, every=0.2)
        assert len(worker.executed()) < count, "the restart should come mid-stream"
        assert worker.process.poll() is None, "the worker should survive the restart"
        wait_until(lambda: statuses(jobs) == {"done": count}, timeout=60)
    finally:
        code, output = worker.stop()
    assert code == 0, output
    print(output)
    lost, _duplicated = report(jobs, count, worker.executed())
    assert lost == 0
    assert sorted(set(worker.executed())) == list(range(count))

"""Faults on the MySQL table queue, with real worker processes (mysql_worker.py): SIGKILL
mid-batch (the leases expire, the rows are processed again), SIGTERM (claimed rows are
released at once), and a MariaDB restart mid-stream. Each counts lost and duplicated rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
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
    server_problem,
    statuses,
    tables,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["connector", "mysql_url", "tables"]  # fixtures used by name


def report(table: str, count: int, executed: list[int]) -> tuple[int, int]:
    """Print and return (lost, duplicated) for rows {"n": 0..count-1}."""
    seen = Counter(executed)
    done = statuses(table).get("done", 0)
    lost = count - done
    duplicated = sum(seen.values()) - len(seen)
    print(f"{table}: {count} rows, {done} done, lost {lost}, duplicated executions {duplicated}")
    return lost, duplicated


def test_sigkill_mid_batch_loses_no_row(connector, tables, tmp_path):
    jobs, count = tables("kill"), 300
    preload(connector, jobs, count)
    options = {"lease_s": 2, "batch_size": 20, "concurrency": 4, "work_s": 0.005}
    first = Worker(jobs, tmp_path / "first.log", **options)
    wait_until(lambda: len(first.executed()) >= 60)
    os.kill(first.process.pid, signal.SIGKILL)
    first.kill()
    leased = statuses(jobs).get("leased", 0)
    assert leased > 0, "the kill should leave rows leased"
    second = Worker(jobs, tmp_path / "second.log", **options)
    try:
        wait_until(lambda: statuses(jobs) == {"done": count}, timeout=40)
    finally:
        code, output = second.stop()
    assert code == 0, output
    executed = first.executed() + second.executed()
    lost, duplicated = report(jobs, count, executed)
    assert lost == 0
    assert sorted(set(executed)) == list(range(count))
    assert duplicated <= leased  # only rows claimed by the killed worker ran twice
    # a row whose lease expired counts the lost execution: attempts 2 where it ran twice
    twice = [n for n, k in Counter(executed).items() if k > 1]
    if twice:
        rows = query(
            f"SELECT MIN(attempts) FROM {quote(jobs)} WHERE JSON_VALUE(payload, '$.n') IN "
            f"({', '.join(map(str, twice))})"
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


# -- MariaDB restart -----------------------------------------------------------------------


def _mariadbd_pid() -> int | None:
    found = subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True, text=True)
    pids = found.stdout.split()
    return int(pids[0]) if pids else None


def _start_mariadb(command: list[str]) -> None:
    """Start the server the way it was started (start-stop-daemon, same command line)."""
    subprocess.run(
        ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", command[0]]
        + (["--", *command[1:]] if len(command) > 1 else []),
        check=True,
    )
    wait_until(lambda: server_problem() is None, timeout=60, every=0.2)


@pytest.fixture
def restartable_mariadb(mysql_url) -> Iterator[list[str]]:
    pid = _mariadbd_pid()
    if pid is None or os.geteuid() != 0:
        pytest.skip("needs a local mariadbd that this (root) user can stop and start")
    command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    yield command
    if server_problem() is not None:  # whatever happened, leave the server running
        _start_mariadb(command)


def test_a_mariadb_restart_mid_stream_loses_nothing(
    restartable_mariadb, connector, tables, tmp_path
):
    jobs, count = tables("restart"), 400
    preload(connector, jobs, count)
    worker = Worker(jobs, tmp_path / "w.log", lease_s=30, batch_size=20, work_s=0.01)
    try:
        wait_until(lambda: len(worker.executed()) >= 80)
        pid = _mariadbd_pid()
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: _mariadbd_pid() is None, timeout=30, every=0.1)
        _start_mariadb(restartable_mariadb)
        assert worker.process.poll() is None, "the worker should survive the restart"
        wait_until(lambda: statuses(jobs) == {"done": count}, timeout=45)
    finally:
        code, output = worker.stop()
    assert code == 0, output
    lost, _duplicated = report(jobs, count, worker.executed())
    assert lost == 0
    assert sorted(set(worker.executed())) == list(range(count))

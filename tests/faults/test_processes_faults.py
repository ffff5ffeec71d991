"""`onestep run TARGET --processes N` as real processes, without servers: the shared
webhook port, schedules across workers, restarts and their limit, signals (to the
parent, to its process group), the parent killed, log lines, `app.run(processes=2)`.

Each test starts the command as a child and synchronises on its output lines (read by
threads into queues), never on sleeps. The apps are in processes_apps.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.processes_support import (
    APPS,
    Parent,
    all_started_pids,
    is_gone,
)

SCRIPT = "tests/faults/processes_script.py"


@pytest.fixture
def started(parents: list[Parent]) -> list[Parent]:
    """The parents a test starts (tests/faults/conftest.py kills what is left)."""
    return parents


def start(started: list[Parent], app: str, *args: str, **kwargs) -> Parent:
    parent = Parent(f"{APPS}:{app}", *args, **kwargs)
    started.append(parent)
    return parent


# -- webhooks: one port for every worker ---------------------------------------------


def listening_port(parent: Parent) -> int:
    line = parent.err.wait_for("listening on http://127.0.0.1:")
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match, line
    return int(match.group(1))


def post(port: int, n: int, path: str = "/hook", timeout: float = 30) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        connection.request("POST", path, json.dumps({"n": n}), headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_two_workers_serve_one_webhook_port(started):
    parent = start(started, "webhook_app", "--processes", "2")
    parent.running_workers(2)
    port = listening_port(parent)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def client(first: int) -> None:
        for n in range(first, first + 20):  # a new connection per request
            status, _ = post(port, n)
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=client, args=(k * 20,)) for k in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == {202: 400}
    parent.out.wait_until(lambda lines: len(lines) >= 400, "400 handled requests")
    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()
    handled = [re.fullmatch(r"handled (\d+) by (w\d)", line) for line in parent.out.rest()]
    assert all(handled), parent.out.tail()
    assert sorted(int(m.group(1)) for m in handled) == list(range(400))
    per_worker = Counter(m.group(2) for m in handled)
    print(f"requests per worker: {dict(per_worker)}")
    assert set(per_worker) == {"w1", "w2"}, per_worker


# -- schedules ---------------------------------------------------------------------


def test_a_schedule_fires_each_tick_once_across_two_workers(started, tmp_path):
    env = {"TEST_DB": str(tmp_path / "state.db")}
    parent = start(started, "schedule_app", "--processes", "2", env=env)
    parent.running_workers(2)
    mark = len(parent.out.lines)
    parent.out.wait_until(lambda lines: len(lines) >= mark + 12, "12 ticks with both running")
    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()
    fired = [re.fullmatch(r"fired (\S+) by (w\d)", line) for line in parent.out.rest()]
    assert all(fired), parent.out.tail()
    ticks = Counter(m.group(1) for m in fired)
    duplicated = {tick: n for tick, n in ticks.items() if n > 1}
    print(f"ticks: {len(ticks)}, by worker: {dict(Counter(m.group(2) for m in fired))}")
    assert not duplicated, duplicated
    assert len(ticks) >= 12


def test_a_schedule_on_the_in_memory_store_is_refused(started):
    parent = start(started, "schedule_app_in_memory", "--processes", "2")
    assert parent.wait() == 2
    err = "\n".join(parent.err.rest())
    [error] = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert "schedule task(s) 'beat'" in error
    assert "InMemoryStateStore" in error
    assert "SQLiteStateStore" in error and "MySQLStateStore" in error
    assert "worker w1 started" not in err


# -- deaths and restarts -------------------------------------------------------------


def test_workers_dying_too_often_stop_the_parent_with_exit_1(started):
    parent = start(started, "dies_on_request", "--processes", "2")
    parent.running_workers(2)
    port = listening_port(parent)

    def kill_workers() -> None:
        """Each request ends the worker that takes it; until the parent gives up."""
        for _ in range(1000):
            if parent.process.poll() is not None:
                return
            # a timeout while no worker accepts (both being restarted), a reset, a
            # response cut off by the worker's end
            with contextlib.suppress(OSError, http.client.HTTPException):
                post(port, 0, "/die", timeout=1)

    killer = threading.Thread(target=kill_workers, name="test-killer")
    killer.start()
    try:
        assert parent.wait(60) == 1, parent.err.tail()
    finally:
        killer.join(30)
    err = parent.err.rest()
    errors = [line for line in err if line.startswith("Error: ")]
    assert len(errors) == 1, errors
    assert errors[0].startswith("Error: workers died 6 times within 60 s (limit 5); the last: ")
    assert "(exit code 3)" in errors[0]
    restarts = [line for line in err if "restarting it in" in line]
    assert len(restarts) == 5, restarts
    assert "restarting it in 0.50 s" in restarts[0]
    assert any("restarting it in 1.00 s" in line for line in restarts)  # the backoff doubles
    pids = all_started_pids(err)
    # w1, w2 and the restarts that began before the 6th death (a pending one is cancelled)
    assert 6 <= len(pids) <= 7
    assert all(is_gone(pid) for pid in pids)


def test_a_worker_that_cannot_start_stops_the_parent_at_once(started):
    parent = start(started, "exits_at_startup", "--processes", "2")
    assert parent.wait() == 1
    out, err = parent.out.rest(), parent.err.rest()
    assert out == ["startup hook in w1"]  # w2 never started: the error shows once
    errors = [line for line in err if line.startswith("Error: ")]
    assert errors == ["Error: worker w1 failed to start (exit code 3); no other worker was started"]
    assert len(all_started_pids(err)) == 1


def test_a_target_that_fails_in_the_worker_exits_2(started):
    parent = start(started, "fails_in_workers", "--processes", "2")
    assert parent.wait() == 2
    errors = [line for line in parent.err.rest() if line.startswith("Error: ")]
    assert errors == [
        f"Error: worker w1: factory {APPS}:fails_in_workers raised RuntimeError: "
        "DATABASE_URL is not set",
        "Error: worker w1 failed to start (exit code 2); no other worker was started",
    ]


# -- signals and the parent's death ------------------------------------------------


def test_sigterm_to_the_process_group_drains_every_worker_and_exits_0(started):
    parent = start(started, "forever", "--processes", "2", new_session=True)
    pids = parent.running_workers(2)
    parent.out.wait_until(lambda lines: len(lines) >= 2, "both workers working")
    # the run's private directory (the seam for per-worker files), shared by the workers
    [run_dir] = {line.split(" run dir ")[1] for line in parent.out.lines}
    assert Path(run_dir).is_dir()
    os.killpg(parent.pid, signal.SIGTERM)  # as systemd and docker stop the whole group
    assert parent.wait() == 0, parent.err.tail()
    out, err = parent.out.rest(), parent.err.rest()
    assert sorted(line for line in out if line.startswith("finished")) == [
        "finished in w1",
        "finished in w2",
    ]
    assert not [line for line in err if "killing" in line or line.startswith("Error")]
    assert sum("stopped (exit code 0)" in line for line in err) == 2
    assert all(is_gone(pid) for pid in pids.values())
    assert not Path(run_dir).exists()


def test_a_second_signal_is_logged_and_the_drain_goes_on(started):
    parent = start(started, "forever", "--processes", "2", env={"TEST_DRAIN_S": "3"})
    parent.running_workers(2)
    parent.out.wait_until(lambda lines: len(lines) >= 2, "both workers working")
    parent.signal(signal.SIGINT)
    parent.err.wait_for("got SIGINT; stopping the workers gracefully")
    parent.signal(signal.SIGINT)
    parent.err.wait_for("got SIGINT again: already stopping; waiting for w1, w2")
    assert parent.wait() == 0, parent.err.tail()
    assert parent.out.rest().count("finished in w1") == 1


def test_the_parent_killed_leaves_no_worker_behind(started):
    parent = start(started, "forever", "--processes", "2")
    pids = parent.running_workers(2)
    parent.out.wait_until(lambda lines: len(lines) >= 2, "both workers working")
    parent.kill()  # SIGKILL: the parent cannot tell its workers anything
    # The workers inherited the parent's stdout and stderr: the pipes close once they
    # have all exited.
    out, err = parent.out.rest(), parent.err.rest()
    assert all(is_gone(pid) for pid in pids.values())
    assert sorted(line for line in out if line.startswith("finished")) == [
        "finished in w1",
        "finished in w2",
    ]
    assert sum("the parent process is gone; shutting down" in line for line in err) == 2


def test_a_worker_stuck_at_stop_is_killed_after_the_margin(started):
    parent = Parent("", command=[sys.executable, SCRIPT, "stuck"])
    started.append(parent)
    parent.running_workers(2)
    parent.signal(signal.SIGTERM)
    assert parent.wait() == 1
    out, err = parent.out.rest(), parent.err.rest()
    assert sum("did not stop within 1.2 s; killing it" in line for line in err) == 2
    assert out[-1] == (
        "parent: exit 1: worker(s) did not stop cleanly: w1 (killed at the stop deadline), "
        "w2 (killed at the stop deadline)"
    )


# -- logs ----------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_name_their_worker(started, log_format):
    parent = start(started, "forever", "--processes", "2", "--log-format", log_format)
    parent.running_workers(2)
    parent.out.wait_until(lambda lines: len(lines) >= 2, "both workers working")
    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()
    err = parent.err.rest()
    if log_format == "json":
        records = [json.loads(line) for line in err]
        by_worker = {(r["worker"], r["logger"], r["message"]) for r in records}
    else:
        parsed = [re.search(r" \[(\w+)\] ([\w.]+): (.*)$", line) for line in err]
        assert all(parsed), err
        by_worker = {m.groups() for m in parsed}
    for name in ("w1", "w2"):
        assert (name, "onestep.app", "app 'procs-forever' started with 1 task(s)") in by_worker
        assert (name, "onestep.task.work", "working") in by_worker
    assert ("parent", "onestep.processes", "all 2 workers are running") in by_worker


# -- from Python ---------------------------------------------------------------------


def test_app_run_with_processes_from_a_script(started):
    parent = Parent("", command=[sys.executable, SCRIPT])
    started.append(parent)
    assert parent.wait() == 0, parent.err.tail()
    out = parent.out.rest()
    assert sorted(line for line in out if line.startswith("handled")) == [
        "handled job in w1",
        "handled job in w2",
    ]
    assert out[-1] == "parent: done"

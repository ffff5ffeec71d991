"""`@app.task(executor="process")` as real processes through `onestep run`: handlers in
worker processes, a hard timeout that kills, a crash that fails one message, recycling,
pickling errors, and no process left behind by a stop or by a SIGKILLed app.

Each test starts the command as a child and synchronises on its output lines (read by
threads into queues), never on sleeps. The apps are in process_executor_apps.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest
import thespian  # noqa: F401  (the test extra has it: missing, it fails, never skips)

from tests.faults.processes_support import Parent, is_gone, kill_leftovers

APPS = "tests/faults/process_executor_apps.py"


@pytest.fixture
def started():
    """Apps a test starts, and pids it saw; all killed if the test failed."""
    runs: list[tuple[Parent, list[int]]] = []
    yield runs
    for app, pids in runs:
        app.kill()
        kill_leftovers(pids)


def start(
    started, app: str, env: dict[str, str] | None = None, *args: str
) -> tuple[Parent, list[int]]:
    parent = Parent(f"{APPS}:{app}", *args, env=env)
    pids: list[int] = []
    started.append((parent, pids))
    return parent, pids


def records(parent: Parent, prefix: str) -> list[dict]:
    return [
        json.loads(line[len(prefix) + 1 :]) for line in parent.out.lines if line.startswith(prefix)
    ]


def wait_records(parent: Parent, prefix: str, count: int, timeout: float = 30.0) -> list[dict]:
    parent.out.wait_until(
        lambda lines: sum(line.startswith(prefix + " ") for line in lines) >= count,
        f"{count} {prefix} lines",
        timeout,
    )
    return records(parent, prefix)


def app_pid(parent: Parent) -> int:
    return int(parent.out.wait_for("APP ").split()[1])


def descendants(root: int) -> set[int]:
    """Every process under `root`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def tagged(tag: str) -> set[int]:
    """Every running process with `ONESTEP_PROBE=tag` in its environment: the app started
    with it and every process forked from it or started by one of those (thespian's admin
    and logger, the workers, the watchdog, a handler's children), wherever they moved."""
    needle = f"ONESTEP_PROBE={tag}".encode()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0") and not is_gone(int(entry.name)):
                found.add(int(entry.name))
    return found


def wait_untagged(tag: str, timeout: float) -> None:
    """Wait until no process carries `tag`; AssertionError naming those left."""
    deadline = time.monotonic() + timeout
    while True:
        left = tagged(tag)
        if not left:
            return
        if time.monotonic() >= deadline:
            kill_leftovers(sorted(left))
            raise AssertionError(f"processes left after {timeout} s: {sorted(left)}")
        time.sleep(0.05)  # polling a condition with a deadline


def wait_gone(pids: set[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid for pid in pids if not is_gone(pid)}
        if not alive:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"processes still running after {timeout} s: {sorted(alive)}")
        time.sleep(0.05)  # polling a condition with a deadline


def stop(parent: Parent) -> None:
    parent.signal(signal.SIGINT)
    assert parent.wait() == 0, parent.err.tail()


def test_cpu_bound_messages_run_in_two_child_processes_with_exact_state(started):
    parent, _ = start(started, "cpu_app")
    results = wait_records(parent, "RESULT", 12)
    stop(parent)
    app = app_pid(parent)
    assert sorted(r["n"] for r in results) == list(range(1, 13))  # incr is atomic
    workers = {r["pid"] for r in results}
    assert len(workers) == 2 and app not in workers
    # the context in the worker: payload, meta, attempts, task, config, cancelled
    for r in results:
        assert r["payload"] == r["item"]
        assert r["meta"] == {"tag": f"m-{r['item']}"}
        assert (r["attempts"], r["task"], r["config"]) == (0, "work", "salty")
        assert r["deadline"] is None and r["cancelled"] is False
    # ctx.logger's records reach the app's log
    parent.err.rest()
    assert parent.err.count("onestep.task.work: handled") == 12
    wait_gone(workers)


def test_increments_from_two_workers_in_tight_loops_add_up_exactly(started):
    parent, _ = start(started, "incr_app")
    results = wait_records(parent, "RESULT", 8)
    stop(parent)
    assert len({r["pid"] for r in results}) == 2
    # 8 messages x 300 increments; the last one of all saw the exact total
    assert max(r["last"] for r in results) == 2400


def test_ctx_state_and_ctx_emit_run_in_the_app_process(started):
    parent, _ = start(started, "emit_app")
    results = wait_records(parent, "RESULT", 4)
    stop(parent)
    assert sorted((r["via"], r["item"]) for r in results) == [
        ("default", 1),
        ("default", 2),
        ("named", 1),
        ("named", 2),
    ]
    for r in results:
        if r["via"] == "default":
            assert (r["got"], r["after"]) == (r["item"] * 10, "gone")


def test_the_shutdown_sets_ctx_cancelled_in_the_worker_process(started):
    parent, _ = start(started, "cancel_app")
    line = parent.err.wait_for("WAITING deadline=")
    assert float(line.rsplit("=", 1)[1]) > time.monotonic()  # one clock for all processes
    stop(parent)
    lines = parent.err.rest()
    (cancelled,) = [line for line in lines if "CANCELLED" in line]
    assert "CANCELLED True remaining=" in cancelled


def test_the_channels_directory_is_private_and_removed_at_stop(started, tmp_path):
    parent, _ = start(started, "cancel_app", env={"TMPDIR": str(tmp_path)})
    parent.err.wait_for("WAITING deadline=")  # the worker connected and runs the handler
    (channels,) = list(tmp_path.iterdir())
    assert channels.name.startswith("onestep-")
    assert channels.stat().st_mode & 0o777 == 0o700
    assert list(channels.iterdir()) == []  # a socket file is removed once its worker connected
    stop(parent)
    assert list(tmp_path.iterdir()) == []


def test_a_sleeping_handler_is_killed_at_its_timeout_and_dead_lettered(started):
    parent, pids = start(started, "timeout_app")
    app = app_pid(parent)
    dead = wait_records(parent, "DEAD", 2, timeout=5.0)  # raises after 5 s
    assert sorted(d["payload"] for d in dead) == ["chatty", "sleep"]
    for letter in dead:
        assert letter["kind"] == "timeout" and "was killed" in letter["message"]
    # the timed-out worker itself is gone at once, not only once the app stops
    (sleeper,) = next(d["pids"] for d in dead if d["payload"] == "sleep")
    pids.append(sleeper)
    wait_gone({sleeper}, timeout=2.0)
    assert parent.process.poll() is None  # the app still runs
    # the kill is logged: task, pid, timeout
    parent.err.wait_for(
        f"task 'work': attempt 1 exceeded timeout_s=0.5; its worker process (pid {sleeper})"
    )
    results = wait_records(parent, "RESULT", 3)
    assert sorted(r["item"] for r in results) == [1, 2, 3]
    (admin,) = {r["admin"] for r in results}  # thespian's admin runs in its own session
    tree = descendants(app) | {admin} | descendants(admin) | {r["pid"] for r in results}
    assert len(tree) >= 5  # the watchdog, the admin, its logger, two workers
    pids.extend(tree)
    began = time.monotonic()
    stop(parent)
    # thespian's shutdown after a kill no longer holds the stop for 10 s
    assert time.monotonic() - began < 2.0
    wait_gone(tree)
    parent.out.rest()  # every holder of the stdout pipe (the workers too) has exited
    # thespian's own lines are DEBUG records of onestep.thespian: not at INFO
    assert not [line for line in parent.err.rest() if "++++" in line or "----" in line]


def test_a_crashing_worker_fails_its_message_as_crashed_and_others_go_on(started):
    parent, pids = start(started, "crash_app")
    (dead,) = wait_records(parent, "DEAD", 1)
    results = wait_records(parent, "RESULT", 5)
    stop(parent)
    assert dead["payload"] == "exit" and dead["kind"] == "crashed"
    assert dead["attempts"] == 2 and dead["runs"] == 2  # MaxAttempts(2): ran twice
    assert "died" in dead["message"]
    assert sorted(r["item"] for r in results) == [1, 2, 3, 4, 5]
    pids.extend(r["pid"] for r in results)


def test_max_messages_per_worker_recycles_the_process(started):
    parent, pids = start(started, "recycle_app")
    results = wait_records(parent, "RESULT", 6)
    stop(parent)
    by_item = sorted(results, key=lambda r: r["item"])
    used = [r["pid"] for r in by_item]
    pids.extend(used)
    # one worker (concurrency 1), replaced after every second message
    assert len(set(used)) == 3
    assert used[0] == used[1] != used[2] == used[3] != used[4] == used[5]


def test_spawned_workers_import_the_handler_by_module_and_name(started):
    parent, _ = start(started, "spawn_app")
    results = wait_records(parent, "RESULT", 3)
    stop(parent)
    assert sorted(r["item"] for r in results) == [1, 2, 3]
    assert app_pid(parent) not in {r["pid"] for r in results}


def test_a_result_that_does_not_pickle_fails_that_message(started):
    parent, _ = start(started, "unpicklable_app")
    (dead,) = wait_records(parent, "DEAD", 1)
    (result,) = wait_records(parent, "RESULT", 1)
    stop(parent)
    assert dead["payload"] == "unpicklable" and dead["kind"] == "error"
    assert "does not pickle" in dead["message"] and "task 'work'" in dead["message"]
    assert result["item"] == 1


def test_a_payload_that_does_not_pickle_fails_that_message(started):
    parent, _ = start(started, "lock_payload_app")
    (dead,) = wait_records(parent, "DEAD", 1)
    (result,) = wait_records(parent, "RESULT", 1)
    stop(parent)
    assert dead["kind"] == "error" and "payload (lock) cannot be sent" in dead["message"]
    assert result["item"] == 7


def test_no_worker_admin_or_watchdog_outlives_a_sigkilled_app(started, tmp_path):
    parent, pids = start(started, "hang_app", env={"TMPDIR": str(tmp_path)})
    app = app_pid(parent)
    parent.err.wait_until(lambda lines: sum("HANG pid=" in x for x in lines) >= 2, "2 HANG lines")
    hung = [re.search(r"pid=(\d+) ppid=(\d+)", x) for x in parent.err.lines if "HANG pid=" in x]
    workers = {int(m.group(1)) for m in hung if m}
    admins = {int(m.group(2)) for m in hung if m}
    assert len(workers) == 2 and len(admins) == 1
    # the admin runs in its own session (thespian daemonizes it): its tree, and the app's
    tree = descendants(app) | admins | descendants(next(iter(admins)))
    assert workers <= tree
    pids.extend(tree)
    os.kill(app, signal.SIGKILL)
    parent.wait()
    wait_gone(tree, timeout=10.0)
    parent.out.rest()
    assert list(tmp_path.iterdir()) == []  # the watchdog removed the channels' directory


def test_a_handlers_children_die_with_its_worker_at_a_timeout_or_a_crash(started):
    """The worker leads its own process group: a kill takes what its handler started with
    it, and a child that left the group (setsid) but is still under the worker too."""
    parent, pids = start(started, "children_app")
    dead = {d["payload"]: d for d in wait_records(parent, "DEAD", 2, timeout=15.0)}
    assert (dead["timeout"]["kind"], dead["crash"]["kind"]) == ("timeout", "crashed")
    timed_out, crashed = dead["timeout"]["pids"], dead["crash"]["pids"]
    assert len(timed_out) == 3 and len(crashed) == 2  # worker, plain child (, setsid child)
    pids.extend(timed_out + crashed)
    wait_gone(set(timed_out) | set(crashed), timeout=2.0)
    assert parent.process.poll() is None  # gone with their worker, before the app stops
    stop(parent)


def test_thespian_writes_no_log_file_in_tmpdir(started, tmp_path):
    # THESPLOG_THRESHOLD=DEBUG makes thespian write every line it has (without the fix:
    # $TMPDIR/thespian.log at once)
    env = {"TMPDIR": str(tmp_path), "THESPLOG_THRESHOLD": "DEBUG"}
    parent, _ = start(started, "crash_app", env, "--log-level", "DEBUG")
    wait_records(parent, "RESULT", 5)
    stop(parent)
    assert list(tmp_path.iterdir()) == []
    # thespian's lines went to the app's log, as DEBUG records of onestep.thespian
    lines = parent.err.rest()
    assert any("DEBUG" in x and "onestep.thespian" in x and "++++" in x for x in lines)


@pytest.mark.timeout(120)
def test_sigterm_stops_an_app_whose_every_message_crashes_its_worker(started):
    """Three times: a crash loop stopped by SIGTERM ends within 12 s with no process left
    (the app, thespian's admin and logger, workers, the watchdog)."""
    for _ in range(3):
        tag = uuid.uuid4().hex
        parent, pids = start(started, "crash_loop_app", {"ONESTEP_PROBE": tag})
        wait_records(parent, "DEAD", 1)
        # the crash loop runs for 5 s (the scenario, not a synchronisation)
        loop_until = time.monotonic() + 5.0
        parent.out.wait_until(
            lambda _, until=loop_until: time.monotonic() >= until, "5 s of crashes", 10.0
        )
        assert len(records(parent, "DEAD")) >= 10  # worker after worker crashed
        pids.extend(tagged(tag))
        began = time.monotonic()
        parent.signal(signal.SIGTERM)
        assert parent.wait(timeout=12.0) == 0, parent.err.tail()
        wait_untagged(tag, timeout=max(0.0, 12.0 - (time.monotonic() - began)))


@pytest.mark.parametrize(
    ("app", "moment"),
    [
        ("hang_app", "watchdog"),
        ("hang_app", "admin"),
        ("hang_app", "logger"),
        ("hang_app", "worker"),
        ("hang_spawn_app", "admin"),
        ("hang_spawn_app", "worker"),
    ],
)
def test_a_sigkill_in_the_first_moments_leaves_no_process(started, app, moment):
    """SIGKILL as soon as the watchdog, thespian's admin, its logger or the first worker
    exists: the watchdog, started before the admin, kills what was started (forked
    processes, and spawned ones)."""
    tag = uuid.uuid4().hex
    parent, pids = start(started, app, {"ONESTEP_PROBE": tag})
    # processes besides the app: watchdog 1, then the admin (with thespian's daemonizing
    # fork for a moment) 2, its logger 3, workers 4 and more
    wanted = {"watchdog": 1, "admin": 2, "logger": 3, "worker": 4}[moment]
    deadline = time.monotonic() + 30.0
    while len(tagged(tag) - {parent.pid}) < wanted:
        assert time.monotonic() < deadline and parent.process.poll() is None, parent.err.tail()
        time.sleep(0.002)  # polling a condition with a deadline
    pids.extend(tagged(tag))
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    wait_untagged(tag, timeout=10.0)


def test_a_sigkill_to_the_apps_whole_process_group_leaves_no_process(started):
    """`timeout -s KILL`, a shell's job control: the app and everything in its group get
    SIGKILL at once; the watchdog, in a session of its own, survives it and cleans up."""
    tag = uuid.uuid4().hex
    parent = Parent(f"{APPS}:hang_app", env={"ONESTEP_PROBE": tag}, new_session=True)
    pids: list[int] = []
    started.append((parent, pids))
    parent.err.wait_until(lambda lines: sum("HANG pid=" in x for x in lines) >= 2, "2 HANG lines")
    pids.extend(tagged(tag))
    os.killpg(parent.pid, signal.SIGKILL)
    parent.wait()
    wait_untagged(tag, timeout=10.0)

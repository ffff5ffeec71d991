"""`onestep run` as real processes under the signals and stalls of issue 17: SIGHUP
drains like SIGTERM (one process, and a `--processes 2` parent, to it alone or to its
whole group), Ctrl-C to the process group of a `--processes` run that is still starting
its workers, and a worker whose import of the app hangs (killed at `--start-timeout`,
counted as a death, /healthz 503 while no worker is ready).

Each test synchronises on the command's output lines and on polled conditions with a
deadline, never on sleeps. The apps are in processes_apps.py and hangs_on_import.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.faults.processes_support import APPS, Parent, all_started_pids, is_gone
from tests.faults.test_operations_http import get, serving_url, wait_until

HANGS = "tests/faults/hangs_on_import.py"


def run_dir_of(parent: Parent) -> Path:
    [run_dir] = {line.split(" run dir ")[1] for line in parent.out.lines if " run dir " in line}
    return Path(run_dir)


# -- SIGHUP --------------------------------------------------------------------------


def test_sighup_drains_a_single_process_and_runs_its_shutdown_hooks(parents: list[Parent]):
    parent = Parent(f"{APPS}:forever_with_hook")
    parents.append(parent)
    parent.out.wait_for("working in ")
    parent.signal(signal.SIGHUP)
    assert parent.wait() == 0, parent.err.tail()
    out = parent.out.rest()
    # the message in flight finished (it was not cut off), then the hook ran
    assert out[-2:] == ["finished in ?", "shutdown hook in ?"], out
    assert any("got SIGHUP; shutting down" in line for line in parent.err.rest())


@pytest.mark.parametrize("to_group", [False, True], ids=["to-parent", "to-group"])
def test_sighup_drains_every_worker_and_removes_the_run_dir(parents: list[Parent], to_group: bool):
    parent = Parent(f"{APPS}:forever_with_hook", "--processes", "2", new_session=to_group)
    parents.append(parent)
    pids = parent.running_workers(2)
    parent.out.wait_until(lambda lines: len(lines) >= 2, "both workers working")
    run_dir = run_dir_of(parent)
    assert run_dir.is_dir()
    if to_group:
        os.killpg(parent.pid, signal.SIGHUP)  # a closed terminal or SSH session
    else:
        parent.signal(signal.SIGHUP)
    assert parent.wait() == 0, parent.err.tail()
    out, err = parent.out.rest(), parent.err.rest()
    assert sorted(line for line in out if not line.startswith("working")) == [
        "finished in w1",
        "finished in w2",
        "shutdown hook in w1",
        "shutdown hook in w2",
    ]
    assert any("got SIGHUP; stopping the workers gracefully" in line for line in err)
    assert sum("stopped (exit code 0)" in line for line in err) == 2
    assert all(is_gone(pid) for pid in pids.values())
    assert not run_dir.exists()


# -- Ctrl-C while the workers start ---------------------------------------------------


def test_ctrl_c_to_the_group_while_workers_start_prints_no_traceback_and_exits_0(
    parents: list[Parent],
):
    count = 10
    parent = Parent(f"{APPS}:forever", "--processes", str(count), new_session=True)
    parents.append(parent)
    # w1 runs, then the other nine are started together: interrupt them as they start
    # (interpreters starting, onestep and the app being imported)
    parent.err.wait_until(
        lambda lines: sum(" started (pid " in line for line in lines) == count,
        f"{count} workers started",
    )
    os.killpg(parent.pid, signal.SIGINT)  # Ctrl-C in a terminal: the foreground group
    assert parent.wait(60) == 0, parent.err.tail()
    err = parent.err.rest()
    text = "\n".join(err)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert not [line for line in err if line.startswith("Error")]
    assert all(is_gone(pid) for pid in all_started_pids(err))


# -- a worker whose import hangs ------------------------------------------------------


def health(url: str) -> tuple[int, dict]:
    status, body = get(url + "healthz")
    return status, json.loads(body)


def test_a_worker_hanging_on_import_is_killed_and_counted_and_healthz_fails(
    parents: list[Parent], tmp_path: Path
):
    parent = Parent(
        HANGS,
        "--processes",
        "2",
        "--start-timeout",
        "2",
        "--http",
        "127.0.0.1:0",
        "--status-interval",
        "0",
        env={"TEST_HANG_DIR": str(tmp_path)},
    )
    parents.append(parent)
    url = serving_url(parent)
    pids = parent.running_workers(2)
    wait_until(lambda: health(url)[0] == 200, "/healthz 200")

    # both workers die; each one's next start hangs while importing the app
    for name in ("w1", "w2"):
        (tmp_path / f"hang-{name}").touch()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)

    _, body = wait_until(
        lambda: (found := health(url))[0] == 503 and found, "/healthz 503 while none is ready"
    )
    assert body["status"] == "failed"
    assert body["problems"]["workers"].startswith("no worker has been ready for ")
    for name in ("w1", "w2"):
        parent.err.wait_for(f"worker {name} (pid ")
        parent.err.wait_until(
            lambda lines, name=name: any(
                re.search(
                    rf"worker {name} \(pid \d+\) was not ready within 2 s of its start; "
                    "killing it",
                    line,
                )
                for line in lines
            ),
            f"{name} killed at the start timeout",
        )
        parent.err.wait_until(
            lambda lines, name=name: any(
                re.search(
                    rf"worker {name} \(pid \d+\) died \(was not ready within 2 s, killed\); "
                    r"restarting it in [\d.]+ s \(\d of at most 5 deaths",
                    line,
                )
                for line in lines
            ),
            f"{name}'s hang counted as a death",
        )
    assert sorted(line for line in parent.out.ready() if line.startswith("hanging")) == [
        "hanging in w1",
        "hanging in w2",
    ]
    # the restarts without a marker run: healthy again
    wait_until(lambda: health(url)[0] == 200, "/healthz 200 again")
    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()
    assert all(is_gone(pid) for pid in all_started_pids(parent.err.rest()))


def test_a_first_worker_hanging_on_import_fails_the_run_with_exit_1(
    parents: list[Parent], tmp_path: Path
):
    (tmp_path / "hang-w1").touch()
    parent = Parent(
        HANGS, "--processes", "2", "--start-timeout", "1", env={"TEST_HANG_DIR": str(tmp_path)}
    )
    parents.append(parent)
    assert parent.wait() == 1, parent.err.tail()
    err = parent.err.rest()
    assert err[-1] == (
        "Error: worker w1 failed to start (was not ready within 1 s, killed); "
        "no other worker was started"
    )
    assert all(is_gone(pid) for pid in all_started_pids(err))

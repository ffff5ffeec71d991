"""The `onestep` command: exit codes, messages, `check` output, and signals.

Most tests run the command in-process with click's CliRunner; a few start a real
process to check the console script, `python -m onestep` and SIGTERM/SIGINT/SIGHUP
handling.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from onestep import __version__

UNIT_DIR = Path(__file__).resolve().parent
REPO = UNIT_DIR.parents[1]
SUBPROCESS_TIMEOUT_S = 30.0


def onestep_command() -> list[str]:
    """The installed console script, or `python -m onestep` where it is not on disk."""
    script = shutil.which("onestep", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "onestep"]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


# -- version and help ------------------------------------------------------------------


def test_version(invoke):
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"onestep {__version__}"


def test_python_dash_m_onestep_version():
    completed = subprocess.run(
        [sys.executable, "-m", "onestep", "--version"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"onestep {__version__}"


def test_help_lists_the_commands(invoke):
    result = invoke("--help")
    assert result.exit_code == 0
    assert "run" in result.stdout
    assert "check" in result.stdout


# -- onestep run: a clean stop -----------------------------------------------------------


def test_run_quickstart_exits_0_and_runs_every_stage():
    completed = subprocess.run(
        [*onestep_command(), "run", "examples/quickstart.py"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    for stage in ("ingest:", "double:", "add_one:", "report:"):
        assert stage in completed.stdout
    results = sorted(int(n) for n in re.findall(r"report:\s+result (\d+)", completed.stdout))
    assert results == [3, 5, 7, 9, 11]
    assert "app 'quickstart' started" in completed.stderr
    assert "app 'quickstart' stopped" in completed.stderr


def test_run_a_factory_target(invoke):
    result = invoke("run", "cli_apps.stops_itself:make_app")
    assert result.exit_code == 0, result.stderr
    assert "startup hook ran" in result.stdout
    assert "app 'stops-itself' stopped" in result.stderr


def test_run_log_format_json(invoke):
    result = invoke("run", "cli_apps.stops_itself:make_app", "--log-format", "json")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert {"level", "logger", "message", "time"} <= set(records[0])
    assert any(
        r["message"] == "app 'stops-itself' stopped (0 unfinished deliveries released)"
        for r in records
    )


def test_run_log_level_warning_hides_info(invoke):
    result = invoke("run", "cli_apps.stops_itself:make_app", "--log-level", "WARNING")
    assert result.exit_code == 0, result.stderr
    assert "started" not in result.stderr


# -- exit code 2: a bad target or option ----------------------------------------------


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("no_such_module_xyz", "module 'no_such_module_xyz' not found"),
        ("cli_apps.imports_missing", "No module named 'onestep_missing_dependency_xyz'"),
        ("cli_apps.apps:missing", "its OneStepApp attributes: app, other_app"),
        ("cli_apps.apps:NOT_AN_APP", "is not a OneStepApp: it is 42 (type int)"),
        ("cli_apps/flask_target.py", "is not a OneStepApp: it is <Flask 'not-onestep'>"),
        ("cli_apps.apps:transform", "is not a OneStepApp: it is transform (type function)"),
        ("cli_apps.apps:returns_a_string", "is not a OneStepApp: it is a factory that returned"),
        ("cli_apps/no_such_file.py", "file 'cli_apps/no_such_file.py' not found"),
        ("cli_apps.apps:broken_factory", "raised RuntimeError: settings file is missing"),
        (
            "cli_apps.exits_on_import",
            "importing module 'cli_apps.exits_on_import' called sys.exit(3) instead of "
            "defining an app",
        ),
        (
            "cli_apps/exits_on_import.py",
            "importing file 'cli_apps/exits_on_import.py' called sys.exit(3)",
        ),
        (
            "cli_apps.apps:exits_factory",
            "factory cli_apps.apps:exits_factory called sys.exit('no config')",
        ),
        (
            "cli_apps.never_fires",
            "ValueError: expression '0 0 31 2 *' matches no date (like February 31st)",
        ),
    ],
)
def test_bad_target_exits_2_with_a_message(invoke, command, target, fragment):
    result = invoke(command, target)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert fragment in result.stderr


def test_run_refuses_an_app_without_tasks(invoke):
    result = invoke("run", "cli_apps.no_tasks")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "Error: app 'empty' has no tasks (register one with @app.task); nothing to run\n"
    )


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_check_prints_an_app_without_tasks_and_exits_2(invoke, as_json):
    result = invoke("check", "cli_apps.no_tasks", *(["--json"] if as_json else []))
    assert result.exit_code == 2
    if as_json:
        assert json.loads(result.stdout)["tasks"] == []
    else:
        assert result.stdout.startswith("app 'empty': 0 task(s)")
    assert result.stderr == (
        "Error: app 'empty' has no tasks (register one with @app.task); "
        "`onestep run` would refuse it\n"
    )


def test_a_target_calling_sys_exit_exits_2_with_a_message_from_the_console_script():
    completed = subprocess.run(
        [*onestep_command(), "run", "cli_apps.exits_on_import"],
        cwd=UNIT_DIR,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith(
        "Error: importing module 'cli_apps.exits_on_import' called sys.exit(3)"
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [("--log-format", "xml"), ("--log-level", "LOUD"), ("--start-timeout", "0")],
)
def test_bad_option_exits_2(invoke, option, value):
    result = invoke("run", "cli_apps.apps", option, value)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.stderr


def test_missing_target_exits_2(invoke):
    result = invoke("run")
    assert result.exit_code == 2
    assert "Missing argument 'TARGET'" in result.stderr


# -- exit code 1: the app crashed -------------------------------------------------------


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error: ")]


def test_startup_hook_failure_exits_1(invoke):
    result = invoke("run", "cli_apps.startup_fails")
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert line.startswith("Error: app 'startup-fails' crashed: ")
    assert "refused the connection" in line
    assert "Traceback" not in result.stderr


def test_the_traceback_is_logged_at_debug(invoke):
    result = invoke("run", "cli_apps.startup_fails", "--log-level", "DEBUG")
    assert result.exit_code == 1
    assert "app 'startup-fails' crashed" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConnectionRefusedError" in result.stderr


def test_source_that_cannot_open_exits_1(invoke):
    result = invoke("run", "cli_apps.source_fails")
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert line.startswith("Error: app 'source-fails' crashed: StartupError: ")
    assert "source 'unreachable' failed to open" in line
    assert "broker.invalid:5672 is unreachable" in line


def test_app_failed_exits_1_with_one_line(invoke):
    result = invoke("run", "cli_apps.app_failed")
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert line == (
        "Error: app 'app-failed' crashed: AppFailed: "
        "source 'jobs' failed 6 times within 60.0s stopping the app"
    )


# -- onestep check -----------------------------------------------------------------------


def test_check_prints_the_task_graph(invoke):
    result = invoke("check", "cli_apps.apps")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith("app 'cli-graph': 2 task(s), state InMemoryStateStore")
    transform, store = text.split("\n\n")[1:]
    expected_transform = {
        "handler": "cli_apps.apps.transform",
        "source": "MemoryQueue 'incoming' (maxsize=0)",
        "emit": "MemoryQueue 'results' (maxsize=0)",
        "dead letter": "MemoryQueue 'failed' (maxsize=0)",
        "retry": "MaxAttempts(max_attempts=3, delay_s=0.5)",
        "timeout": "2.0s",
        "concurrency": "4",
    }
    assert transform.splitlines()[0] == "task 'transform' (sync)"
    assert parse_fields(transform) == expected_transform
    assert store.splitlines()[0] == "task 'store' (async)"
    assert parse_fields(store)["emit"] == "none"
    assert parse_fields(store)["dead letter"] == "none"
    assert parse_fields(store)["retry"] == "NoRetry()"
    assert parse_fields(store)["timeout"] == "none"


def parse_fields(block: str) -> dict[str, str]:
    """`  label   value` lines of one task block -> {label: value}."""
    fields = {}
    for line in block.splitlines()[1:]:
        label, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        fields[label] = value
    return fields


def test_check_json(invoke):
    result = invoke("check", "cli_apps.apps", "--json")
    assert result.exit_code == 0, result.stderr
    graph = json.loads(result.stdout)
    from cli_apps import apps

    assert graph == apps.app.describe()
    transform = graph["tasks"][0]
    assert transform["retry"] == {"type": "MaxAttempts", "max_attempts": 3, "delay_s": 0.5}
    assert transform["dead_letter"] == [{"type": "MemoryQueue", "name": "failed", "maxsize": 0}]
    assert transform["timeout_s"] == 2.0
    assert transform["concurrency"] == 4
    assert transform["async"] is False
    assert graph["tasks"][1]["async"] is True


def test_check_a_factory_target(invoke):
    result = invoke("check", "cli_apps.apps:make_app", "--json")
    assert result.exit_code == 0, result.stderr
    graph = json.loads(result.stdout)
    assert graph["app"] == "cli-factory"
    assert [task["name"] for task in graph["tasks"]] == ["handle"]


def test_check_a_file_target_with_python_dash_m():
    completed = subprocess.run(
        [sys.executable, "-m", "onestep", "check", "examples/quickstart.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    for task in ("ingest", "double", "add_one", "report"):
        assert f"task '{task}'" in completed.stdout


# -- signals -----------------------------------------------------------------------------


class LineReader:
    """Reads a pipe on its own thread so a test can wait for a line with a timeout."""

    def __init__(self, pipe) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._read, args=(pipe,), name="test-pipe-reader", daemon=True
        )
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = SUBPROCESS_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in {timeout}s: {self.lines}") from None
            if line is None:
                raise AssertionError(f"the pipe closed before a line with {text!r}: {self.lines}")
            self.lines.append(line)
            if text in line:
                return line

    def rest(self) -> str:
        """Everything read, once the pipe has closed."""
        self._thread.join(SUBPROCESS_TIMEOUT_S)
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                break
            self.lines.append(line)
        return "".join(self.lines)


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_signal_drains_in_flight_work_and_exits_0(signum):
    process = subprocess.Popen(
        [*onestep_command(), "run", "cli_apps.forever"],
        cwd=UNIT_DIR,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = LineReader(process.stdout), LineReader(process.stderr)
    try:
        stderr.wait_for("app 'forever' started")
        stdout.wait_for("working on job-1")
        process.send_signal(signum)
        returncode = process.wait(SUBPROCESS_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out, err = stdout.rest(), stderr.rest()
    assert returncode == 0, err
    assert "finished job-1" in out
    assert "shutdown hook ran" in out
    assert f"got {signal.Signals(signum).name}; shutting down" in err
    assert "app 'forever' stopped (0 unfinished deliveries released)" in err

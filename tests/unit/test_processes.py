"""`--processes N` without starting processes: the count, the checks that refuse or
annotate an app, `onestep check --processes`, the target a worker imports for
`app.run(processes=N)`, worker names in logs, and the listening sockets a worker
inherits (served by a real webhook server in this process).

The worker processes themselves are tested in tests/faults/test_processes_*faults.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import site
import socket
import sys
import types
from pathlib import Path

import pytest

import onestep
from adapters.webhook import WebhookSource
from onestep import (
    IntervalSource,
    MemoryQueue,
    OneStepApp,
    SQLiteStateStore,
    configure_logging,
)
from onestep.processes import _sockets, _worker_link
from onestep.processes._app_worker import describe_exit
from onestep.processes._preflight import (
    MAX_PROCESSES,
    ProcessesRefused,
    check_processes,
    cpu_count,
    resolve_processes,
    target_of,
)
from tests.helpers import running

UNIT_DIR = Path(__file__).resolve().parent


def app_with(source, *, state=None) -> OneStepApp:
    app = OneStepApp("procs", state=state)

    @app.task(source=source)
    def work(ctx, item): ...

    return app


# -- the count ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "count"), [(1, 1), (2, 2), ("3", 3), (MAX_PROCESSES, 1024)])
def test_resolve_processes(value, count):
    assert resolve_processes(value) == count


def test_auto_is_the_cpu_count():
    assert resolve_processes("auto") == cpu_count() >= 1


@pytest.mark.parametrize("value", [0, -1, MAX_PROCESSES + 1, 1.5, True, "x", "", None])
def test_a_bad_count_is_refused_naming_processes(value):
    with pytest.raises(ValueError, match=r"^processes must be an int from 1 to 1024 or 'auto'"):
        resolve_processes(value)


@pytest.mark.parametrize("value", ["0", "many", "2.5"])
def test_the_cli_refuses_a_bad_count_with_exit_2(invoke, value):
    result = invoke("run", "cli_apps.apps", "--processes", value)
    assert result.exit_code == 2
    assert f"Invalid value for '--processes': {value!r} is not a number of processes" in (
        result.stderr
    )


def test_app_run_refuses_a_bad_count_before_starting():
    app = app_with(MemoryQueue("q"))
    with pytest.raises(ValueError, match="processes must be"):
        app.run(processes=0)
    assert not app.running


def test_describe_exit():
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"


# -- what running in several processes means for an app ------------------------------


@pytest.mark.parametrize(
    "source",
    [
        IntervalSource.every(seconds=1, name="beat"),
        pytest.param("cron", id="CronSource"),
    ],
)
def test_schedules_on_the_in_memory_store_are_refused(source):
    if source == "cron":
        from onestep import CronSource

        source = CronSource("* * * * *", name="beat")
    with pytest.raises(ProcessesRefused) as caught:
        check_processes(app_with(source), 2)
    message = str(caught.value)
    assert "schedule task(s) 'work'" in message
    assert "(InMemoryStateStore): in 2 processes every worker would fire each tick" in message
    assert "SQLiteStateStore('onestep-state.db')" in message
    assert "MySQLStateStore" in message


def test_schedules_on_a_shared_store_are_allowed(tmp_path):
    store = SQLiteStateStore(tmp_path / "state.db")
    try:
        assert check_processes(app_with(IntervalSource.every(seconds=1), state=store), 2) == []
    finally:
        store.close()


def test_a_memory_queue_source_is_noted_as_per_worker():
    [note] = check_processes(app_with(MemoryQueue("jobs")), 3)
    assert note == (
        "task 'work': its source MemoryQueue 'jobs' is per worker: each of the 3 workers has "
        "its own, fed only from inside that worker"
    )


def test_a_webhook_port_is_noted_as_shared():
    [note] = check_processes(app_with(WebhookSource("/in", port=8099)), 2)
    assert note == (
        "task 'work': WebhookSource on 127.0.0.1:8099 is one socket shared by the 2 workers; "
        "each worker queues the requests it accepts"
    )


def test_run_refuses_schedules_on_the_in_memory_store_with_exit_2(invoke):
    result = invoke("run", "cli_apps.schedules:in_memory", "--processes", "2")
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()  # no worker was started, nothing else was logged
    assert line.startswith("Error: app 'beats-in-memory' has schedule task(s) 'beat'")
    assert "SQLiteStateStore" in line


def test_run_refuses_an_app_without_tasks_with_exit_2(invoke):
    result = invoke("run", "cli_apps.no_tasks", "--processes", "2")
    assert result.exit_code == 2
    assert result.stderr.endswith("has no tasks (register one with @app.task); nothing to run\n")


def test_check_with_processes_prints_the_notes(invoke):
    result = invoke("check", "cli_apps.apps", "--processes", "2")
    assert result.exit_code == 0, result.stderr
    tail = result.stdout.split("\n\n")[-1].splitlines()
    assert tail == [
        "in 2 worker processes (each runs every task):",
        "  task 'transform': its source MemoryQueue 'incoming' is per worker: each of the 2 "
        "workers has its own, fed only from inside that worker",
        "  task 'store': its source MemoryQueue 'results' is per worker: each of the 2 "
        "workers has its own, fed only from inside that worker",
    ]


def test_check_with_processes_json(invoke):
    result = invoke("check", "cli_apps.schedules:hooks", "--processes", "auto", "--json")
    assert result.exit_code == 0, result.stderr
    processes = json.loads(result.stdout)["processes"]
    assert processes["workers"] == cpu_count()
    assert processes["notes"] == [
        f"task 'take': WebhookSource on 127.0.0.1:0 is one socket shared by the "
        f"{cpu_count()} workers; each worker queues the requests it accepts"
    ]


def test_check_with_processes_refuses_as_run_would(invoke):
    result = invoke("check", "cli_apps.schedules:in_memory", "--processes", "2")
    assert result.exit_code == 2
    assert result.stdout.startswith("app 'beats-in-memory': 1 task(s)")
    assert result.stderr.startswith("Error: app 'beats-in-memory' has schedule task(s) 'beat'")
    assert invoke("check", "cli_apps.schedules:shared", "--processes", "2").exit_code == 0


def test_check_without_processes_is_unchanged(invoke):
    result = invoke("check", "cli_apps.apps", "--json")
    assert "processes" not in json.loads(result.stdout)


# -- the target a worker imports for app.run(processes=N) --------------------------------


def test_target_of_an_app_in_a_module(monkeypatch):
    module = types.ModuleType("some_pkg.jobs")
    module.app = app = app_with(MemoryQueue("q"))
    monkeypatch.setitem(sys.modules, "some_pkg.jobs", module)
    assert target_of(app) == "some_pkg.jobs:app"


def test_target_of_an_app_in_the_running_script(monkeypatch, tmp_path):
    script = types.ModuleType("__main__")
    script.__file__ = str(tmp_path / "script.py")
    script.pipeline = app = app_with(MemoryQueue("q"))
    monkeypatch.setitem(sys.modules, "__main__", script)
    assert target_of(app) == f"{tmp_path / 'script.py'}:pipeline"


def test_target_of_an_app_run_with_python_dash_m(monkeypatch):
    script = types.ModuleType("__main__")
    script.__spec__ = types.SimpleNamespace(name="myproject.worker")  # type: ignore[assignment]
    script.app = app = app_with(MemoryQueue("q"))
    monkeypatch.setitem(sys.modules, "__main__", script)
    assert target_of(app) == "myproject.worker:app"


def test_an_app_no_module_holds_cannot_run_in_processes():
    app = app_with(MemoryQueue("q"))
    with pytest.raises(ValueError, match="is not a module-level name of the running script"):
        target_of(app)
    with pytest.raises(ValueError, match="assign it at module level"):
        app.run(processes=2)
    assert not app.running


def test_app_run_with_processes_inside_a_worker_is_an_error(monkeypatch):
    monkeypatch.setattr(_worker_link, "current_worker", "w1")
    with pytest.raises(RuntimeError, match=r"under `if __name__ == '__main__':`"):
        app_with(MemoryQueue("q")).run(processes=2)


# -- worker names in the logs ----------------------------------------------------------


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


def test_text_logs_name_the_worker(capsys, restore_logging):
    configure_logging("INFO", "text", worker="w3")
    logging.getLogger("onestep.test").info("hello")
    line = capsys.readouterr().err.strip()
    assert line.endswith(" INFO    [w3] onestep.test: hello")


def test_json_logs_have_a_worker_field(capsys, restore_logging):
    configure_logging("INFO", "json", worker="parent")
    logging.getLogger("onestep.test").info("hello")
    record = json.loads(capsys.readouterr().err)
    assert record["worker"] == "parent"
    assert record["message"] == "hello"


def test_logs_without_a_worker_are_unchanged(capsys, restore_logging):
    configure_logging("INFO", "text")
    logging.getLogger("onestep.test").info("hello")
    assert capsys.readouterr().err.strip().endswith(" INFO    onestep.test: hello")


# -- inherited listening sockets ------------------------------------------------------


@pytest.fixture
def inherited(monkeypatch):
    """A socket bound as the parent binds it, adopted as a worker adopts it."""
    monkeypatch.setattr(_sockets, "_inherited", {})
    parent_side = _sockets.bind("127.0.0.1", 0)
    encoded = json.loads(_sockets.encode({("127.0.0.1", 0): parent_side}))
    assert encoded == [["127.0.0.1", 0, parent_side.fileno()]]
    worker_fd = os.dup(parent_side.fileno())  # the descriptor a worker would inherit
    monkeypatch.setenv(_sockets.ENV_VAR, json.dumps([["127.0.0.1", 0, worker_fd]]))
    assert _sockets.adopt_inherited() == 1
    assert _sockets.ENV_VAR not in os.environ  # not passed on to the app's own processes
    yield parent_side
    for sock in _sockets._inherited.values():
        sock.close()
    parent_side.close()


def test_bind_and_inherit_a_listening_socket(inherited):
    port = inherited.getsockname()[1]
    assert port > 0
    assert _sockets.inherited_socket("127.0.0.1", 8080) is None
    served = _sockets.inherited_socket("127.0.0.1", 0)
    assert served is not None and served.getsockname()[1] == port
    served.close()  # closing what a server was given leaves the inherited socket open
    again = _sockets.inherited_socket("127.0.0.1", 0)
    assert again is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        connection, _ = again.accept()
        connection.close()
    again.close()


def test_a_webhook_server_serves_the_inherited_socket(inherited):
    port = inherited.getsockname()[1]
    source = WebhookSource("/in", port=0)
    assert source.listen_address == ("127.0.0.1", 0)
    app = OneStepApp("inherits")
    seen = MemoryQueue("seen")

    @app.task(source=source, emit=seen)
    def take(ctx, item):
        return item["body"]

    for _ in range(2):  # a restart serves the same socket again
        with running(app):
            assert source.url == f"http://127.0.0.1:{port}/in"
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("POST", "/in", b'{"n": 1}', {"Content-Type": "application/json"})
            assert connection.getresponse().status == 202
            connection.close()
            assert seen.get(timeout=5) == {"n": 1}


def test_a_mounted_webhook_has_no_listen_address():
    source = WebhookSource("/in")
    source.falcon_resource()
    assert source.listen_address is None


def test_a_port_in_use_fails_the_run_before_any_worker_starts():
    from onestep.processes._supervisor import ProcessSupervisor

    taken = _sockets.bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        app = app_with(WebhookSource("/in", port=port))
        supervisor = ProcessSupervisor(app, "unused:app", 2)
        assert supervisor.run() == 1
        assert supervisor.error is not None
        assert supervisor.error.startswith(f"task 'work' cannot listen on 127.0.0.1:{port}: ")
        assert "Address already in use" in supervisor.error
        assert all(worker.pid is None for worker in supervisor.workers)
    finally:
        taken.close()


def test_workers_get_the_parents_interpreter_options(monkeypatch):
    from onestep.processes._app_worker import interpreter_options

    monkeypatch.setattr(sys, "_xoptions", {"dev": True, "importtime": "2"})
    monkeypatch.setattr(sys, "warnoptions", ["error::DeprecationWarning"])
    options = interpreter_options()
    assert options[-5:] == ["-X", "dev", "-X", "importtime=2", "-Werror::DeprecationWarning"]


def test_workers_find_this_checkout_and_not_the_package_directory(monkeypatch):
    """The worker's PYTHONPATH gets the directory that holds the `onestep` package (a
    source checkout), never the package directory itself, where `onestep/http.py` would
    shadow the standard library's `http`."""
    from onestep.processes._supervisor import ProcessSupervisor

    monkeypatch.delenv("PYTHONPATH", raising=False)
    supervisor = ProcessSupervisor(app_with(MemoryQueue("q")), "unused:app", 1)
    env = supervisor.workers[0]._env("/tmp/unused-run-dir", {})
    checkout = str(Path(onestep.__file__).resolve().parents[1])
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    assert str(Path(onestep.__file__).resolve().parent) not in paths
    if checkout not in {str(Path(p).resolve()) for p in site.getsitepackages()}:
        assert paths[0] == checkout

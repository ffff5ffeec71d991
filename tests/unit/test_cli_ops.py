"""`onestep check --connect` and `onestep dlq` on in-process targets (tests/unit/cli_apps/
ops.py): lines, JSON, exit codes, no password in any output, and the refusals that exit 2.
The same commands against RabbitMQ and MariaDB run in tests/integration."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.unit.test_cli import (
    SUBPROCESS_TIMEOUT_S,
    UNIT_DIR,
    onestep_command,
    subprocess_env,
)

# -- check --connect ---------------------------------------------------------------------


def test_check_connect_opens_and_closes_every_endpoint_per_role(invoke):
    result = invoke("check", "cli_apps.ops:connect_ok", "--connect")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.split("\n\n")[-1].splitlines()
    assert lines == [
        "source 'jobs' (MemoryQueue; task 'first'): ok",
        "sink 'between' (MemoryQueue; emit of 'first'): ok",
        "sink 'async-sink' (AsyncSink; dead letter of 'first'): ok",
        "source 'between' (MemoryQueue; task 'second'): ok",
    ]
    from cli_apps import ops

    # each endpoint opened then closed on one thread (an async one on one loop), and a
    # queue that is a sink and a source opened once per role, as in a run
    assert [(name, call) for name, call, _ in ops.CALLS] == [
        ("jobs", "open"),
        ("jobs", "close"),
        ("between", "open"),
        ("between", "close"),
        ("async-sink", "open"),
        ("async-sink", "close"),
        ("between", "open"),
        ("between", "close"),
    ]
    assert len({thread for _, _, thread in ops.CALLS if thread != "async"}) == 1


def test_check_connect_exits_1_naming_what_failed_without_a_password(invoke):
    result = invoke("check", "cli_apps.ops:connect_fails", "--connect")
    assert result.exit_code == 1
    lines = result.stdout.split("\n\n")[-1].splitlines()
    assert lines == [
        "source 'broken-source' (BrokenSource; task 'doomed'): error: ConnectionError: "
        "cannot reach amqp://ops:***@broker.invalid:5672/%2F: refused",
        "sink 'fine' (MemoryQueue; emit of 'doomed'): ok",
        "sink 'broken-sink' (BrokenSink; emit of 'doomed'): error: PermissionError: "
        "the server said: wrong password *** for user ops",
    ]
    assert result.stderr == "Error: 2 of 3 endpoint(s) failed to open\n"
    assert "hunter2" not in result.stdout + result.stderr


def test_check_connect_json_adds_the_connections(invoke):
    result = invoke("check", "cli_apps.ops:connect_fails", "--connect", "--json")
    assert result.exit_code == 1
    graph = json.loads(result.stdout)
    assert graph["app"] == "connect-fails"
    assert [(c["role"], c["name"], c["ok"]) for c in graph["connections"]] == [
        ("source", "broken-source", False),
        ("sink", "fine", True),
        ("sink", "broken-sink", False),
    ]
    assert graph["connections"][0]["uses"] == ["task 'doomed'"]
    assert "hunter2" not in result.stdout


def test_check_without_connect_opens_nothing(invoke):
    result = invoke("check", "cli_apps.ops:connect_fails")
    assert result.exit_code == 0
    assert "error" not in result.stdout


def test_check_connect_binds_a_webhook_port_and_gives_it_back(invoke, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("ONESTEP_TEST_PORT", str(taken.getsockname()[1]))
        result = invoke("check", "cli_apps.ops:webhook_app", "--connect")
    assert result.exit_code == 1
    [line] = result.stdout.split("\n\n")[-1].splitlines()
    assert line.startswith("source 'webhook:/hook' (WebhookSource; task 'hook'): error: ")
    assert "address already in use" in line.lower()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    monkeypatch.setenv("ONESTEP_TEST_PORT", str(free))
    result = invoke("check", "cli_apps.ops:webhook_app", "--connect")
    assert result.exit_code == 0, result.stdout
    assert result.stdout.rstrip().endswith("(WebhookSource; task 'hook'): ok")
    with socket.socket() as again:  # closed: the port is free again
        again.bind(("127.0.0.1", free))


# -- dlq ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["list", "replay", "discard"])
def test_dlq_on_a_memory_queue_exits_2_saying_why(invoke, command):
    result = invoke("dlq", command, "cli_apps.ops:memory_dlq", "--task", "work")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(
        "Error: the dead_letter sink 'dead' of task 'work' is a MemoryQueue: it lives in "
        "the memory of the process that runs the app, so from this command (another "
        "process) it is always empty"
    )


def test_dlq_memory_queue_refusal_from_a_real_process():
    completed = subprocess.run(
        [*onestep_command(), "dlq", "list", "cli_apps.ops:memory_dlq", "--task", "work"],
        cwd=UNIT_DIR,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 2
    assert "is a MemoryQueue: it lives in the memory of the process" in completed.stderr


def test_dlq_list_text_and_json(invoke):
    result = invoke("dlq", "list", "cli_apps.ops:dlq", "--task", "work")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "3 dead letter(s) of task 'work' in 'kept'",
        "- id dl-1: error ValueError: bad 1 (after 2 execution(s))",
        '    payload {"n": 1}',
        '    meta    {"trace": 1}',
        "- id dl-2: error ValueError: bad 2 (after 2 execution(s))",
        '    payload {"n": 2}',
        '    meta    {"trace": 2}',
        "- id dl-4: error ValueError: bad 4 (after 2 execution(s))",
        '    payload {"n": 4}',
        '    meta    {"trace": 4}',
    ]
    result = invoke("dlq", "list", "cli_apps.ops:dlq", "--task", "work", "--json", "--limit", "2")
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [item["id"] for item in listed] == ["dl-1", "dl-2"]
    assert listed[0]["payload"] == {"n": 1}
    assert listed[0]["failure"]["exception_type"] == "ValueError"
    assert listed[0]["meta"] == {"trace": 1}


def test_dlq_replay_and_discard(invoke):
    from onestep.cli import onestep

    result = invoke("dlq", "replay", "cli_apps.ops:dlq", "--task", "work", "--limit", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "replayed 1 dead letter(s) of task 'work' from 'kept' to 'put-source'\n"
    ops = sys.modules["cli_apps.ops"]
    assert ops.put_source.put_back == [({"n": 1}, {"trace": 1}, 0)]
    assert [entry.id for entry in ops.kept.entries] == ["dl-2", "dl-3", "dl-4"]

    # the same module stays loaded within one test: the next commands see the state
    from click.testing import CliRunner

    runner = CliRunner()
    result = runner.invoke(
        onestep, ["dlq", "replay", "cli_apps.ops:dlq", "--task", "work", "--keep-attempts"]
    )
    assert result.exit_code == 0, result.stderr
    assert ops.put_source.put_back[1:] == [({"n": 2}, {"trace": 2}, 2), ({"n": 4}, {"trace": 4}, 2)]
    result = runner.invoke(onestep, ["dlq", "discard", "cli_apps.ops:dlq", "--task", "other"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "discarded 1 dead letter(s) of task 'other' from 'kept'\n"
    assert ops.kept.entries == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "nope"], "Error: app 'dlq' has no task 'nope' (its tasks: 'work', "),
        (["--task", "no_dead_letter"], "Error: task 'no_dead_letter' has no dead_letter sink"),
        (["--task", "two_sinks"], "Error: task 'two_sinks' has 2 dead_letter sinks"),
        (["--task", "two_sinks", "--sink", "three"], "Error: task 'two_sinks' has no dead_letter"),
        (["--task", "work", "--limit", "-1"], "Invalid value for '--limit'"),
    ],
)
def test_dlq_bad_arguments_exit_2(invoke, args, message):
    result = invoke("dlq", "list", "cli_apps.ops:dlq", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_dlq_replay_into_a_memory_queue_source_exits_2(invoke):
    result = invoke("dlq", "replay", "cli_apps.ops:dlq", "--task", "memory_source")
    assert result.exit_code == 2
    assert "reads from 'memory-in', an in-memory queue of the process that runs the app" in (
        result.stderr
    )
    assert len(sys.modules["cli_apps.ops"].kept.entries) == 4  # nothing touched


def test_dlq_needs_a_task(invoke):
    result = invoke("dlq", "list", "cli_apps.ops:dlq")
    assert result.exit_code == 2
    assert "Missing option '--task'" in result.stderr


@pytest.mark.parametrize("command", ["list", "replay", "discard"])
def test_dlq_exits_1_when_the_server_fails(invoke, command):
    result = invoke("dlq", command, "cli_apps.ops:dlq", "--task", "down")
    assert result.exit_code == 1
    doing = {"list": "listing", "replay": "replaying", "discard": "discarding"}[command]
    assert result.stderr == (
        f"Error: {doing} the dead letters of task 'down' in 'down-sink' failed: "
        "ConnectionError: cannot connect to the dead-letter server at db.invalid:3306\n"
    )


# -- run --http / --status-interval ------------------------------------------------------


@pytest.mark.parametrize(("interval", "logs_status"), [("0", False), ("5", True)])
def test_status_interval_zero_turns_the_status_line_off(invoke, monkeypatch, interval, logs_status):
    from onestep.cli import _run as cli_run

    made = []
    real = cli_run.AppMonitor

    def recording(app, **kwargs):
        made.append(real(app, **kwargs))
        return made[-1]

    monkeypatch.setattr(cli_run, "AppMonitor", recording)
    result = invoke(
        "run",
        "cli_apps.stops_itself:make_app",
        "--http",
        "127.0.0.1:0",
        "--status-interval",
        interval,
    )
    assert result.exit_code == 0, result.stderr
    assert len(made) == 1  # --http counts either way
    assert (made[0]._status is not None) is logs_status

"""Every example in examples/ runs to a clean stop by itself and prints what its
docstring promises, both as `python examples/X.py` and as `onestep run examples/X.py`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from onestep import InMemoryMetrics, MemoryQueue, OneStepApp

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TIMEOUT_S = 30.0


def launchers() -> dict[str, list[str]]:
    script = shutil.which("onestep", path=str(Path(sys.executable).parent))
    onestep = [script] if script else [sys.executable, "-m", "onestep"]
    return {"python": [sys.executable], "onestep run": [*onestep, "run"]}


@pytest.fixture(params=sorted(launchers()))
def run_example(request):
    """Run an example with `python` or `onestep run`; return (stdout, stderr)."""
    command = launchers()[request.param]

    def run(name: str, *options: str) -> tuple[str, str]:
        completed = subprocess.run(
            [*command, f"examples/{name}", *options],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout, completed.stderr

    return run


def test_every_example_is_tested_and_documented():
    # the others run in tests/unit/test_schedule.py, test_webhook.py and
    # tests/integration/test_mysql.py and test_rabbitmq.py
    tested = {
        "quickstart",
        "retry_dead_letter",
        "timeout",
        "state",
        "events",
        "schedules",
        "webhook_standalone",
        "webhook_in_falcon_app",
        "mysql_jobs",
        "rabbitmq_pipeline",
        "operations",
    }
    found = {path.stem for path in EXAMPLES.glob("*.py")}
    assert found == tested
    readme = (REPO / "README.md").read_text()
    for stem in found:
        assert f"`{stem}.py`" in readme, f"README does not list examples/{stem}.py"
        source = (EXAMPLES / f"{stem}.py").read_text()
        assert source.startswith('"""'), f"{stem}.py has no module docstring"
        assert f"onestep run examples/{stem}.py" in source
        assert f"python examples/{stem}.py" in source


def test_quickstart(run_example):
    out, _ = run_example("quickstart.py")
    assert "startup: put 5 numbers on 'incoming'" in out
    for number in [1, 2, 3, 4, 5]:
        assert f"ingest:  received {number}" in out
        assert f"double:  {number} -> {number * 2}" in out
        assert f"add_one: {number * 2} -> {number * 2 + 1}" in out
    results = sorted(int(n) for n in re.findall(r"report:\s+result (\d+)", out))
    assert results == [3, 5, 7, 9, 11]
    assert "batch complete, shutting down" in out
    assert out.rstrip().endswith("shutdown: all stages stopped")


def test_retry_dead_letter(run_example):
    out, _ = run_example("retry_dead_letter.py")
    for execution in (1, 2, 3):
        assert f"check_order: order 2, execution {execution}" in out
    assert "check_order: order 2, execution 4" not in out
    assert "check_order: order 1, execution 2" not in out
    assert "accepted: order 1" in out
    assert "accepted: order 3" in out
    [dead] = [line for line in out.splitlines() if line.startswith("dead letter:")]
    assert "payload={'id': 2, 'amount': -5}" in dead
    assert "kind=error" in dead
    assert "error=ValueError: order 2 has a negative amount" in dead
    assert "executions=3" in dead


def test_timeout(run_example):
    out, _ = run_example("timeout.py")
    assert "render: thumbnail needs 0.05s" in out
    assert "report: thumbnail rendered" in out
    assert "render: video cancelled at the deadline, giving up" in out
    assert "report: video failed, kind=timeout" in out
    assert "report: video rendered" not in out


def test_state(run_example):
    out, _ = run_example("state.py")
    for count, word in enumerate(["apple", "banana", "cherry"], start=1):
        assert f"count_sync:  {word!r} -> count {count}" in out
    for count, word in enumerate(["delta", "echo"], start=1):
        assert f"count_async: {word!r} -> count {count}" in out
    assert "state: state:count_sync:count = 3" in out
    assert "state: state:count_async:count = 2" in out
    assert "state: state:summary:tallies = 5" in out


def test_events(run_example):
    out, _ = run_example("events.py")
    assert sorted(int(n) for n in re.findall(r"collect: (\d+)", out)) == [1, 4, 9, 16]
    [snapshot_line] = [line for line in out.splitlines() if line.startswith("metrics: {")]
    snapshot = json.loads(snapshot_line.removeprefix("metrics: "))
    assert set(snapshot) == {"flaky", "collect"}
    assert snapshot["flaky"]["retried"] == 2
    assert "metrics: retried=2" in out


def test_events_log_format_json():
    script = shutil.which("onestep", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "onestep"]
    completed = subprocess.run(
        [*command, "run", "examples/events.py", "--log-format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    records = [json.loads(line) for line in completed.stderr.splitlines()]
    events = [r for r in records if r["logger"] == "onestep.events"]
    retried = [r for r in events if r["event_kind"] == "retried"]
    assert len(retried) == 2
    assert {r["failure"]["kind"] for r in retried} == {"error"}
    assert {r["app"] for r in events} == {"events"}
    assert {r["task"] for r in events} == {"flaky", "collect"}


def test_operations(run_example):
    out, _ = run_example("operations.py", "--http", "127.0.0.1:0")
    lines = out.splitlines()
    assert "operations: 5 payments queued" in lines
    assert "operator: 2 dead letter(s) of task 'charge' in 'failed-payments'" in lines
    listed = [line for line in lines if line.startswith("- id ")]
    assert [re.sub(r"^- id [0-9a-f]{32}: ", "", line) for line in listed] == [
        "error ValueError: amount must be positive, got -5 (after 2 execution(s))",
        "error ValueError: amount must be positive, got 0 (after 2 execution(s))",
    ]
    assert '    meta    {"requested_by": "customer-2"}' in lines
    assert "operator: replayed 2 dead letter(s)" in lines
    # the replayed payments ran once the operator fixed the cause, and every payment got
    # its receipt
    replay = lines.index("operator: health ok; fixing the cause and replaying")
    assert "charge: payment 2 charged" in lines[replay:]
    assert "charge: payment 4 charged" in lines[replay:]
    assert sorted(int(n) for n in re.findall(r"^receipt: payment (\d+)$", out, re.M)) == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert "shutdown: 5 receipts, 0 dead letter(s) left" in lines
    assert "  connections   onestep check TARGET --connect" in lines
    # read from the app's own /metrics: 3 + 2 replayed succeeded, each bad one retried once
    assert "metrics: charge succeeded 5, retried 2, dead_lettered 2" in lines
    metrics = next(line for line in lines if line.startswith("  metrics       "))
    assert re.fullmatch(r"  metrics       http://127\.0\.0\.1:\d+/metrics", metrics)


def test_shutdown_hooks_see_every_event():
    app = OneStepApp("events-before-hooks")
    metrics = InMemoryMetrics()
    app.on_event(metrics)

    def slow_event_handler(event):
        time.sleep(0.02)  # stands for a handler shipping events to a metrics backend

    app.on_event(slow_event_handler)
    jobs = MemoryQueue("jobs")
    all_done = threading.Event()
    seen_in_hook = []

    @app.task(source=jobs)
    def work(ctx, item):
        if ctx.state.incr("done") == 5:
            all_done.set()

    @app.on_shutdown
    def read_metrics(app):
        seen_in_hook.append(metrics.count("succeeded"))

    app.start()
    try:
        for number in range(5):
            jobs.put(number)
        assert all_done.wait(TIMEOUT_S)
    finally:
        app.stop()
    assert metrics.count("succeeded") == 5
    assert seen_in_hook == [5]

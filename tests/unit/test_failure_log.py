"""The failure log (issue 22 item 1): `onestep run` writes one WARNING per retry and one
ERROR per dead letter naming the task and the error, in text and in JSON with the same
fields; `--quiet-failures` keeps only the ERROR lines; a flood is summed up."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from actors import Failure, FailureLog

REPO = Path(__file__).resolve().parents[2]

APP = textwrap.dedent(
    """
    from onestep import MaxAttempts, MemoryQueue, OneStepApp, Sink

    app = OneStepApp("shop")
    orders = MemoryQueue("orders")
    orders.put({"order": 7})


    class Dead(Sink):
        def publish(self, body, meta=None):
            app.request_shutdown()  # the one message is dead-lettered: stop


    @app.task(source=orders, retry=MaxAttempts(2), dead_letter=Dead())
    def charge(ctx, item):
        raise ValueError("card declined")
    """
)


def run_app(tmp_path: Path, *options: str) -> str:
    """Run the app under `onestep run` in a subprocess; its stderr."""
    path = tmp_path / "shop_app.py"
    path.write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("ONESTEP_QUIET_FAILURES", None)
    completed = subprocess.run(
        [sys.executable, "-m", "onestep", "run", str(path), "--status-interval", "0", *options],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stderr


def test_onestep_run_logs_each_retry_and_the_dead_letter(tmp_path):
    lines = [
        line
        for line in run_app(tmp_path).splitlines()
        if "onestep.failures" in line and "'charge'" in line and "card declined" in line
    ]
    assert len(lines) == 2, lines
    retry, dead = lines
    assert " WARNING " in retry and "attempt 1 of 2" in retry and "ValueError" in retry
    assert "retrying in 0 s" in retry
    assert " ERROR " in dead and "dead-lettered after 2 attempt(s)" in dead


def test_json_logs_carry_the_fields(tmp_path):
    records = [
        json.loads(line)
        for line in run_app(tmp_path, "--log-format", "json").splitlines()
        if line.startswith("{")
    ]
    failures = [r for r in records if r["logger"] == "onestep.failures"]
    assert [(r["level"], r["outcome"]) for r in failures] == [
        ("WARNING", "retry"),
        ("ERROR", "dead_letter"),
    ]
    retry, dead = failures
    assert retry["task"] == "charge" and retry["attempt"] == 1 and retry["max_attempts"] == 2
    assert retry["exception_type"] == "ValueError" and retry["error"] == "card declined"
    assert retry["delay_s"] == 0.0 and retry["failure_kind"] == "error"
    assert dead["attempt"] == 2 and dead["error"] == "card declined"


def test_quiet_failures_keeps_only_the_error_lines(tmp_path):
    lines = [line for line in run_app(tmp_path, "--quiet-failures").splitlines()]
    failures = [line for line in lines if "onestep.failures" in line]
    assert len(failures) == 1, lines
    assert " ERROR " in failures[0] and "card declined" in failures[0]


FAILURE = Failure("error", "ValueError", "card declined", "")


def test_a_flood_is_cut_per_task_then_summed_up_when_its_window_ends(caplog):
    log = FailureLog(cap=3, interval_s=60.0)
    scheduled: list[tuple[float, object, tuple[object, ...]]] = []

    def call_later(delay_s, fn, *args):  # the app's Timer, called by hand
        scheduled.append((delay_s, fn, args))

    log.attach(call_later)
    with caplog.at_level(logging.WARNING, logger="onestep.failures"):
        for attempt in range(10):
            log.retried("charge", attempt + 1, None, FAILURE, 1.0)
        log.failed("other", 1, None, FAILURE)  # another task has its own cap
        lines = [r for r in caplog.records if r.name == "onestep.failures"]
        assert [r.task for r in lines] == ["charge"] * 3 + ["other"]  # type: ignore[attr-defined]
        ((delay_s, fn, args),) = scheduled  # one summary for the flood
        assert 59.0 < delay_s <= 60.0
        fn(*args)  # the window ends
        summary = caplog.records[-1]
        assert "... and 7 more failure line(s)" in summary.getMessage()
        assert summary.suppressed == 7 and summary.task == "charge"  # type: ignore[attr-defined]
        # a new window logs again
        log.retried("charge", 11, None, FAILURE, 1.0)
        assert "attempt 11" in caplog.records[-1].getMessage()


def test_pending_summaries_are_written_when_the_app_stops(caplog):
    log = FailureLog(cap=1, interval_s=60.0)
    log.attach(lambda *args: None)  # a timer that never fires
    with caplog.at_level(logging.WARNING, logger="onestep.failures"):
        for attempt in range(4):
            log.dead_lettered("charge", attempt + 1, 4, FAILURE)
        assert len(caplog.records) == 1
        log.detach(lambda *args: None)  # not the same callable: still flushes
        assert "... and 3 more" in caplog.records[-1].getMessage()


def test_a_level_on_the_logger_turns_the_lines_off(caplog):
    log = FailureLog()
    logging.getLogger("onestep.failures").setLevel(logging.CRITICAL)
    try:
        with caplog.at_level(logging.DEBUG):
            log.retried("charge", 1, 2, FAILURE, 0.0)
            log.dead_lettered("charge", 2, 2, FAILURE)
    finally:
        logging.getLogger("onestep.failures").setLevel(logging.NOTSET)
    assert not [r for r in caplog.records if r.name == "onestep.failures"]


@pytest.mark.parametrize("max_attempts", [None, 4])
def test_the_retry_line_says_attempt_n_of_max(caplog, max_attempts):
    with caplog.at_level(logging.WARNING, logger="onestep.failures"):
        FailureLog().retried("charge", 1, max_attempts, FAILURE, 2.5)
    text = caplog.records[-1].getMessage()
    of = "" if max_attempts is None else " of 4"
    assert text == (
        f"task 'charge': attempt 1{of} failed: ValueError: card declined; retrying in 2.5 s"
    )

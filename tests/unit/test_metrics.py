"""The runtime's counters (actors._stats), the monitors (onestep.ops._metrics), the Prometheus
collector and the HTTP endpoints (onestep.http, through falcon.testing), and the status
line; the CLI and real processes are in tests/faults/test_operations_http.py."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest

from actors import DURATION_BUCKETS, TaskStats
from onestep import MaxAttempts, MemoryQueue, OneStepApp
from onestep.http import add_routes, parse_address
from onestep.ops._metrics import AppMonitor, WorkersMonitor
from onestep.ops._status_line import StatusLine
from tests.helpers import FlakySource, running

TIMEOUT = 10.0


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def samples(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            found[series] = float(value)
    return found


# -- TaskStats ---------------------------------------------------------------------------


def test_task_stats_sum_the_slots_of_every_thread_and_bucket_durations() -> None:
    stats = TaskStats()

    def work() -> None:
        for _ in range(1000):
            stats.emit("succeeded", None, 0.001)
        stats.emit("retried", None, 0.3)
        stats.emit("fetched", None)  # not counted
        stats.emit("started", None)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats.emit("dead_lettered", None, 20.0)  # the outcome, timed once
    assert stats.snapshot()["counts"]["failed"] == 0  # never 1 then back to 0
    stats.emit("failed", None, 20.0)  # the event that follows a dead letter: not counted
    stats.emit("failed", None, 20.0)  # given up on without a dead letter: counted
    snap = stats.snapshot()
    assert snap["counts"] == {
        "succeeded": 4000,
        "retried": 4,
        "failed": 1,
        "dead_lettered": 1,
        "cancelled": 0,
        "skipped": 0,
    }
    buckets = snap["duration"]["buckets"]
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    assert buckets[0] == 4000  # <= 5 ms
    assert buckets[DURATION_BUCKETS.index(0.5)] == 4  # 0.3 s: in (0.25, 0.5]
    assert buckets[-1] == 2  # the two 20 s outcomes: +Inf only
    assert snap["duration"]["count"] == 4006
    assert snap["duration"]["sum"] == pytest.approx(4.0 + 1.2 + 40.0)


# -- the app's monitor and the endpoints ------------------------------------------------


def fifty_and_one(name: str = "ops") -> tuple[OneStepApp, MemoryQueue, MemoryQueue]:
    app = OneStepApp(name)
    jobs, dead = MemoryQueue("jobs"), MemoryQueue("dead")

    @app.task(source=jobs, emit=MemoryQueue("done"), dead_letter=dead, name="t", concurrency=2)
    def t(ctx: Any, item: int) -> int:
        if item == 50:
            raise ValueError("fifty")
        return item

    for n in range(51):
        jobs.put(n)
    return app, jobs, dead


def test_metrics_healthz_readyz_and_the_page_through_falcon() -> None:
    app, jobs, dead = fifty_and_one()
    web = falcon.App()
    add_routes(web, app)
    client = falcon.testing.TestClient(web)

    before = client.simulate_get("/healthz")
    assert before.status_code == 503 and before.json["status"] == "stopped"
    assert client.simulate_get("/readyz").status_code == 503

    with running(app):
        wait_for(lambda: dead.qsize() == 1, "the dead letter")
        wait_for(lambda: jobs.qsize() == 0, "the queue to drain")
        metrics = client.simulate_get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=")
        wait_for(
            lambda: (
                samples(client.simulate_get("/metrics").text)[
                    'onestep_messages_total{app="ops",outcome="succeeded",task="t"}'
                ]
                == 50
            ),
            "50 successes",
        )
        series = samples(client.simulate_get("/metrics").text)
        outcome = 'onestep_messages_total{{app="ops",outcome="{}",task="t"}}'
        assert series[outcome.format("dead_lettered")] == 1
        assert series[outcome.format("failed")] == 0  # a dead-lettered message is not failed
        assert series[outcome.format("retried")] == 0
        assert series['onestep_handler_duration_seconds_count{app="ops",task="t"}'] == 51
        assert series['onestep_inflight{app="ops",task="t"}'] == 0
        assert series['onestep_source_up{app="ops",source="jobs"}'] == 1

        health = client.simulate_get("/healthz")
        assert health.status_code == 200 and health.json == {"status": "ok", "problems": {}}
        ready = client.simulate_get("/readyz")
        assert ready.status_code == 200 and ready.json["ready"] is True
        page = client.simulate_get("/")
        assert page.headers["content-type"].startswith("text/html")
        assert '<span id="app">ops</span>' in page.text
        assert '<meta http-equiv="refresh"' in page.text
        assert "<script" not in page.text and "http" not in page.text.split("<body>")[1]

    after = client.simulate_get("/healthz")
    assert after.status_code == 503
    # counts outlive the run
    assert samples(client.simulate_get("/metrics").text)[outcome.format("succeeded")] == 50


def test_retries_and_failures_without_a_dead_letter_sink_are_counted() -> None:
    app = OneStepApp("retrying")
    jobs = MemoryQueue("jobs")
    done = threading.Event()

    @app.task(source=jobs, retry=MaxAttempts(3), name="flaky")
    def flaky(ctx: Any, item: int) -> None:
        if ctx.current.attempts == 2:
            done.set()
        raise RuntimeError("always")

    monitor = AppMonitor(app)
    jobs.put(1)
    with running(app):
        assert done.wait(TIMEOUT)
        wait_for(lambda: monitor.snapshot()["tasks"]["flaky"]["counts"]["failed"] == 1, "fail")
    counts = monitor.snapshot()["tasks"]["flaky"]["counts"]
    assert counts["retried"] == 2 and counts["failed"] == 1 and counts["dead_lettered"] == 0


def test_readyz_names_a_source_that_is_down_and_restarts_are_counted() -> None:
    source = FlakySource()
    app = OneStepApp("flaky-app")

    @app.task(source=source)
    def noop(ctx: Any, item: Any) -> None:
        return None

    web = falcon.App()
    add_routes(web, app)
    client = falcon.testing.TestClient(web)
    with running(app):
        assert client.simulate_get("/readyz").status_code == 200
        source.fail_next.set()
        assert source.down.wait(TIMEOUT)
        wait_for(lambda: client.simulate_get("/readyz").status_code == 503, "not ready")
        ready = client.simulate_get("/readyz").json
        assert ready["ready"] is False
        assert "connection reset" in ready["problems"]["source 'flaky'"]
        health = client.simulate_get("/healthz")
        assert health.status_code == 200 and health.json["status"] == "degraded"
        series = samples(client.simulate_get("/metrics").text)
        assert series['onestep_source_up{app="flaky-app",source="flaky"}'] == 0
        assert series['onestep_actor_restarts_total{actor="source \'flaky\'",app="flaky-app"}'] == 1
        source.allow_open.set()
        assert source.reopened.wait(TIMEOUT)
        wait_for(lambda: client.simulate_get("/readyz").status_code == 200, "ready again")


def test_the_status_page_escapes_names() -> None:
    app = OneStepApp("<b>app</b> & co")

    @app.task(source=MemoryQueue('q"<i>'), name="<script>alert(1)</script>")
    def task(ctx: Any, item: Any) -> None:
        return None

    web = falcon.App()
    add_routes(web, app)
    page = falcon.testing.TestClient(web).simulate_get("/").text
    assert "<script>" not in page and "<b>app" not in page and '"<i>' not in page
    assert "&lt;b&gt;app&lt;/b&gt; &amp; co" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_status_page_shows_a_task_whose_only_sink_is_its_dead_letter_queue() -> None:
    app = OneStepApp("dlq-only")

    @app.task(source=MemoryQueue("jobs"), dead_letter=MemoryQueue("jobs.dead"))
    def task(ctx: Any, item: Any) -> None:
        return None

    web = falcon.App()
    add_routes(web, app)
    page = falcon.testing.TestClient(web).simulate_get("/").text
    row = page[page.index('<tr data-task="task">') :]
    row = row[: row.index("</tr>")]
    assert "MemoryQueue jobs.dead (dead letters)" in row


def test_add_routes_under_a_prefix() -> None:
    app, _, _ = fifty_and_one()
    web = falcon.App()
    add_routes(web, app, prefix="/ops/")
    client = falcon.testing.TestClient(web)
    assert client.simulate_get("/ops/metrics").status_code == 200
    assert client.simulate_get("/ops").status_code == 200
    assert client.simulate_get("/metrics").status_code == 404


def test_queue_depth_is_cached_and_refreshed_by_the_monitor_thread() -> None:
    app = OneStepApp("depths")
    calls = []
    gate = threading.Event()

    class CountingDepth(MemoryQueue):
        def depth(self) -> int:
            calls.append(1)
            return super().depth()

    jobs = CountingDepth("jobs")

    @app.task(source=jobs, name="slow")
    def slow(ctx: Any, item: Any) -> None:
        gate.wait(TIMEOUT)

    for n in range(5):
        jobs.put(n)
    monitor = AppMonitor(app)
    with running(app):
        try:
            wait_for(lambda: monitor.snapshot()["tasks"]["slow"]["inflight"] == 1, "in flight")
            monitor.tick()  # what the monitor thread does every second
            for _ in range(20):
                monitor.snapshot()
            assert len(calls) == 1  # scrapes read the cache
            assert monitor.snapshot()["sources"]["jobs"]["depth"] == 4
        finally:
            gate.set()


def test_serve_http_serves_and_stops_and_refuses_a_running_app_without_counters() -> None:
    app, _, dead = fifty_and_one("served")
    with app.serve_http("127.0.0.1", 0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with running(app):
            wait_for(lambda: dead.qsize() == 1, "the dead letter")
            with urllib.request.urlopen(server.url + "healthz", timeout=5) as response:
                assert json.loads(response.read())["status"] == "ok"
    other = OneStepApp("late")

    @other.task(source=MemoryQueue("q"))
    def noop(ctx: Any, item: Any) -> None:
        return None

    with running(other), pytest.raises(RuntimeError, match="turn metrics on"):
        other.serve_http("127.0.0.1", 0)


def test_parse_address() -> None:
    assert parse_address("9100") == ("127.0.0.1", 9100)
    assert parse_address("0.0.0.0:8000") == ("0.0.0.0", 8000)
    assert parse_address("[::1]:8000") == ("::1", 8000)
    assert parse_address(":8000") == ("127.0.0.1", 8000)
    for bad in ("", "host", "host:99999", "host:-1"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


# -- the parent of --processes N -----------------------------------------------------------


def write_snapshot(directory: Path, name: str, pid: int, succeeded: int, inflight: int) -> None:
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    buckets[0] = succeeded
    snapshot = {
        "app": "many",
        "pid": pid,
        "running": True,
        "health": {"status": "ok", "problems": {}},
        "ready": True,
        "tasks": {
            "t": {
                "source": "jobs",
                "counts": {
                    "succeeded": succeeded,
                    "failed": 0,
                    "retried": 1,
                    "dead_lettered": 0,
                    "cancelled": 0,
                    "skipped": 0,
                },
                "duration": {"buckets": buckets, "sum": succeeded * 0.001, "count": succeeded},
                "inflight": inflight,
            }
        },
        "sources": {"jobs": {"up": 1, "depth": 7}},
        "restarts": {"source 'jobs'": 1},
    }
    (directory / f"stats-{name}-{pid}.json").write_text(json.dumps(snapshot))


def test_workers_monitor_sums_every_file_and_keeps_gauges_of_live_workers(tmp_path: Path) -> None:
    app = OneStepApp("many")

    @app.task(source=MemoryQueue("jobs"), name="t")
    def t(ctx: Any, item: Any) -> None:
        return None

    write_snapshot(tmp_path, "w1", 101, succeeded=10, inflight=2)
    write_snapshot(tmp_path, "w2", 102, succeeded=20, inflight=3)  # died: counts stay
    write_snapshot(tmp_path, "w2", 103, succeeded=5, inflight=1)  # its replacement
    (tmp_path / "stats-w9-1.json").write_text("{half a fi")  # never read as counts
    workers = [("w1", 101, True), ("w2", 103, True)]
    monitor = WorkersMonitor(app, lambda: workers, lambda: str(tmp_path), lambda: True)
    snap = monitor.snapshot()
    task = snap["tasks"]["t"]
    assert task["counts"]["succeeded"] == 35
    assert task["counts"]["retried"] == 3
    assert task["duration"]["count"] == 35
    assert task["inflight"] == 3  # live workers only
    assert snap["sources"]["jobs"] == {"up": 1, "depth": 7}
    assert snap["restarts"] == {"source 'jobs'": 3}
    assert snap["health"]["status"] == "ok" and snap["ready"]

    workers[1] = ("w2", None, False)  # w2 is down: its last counts stay, not its gauges
    snap = monitor.snapshot()
    assert snap["tasks"]["t"]["counts"]["succeeded"] == 35
    assert snap["tasks"]["t"]["inflight"] == 2
    assert snap["health"] == {"status": "degraded", "problems": {"w2": "not running"}, "workers": 2}
    assert not snap["ready"]
    assert snap["sources"]["jobs"]["up"] == 1  # open in every live worker

    workers[0] = ("w1", None, False)
    assert monitor.snapshot()["sources"]["jobs"] == {"up": 0, "depth": None}


# -- the status line ---------------------------------------------------------------------


def test_the_status_line_logs_what_happened_since_the_last_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def snap(succeeded: int, retried: int, dead: int, inflight: int) -> dict[str, Any]:
        counts = {
            "succeeded": succeeded,
            "failed": 0,
            "retried": retried,
            "dead_lettered": dead,
            "cancelled": 0,
            "skipped": 0,
        }
        return {"tasks": {"t": {"counts": counts, "inflight": inflight}}}

    line = StatusLine(10.0, started_at=0.0)
    start = 0.0
    with caplog.at_level(logging.INFO, logger="onestep.status"):
        line.maybe_log(start + 5, snap(5, 0, 0, 1))  # not due yet
        assert not caplog.records
        line.maybe_log(start + 10.2, snap(10, 2, 1, 3))
        line.maybe_log(start + 20.2, snap(30, 2, 1, 0))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("task 't': 13 messages in 10 s (1.")
    assert messages[0].endswith("3 in flight, 2 retried, 1 dead-lettered")
    assert (
        messages[1]
        == "task 't': 20 messages in 10 s (2.0/s), 0 in flight, 0 retried, 0 dead-lettered"
    )
    assert caplog.records[1].rate == pytest.approx(2.0)


def test_the_monitor_thread_logs_status_lines(caplog: pytest.LogCaptureFixture) -> None:
    app, _, dead = fifty_and_one("lines")
    monitor = AppMonitor(app, status_interval_s=0.2)
    with caplog.at_level(logging.INFO, logger="onestep.status"):
        monitor.start()
        try:
            with running(app):
                wait_for(lambda: dead.qsize() == 1, "the dead letter")
                wait_for(lambda: len(status_lines(caplog)) >= 2, "two status lines")
        finally:
            monitor.stop()
    # beside them only the failure log's line for the dead letter
    assert {r.name for r in caplog.records} <= {"onestep.status", "onestep.failures"}
    assert sum(r.messages for r in status_lines(caplog)) == 51


def status_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "onestep.status"]


def test_no_counters_without_metrics() -> None:
    app, _, _ = fifty_and_one("plain")
    with running(app):
        assert app._system is not None
        assert all(rt.events is None for rt in app._system.runtimes)
    assert app._stats is None

"""`onestep run --http` and `--status-interval` as real processes: the Prometheus counts,
the probes and the status page of a run (one process, and `--processes 2` on RabbitMQ,
where the parent's one endpoint sums the workers and keeps a killed worker's counts),
and the status page's DOM in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.processes_support import APPS, Parent
from tests.helpers import require_chromium
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401

OPS_APPS = "tests/faults/operations_apps.py"
_SERVING = re.compile(r"status page at (http://\S+/)")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[str, float]:
    """`{'name{label="v",...}': value}` of a Prometheus text page, labels sorted."""
    found = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        found[series] = float(value)
    return found


def messages(text: str, app: str, task: str, outcome: str) -> float | None:
    key = f'onestep_messages_total{{app="{app}",outcome="{outcome}",task="{task}"}}'
    return samples(text).get(key)


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def serving_url(parent: Parent) -> str:
    line = parent.err.wait_for("status page at ")
    match = _SERVING.search(line)
    assert match, line
    return match.group(1)


def test_one_process_counts_probes_status_page_and_status_line(parents: list[Parent]) -> None:
    parent = Parent(
        f"{OPS_APPS}:fifty_and_one", "--http", "127.0.0.1:0", "--status-interval", "0.5"
    )
    parents.append(parent)
    url = serving_url(parent)

    def settled() -> str | None:
        status, text = get(url + "metrics")
        done = messages(text, "ops-demo", "t", "dead_lettered") == 1
        return text if status == 200 and done else None

    text = wait_until(settled, "the dead letter in /metrics")
    assert messages(text, "ops-demo", "t", "succeeded") == 50
    assert messages(text, "ops-demo", "t", "failed") == 0
    series = samples(text)
    assert series['onestep_handler_duration_seconds_count{app="ops-demo",task="t"}'] == 51
    assert (
        series['onestep_handler_duration_seconds_bucket{app="ops-demo",le="+Inf",task="t"}'] == 51
    )
    assert series['onestep_inflight{app="ops-demo",task="t"}'] == 0
    assert series['onestep_source_up{app="ops-demo",source="jobs"}'] == 1

    status, body = get(url + "healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = get(url + "readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    status, page = get(url)
    assert status == 200
    assert '<span id="app">ops-demo</span>' in page
    assert '<tr data-task="t">' in page

    # the status line: one per task every 0.5 s, with the counts since the last one
    parent.err.wait_until(
        lambda lines: any("onestep.status" in line and "task 't'" in line for line in lines),
        "a status line",
    )
    line = next(line for line in parent.err.lines if "onestep.status" in line)
    assert re.search(
        r"task 't': \d+ messages in \d+ s \([\d.]+/s\), \d+ in flight, "
        r"\d+ retried, \d+ dead-lettered",
        line,
    ), line
    # every handled message is in exactly one line
    parent.err.wait_until(lambda lines: status_line_total(lines, "t") == 51, "51 in the lines")

    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()


def test_bad_http_address_is_refused(parents: list[Parent]) -> None:
    parent = Parent(f"{OPS_APPS}:fifty_and_one", "--http", "localhost:http")
    parents.append(parent)
    assert parent.wait() == 2
    assert "is not HOST:PORT or PORT" in "\n".join(parent.err.rest())


@pytest.mark.integration
def test_processes_2_on_rabbitmq_sum_every_worker_and_survive_a_kill(
    rabbit: Rabbit, parents: list[Parent]
) -> None:
    total = 300
    jobs, results = rabbit.name("ops-jobs"), rabbit.name("ops-results")
    rabbit.declare(jobs)
    rabbit.declare(results)
    env = {"TEST_AMQP_URL": AMQP_URL, "TEST_JOBS": jobs, "TEST_RESULTS": results}
    parent = Parent(
        f"{APPS}:rabbit_app",
        "--processes",
        "2",
        "--http",
        "127.0.0.1:0",
        "--status-interval",
        "0.5",
        env=env,
    )
    parents.append(parent)
    url = serving_url(parent)
    pids = parent.running_workers(2)
    wait_until(lambda: get(url + "readyz")[0] == 200, "/readyz 200")
    for n in range(total):
        rabbit.publish(jobs, {"id": n})

    def succeeded() -> float | None:
        return messages(get(url + "metrics")[1], "procs-rabbit", "record", "succeeded")

    wait_until(lambda: succeeded() == total, f"{total} successes summed over the workers")
    # the parent's status lines count the sum too, each message in one line
    parent.err.wait_until(
        lambda lines: status_line_total(lines, "record") == total, "status lines summing 300"
    )
    _, body = get(url + "healthz")
    assert json.loads(body)["status"] == "ok"

    # a worker killed: its counts stay, counted once; the replacement starts from 0
    os.kill(pids["w2"], signal.SIGKILL)
    parent.err.wait_for("restarting it")
    assert succeeded() == total
    parent.err.wait_until(
        lambda lines: sum("worker w2 started" in line for line in lines) == 2, "w2 restarted"
    )
    wait_until(lambda: get(url + "readyz")[0] == 200, "/readyz 200 again")
    assert succeeded() == total

    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()
    workers = set()
    while True:
        method, _, body = rabbit.channel.basic_get(results, auto_ack=True)
        if method is None:
            break
        workers.add(json.loads(body)["worker"])
    assert workers == {"w1", "w2"}  # the sum really was over two processes


def status_line_total(lines: list[str], task: str) -> int:
    pattern = re.compile(rf"onestep\.status: task '{task}': (\d+) messages")
    return sum(int(m.group(1)) for line in lines if (m := pattern.search(line)))


def test_status_page_dom_in_headless_chromium(parents: list[Parent], tmp_path: Any) -> None:
    browser = require_chromium()
    parent = Parent(f"{OPS_APPS}:fifty_and_one", "--http", "127.0.0.1:0", "--status-interval", "0")
    parents.append(parent)
    url = serving_url(parent)
    wait_until(
        lambda: messages(get(url + "metrics")[1], "ops-demo", "t", "dead_lettered") == 1,
        "the dead letter",
    )
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert '<span id="app">ops-demo</span>' in dom
    row = re.search(r'<tr data-task="t">(.*?)</tr>', dom, re.S)
    assert row, dom[:2000]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    # task, source, sinks, concurrency, succeeded, failed, retried, dead letters, ...
    assert cells[0] == "t" and cells[1] == "MemoryQueue jobs"
    assert cells[4:8] == ["50", "0", "0", "1"]
    assert 'id="health" class="status ok"' in dom
    # the pipeline drawn: the task and its source as nodes of the inline SVG
    svg = dom[dom.index('<svg id="pipeline"') : dom.index("</svg>")]
    assert 'data-node="t"' in svg and 'data-node="jobs"' in svg
    assert "<script" not in dom
    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()

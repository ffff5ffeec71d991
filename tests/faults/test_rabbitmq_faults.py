"""RabbitMQ faults with a real worker process: SIGKILL mid-stream, SIGTERM drain and a
broker restart. Each test counts lost and duplicated messages (DESIGN §5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika  # type: ignore[import-untyped]
import pytest

from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401

pytestmark = pytest.mark.integration
MESSAGES = 2000
ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("rabbitmq_worker.py")
WORKER_RETRY_DELAY_S = 0.5  # the worker's MaxAttempts delay: its delay queue is cleaned up


def start_worker(jobs: str, results: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(WORKER), AMQP_URL, jobs, results, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the app started (or the worker died)
    if line.strip() != "ready":
        process.kill()
        _, err = process.communicate(timeout=10)
        raise AssertionError(f"worker did not start: {line!r} {err[-2000:]}")
    return process


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def preload(rabbit: Rabbit, jobs: str) -> None:
    for n in range(MESSAGES):
        rabbit.publish(jobs, {"id": n})


def wait_for(rabbit: Rabbit, queue: str, count: int, timeout: float) -> None:
    """Until `queue` holds at least `count` ready messages."""
    deadline = time.monotonic() + timeout
    while rabbit.count(queue) < count:
        assert time.monotonic() < deadline, f"{queue} did not reach {count} messages"
        rabbit.connection.process_data_events(time_limit=0.02)


def drain_ids(rabbit: Rabbit, queue: str) -> list[int]:
    ids = []
    while True:
        method, _, body = rabbit.channel.basic_get(queue, auto_ack=True)
        if method is None:
            return ids
        ids.append(json.loads(body)["id"])


def report(label: str, ids: list[int]) -> Counter[int]:
    counts = Counter(ids)
    lost = MESSAGES - len([n for n in counts if 0 <= n < MESSAGES])
    duplicates = sum(c - 1 for c in counts.values())
    print(f"{label}: processed {len(ids)}, not processed {lost}, duplicates {duplicates}")
    return counts


def test_sigkill_mid_stream_loses_nothing(rabbit: Rabbit, workers: list) -> None:
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    rabbit.delayed(jobs, WORKER_RETRY_DELAY_S)
    rabbit.declare(results)
    preload(rabbit, jobs)
    first = start_worker(jobs, results, "--work-s", "0.001")
    workers.append(first)
    wait_for(rabbit, results, 300, 30)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert rabbit.count(jobs) > 0, "the worker finished before the kill: nothing was in flight"
    workers.append(start_worker(jobs, results))
    wait_for(rabbit, results, MESSAGES, 30)
    counts = report("SIGKILL", drain_ids(rabbit, results))
    assert set(counts) == set(range(MESSAGES))


def test_sigterm_drains_cleanly(rabbit: Rabbit, workers: list) -> None:
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    rabbit.delayed(jobs, WORKER_RETRY_DELAY_S)
    rabbit.declare(results)
    preload(rabbit, jobs)
    worker = start_worker(jobs, results, "--work-s", "0.002")
    workers.append(worker)
    wait_for(rabbit, results, 300, 30)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err[-2000:]
    processed = drain_ids(rabbit, results)
    left = drain_ids(rabbit, jobs)  # released or never fetched: back in the queue
    counts = report("SIGTERM", processed)
    assert set(counts) | set(left) == set(range(MESSAGES))
    assert not set(counts) & set(left), "a processed message was also left in the queue"
    assert sum(counts.values()) == len(counts), "a clean drain processes nothing twice"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def test_broker_restart_mid_stream_loses_nothing_and_the_worker_recovers(
    rabbit: Rabbit, workers: list
) -> None:
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    rabbit.delayed(jobs, WORKER_RETRY_DELAY_S)
    rabbit.declare(results)
    preload(rabbit, jobs)
    worker = start_worker(jobs, results, "--work-s", "0.005", "--concurrency", "4")
    workers.append(worker)
    wait_for(rabbit, results, 200, 30)
    rabbit.connection.close()
    try:
        rabbitmqctl("stop_app")
    finally:
        rabbitmqctl("start_app")
    rabbit.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    rabbit.channel = rabbit.connection.channel()
    # The results queue holds MESSAGES messages once the backlog is through; with the
    # duplicates of a restart, a few originals may still be in flight at that point.
    wait_for(rabbit, results, MESSAGES, 45)
    assert worker.poll() is None, "the worker died instead of reconnecting"
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err[-2000:]
    counts = report("broker restart", drain_ids(rabbit, results))
    left = drain_ids(rabbit, jobs)  # released by the SIGTERM drain: back in the queue
    assert set(counts) | set(left) == set(range(MESSAGES))

"""`onestep run --processes 2` on a RabbitMQ queue, as real processes: both workers take
messages, SIGTERM to the parent drains them losing nothing, and a worker killed with
SIGKILL mid-stream is replaced while the broker redelivers what it had not acked.

Messages are published with the fixture's raw pika client; each result names the worker
(and pid) that processed it, so the test counts per worker, lost and duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest

from tests.faults.processes_support import APPS, Parent, all_started_pids
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401

pytestmark = pytest.mark.integration


def start(parents: list[Parent], jobs: str, results: str, work_s: float) -> Parent:
    env = {
        "TEST_AMQP_URL": AMQP_URL,
        "TEST_JOBS": jobs,
        "TEST_RESULTS": results,
        "TEST_WORK_S": str(work_s),
    }
    parent = Parent(f"{APPS}:rabbit_app", "--processes", "2", env=env)
    parents.append(parent)
    return parent


def publish(rabbit: Rabbit, jobs: str, count: int) -> None:
    for n in range(count):
        rabbit.publish(jobs, {"id": n})


def wait_for_results(rabbit: Rabbit, results: str, count: int, timeout: float = 60) -> None:
    """Until `results` holds at least `count` ready messages."""
    deadline = time.monotonic() + timeout
    while rabbit.count(results) < count:
        assert time.monotonic() < deadline, f"{results} did not reach {count} messages"
        rabbit.connection.process_data_events(time_limit=0.02)


def drain(rabbit: Rabbit, queue: str) -> list[dict]:
    bodies = []
    while True:
        method, _, body = rabbit.channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(json.loads(body))


def test_two_workers_share_a_queue_and_sigterm_drains_losing_nothing(rabbit: Rabbit, parents):
    total = 400
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    rabbit.declare(jobs)
    rabbit.declare(results)
    parent = start(parents, jobs, results, work_s=0.02)
    parent.running_workers(2)
    publish(rabbit, jobs, total)
    wait_for_results(rabbit, results, 150)
    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()
    processed = drain(rabbit, results)
    left = [body["id"] for body in drain(rabbit, jobs)]  # released or never fetched
    ids = Counter(body["id"] for body in processed)
    per_worker = Counter(body["worker"] for body in processed)
    duplicates = sum(n - 1 for n in ids.values())
    print(f"per worker {dict(per_worker)}, left {len(left)}, duplicates {duplicates}")
    assert set(per_worker) == {"w1", "w2"}, per_worker
    assert set(ids) | set(left) == set(range(total)), "a message was lost"
    assert not set(ids) & set(left), "a processed message was also left in the queue"
    assert duplicates == 0, "a clean drain processes nothing twice"


def test_a_killed_worker_is_replaced_and_every_message_is_processed(rabbit: Rabbit, parents):
    total = 600
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    rabbit.declare(jobs)
    rabbit.declare(results)
    parent = start(parents, jobs, results, work_s=0.01)
    pids = parent.running_workers(2)
    publish(rabbit, jobs, total)
    wait_for_results(rabbit, results, 150)
    victim = pids["w1"]
    os.kill(victim, signal.SIGKILL)
    parent.err.wait_for(f"worker w1 (pid {victim}) died (killed by SIGKILL); restarting it")
    parent.err.wait_until(
        lambda lines: sum("worker w1 (pid" in line and "is running" in line for line in lines) == 2,
        "w1 running again",
    )
    processed: list[dict] = []
    deadline = time.monotonic() + 60
    while len({body["id"] for body in processed}) < total:
        assert time.monotonic() < deadline, f"only {len(processed)} results"
        processed += drain(rabbit, results)
        rabbit.connection.process_data_events(time_limit=0.05)
    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()
    processed += drain(rabbit, results)
    ids = Counter(body["id"] for body in processed)
    assert set(ids) == set(range(total)), "a message was lost"
    by_id: dict[int, set[int]] = {}
    for body in processed:
        by_id.setdefault(body["id"], set()).add(body["pid"])
    twice = {n for n, count in ids.items() if count > 1}
    print(f"processed {len(processed)}, duplicates {len(twice)}")
    # Only the killed worker's in-flight messages (up to its prefetch of 10) can be
    # processed twice: once by it (result published, ack lost), once after redelivery.
    assert all(victim in by_id[n] for n in twice), twice
    assert len(twice) <= 10
    assert {body["worker"] for body in processed} == {"w1", "w2"}
    restarted = all_started_pids(parent.err.lines)
    assert len(restarted) == 3 and victim in restarted

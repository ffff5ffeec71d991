"""A rate limit shared by two worker processes (`onestep run --processes 2`) through a
SQLiteStateStore, on a real RabbitMQ queue: the pair together keeps to the limit, and
both take messages."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.processes_support import Parent
from tests.faults.test_processes_rabbitmq_faults import drain, publish, wait_for_results
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401

pytestmark = pytest.mark.integration

APPS = "tests/faults/flow_apps.py"


def test_two_processes_share_a_rate_limit(rabbit: Rabbit, parents, tmp_path: Path) -> None:
    total = 150
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    rabbit.declare(jobs)
    rabbit.declare(results)
    env = {
        "TEST_AMQP_URL": AMQP_URL,
        "TEST_JOBS": jobs,
        "TEST_RESULTS": results,
        "TEST_STATE": str(tmp_path / "state.db"),
        "TEST_RATE": "25/s",
    }
    parent = Parent(f"{APPS}:rate_limited_rabbit_app", "--processes", "2", env=env)
    parents.append(parent)
    parent.running_workers(2)
    publish(rabbit, jobs, total)
    wait_for_results(rabbit, results, total, timeout=60)
    parent.signal(signal.SIGTERM)
    assert parent.wait() == 0, parent.err.tail()
    processed = drain(rabbit, results)
    assert {body["id"] for body in processed} == set(range(total))
    per_worker = Counter(body["worker"] for body in processed)
    stamps = sorted(body["at"] for body in processed)
    span = stamps[-1] - stamps[0]
    print(f"per worker {dict(per_worker)}, span {span:.2f} s")
    # a burst of 25, then 125 more at 25 a second: 5 s for the pair; two limits of
    # their own would have let them through in about 2 s
    assert span >= 4.5, span
    assert set(per_worker) == {"w1", "w2"}, per_worker

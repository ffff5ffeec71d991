"""RabbitMQ priority queues (`queue(name, max_priority=...)`) against a real broker:
messages put before the app starts come out higher priority first, and a retry (at once
or through a delay queue) keeps its priority."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from onestep import MaxAttempts, OneStepApp, RabbitMQConnector
from tests.helpers import running
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401

pytestmark = pytest.mark.integration
TIMEOUT = 30.0


def test_high_priority_messages_put_before_the_app_starts_run_first(rabbit: Rabbit) -> None:
    name = rabbit.name("priority")
    amqp = RabbitMQConnector(AMQP_URL)
    work = amqp.queue(name, max_priority=10)
    work.put_many([["low", i] for i in range(30)])
    work.put_many([["high", i] for i in range(5)], priority=9)
    order: list[tuple[str, int]] = []
    done = threading.Event()
    app = OneStepApp("rabbit-priority")

    @app.task(source=amqp.queue(name, max_priority=10), concurrency=1)
    def handle(ctx: Any, item: Any) -> None:
        order.append((item[0], item[1]))
        if len(order) == 35:
            done.set()

    try:
        with running(app):
            assert done.wait(TIMEOUT), f"handled {len(order)} of 35"
    finally:
        amqp.close()
    assert order[:5] == [("high", i) for i in range(5)]
    assert sorted(order[5:]) == [("low", i) for i in range(30)]


def test_a_retried_high_priority_message_runs_again_before_the_low_ones(rabbit: Rabbit) -> None:
    name = rabbit.name("priority-retry")
    amqp = RabbitMQConnector(AMQP_URL)
    work = amqp.queue(name, max_priority=10)
    work.put("high", priority=5)
    work.put_many([f"low-{i}" for i in range(10)])
    order: list[tuple[str, int]] = []
    done = threading.Event()
    app = OneStepApp("rabbit-priority-retry")

    # prefetch=1: the broker picks each next message once the last one is settled, so
    # the order shows the priority the retry was republished with
    @app.task(
        source=amqp.queue(name, max_priority=10, prefetch=1), concurrency=1, retry=MaxAttempts(3)
    )
    def handle(ctx: Any, item: Any) -> None:
        order.append((item, ctx.current.attempts))
        if item == "high" and ctx.current.attempts < 2:
            raise RuntimeError("fails twice")
        if len(order) == 13:
            done.set()

    try:
        with running(app):
            assert done.wait(TIMEOUT), f"handled {len(order)} of 13: {order}"
    finally:
        amqp.close()
    assert order[:3] == [("high", 0), ("high", 1), ("high", 2)]


def test_a_delayed_retry_comes_back_from_the_delay_queue_with_its_priority(
    rabbit: Rabbit,
) -> None:
    name = rabbit.name("priority-delay")
    rabbit.delayed(name, 0.05)
    amqp = RabbitMQConnector(AMQP_URL)
    work = amqp.queue(name, max_priority=10)
    try:
        work.put({"n": 1}, priority=7)
        work.open()
        deadline = time.monotonic() + TIMEOUT
        batch = work.fetch(1)
        while not batch and time.monotonic() < deadline:
            batch = work.fetch(1)
        assert batch, "the message never arrived"
        work.retry(batch[0], delay_s=0.05)
        work.flush()
        work.close()
        properties, _ = rabbit.get(name, TIMEOUT)  # back from the delay queue
    finally:
        amqp.close()
    assert properties.priority == 7
    assert properties.headers["x-onestep-attempts"] == 1


def test_put_refuses_a_priority_the_queue_cannot_honour(rabbit: Rabbit) -> None:
    amqp = RabbitMQConnector(AMQP_URL)
    plain = amqp.queue(rabbit.name("plain"))
    prioritized = amqp.queue(rabbit.name("prioritized"), max_priority=3)
    try:
        with pytest.raises(ValueError, match="not declared with max_priority"):
            plain.put("x", priority=1)
        with pytest.raises(ValueError, match=r"priority must be an int from 0 to 3 \(queue"):
            prioritized.put_many(["x"], priority=4)
        with pytest.raises(ValueError, match="priority must be an int from 0 to 3"):
            prioritized.put("x", priority=-1)
        with pytest.raises(ValueError, match="priority must be an int or None"):
            prioritized.put("x", priority="high")
    finally:
        amqp.close()

"""wire_format="upstream" on a real RabbitMQ: upstream onestep's `{"body", "meta",
"attempts"}` envelope is read and written (old and new workers share a queue), a retry
counts in the envelope, and the default format never mistakes a user's `body` key for one."""

from __future__ import annotations

import json
import threading
from typing import Any

import pika  # type: ignore[import-untyped]
import pytest

from onestep import MaxAttempts, OneStepApp, RabbitMQConnector
from tests.helpers import running
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401

pytestmark = pytest.mark.integration
TIMEOUT = 10.0
ENVELOPE = {"body": {"job": 7}, "meta": {"k": "v"}, "attempts": 1}


def test_an_upstream_envelope_is_unwrapped_and_the_result_leaves_as_one(rabbit: Rabbit) -> None:
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    amqp = RabbitMQConnector(AMQP_URL)
    seen: list[tuple[Any, dict[str, Any], int]] = []
    app = OneStepApp("upstream-wire")

    @app.task(
        source=amqp.queue(jobs, wire_format="upstream"),
        emit=amqp.queue(results, wire_format="upstream"),
    )
    def handle(ctx: Any, item: Any) -> Any:
        seen.append((item, dict(ctx.current.meta), ctx.current.attempts))
        return {"job": item["job"], "status": "done"}

    rabbit.publish(jobs, ENVELOPE)  # raw pika, application/json, as upstream publishes
    with running(app):
        properties, body = rabbit.get(results, TIMEOUT)
    assert seen == [({"job": 7}, {"k": "v"}, 1)]
    assert properties.content_type == "application/json"
    assert not (properties.headers or {})
    envelope = json.loads(body)
    assert envelope["body"] == {"job": 7, "status": "done"}
    assert envelope["attempts"] == 0
    assert isinstance(envelope["meta"], dict)


def test_a_retry_counts_in_the_envelope(rabbit: Rabbit) -> None:
    jobs, dead = rabbit.name("jobs"), rabbit.name("dead")
    amqp = RabbitMQConnector(AMQP_URL)
    executions: list[int] = []
    app = OneStepApp("upstream-retry")

    @app.task(
        source=amqp.queue(jobs, wire_format="upstream"),
        retry=MaxAttempts(3),
        dead_letter=amqp.queue(dead),
    )
    def flaky(ctx: Any, item: Any) -> None:
        executions.append(ctx.current.attempts)
        raise RuntimeError("boom")

    rabbit.publish(jobs, ENVELOPE)
    with running(app):
        letter, meta = rabbit.get_json(dead, TIMEOUT)
    # one execution in the envelope already: two more make three
    assert executions == [1, 2]
    assert letter["payload"] == {"job": 7}
    assert meta["original_attempts"] == 3
    assert meta["original_meta"] == {"k": "v"}


def test_put_on_an_upstream_queue_writes_the_envelope(rabbit: Rabbit) -> None:
    jobs = rabbit.name("jobs")
    queue = RabbitMQConnector(AMQP_URL).queue(jobs, wire_format="upstream")
    try:
        queue.put({"job": 1}, meta={"k": "v"}, attempts=2)
        _, body = rabbit.get(jobs, TIMEOUT)
    finally:
        queue.close()
    assert json.loads(body) == {"body": {"job": 1}, "meta": {"k": "v"}, "attempts": 2}


def test_the_default_format_hands_a_body_key_through_untouched(rabbit: Rabbit) -> None:
    jobs = rabbit.name("jobs")
    amqp = RabbitMQConnector(AMQP_URL)
    got: list[Any] = []
    done = threading.Event()
    app = OneStepApp("default-wire")

    @app.task(source=amqp.queue(jobs))
    def handle(ctx: Any, item: Any) -> None:
        got.append((item, ctx.current.attempts))
        done.set()

    rabbit.publish(jobs, ENVELOPE)
    with running(app):
        assert done.wait(TIMEOUT)
    assert got == [(ENVELOPE, 0)]


def test_wire_format_is_checked() -> None:
    with pytest.raises(ValueError, match="wire_format"):
        RabbitMQConnector(AMQP_URL).queue("q", wire_format="json")


def test_upstreams_rabbitmq_example_with_only_the_import_changed(rabbit: Rabbit) -> None:
    # upstream's example/rabbitmq_queue.py, with its names made unique to this test
    from onestep.compat import RabbitMQConnector as CompatRabbitMQ

    incoming, processed = rabbit.name("incoming"), rabbit.name("processed")
    exchange = f"{incoming}.events"
    app = OneStepApp("rabbitmq-demo")
    rmq = CompatRabbitMQ(AMQP_URL)
    queue = rmq.queue(incoming, exchange=exchange, routing_key="jobs.created", prefetch=50)
    done = rmq.queue(processed, exchange=exchange, routing_key="jobs.done")

    @app.task(source=queue, emit=done, concurrency=8)
    async def process_job(ctx: Any, item: Any) -> Any:
        return {"job": item["job"], "status": "done"}

    try:
        with running(app):
            # an old worker publishes through the exchange
            rabbit.channel.basic_publish(
                exchange,
                "jobs.created",
                json.dumps(ENVELOPE).encode(),
                pika.BasicProperties(content_type="application/json"),
            )
            _, body = rabbit.get(processed, TIMEOUT)
    finally:
        rabbit.channel.exchange_delete(exchange)
        rmq.close()
    envelope = json.loads(body)
    assert envelope["body"] == {"job": 7, "status": "done"}
    assert envelope["attempts"] == 0 and isinstance(envelope["meta"], dict)

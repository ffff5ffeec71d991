"""Tracing across real queues (issue 22 item 2): the trace context travels in the meta of
RabbitMQ messages, Redis stream entries and PostgreSQL rows, so a put inside a span and
every hop after it make one trace; each consumer span names its messaging system."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry import trace

from onestep import MemoryQueue, OneStepApp, RabbitMQConnector
from onestep.core import _encoding
from tests.helpers import running
from tests.integration.postgres_support import connector, postgres_url, tables  # noqa: F401
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401
from tests.integration.redis_support import (  # noqa: F401
    Keys,
    keys_fixture,
    redis_connector_fixture,
)
from tests.tracing_support import span_exporter, task_spans, wait_for

pytestmark = pytest.mark.integration
TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def no_injector_left():
    before = _encoding.meta_injector
    yield
    _encoding.meta_injector = before


def test_a_put_to_rabbitmq_then_a_memory_hop_make_one_trace(rabbit: Rabbit) -> None:
    exporter = span_exporter()
    amqp = RabbitMQConnector(AMQP_URL)
    jobs = rabbit.name("jobs")
    middle = MemoryQueue("middle")
    app = OneStepApp("shop", tracing=True)
    done = threading.Event()

    @app.task(source=amqp.queue(jobs), emit=middle)
    def charge(ctx: Any, item: Any) -> Any:
        return item

    @app.task(source=middle)
    def ship(ctx: Any, item: Any) -> None:
        done.set()

    with running(app):
        with trace.get_tracer("test").start_as_current_span("request") as request:
            amqp.queue(jobs).put({"order": 7})  # no meta given: the put adds the context
        assert done.wait(TIMEOUT)
        wait_for(lambda: task_spans(exporter, "ship"), TIMEOUT)
    root = request.get_span_context()
    (charge_span,) = task_spans(exporter, "charge")
    (ship_span,) = task_spans(exporter, "ship")
    assert charge_span.context.trace_id == ship_span.context.trace_id == root.trace_id
    assert charge_span.parent.span_id == root.span_id
    assert ship_span.parent.span_id == charge_span.context.span_id
    assert charge_span.attributes["messaging.system"] == "rabbitmq"
    assert charge_span.attributes["messaging.destination.name"] == jobs


def test_a_memory_hop_then_a_rabbitmq_hop_make_one_trace(rabbit: Rabbit) -> None:
    exporter = span_exporter()
    amqp = RabbitMQConnector(AMQP_URL)
    hop = rabbit.name("hop")
    orders = MemoryQueue("orders")
    app = OneStepApp("shop", tracing=True)
    done = threading.Event()

    @app.task(source=orders, emit=amqp.queue(hop))  # the result crosses RabbitMQ
    def charge(ctx: Any, item: Any) -> Any:
        return {"order": item}

    @app.task(source=amqp.queue(hop))
    def ship(ctx: Any, item: Any) -> None:
        done.set()

    with running(app):
        with trace.get_tracer("test").start_as_current_span("request") as request:
            orders.put(7, {"from": "web"})
        assert done.wait(TIMEOUT)
        wait_for(lambda: task_spans(exporter, "ship"), TIMEOUT)
    root = request.get_span_context()
    (charge_span,) = task_spans(exporter, "charge")
    (ship_span,) = task_spans(exporter, "ship")
    assert charge_span.parent.span_id == root.span_id
    assert ship_span.parent.span_id == charge_span.context.span_id
    assert ship_span.context.trace_id == root.trace_id


def test_a_redis_stream_hop_continues_the_trace(redis_connector: Any, keys: Keys) -> None:
    exporter = span_exporter()
    stream = redis_connector.stream(keys.name("jobs"), poll_interval_s=0.1)
    app = OneStepApp("shop", tracing=True)

    @app.task(source=stream)
    def charge(ctx: Any, item: Any) -> None:
        return None

    with running(app):
        with trace.get_tracer("test").start_as_current_span("request") as request:
            stream.put({"order": 7})
        (span,) = wait_for(lambda: task_spans(exporter, "charge"), TIMEOUT)
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.attributes["messaging.system"] == "redis"
    assert "-" in span.attributes["messaging.message.id"]  # a stream entry id


def test_a_postgres_table_hop_continues_the_trace(connector: Any, tables: Any) -> None:  # noqa: F811
    exporter = span_exporter()
    queue = connector.table_queue(tables("jobs"), poll_interval_s=0.05)
    queue.create_table()
    app = OneStepApp("shop", tracing=True)
    seen: list[Any] = []

    @app.task(source=queue)
    def charge(ctx: Any, item: Any) -> None:
        seen.append(ctx.current.handle)

    with running(app):
        with trace.get_tracer("test").start_as_current_span("request") as request:
            queue.put({"order": 7})
        (span,) = wait_for(lambda: task_spans(exporter, "charge"), TIMEOUT)
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.attributes["messaging.system"] == "postgresql"
    assert span.attributes["messaging.message.id"] == str(seen[0])

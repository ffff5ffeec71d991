"""OneStepApp(tracing=True) (issue 22 item 2) with the SDK's in-memory exporter: a span
per execution continuing the producer's trace over MemoryQueue hops, ctx.emit and returned
results; ERROR spans with an exception event per failed attempt; the webhook's
traceparent header continued; process-executor spans; nothing (no import) without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from onestep import MaxAttempts, MemoryQueue, OneStepApp, Sink
from onestep.core import _encoding
from tests.helpers import running
from tests.tracing_support import span_exporter, task_spans, wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_injector_left():
    """A traced app sets the process's meta injector: put it back after each test."""
    before = _encoding.meta_injector
    yield
    _encoding.meta_injector = before


def test_a_put_inside_a_span_is_continued_by_every_hop():
    exporter = span_exporter()
    app = OneStepApp("shop", tracing=True)
    orders, charged, shipped = MemoryQueue("orders"), MemoryQueue("charged"), MemoryQueue("s")
    done = threading.Event()

    @app.task(source=orders, emit=charged)
    def charge(ctx, item):
        ctx.emit({"receipt": item}, sink=shipped)  # emitted inside the span
        return item  # the returned result

    @app.task(source=charged)
    def notify(ctx, item):
        return None

    @app.task(source=shipped)
    def ship(ctx, item):
        done.set()

    with running(app):
        with trace.get_tracer("test").start_as_current_span("request") as request:
            orders.put(7, {"shop": "x"})
        assert done.wait(10)
        wait_for(lambda: task_spans(exporter, "notify"))
    root = request.get_span_context()
    (charge_span,) = task_spans(exporter, "charge")
    (notify_span,) = task_spans(exporter, "notify")
    (ship_span,) = task_spans(exporter, "ship")
    for span in (charge_span, notify_span, ship_span):
        assert span.context.trace_id == root.trace_id
        assert span.kind is SpanKind.CONSUMER
        assert span.status.status_code is StatusCode.UNSET
    assert charge_span.parent.span_id == root.span_id
    assert notify_span.parent.span_id == charge_span.context.span_id  # the return value
    assert ship_span.parent.span_id == charge_span.context.span_id  # ctx.emit
    assert dict(charge_span.attributes) == {
        "onestep.app": "shop",
        "onestep.task": "charge",
        "onestep.attempts": 1,
        "messaging.operation.type": "process",
        "messaging.system": "memory",
        "messaging.destination.name": "orders",
    }


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_each_failed_attempt_is_an_error_span_in_the_same_trace(kind):
    exporter = span_exporter()
    app = OneStepApp("shop", tracing=True)
    orders = MemoryQueue("orders")
    dead = threading.Event()

    class Dead(Sink):
        def publish(self, body, meta=None):
            dead.set()

    def charge(ctx, item):
        raise ValueError("card declined")

    async def charge_async(ctx, item):
        raise ValueError("card declined")

    app.task(source=orders, retry=MaxAttempts(2), dead_letter=Dead(), name="charge")(
        charge if kind == "sync" else charge_async
    )
    with running(app):
        with trace.get_tracer("test").start_as_current_span("request") as request:
            orders.put(1, {})
        assert dead.wait(10)
        spans = wait_for(lambda: len(task_spans(exporter)) == 2 and task_spans(exporter))
    assert [s.attributes["onestep.attempts"] for s in spans] == [1, 2]
    for span in spans:
        assert span.context.trace_id == request.get_span_context().trace_id
        assert span.status.status_code is StatusCode.ERROR
        assert "card declined" in (span.status.description or "")
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes["exception.type"] == "ValueError"
        assert event.attributes["exception.message"] == "card declined"


def test_a_put_outside_any_span_starts_a_new_trace_per_message():
    exporter = span_exporter()
    app = OneStepApp("shop", tracing=True)
    orders = MemoryQueue("orders")

    @app.task(source=orders)
    def charge(ctx, item):
        return None

    with running(app):
        orders.put(1)
        orders.put(2)
        spans = wait_for(lambda: len(task_spans(exporter)) == 2 and task_spans(exporter))
    assert all(span.parent is None for span in spans)
    assert spans[0].context.trace_id != spans[1].context.trace_id


def test_a_memory_put_without_meta_inside_a_span_continues_its_trace():
    exporter = span_exporter()
    app = OneStepApp("shop", tracing=True)
    orders = MemoryQueue("orders")

    @app.task(source=orders)
    def charge(ctx, item):
        return None

    with running(app):
        with trace.get_tracer("test").start_as_current_span("request") as request:
            orders.put(1)  # no meta argument: the trace context is added all the same
            orders.put_many([2])
        spans = wait_for(lambda: len(task_spans(exporter)) == 2 and task_spans(exporter))
    trace_id = request.get_span_context().trace_id
    assert [span.context.trace_id for span in spans] == [trace_id, trace_id]


def test_the_webhook_traceparent_header_is_continued():
    from onestep import WebhookSource

    exporter = span_exporter()
    app = OneStepApp("hooks", tracing=True)
    source = WebhookSource("/orders", port=0, respond="result")
    after = MemoryQueue("after")

    @app.task(source=source, emit=after)
    def accept(ctx, item):
        return {"ok": True}

    @app.task(source=after)
    def record(ctx, item):
        return None

    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with running(app):
        assert source.url is not None
        request = urllib.request.Request(
            source.url,
            data=b"{}",
            headers={
                "Content-Type": "application/json",
                "traceparent": f"00-{trace_id}-{parent_id}-01",
                "tracestate": "vendor=1",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        wait_for(lambda: task_spans(exporter, "record"))
    (accept_span,) = task_spans(exporter, "accept")
    (record_span,) = task_spans(exporter, "record")
    assert f"{accept_span.context.trace_id:032x}" == trace_id
    assert f"{accept_span.parent.span_id:016x}" == parent_id
    assert accept_span.context.trace_state.get("vendor") == "1"
    assert accept_span.attributes["messaging.system"] == "webhook"
    assert accept_span.attributes["messaging.message.id"]  # the request's webhook_id
    assert record_span.parent.span_id == accept_span.context.span_id


def test_tracing_must_be_a_bool():
    with pytest.raises(TypeError, match="tracing must be True or False"):
        OneStepApp("x", tracing="yes")  # type: ignore[arg-type]


NO_TRACING = textwrap.dedent(
    """
    import sys, threading
    from onestep import MemoryQueue, OneStepApp
    app = OneStepApp("plain")
    a, b = MemoryQueue("a"), MemoryQueue("b")
    done = threading.Event()

    @app.task(source=a, emit=b)
    def first(ctx, item):
        ctx.emit(item, sink=b, meta={"k": 1})
        return item

    @app.task(source=b)
    def second(ctx, item):
        if item == 2:
            done.set()

    app.start()
    a.put(1, {"x": 1})
    a.put(2)
    assert done.wait(10)
    app.stop()
    print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
    """
)


def test_without_tracing_opentelemetry_is_never_imported():
    completed = subprocess.run(
        [sys.executable, "-c", NO_TRACING],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_without_tracing_no_span_is_made_and_meta_is_untouched():
    exporter = span_exporter()
    app = OneStepApp("plain")
    orders, after = MemoryQueue("orders"), MemoryQueue("after")
    seen: list[Any] = []

    @app.task(source=orders, emit=after)
    def charge(ctx, item):
        return item

    @app.task(source=after)
    def record(ctx, item):
        seen.append(ctx.current.meta)

    with running(app):
        with trace.get_tracer("test").start_as_current_span("request"):
            orders.put(1, {"k": 1})
        wait_for(lambda: seen)
    assert seen == [{}]
    assert task_spans(exporter) == []


def remote_charge(ctx: Any, item: Any) -> Any:
    """Runs in a worker process (executor="process")."""
    if item == "bad":
        raise ValueError("card declined")
    return item


def test_process_executor_executions_are_spans_made_in_the_apps_process():
    exporter = span_exporter()
    app = OneStepApp("shop", tracing=True)
    orders, after = MemoryQueue("orders"), MemoryQueue("after")
    app.task(source=orders, emit=after, executor="process", name="charge")(remote_charge)

    @app.task(source=after)
    def record(ctx, item):
        return None

    with running(app):
        with trace.get_tracer("test").start_as_current_span("request") as request:
            orders.put("ok", {})
            orders.put("bad", {})
        wait_for(
            lambda: task_spans(exporter, "record") and len(task_spans(exporter, "charge")) == 2, 60
        )
    root = request.get_span_context()
    spans = {span.status.status_code: span for span in task_spans(exporter, "charge")}
    assert spans.keys() == {StatusCode.UNSET, StatusCode.ERROR}
    for span in spans.values():
        assert span.context.trace_id == root.trace_id
    (event,) = spans[StatusCode.ERROR].events
    assert event.attributes["exception.type"] == "ValueError"  # the handler's, not RemoteFailure
    (record_span,) = task_spans(exporter, "record")
    assert record_span.parent.span_id == spans[StatusCode.UNSET].context.span_id

"""One OpenTelemetry SDK provider with an in-memory exporter for the whole test process
(a global provider can be set only once); used by the tracing tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.helpers import wait_until

_EXPORTER: InMemorySpanExporter | None = None


def span_exporter() -> InMemorySpanExporter:
    """The process's in-memory exporter, emptied."""
    global _EXPORTER
    if _EXPORTER is None:
        _EXPORTER = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


def task_spans(exporter: InMemorySpanExporter, task: str | None = None) -> list[ReadableSpan]:
    return [
        span
        for span in exporter.get_finished_spans()
        if span.attributes is not None
        and "onestep.task" in span.attributes
        and (task is None or span.attributes["onestep.task"] == task)
    ]


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `condition` until it is true (returned) or `timeout` passes (AssertionError)."""
    return wait_until(condition, timeout, every=0.01)

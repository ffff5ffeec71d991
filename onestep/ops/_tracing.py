"""OpenTelemetry tracing for `OneStepApp(name, tracing=True)`: one CONSUMER span per
execution, and the W3C trace context (`traceparent`, `tracestate`) in every message's meta.

Made by OneStepApp as it is created (only then is `opentelemetry` imported); its wrappers
run where the handler runs: a task's worker thread, the event-loop thread, or (for
`executor="process"`) the worker thread that waits on the worker process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from actors import ExecutorPort, RemoteFailure

from .._version import __version__
from ..core import _encoding

if TYPE_CHECKING:
    import opentelemetry.trace as otel_trace

    from ..core._delivery import Delivery
    from ..core._task import TaskSpec

_PROPAGATOR = TraceContextTextMapPropagator()
_CONSUMER = SpanKind.CONSUMER


def messaging_system(source: Any) -> str | None:
    """The source's `messaging_system` (rabbitmq, mysql, postgresql, redis, memory,
    webhook), or None for a source that does not say."""
    system = getattr(source, "messaging_system", None)
    return system if isinstance(system, str) and system else None


def traceparent(context: otel_trace.SpanContext) -> str:
    """The W3C `traceparent` header of `context` (what the propagator writes, built
    directly: this runs once per traced message)."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def carrier_of(span: otel_trace.Span) -> dict[str, str] | None:
    """The meta keys that carry `span` to the next hop, or None for an invalid span."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    carrier = {"traceparent": traceparent(context)}
    state = context.trace_state
    if state:
        carrier["tracestate"] = state.to_header()
    return carrier


def inject_current(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """`meta` plus the current span's trace context (a new dict), or `meta` itself when
    no span is current or it carries a `traceparent` already; the `meta_injector` of
    onestep.core._encoding, on the thread that puts or emits."""
    if meta is not None and "traceparent" in meta:
        return meta
    carrier = carrier_of(trace.get_current_span())
    if carrier is None:
        return meta
    return carrier if meta is None else {**meta, **carrier}


def parent_of(delivery: Delivery) -> Context | None:
    """The context a delivery's meta carries (its producer's span), or None."""
    meta = delivery._meta
    if not meta or "traceparent" not in meta:
        return None
    return _PROPAGATOR.extract(meta)


class Tracing:
    """The TracingPort of a traced app (onestep.core._tracing_port)."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.tracer = trace.get_tracer("onestep", __version__)
        # the span of the execution that just finished on this thread, read by
        # result_meta right after (the engine calls it on the same thread)
        self._last = threading.local()
        _encoding.meta_injector = inject_current

    # -- TracingPort ---------------------------------------------------------------------

    def instrument(self, spec: TaskSpec) -> None:
        """Runs where the task is registered."""
        spec.invoke = self._traced(spec, spec.invoke)  # type: ignore[method-assign]
        spec.invoke_async = self._traced_async(spec, spec.invoke_async)  # type: ignore[method-assign]
        spec.result_meta = self.result_meta

    def wrap_executor(self, spec: TaskSpec, executor: ExecutorPort) -> ExecutorPort:
        """The span of a process executor's handler is made here, in the app's process,
        around the remote call: it times the whole execution (sending the payload, the
        handler, the reply) and needs no tracer in the worker processes."""
        return TracedExecutor(executor, self._traced(spec, executor.run))

    def result_meta(self, delivery: Delivery) -> dict[str, Any] | None:
        """The meta of a result the handler returned: its span's trace context."""
        span = getattr(self._last, "span", None)
        return None if span is None else carrier_of(span)

    # -- the spans -----------------------------------------------------------------------

    def _attributes(self, spec: TaskSpec) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "onestep.app": self.app_name,
            "onestep.task": spec.name,
            "messaging.operation.type": "process",
        }
        system = messaging_system(spec.source)
        if system is not None:
            attributes["messaging.system"] = system
        if spec.source_name:
            attributes["messaging.destination.name"] = spec.source_name
        return attributes

    def _start(
        self, spec: TaskSpec, static: dict[str, Any], message_id: Any, delivery: Delivery
    ) -> otel_trace.Span:
        attributes = dict(static)
        attributes["onestep.attempts"] = delivery.attempts + 1
        if message_id is not None:
            value = message_id(delivery)
            if value is not None:
                attributes["messaging.message.id"] = str(value)
        return self.tracer.start_span(
            f"process {spec.name}",
            context=parent_of(delivery),
            kind=_CONSUMER,
            attributes=attributes,
        )

    def _traced(self, spec: TaskSpec, run: Callable[..., Any]) -> Callable[..., Any]:
        static = self._attributes(spec)
        message_id = getattr(spec.source, "message_id", None)
        last = self._last
        start = self._start

        def traced(delivery: Delivery, cancelled: threading.Event, deadline: float | None) -> Any:
            """Runs on a worker thread of the task."""
            span = start(spec, static, message_id, delivery)
            last.span = None
            # the span is current while the handler runs: its puts and emits carry it
            token = attach(set_span_in_context(span))
            try:
                result = run(delivery, cancelled, deadline)
            except BaseException as exc:
                _failed(span, exc)
                raise
            finally:
                detach(token)
                span.end()
            last.span = span
            return result

        return traced

    def _traced_async(self, spec: TaskSpec, run: Callable[..., Any]) -> Callable[..., Any]:
        static = self._attributes(spec)
        message_id = getattr(spec.source, "message_id", None)
        last = self._last
        start = self._start

        async def traced(delivery: Delivery, deadline: float | None) -> Any:
            """Runs on the event-loop thread, in an asyncio task of its own (a puller,
            or one per delivery): the context attached here is that task's alone."""
            span = start(spec, static, message_id, delivery)
            last.span = None
            token = attach(set_span_in_context(span))
            try:
                result = await run(delivery, deadline)
            except BaseException as exc:
                _failed(span, exc)
                raise
            finally:
                detach(token)
                span.end()
            # nothing awaits between here and the engine's result_meta call
            last.span = span
            return result

        return traced


def _failed(span: otel_trace.Span, exc: BaseException) -> None:
    """Status ERROR and an `exception` event: for a handler that failed in a worker
    process, the exception it raised there (not the RemoteFailure carrying it)."""
    if isinstance(exc, RemoteFailure):
        failure = exc.failure
        span.add_event(
            "exception",
            {
                "exception.type": failure.exception_type,
                "exception.message": failure.message,
                "exception.stacktrace": failure.traceback,
            },
        )
        span.set_status(Status(StatusCode.ERROR, f"{failure.exception_type}: {failure.message}"))
        return
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class TracedExecutor:
    """An ExecutorPort whose `run` is traced; `start` and `stop` are the executor's."""

    def __init__(self, executor: ExecutorPort, run: Callable[..., Any]) -> None:
        self.executor = executor
        self.run = run

    def start(self, workers: int) -> None:
        self.executor.start(workers)

    def stop(self) -> None:
        self.executor.stop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.executor, name)

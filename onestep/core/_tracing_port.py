"""TracingPort: the seam through which tracing (onestep.ops._tracing, OpenTelemetry) wraps
a task's executions; the core knows only this protocol and never imports OpenTelemetry.

Set on an app by `OneStepApp(tracing=True)` through `app.internals.set_tracing`; read by
TaskSpec when a task is registered (`instrument`) and when the app starts (`bind`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from actors import ExecutorPort

if TYPE_CHECKING:
    from ._task import TaskSpec


class TracingPort(Protocol):
    """Wraps what runs a handler so that each execution is a span."""

    def instrument(self, spec: TaskSpec) -> None:
        """Replace `spec.invoke` and `spec.invoke_async` with traced ones and set
        `spec.result_meta` (the meta of the results the handler returns: its span's
        trace context); runs on the thread that registers the task."""
        ...

    def wrap_executor(self, spec: TaskSpec, executor: ExecutorPort) -> ExecutorPort:
        """An executor whose `run` is traced (a span in the app's process around the
        remote call); runs on the thread that starts the app."""
        ...

"""OneStepApp, the public app: the core app (onestep.core.AppCore) plus the parts that
extend it and are called as its methods: `run(processes=N)`, `serve_http()`,
`dead_letters()` and `executor="process"`. Imported by `onestep` and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .core import AppCore, TargetError
from .core import load_app as load_any_app
from .executor import ProcessExecutor, check_runs_elsewhere, executor_option
from .ops import DeadLetters, dead_letters_of
from .processes import run_processes
from .state import StateStore


def traced_app(name: str) -> Any:
    """The Tracing of app `name` (imports OpenTelemetry: only for `tracing=True`)."""
    try:
        from .ops._tracing import Tracing
    except ImportError as exc:
        raise ImportError(
            "tracing=True needs the OpenTelemetry API: pip install 'onestep[otel]' "
            f"(and an SDK with an exporter to see the spans): {exc}"
        ) from exc
    return Tracing(name)


__all__ = ["OneStepApp", "load_app"]


class OneStepApp(AppCore):
    """The application: a name, config, a state store, and its tasks.

    `tracing=True` makes one OpenTelemetry span per execution and carries the trace
    context in every message's meta (needs `pip install onestep[otel]`; bring an SDK and
    an exporter: see docs/tracing.md). Off by default: OpenTelemetry is then never
    imported."""

    def __init__(
        self,
        name: str,
        *,
        config: Mapping[str, Any] | None = None,
        state: StateStore | None = None,
        shutdown_timeout_s: float = 30.0,
        max_restarts: int = 5,
        restart_window_s: float = 60.0,
        tracing: bool = False,
    ) -> None:
        if type(tracing) is not bool:
            raise TypeError(f"tracing must be True or False, got {tracing!r}")
        super().__init__(
            name,
            config=config,
            state=state,
            shutdown_timeout_s=shutdown_timeout_s,
            max_restarts=max_restarts,
            restart_window_s=restart_window_s,
        )
        if tracing:
            self.internals.set_tracing(traced_app(name))

    def run(self, *, processes: int | str = 1) -> None:
        """Run until `request_shutdown()` (or SIGINT/SIGTERM on the main thread), then shut
        down gracefully. Raises AppFailed if an actor failed past its restart limit.

        `processes=N` (or `"auto"`: one per CPU) runs the app in N worker processes
        under a parent that does no task work, as `onestep run --processes N` does
        (see `onestep.processes`); each worker imports the module that defines this
        app, so call it under `if __name__ == "__main__":`."""
        if processes != 1 and run_processes(self, processes):
            return
        self.internals.run_in_this_process()

    def serve_http(self, host: str = "127.0.0.1", port: int = 9100) -> Any:
        """Serve `/metrics` (Prometheus), `/healthz`, `/readyz` and the status page at
        `host:port` (port 0: any free port) in a thread of this process, and return the
        running `onestep.http.HttpServer` (`.url`, `.stop()`, a context manager). Call it
        before the app starts: it turns the app's counters on (RuntimeError while the app
        runs without them). Needs no running app: /healthz answers 503 until it runs."""
        from .http import serve_http  # falcon, waitress, prometheus_client: on demand

        return serve_http(self, host, port)

    def dead_letters(self, task: str, *, sink: Any = None) -> DeadLetters:
        """The dead letters of `task` in its dead-letter sink (`sink`, the object or its
        name, when it has several): `.list(limit)`, `.replay(limit, keep_attempts=)`,
        `.discard(limit)`. Works with the app stopped or running; each call runs on the
        calling thread. ValueError for an unknown task or sink, or a task without a
        dead-letter sink; NotBrowsable for a sink that cannot list its dead letters."""
        return dead_letters_of(self, task, sink)

    def _executor_options(
        self, value: Any, fn: Callable[..., Any], task: str
    ) -> ProcessExecutor | None:
        """`executor="thread"` (None), `"process"` or a `ProcessExecutor(...)`; a handler
        that runs in another process must be importable there (TypeError otherwise)."""
        process = executor_option(value)
        if process is not None:
            check_runs_elsewhere(fn, task)
        return process


def load_app(target: str) -> OneStepApp:
    """The OneStepApp that `target` names (`onestep.core.load_app`), for the CLI: a
    TargetError for an app of another kind."""
    app = load_any_app(target)
    if not isinstance(app, OneStepApp):
        raise TargetError(f"{target} is a {type(app).__name__}, not a onestep.OneStepApp")
    return app

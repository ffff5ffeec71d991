"""AppCore: the app's core: registers tasks, hooks and event handlers, and runs them on
the actors. `onestep.OneStepApp` (onestep/_onestep_app.py) is this plus the parts that
extend it (`run(processes=N)`, `serve_http`, `dead_letters`, `executor="process"`).

`run()` blocks the calling thread; `await serve()` runs inside an asyncio program;
`start()`/`stop()` embed the runtime in a host process without blocking it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from actors import ActorSystem, AppFailed, EventRecord, RestartPolicy, RuntimeStats

from .._values import check_delay, check_int, check_number
from ..flow import RateLimit, read_flow_options
from ..state import InMemoryStateStore, StateStore
from ._delivery import SourceContext
from ._events import TaskEvent
from ._hooks import (
    EventDispatch,
    Hook,
    callable_name,
    on_runtime_thread,
    run_shutdown_hooks,
    run_startup_hooks,
)
from ._internals import AppInternals
from ._running import run_blocking, serve_in_asyncio
from ._task import ExecutorOptions, TaskSpec
from ._tracing_port import TracingPort

if TYPE_CHECKING:
    from .._onestep_app import OneStepApp

logger = logging.getLogger("onestep.app")

F = TypeVar("F", bound=Callable[..., Any])


class AppCore:
    """The application: a name, config, a state store, and its tasks."""

    def __init__(
        self,
        name: str,
        *,
        config: Mapping[str, Any] | None = None,
        state: StateStore | None = None,
        shutdown_timeout_s: float = 30.0,
        max_restarts: int = 5,
        restart_window_s: float = 60.0,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        if state is not None and not isinstance(state, StateStore):
            raise TypeError(f"state must be a StateStore, got {type(state).__name__}")
        # inf is allowed (wait for in-flight work however long it takes); finite values
        # are bounded like every other delay
        if not math.isinf(check_number("shutdown_timeout_s", shutdown_timeout_s, allow_inf=True)):
            check_delay("shutdown_timeout_s", shutdown_timeout_s)
        # An actor (a source whose connection broke) is restarted with backoff at most
        # max_restarts times within restart_window_s; past that the app stops.
        self.restarts = RestartPolicy(
            check_int("max_restarts", max_restarts, minimum=0),
            check_delay("restart_window_s", restart_window_s, exclusive=True),
        )
        self.name = name
        self.config: dict[str, Any] = dict(config or {})
        self.state: StateStore = state if state is not None else InMemoryStateStore()
        self.shutdown_timeout_s = float(shutdown_timeout_s)
        self._tasks: dict[str, TaskSpec] = {}
        self._events = EventDispatch(name)
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        self._system: ActorSystem | None = None
        self._lifecycle = threading.Lock()
        self._shutdown_requested = threading.Event()
        self._shutdown_callbacks: list[Callable[[], None]] = []
        self._failure: BaseException | None = None
        # The runtime's counters (onestep.ops._metrics reads them), kept across restarts
        # of the app; None until metrics, the status page or the status line need them,
        # so that an app without them counts nothing.
        self._stats: RuntimeStats | None = None
        # Set by onestep.http.HttpServer (through `internals`) while it serves this app.
        self._http_url: str | None = None
        # Set by `OneStepApp(tracing=True)` (through `internals`): spans per execution.
        self._tracing: TracingPort | None = None
        #: The interface onestep's own extensions (HTTP, metrics, `--processes`, the
        #: testing helpers) use; not for applications.
        self.internals = AppInternals(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, tasks={list(self._tasks)})"

    # -- registration ----------------------------------------------------------------------

    def task(
        self,
        source: Any = None,
        emit: Any = None,
        *,
        name: str | None = None,
        retry: Any = None,
        dead_letter: Any = None,
        timeout_s: float | None = None,
        concurrency: int = 1,
        executor: str | ExecutorOptions = "thread",
        rate_limit: str | RateLimit | None = None,
        concurrency_key: Callable[[Any], Any] | None = None,
        max_per_key: int = 1,
        dedup_key: Callable[[Any], Any] | None = None,
        dedup_ttl_s: float | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated `def f(ctx, item)` or `async def f(ctx, item)`.

        Arguments are checked here, and the error names the parameter. The function is
        returned unchanged, so it can still be called directly in tests.

        `executor="process"` (or `ProcessExecutor(...)` for its options) runs a sync
        handler in `concurrency` worker processes instead of threads: CPU-bound work
        uses every core, and `timeout_s` kills a worker that overran.
        `rate_limit`, `concurrency_key`/`max_per_key`, `dedup_key`/`dedup_ttl_s`: flow
        control in the app's state store (docs/flow-control.md).
        """
        if inspect.isfunction(source) or inspect.ismethod(source):
            # `@app.task` without parentheses: Python passed the handler as `source`
            raise TypeError(
                f"@app.task needs parentheses and a source: write "
                f"@app.task(source=...) above {source.__name__}(), not @app.task"
            )
        flow = read_flow_options(rate_limit, concurrency_key, max_per_key, dedup_key, dedup_ttl_s)

        def decorate(fn: F) -> F:
            self._check_not_running("register a task")
            spec = TaskSpec(
                self,
                fn,
                source=source,
                emit=emit,
                name=name,
                retry=retry,
                dead_letter=dead_letter,
                timeout_s=timeout_s,
                concurrency=concurrency,
                executor=executor,
                read_executor=self._executor_options,
                flow=flow,
            )
            if spec.name in self._tasks:
                raise ValueError(f"name {spec.name!r} is already a task of app {self.name!r}")
            if spec.source is not None:
                for other in self._tasks.values():
                    if other.source is spec.source:
                        raise ValueError(
                            f"source {spec.source_name!r} already feeds task {other.name!r}; "
                            "give each task its own source"
                        )
            self._tasks[spec.name] = spec
            return fn

        return decorate

    def _executor_options(self, value: Any, fn: Callable[..., Any], task: str) -> Any:
        """The options of `@app.task(executor=value)` for the handler `fn` of `task`, or
        None for threads (and async handlers). The core runs handlers in this process
        only; `onestep.OneStepApp` adds `"process"`."""
        if value is None or value == "thread":
            return None
        raise ValueError(f"executor must be 'thread', got {value!r}")

    def on_event(self, handler: Callable[[TaskEvent], Any]) -> Callable[[TaskEvent], Any]:
        """Call `handler(event)` for every TaskEvent, on the event actor's thread (an async
        handler on the event-loop thread). Usable as a decorator."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self._check_not_running("add an event handler")
        self._events.handlers.append(handler)
        return handler

    def on_startup(self, hook: F) -> F:
        """Run `hook(app)` (or `hook()`) once the sinks are open and before any source
        fetches."""
        return self._add_hook(self._startup_hooks, hook)

    def on_shutdown(self, hook: F) -> F:
        """Run `hook(app)` (or `hook()`) after the sinks are flushed at shutdown."""
        return self._add_hook(self._shutdown_hooks, hook)

    def _add_hook(self, hooks: list[Hook], hook: F) -> F:
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        hooks.append(hook)
        return hook

    def _check_not_running(self, what: str) -> None:
        if self._system is not None:
            raise RuntimeError(f"cannot {what} while app {self.name!r} is running")

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return dict(self._tasks)

    @property
    def running(self) -> bool:
        return self._system is not None

    def describe(self) -> dict[str, Any]:
        """The task graph as a JSON-able dict."""
        return {
            "app": self.name,
            "shutdown_timeout_s": self.shutdown_timeout_s,
            "state": type(self.state).__name__,
            "tasks": [spec.describe() for spec in self._tasks.values()],
            "event_handlers": [callable_name(h) for h in self._events.handlers],
        }

    @property
    def http_url(self) -> str | None:
        """The URL of the HTTP endpoints serving this app in this process (`onestep run
        --http`, `serve_http`), ending in `/`; None when none does."""
        return self._http_url

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every actor in background threads and return. No signal handlers are
        installed. Raises (with everything closed again) if a source or sink cannot open,
        a task's workers cannot start (StartupError naming it) or a startup hook fails.
        If a startup hook requests shutdown, no source is opened: nothing is fetched."""
        with self._lifecycle:
            self._check_not_running("start")
            if not self._tasks:
                logger.warning("app %r has no tasks: it will do nothing", self.name)
            self._failure = None
            system = ActorSystem(
                list(self._tasks.values()),
                on_event=self._deliver_event if self._events.wanted else None,
                on_fatal=self._fatal,
                restarts=self.restarts,
                stats=self._stats,
            )
            self._system = system
            try:
                self._attach_sources(system)
                system.start(after_sinks=self._sinks_open, may_fetch=self._may_fetch)
            except BaseException:
                for spec in self._tasks.values():
                    spec.bind(None)
                self._system = None
                raise
        logger.info("app %r started with %d task(s)", self.name, len(self._tasks))

    def _sinks_open(self) -> None:
        """Runs on the thread that called start(), before any task or source starts:
        ctx.emit works from the first message on."""
        system = self._system
        assert system is not None
        for spec in self._tasks.values():
            spec.bind(system.route)
        run_startup_hooks(system, self, self._startup_hooks)

    def _may_fetch(self) -> bool:
        """Asked by the actor system after the startup hooks, on the thread that called
        start(): a shutdown requested by then means no source is opened."""
        return not self._shutdown_requested.is_set()

    def _attach_sources(self, system: ActorSystem) -> None:
        for spec in self._tasks.values():
            attach = getattr(spec.source, "attach", None)
            if attach is None:
                continue
            report = functools.partial(system.report_event, spec.name, spec.source_name)
            # every app that runs is a onestep.OneStepApp, which connectors may type it as
            attach(SourceContext(cast("OneStepApp", self), spec.name, report))

    def stop(self) -> None:
        """Shut down gracefully: stop fetching, give in-flight work `shutdown_timeout_s`,
        release what is left to its source, close sinks, run shutdown hooks. Idempotent."""
        if on_runtime_thread():
            raise RuntimeError(
                "app.stop() cannot run on one of the app's own threads (it would wait for "
                "itself); call ctx.app.request_shutdown() from handlers and hooks"
            )
        self.request_shutdown()
        with self._lifecycle:
            system = self._system
            if system is None:
                return
            try:
                released = system.stop(
                    self.shutdown_timeout_s,
                    functools.partial(run_shutdown_hooks, system, self, self._shutdown_hooks),
                )
            finally:
                for spec in self._tasks.values():
                    spec.bind(None)
                self._system = None
                # the request is served: the app can be started again
                self._shutdown_requested.clear()
        logger.info("app %r stopped (%d unfinished deliveries released)", self.name, released)

    def request_shutdown(self) -> None:
        """Ask the app to stop. Thread-safe, idempotent, returns at once. A request made
        before the app runs is kept: `run()` then starts and stops at once."""
        if self._shutdown_requested.is_set():
            return
        self._shutdown_requested.set()
        for callback in list(self._shutdown_callbacks):
            callback()

    def wait_for_shutdown_request(self, timeout: float | None = None) -> bool:
        return self._shutdown_requested.wait(timeout)

    def health(self) -> dict[str, Any]:
        """`{"status": "ok" | "degraded" | "failed" | "stopped", "problems": {part: last
        error}}`; degraded while a failed actor (a lost connection) is being restarted,
        failed once the app is stopping because a part failed for good (an actor past
        its restart limit, a dead timer or event-loop thread). Callable from any
        thread."""
        system = self._system
        if system is None:
            return {"status": "stopped", "problems": {}}
        problems = system.health()
        status = "failed" if self._failure is not None else "degraded" if problems else "ok"
        return {"status": status, "problems": problems}

    @property
    def failure(self) -> BaseException | None:
        """Why the app stopped on its own, if an actor failed past its restart limit."""
        return self._failure

    def run(self) -> None:
        """Run until `request_shutdown()` (or SIGINT/SIGTERM/SIGHUP on the main thread), then
        shut down gracefully. Raises AppFailed if an actor failed past its restart limit."""
        self._run_in_this_process()

    def _run_in_this_process(self, on_started: Callable[[], None] | None = None) -> None:
        """`run()` in this process; `on_started()` is called on the calling thread once
        `start()` returned (a worker of `--processes N` tells its parent so)."""
        run_blocking(self, on_started)

    async def serve(self) -> None:
        """Run inside an asyncio program until shutdown is requested or the awaiting task
        is cancelled. Handlers run on onestep's own loop thread, not the caller's loop."""
        await serve_in_asyncio(self)

    def _fatal(self, error: BaseException) -> None:
        """Called by the supervisor when an actor failed past its restart limit."""
        if self._failure is None:
            self._failure = error if isinstance(error, AppFailed) else AppFailed(str(error))
        self.request_shutdown()

    def _deliver_event(self, record: EventRecord) -> None:
        """Runs on the event actor's thread."""
        self._events.deliver(record, self._system)

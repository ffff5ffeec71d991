"""OneStepApp: registers tasks, hooks and event handlers, and runs them on the actors.

`run()` blocks the calling thread; `await serve()` runs inside an asyncio program;
`start()`/`stop()` embed the runtime in a host process without blocking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, TypeVar

from actors import ActorSystem, AppFailed, EventRecord, RestartPolicy, RuntimeStats

from ._checks import check_delay, check_int, check_number
from ._dead_letters import DeadLetters, dead_letters_of
from ._delivery import SourceContext
from ._events import TaskEvent
from ._state import InMemoryStateStore, StateStore
from ._task import TaskSpec, is_async_callable
from .executor import ProcessExecutor

logger = logging.getLogger("onestep.app")

F = TypeVar("F", bound=Callable[..., Any])


class OneStepApp:
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
        self._event_handlers: list[Callable[[TaskEvent], Any]] = []
        # Internal listeners of the raw event records (onestep.testing.run_until_idle
        # counts outcomes with one); unlike handlers they see no TaskEvent and are not
        # part of describe(). Events flow while either list is non-empty.
        self._event_taps: list[Callable[[EventRecord], None]] = []
        self._startup_hooks: list[Callable[[OneStepApp], Any]] = []
        self._shutdown_hooks: list[Callable[[OneStepApp], Any]] = []
        self._system: ActorSystem | None = None
        self._lifecycle = threading.Lock()
        self._shutdown_requested = threading.Event()
        self._shutdown_callbacks: list[Callable[[], None]] = []
        self._failure: BaseException | None = None
        # The runtime's counters (onestep._metrics reads them), kept across restarts of
        # the app; None until metrics, the status page or the status line need them, so
        # that an app without them counts nothing.
        self._stats: RuntimeStats | None = None
        # Set by onestep.http.HttpServer while it serves this app.
        self._http_url: str | None = None

    def __repr__(self) -> str:
        return f"OneStepApp({self.name!r}, tasks={list(self._tasks)})"

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
        executor: str | ProcessExecutor = "thread",
    ) -> Callable[[F], F]:
        """Register the decorated `def f(ctx, item)` or `async def f(ctx, item)`.

        Arguments are checked here, and the error names the parameter. The function is
        returned unchanged, so it can still be called directly in tests.

        `executor="process"` (or `ProcessExecutor(...)` for its options) runs a sync
        handler in `concurrency` worker processes instead of threads: CPU-bound work
        uses every core, and `timeout_s` kills a worker that overran.
        """

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

    def on_event(self, handler: Callable[[TaskEvent], Any]) -> Callable[[TaskEvent], Any]:
        """Call `handler(event)` for every TaskEvent, on the event actor's thread (an async
        handler on the event-loop thread). Usable as a decorator."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self._check_not_running("add an event handler")
        self._event_handlers.append(handler)
        return handler

    def on_startup(self, hook: F) -> F:
        """Run `hook(app)` once the sinks are open and before any source fetches."""
        return self._add_hook(self._startup_hooks, hook)

    def on_shutdown(self, hook: F) -> F:
        """Run `hook(app)` after the sinks are flushed at shutdown."""
        return self._add_hook(self._shutdown_hooks, hook)

    def _add_hook(self, hooks: list[Callable[[OneStepApp], Any]], hook: F) -> F:
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
            "event_handlers": [_callable_name(h) for h in self._event_handlers],
        }

    def dead_letters(self, task: str, *, sink: Any = None) -> DeadLetters:
        """The dead letters of `task` in its dead-letter sink (`sink`, the object or its
        name, when it has several): `.list(limit)`, `.replay(limit, keep_attempts=)`,
        `.discard(limit)`. Works with the app stopped or running; each call runs on the
        calling thread. ValueError for an unknown task or sink, or a task without a
        dead-letter sink; NotBrowsable for a sink that cannot list its dead letters."""
        return dead_letters_of(self, task, sink)

    def _enable_stats(self) -> RuntimeStats:
        """The app's RuntimeStats, made on first use: from the next start on, every task
        counts its outcomes. RuntimeError while the app runs without them (its tasks
        were started without counters)."""
        with self._lifecycle:
            if self._stats is None:
                self._check_not_running("turn metrics on")
                self._stats = RuntimeStats()
            return self._stats

    def serve_http(self, host: str = "127.0.0.1", port: int = 9100) -> Any:
        """Serve `/metrics` (Prometheus), `/healthz`, `/readyz` and the status page at
        `host:port` (port 0: any free port) in a thread of this process, and return the
        running `onestep.http.HttpServer` (`.url`, `.stop()`, a context manager). Call it
        before the app starts: it turns the app's counters on (RuntimeError while the app
        runs without them). Needs no running app: /healthz answers 503 until it runs."""
        from .http import serve_http  # falcon, waitress, prometheus_client: on demand

        return serve_http(self, host, port)

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
                on_event=self._deliver_event if self._event_handlers or self._event_taps else None,
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
        self._run_startup_hooks()

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
            attach(SourceContext(self, spec.name, report))

    def stop(self) -> None:
        """Shut down gracefully: stop fetching, give in-flight work `shutdown_timeout_s`,
        release what is left to its source, close sinks, run shutdown hooks. Idempotent."""
        if _on_runtime_thread():
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
                released = system.stop(self.shutdown_timeout_s, self._run_shutdown_hooks)
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

    def run(self, *, processes: int | str = 1) -> None:
        """Run until `request_shutdown()` (or SIGINT/SIGTERM on the main thread), then shut
        down gracefully. Raises AppFailed if an actor failed past its restart limit.

        `processes=N` (or `"auto"`: one per CPU) runs the app in N worker processes
        under a parent that does no task work, as `onestep run --processes N` does
        (see `onestep._processes`); each worker imports the module that defines this
        app, so call it under `if __name__ == "__main__":`."""
        if processes != 1:
            from ._processes import run_processes  # imports this module

            if run_processes(self, processes):
                return
        self._run_in_this_process()

    def _run_in_this_process(self, on_started: Callable[[], None] | None = None) -> None:
        """`run()` in this process; `on_started()` is called on the calling thread once
        `start()` returned (a worker of `--processes N` tells its parent so)."""
        restore = self._install_signal_handlers()
        try:
            self.start()
            try:
                if on_started is not None:
                    on_started()
                self._shutdown_requested.wait()
            finally:
                self.stop()
        finally:
            restore()
        self._raise_failure()

    async def serve(self) -> None:
        """Run inside an asyncio program until shutdown is requested or the awaiting task
        is cancelled. Handlers run on onestep's own loop thread, not the caller's loop."""
        loop = asyncio.get_running_loop()
        requested = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, requested)

        starting = loop.run_in_executor(None, self.start)
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # start() goes on in its thread: let it finish, then undo it
            with contextlib.suppress(Exception):
                await starting
            if self.running:
                await asyncio.to_thread(self.stop)
            raise
        self._shutdown_callbacks.append(wake)
        try:
            if self._shutdown_requested.is_set():
                wake()
            await requested
        finally:
            self._shutdown_callbacks.remove(wake)
            await asyncio.to_thread(self.stop)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fatal(self, error: BaseException) -> None:
        """Called by the supervisor when an actor failed past its restart limit."""
        if self._failure is None:
            self._failure = error if isinstance(error, AppFailed) else AppFailed(str(error))
        self.request_shutdown()

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handle(signum: int, frame: FrameType | None) -> None:
            if self._shutdown_requested.is_set():
                logger.warning("shutdown already in progress")
                return
            logger.info("got %s; shutting down", signal.Signals(signum).name)
            self.request_shutdown()

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    # -- hooks and events (called by the actor system) -------------------------------------

    def _call_hook(self, hook: Callable[[OneStepApp], Any]) -> None:
        system = self._system
        assert system is not None
        result = hook(self)
        if inspect.isawaitable(result):
            system.loop.wait(result)

    def _run_startup_hooks(self) -> None:
        """Runs on the thread that called start()."""
        for hook in self._startup_hooks:
            try:
                self._call_hook(hook)
            except Exception as exc:
                raise RuntimeError(
                    f"startup hook {_callable_name(hook)} failed: {type(exc).__name__}: {exc}"
                ) from exc

    def _run_shutdown_hooks(self) -> None:
        """Runs on the thread that called stop(); a failing hook is logged, the rest run."""
        for hook in self._shutdown_hooks:
            try:
                self._call_hook(hook)
            except Exception:
                logger.exception("shutdown hook %s failed", _callable_name(hook))

    def _deliver_event(self, record: EventRecord) -> None:
        """Runs on the event actor's thread."""
        for tap in self._event_taps:
            tap(record)
        if not self._event_handlers:
            return
        kind, task, source, attempts, emitted_at, duration_s, failure, meta = record
        event = TaskEvent(
            kind,
            self.name,
            task,
            source,
            attempts,
            emitted_at,
            duration_s,
            None if failure is None else failure.as_dict(),
            meta,
        )
        system = self._system
        for handler in self._event_handlers:
            try:
                if is_async_callable(handler) and system is not None:
                    system.loop.submit(handler(event)).add_done_callback(_log_event_failure)
                else:
                    handler(event)
            except Exception:
                logger.exception("event handler %s failed on %s", _callable_name(handler), kind)


def _on_runtime_thread() -> bool:
    name = threading.current_thread().name
    return name.startswith("onestep-") or "Actor-" in name


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _log_event_failure(future: Any) -> None:
    error = future.exception()
    if error is not None:
        logger.error("async event handler failed", exc_info=error)


def _callable_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__

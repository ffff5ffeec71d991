"""ActorSystem: starts one app's actors in order and stops them gracefully.

Called by `onestep.OneStepApp` from the thread that runs or serves the app.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._events import EventActor, EventEmitter, Flush
from ._loop import EventLoopThread
from ._ports import EventCallback, SinkPort, TaskPort
from ._runtime import TaskRuntime
from ._sink import Close, Open, SinkActor, SinkRoute
from ._source import CloseSource, ReleaseAll, SourceActor, StartFetching, StopFetching
from ._supervisor import Health, RestartPolicy, Supervisor
from ._task import StopTask, TaskActor
from ._timer import Timer

logger = logging.getLogger("onestep.actors.system")


class StartupError(RuntimeError):
    """A source or sink could not be opened; everything opened before it was closed."""


class ActorSystem:
    """The actors of one app run: loop, timer, events, supervisor, sinks, tasks, sources."""

    def __init__(
        self,
        tasks: Sequence[TaskPort],
        *,
        on_event: EventCallback | None,
        on_fatal: Callable[[BaseException], None],
        restarts: RestartPolicy | None = None,
        idle_poll_s: float = 0.05,
    ) -> None:
        self._tasks = list(tasks)
        self._on_event = on_event
        self._on_fatal = on_fatal
        self._restarts = restarts
        self._idle_poll_s = idle_poll_s
        self.loop = EventLoopThread()
        self.timer = Timer()
        self._events_ref: Any = None
        self.supervisor_ref: Any = None
        self._sinks: dict[int, SinkActor] = {}
        self._sink_refs: list[Any] = []
        self._routes: dict[int, SinkRoute] = {}
        self._routes_lock = threading.Lock()
        self.runtimes: list[TaskRuntime] = []
        self._task_refs: list[Any] = []
        self._source_refs: list[Any] = []
        self._source_actors: list[SourceActor] = []
        self._stopped = threading.Event()

    # -- start ---------------------------------------------------------------------------

    def start(self, after_sinks: Callable[[], None] | None = None) -> None:
        """Start every actor; `after_sinks` (the app's startup hooks) runs once the sinks
        are open and before any source fetches. On error, stop what started and raise."""
        try:
            self._start_core()
            self._start_sinks()
            if after_sinks is not None:
                after_sinks()
            self._start_tasks()
            self._start_sources()
        except BaseException:
            self._teardown()
            raise

    def _start_core(self) -> None:
        self.loop.start()
        self.timer.start()
        if self._on_event is not None:
            self._events_ref = EventActor.start(self._on_event)
        self.supervisor_ref = Supervisor.start(
            timer=self.timer, on_fatal=self._on_fatal, restarts=self._restarts
        )

    def route(self, sink: SinkPort) -> SinkRoute:
        """The route to `sink`, starting and opening its SinkActor on first use.

        Blocks while the sink opens: never call it on the event-loop thread.
        """
        route = self._routes.get(id(sink))
        if route is not None:
            return route
        with self._routes_lock:
            return self._start_route(sink)

    def _start_route(self, sink: SinkPort) -> SinkRoute:
        route = self._routes.get(id(sink))
        if route is None:
            ref = SinkActor.start(sink, self.loop, self.timer)
            self._sink_refs.append(ref)
            route = SinkRoute(sink, ref, self.loop)
            self._routes[id(sink)] = route
            try:
                ref.ask(Open())
            except Exception as exc:
                name = route.name
                raise StartupError(f"sink {name!r} failed to open: {exc}") from exc
        return route

    def _start_sinks(self) -> None:
        for task in self._tasks:
            for sink in (*task.emit, *task.dead_letter):
                self.route(sink)

    def _start_tasks(self) -> None:
        for task in self._tasks:
            events = None
            if self._events_ref is not None:
                events = EventEmitter(self._events_ref, task.name, task.source_name)
            runtime = TaskRuntime(
                task,
                task.source,
                loop=self.loop,
                timer=self.timer,
                emit=[self._routes[id(sink)] for sink in task.emit],
                dead_letter=[self._routes[id(sink)] for sink in task.dead_letter],
                events=events,
            )
            runtime.supervisor_ref = self.supervisor_ref
            ref = TaskActor.start(runtime, self.supervisor_ref)
            runtime.actor_ref = ref
            self._task_refs.append(ref)
            self.runtimes.append(runtime)

    def _start_sources(self) -> None:
        for runtime in self.runtimes:
            source = runtime.source
            if source is None:
                continue
            ref = SourceActor.start(
                source,
                runtime,
                loop=self.loop,
                timer=self.timer,
                supervisor=self.supervisor_ref,
                idle_poll_s=self._idle_poll_s,
            )
            runtime.source_ref = ref
            self._source_refs.append(ref)
            try:
                ref.ask(StartFetching())
            except Exception as exc:
                name = runtime.task.source_name
                raise StartupError(f"source {name!r} failed to open: {exc}") from exc

    def health(self) -> dict[str, str]:
        """The actors that failed and are not working again: {label: last error}."""
        if self.supervisor_ref is None or self._stopped.is_set():
            return {}
        try:
            result: dict[str, str] = self.supervisor_ref.ask(Health(), timeout=5.0)
        except Exception as exc:
            return {"supervisor": f"{type(exc).__name__}: {exc}"}
        return result

    def report_event(
        self, task: str, source: str, kind: str, meta: dict[str, Any] | None = None
    ) -> None:
        """Send an event that no delivery carries (a schedule's skipped tick, say).
        Callable from any thread; a no-op without event handlers or before start."""
        ref = self._events_ref
        if ref is None:
            return
        record = (kind, task, source, 0, time.time(), None, None, dict(meta or {}))
        try:
            ref.tell(record)
        except Exception:
            logger.debug("event %s dropped: the event actor has stopped", kind)

    # -- stop ----------------------------------------------------------------------------

    def stop(self, timeout_s: float, after_sinks: Callable[[], None] | None = None) -> int:
        """Drain in-flight work for up to `timeout_s`, release the rest to its sources,
        close sources, tasks and sinks, call `after_sinks` (the app's shutdown hooks),
        then stop the core; returns how many deliveries were released. Idempotent."""
        if self._stopped.is_set():
            return 0
        deadline = time.monotonic() + timeout_s
        for ref in self._source_refs:
            ref.ask(StopFetching())
        for runtime in self.runtimes:
            if runtime.source_ref is None:
                continue
            if math.isinf(timeout_s):
                runtime.ledger.drained.wait()
            else:
                runtime.ledger.drained.wait(max(0.0, deadline - time.monotonic()))
        released = self._release_unfinished()
        self._teardown(after_sinks)
        return released

    def _release_unfinished(self) -> int:
        for runtime in self.runtimes:
            runtime.cutoff = True
        released = 0
        for ref in self._source_refs:
            released += ref.ask(ReleaseAll())
        if released:
            logger.warning("released %d unfinished deliveries back to their sources", released)
        return released

    def _teardown(self, after_sinks: Callable[[], None] | None = None) -> None:
        """Stop every started actor in reverse start order: sources, tasks, sinks."""
        self._stopped.set()
        for runtime in self.runtimes:
            runtime.cutoff = True
            runtime.ledger.stop()  # direct-mode workers stop taking, even after a failed start
        for ref in reversed(self._source_refs):
            _ask_quietly(ref, CloseSource())
            ref.stop()
        for ref in reversed(self._task_refs):
            _ask_quietly(ref, StopTask())
            ref.stop()
        for ref in reversed(self._sink_refs):
            error = _ask_quietly(ref, Close())
            if error is not None:
                logger.warning("a sink failed to close: %s", error)
            ref.stop()
        if self._events_ref is not None:
            _ask_quietly(self._events_ref, Flush())  # hooks see every event so far
        if after_sinks is not None:
            try:
                after_sinks()
            except Exception:
                logger.exception("shutdown hooks failed")
        for ref in (self.supervisor_ref, self._events_ref):
            if ref is not None:
                ref.stop()
        self.timer.stop()
        self.loop.stop()


def _ask_quietly(ref: Any, message: Any) -> Any:
    try:
        return ref.ask(message, timeout=10.0)
    except Exception as exc:
        logger.warning("stopping %r: %s", ref, exc)
        return None

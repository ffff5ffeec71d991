"""ActorSystem: starts one app's actors in order, watches that they stay alive, and
stops them gracefully.

Called by `onestep.OneStepApp` from the thread that runs or serves the app. A part that
fails to start makes `start()` raise StartupError naming it, with everything started
before it stopped again; a part that dies later (the timer or event-loop thread, an actor
stopped by something else) stops the app with AppFailed and shows in `health()`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from ._base import Ready, tell_quietly
from ._events import EventActor, EventEmitter, Flush
from ._loop import EventLoopThread
from ._ports import EventCallback, SinkPort, TaskPort
from ._runtime import TaskRuntime
from ._sink import Close, Open, SinkActor, SinkRoute
from ._source import CloseSource, ReleaseAll, SourceActor, StartFetching, StopFetching
from ._stats import RuntimeStats, TeeEmitter
from ._supervisor import AppFailed, CoreFailed, Health, RestartPolicy, Supervisor
from ._task import StopTask, TaskActor
from ._timer import Timer

#: How often the watchdog (a timer callback, off the message path) checks that the
#: event-loop thread and every actor are still alive.
WATCH_INTERVAL_S = 1.0

logger = logging.getLogger("onestep.actors.system")


class StartupError(RuntimeError):
    """A part of the app could not start (a source or sink that cannot open, a task whose
    workers cannot start, a thread the system refuses); its message names the part.
    Everything started before it was stopped again."""


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
        stats: RuntimeStats | None = None,
    ) -> None:
        self._tasks = list(tasks)
        # With stats, every task counts its outcomes (metrics); without, nothing is
        # counted and, without event handlers too, no event is emitted at all.
        self._stats = stats
        self._on_event = on_event
        self._on_fatal = on_fatal
        self._restarts = restarts
        self._idle_poll_s = idle_poll_s
        self.loop = EventLoopThread(on_death=self._part_died)
        self.timer = Timer(on_death=self._part_died)
        self._events_ref: Any = None
        self.supervisor_ref: Any = None
        self._sinks: dict[int, SinkActor] = {}
        self._sink_refs: list[Any] = []
        self._routes: dict[int, SinkRoute] = {}
        self._routes_lock = threading.Lock()
        self.runtimes: list[TaskRuntime] = []
        self._task_refs: list[Any] = []
        self._source_refs: list[Any] = []
        self._stopped = threading.Event()
        # Every started actor, with the label health() reports it under.
        self._actors: list[tuple[str, Any]] = []
        # Parts that died (label -> error text), kept for health().
        self._dead: dict[str, str] = {}
        self._dead_lock = threading.Lock()

    # -- start ---------------------------------------------------------------------------

    def start(
        self,
        after_sinks: Callable[[], None] | None = None,
        may_fetch: Callable[[], bool] | None = None,
    ) -> None:
        """Start every actor; `after_sinks` (the app's startup hooks) runs once the sinks
        are open and before any source fetches. If `may_fetch()` then says False (a hook
        asked the app to stop), no task or source starts: nothing is fetched. On error,
        stop what started and raise (StartupError naming the part that failed)."""
        try:
            self._start_core()
            self._start_sinks()
            if after_sinks is not None:
                after_sinks()
            if may_fetch is not None and not may_fetch():
                logger.info("shutdown requested during start-up: no source is opened")
                return
            self._start_tasks()
            self._start_sources()
        except BaseException:
            self._teardown()
            raise
        self.timer.call_later(WATCH_INTERVAL_S, self._watch)

    def _start_core(self) -> None:
        for part in (self.loop, self.timer):
            try:
                part.start()
            except Exception as exc:
                raise StartupError(f"{part.label} thread failed to start: {_text(exc)}") from exc
        if self._on_event is not None:
            self._events_ref = self._start_actor("event actor", None, EventActor, self._on_event)
        self.supervisor_ref = self._start_actor(
            "supervisor",
            None,
            Supervisor,
            timer=self.timer,
            on_fatal=self._on_fatal,
            restarts=self._restarts,
            stats=self._stats,
        )

    def _start_actor(
        self, label: str, refs: list[Any] | None, cls: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """Start one actor and wait until its `start_up()` has run; StartupError naming
        it if its thread cannot start or its start-up fails. The ref goes into `refs`
        (the list the teardown stops) before that, so a failed start-up is stopped like
        the rest; an actor kept in no list is stopped here."""
        try:
            ref = cls.start(*args, **kwargs)
        except Exception as exc:
            raise StartupError(f"{label} failed to start: {_text(exc)}") from exc
        self._actors.append((label, ref))
        if refs is not None:
            refs.append(ref)
        try:
            ref.ask(Ready())
        except Exception as exc:
            if refs is None:
                ref.stop()
            raise StartupError(f"{label} failed to start: {_text(exc)}") from exc
        return ref

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
            label = f"sink {getattr(sink, 'name', type(sink).__name__)!r}"
            ref = self._start_actor(label, self._sink_refs, SinkActor, sink, self.loop, self.timer)
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
            events: Any = None
            if self._events_ref is not None:
                events = EventEmitter(self._events_ref, task.name, task.source_name)
            if self._stats is not None:
                stats = self._stats.task(task.name)
                events = stats if events is None else TeeEmitter(stats, events)
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
            self.runtimes.append(runtime)  # the teardown stops its ledger: workers exit
            runtime.actor_ref = self._start_actor(
                f"task {task.name!r}", self._task_refs, TaskActor, runtime, self.supervisor_ref
            )

    def _start_sources(self) -> None:
        for runtime in self.runtimes:
            source = runtime.source
            if source is None:
                continue
            ref = self._start_actor(
                f"source {runtime.task.source_name!r}",
                self._source_refs,
                SourceActor,
                source,
                runtime,
                loop=self.loop,
                timer=self.timer,
                supervisor=self.supervisor_ref,
                idle_poll_s=self._idle_poll_s,
            )
            runtime.source_ref = ref
            try:
                ref.ask(StartFetching())
            except Exception as exc:
                name = runtime.task.source_name
                raise StartupError(f"source {name!r} failed to open: {exc}") from exc

    def health(self) -> dict[str, str]:
        """The parts that failed and are not working again: {label: last error}. Callable
        from any thread."""
        if self.supervisor_ref is None or self._stopped.is_set():
            return {}
        problems = self._not_alive()
        with self._dead_lock:
            problems.update(self._dead)
        try:
            problems.update(self.supervisor_ref.ask(Health(), timeout=5.0))
        except Exception as exc:
            problems.setdefault("supervisor", _text(exc))
        return problems

    # -- watching ------------------------------------------------------------------------

    def _not_alive(self) -> dict[str, str]:
        """The core threads and actors that are not running: {label: what}."""
        problems = {
            part.label: "thread is not running"
            for part in (self.timer, self.loop)
            if not part.thread.is_alive()
        }
        for label, ref in list(self._actors):
            if not ref.is_alive():
                problems[label] = "actor has stopped"
        return problems

    def _watch(self) -> None:
        """Runs on the timer thread every WATCH_INTERVAL_S while the app runs: an actor
        that stopped without being asked (pykka stops every actor when one elsewhere in
        the process lets a BaseException escape) or a dead loop thread stops the app.
        The timer's own death is reported by the timer thread itself."""
        if self._stopped.is_set():
            return
        for label, what in self._not_alive().items():
            self._part_died(label, RuntimeError(what))
        self.timer.call_later(WATCH_INTERVAL_S, self._watch)

    def _part_died(self, label: str, error: BaseException) -> None:
        """A part the app cannot run without died; runs on the dying thread (the timer,
        the loop) or the timer thread (the watchdog). Once per part: recorded for
        health(), then the supervisor stops the app with AppFailed (or, if it is gone
        itself, the app is told directly). In-flight work that can no longer finish is
        not waited for at shutdown."""
        if self._stopped.is_set():
            return
        with self._dead_lock:
            if label in self._dead:
                return
            self._dead[label] = f"died: {_text(error)}"
        for runtime in list(self.runtimes):
            runtime.ledger.drained.set()
        supervisor = self.supervisor_ref
        if supervisor is not None and supervisor.is_alive():
            tell_quietly(supervisor, CoreFailed(label, error))
            return
        failure = AppFailed(f"{label} died: {_text(error)}")
        failure.__cause__ = error
        logger.error("%s", failure)
        self._on_fatal(failure)

    def report_event(
        self, task: str, source: str, kind: str, meta: dict[str, Any] | None = None
    ) -> None:
        """Send an event that no delivery carries (a schedule's skipped tick, say).
        Callable from any thread; a no-op without event handlers or before start."""
        if self._stats is not None:
            self._stats.task(task).emit(kind)
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
        forever = math.isinf(timeout_s) or timeout_s > _MAX_JOIN_S
        deadline = time.monotonic() + (0.0 if forever else timeout_s)
        for runtime in self.runtimes:
            ref = runtime.source_ref
            if ref is None:
                continue
            try:
                ref.ask(StopFetching())
            except Exception as exc:
                # a dead source actor settles nothing: do not wait for its deliveries
                logger.warning("stopping %s: %s", runtime.task.source_name, _text(exc))
                runtime.ledger.stop()
                runtime.ledger.drained.set()
        for runtime in self.runtimes:
            if runtime.source_ref is None:
                continue
            if forever:
                runtime.ledger.drained.wait()
            else:
                runtime.ledger.drained.wait(max(0.0, deadline - time.monotonic()))
        try:
            released = self._release_unfinished()
        finally:
            self._teardown(after_sinks)
        return released

    def _release_unfinished(self) -> int:
        for runtime in self.runtimes:
            runtime.cutoff = True
        released = 0
        for ref in self._source_refs:
            try:
                released += ref.ask(ReleaseAll())
            except pykka.ActorDeadError:
                continue  # stopped from outside (the app is failing): it releases nothing
            except Exception:
                logger.exception("releasing the unfinished deliveries of a source failed")
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


# Event.wait() with a timeout above threading.TIMEOUT_MAX raises OverflowError: a longer
# shutdown_timeout_s (onestep refuses any above 30 days but inf) counts as "for ever".
_MAX_JOIN_S = threading.TIMEOUT_MAX / 2


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _ask_quietly(ref: Any, message: Any) -> Any:
    try:
        return ref.ask(message, timeout=10.0)
    except Exception as exc:
        logger.warning("stopping %r: %s", ref, exc)
        return None

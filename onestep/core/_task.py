"""TaskSpec: one `@app.task` registration, validated at decoration time.

It is what the actor engine runs (it implements `actors.TaskPort`): `invoke` runs on
a worker thread, `invoke_async` on the event-loop thread.
"""

from __future__ import annotations

import inspect
import logging
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from actors import ExecutorPort, Failure, SinkRoute

from .._values import check_delay, check_int
from ..flow import FlowOptions, Gate
from ..state import AsyncStateView, StateView
from ._context import TaskContext
from ._delivery import Delivery, is_sink, missing_source_methods
from ._retry import NoRetry, RetryPolicy

if TYPE_CHECKING:
    from ._app import AppCore


class ExecutorOptions(Protocol):
    """What `@app.task(executor=...)` reads into for a task that runs its handler
    elsewhere (`onestep.ProcessExecutor`): it makes the task's executor when the app
    starts."""

    def bind(self, spec: TaskSpec) -> ExecutorPort: ...

    def describe(self) -> dict[str, Any]: ...


#: Reads `@app.task(executor=value)` for the handler `fn` of task `name`: the options of
#: an executor that runs it elsewhere, or None for threads (and async handlers).
ExecutorReader = Callable[[Any, Callable[..., Any], str], "ExecutorOptions | None"]


_PLAIN_RESULTS = frozenset({type(None), int, float, str, bytes, bool, dict, list, tuple})

#: The largest `concurrency` a task may ask for, by executor: the "thread" executor (a
#: sync handler) starts one worker thread per unit, the "async" executor (an async
#: handler) runs up to one coroutine per unit on the shared event loop. Without a bound
#: `concurrency=10**6` started threads until the process ran out, or took 1.25 GB and
#: 12 s before its first message (issue 13). The "process" executor starts one worker
#: process per unit (about 25 MB of RSS each): 64 is more cores than most hosts have, and
#: more processes than cores only adds memory. Measured at the caps on the 2-core dev
#: machine (README, "Retry, dead letter, timeout, concurrency"): 1,000 threads start in
#: 0.25-0.5 s and add 23 MB of RSS (each also reserves an 8 MiB stack of address space,
#: so under a 4 GiB `ulimit -v` they cannot all start and `app.start()` raises
#: StartupError naming the task); 10,000 coroutines add 14 MB and the first message
#: runs 0.1-0.15 s after start. A new executor adds its entry here.
MAX_CONCURRENCY: dict[str, int] = {"thread": 1000, "async": 10_000, "process": 64}

_EXECUTOR_UNITS = {
    "thread": "a sync handler (one thread per unit)",
    "async": "an async handler (one coroutine per unit)",
    "process": "executor='process' (one worker process per unit)",
}


def check_concurrency(concurrency: Any, executor: str) -> int:
    """`concurrency` if it is an int from 1 to the executor's cap; ValueError naming the
    parameter and the cap otherwise. Called at `@app.task` time."""
    check_int("concurrency", concurrency, minimum=1)
    cap = MAX_CONCURRENCY[executor]
    if concurrency > cap:
        units = _EXECUTOR_UNITS.get(executor, f"executor {executor!r}")
        raise ValueError(f"concurrency must be at most {cap:,} for {units}, got {concurrency!r}")
    return int(concurrency)


def _placeholder(value: Any) -> Any:
    # The seed page writes `source=...`: an Ellipsis stands for "not given" like None.
    return None if value is Ellipsis else value


def _sink_list(param: str, value: Any) -> tuple[Any, ...]:
    value = _placeholder(value)
    if value is None:
        return ()
    sinks = tuple(value) if isinstance(value, list | tuple) else (value,)
    for index, sink in enumerate(sinks):
        if not is_sink(sink):
            where = (
                param
                if len(sinks) == 1 and not isinstance(value, list | tuple)
                else (f"{param}[{index}]")
            )
            raise TypeError(
                f"{where} must be a Sink (an object with a publish() method), "
                f"got {type(sink).__name__}"
            )
    if len({id(sink) for sink in sinks}) != len(sinks):
        raise ValueError(f"{param} lists the same sink twice")
    return sinks


def is_async_callable(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


def _handler_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


class TaskSpec:
    """A validated task: handler, source, sinks and policies."""

    def __init__(
        self,
        app: AppCore,
        fn: Callable[..., Any],
        *,
        source: Any,
        emit: Any,
        name: str | None,
        retry: Any,
        dead_letter: Any,
        timeout_s: Any,
        concurrency: Any,
        executor: Any = None,
        read_executor: ExecutorReader,
        flow: FlowOptions | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"handler must be callable, got {type(fn).__name__}")
        try:
            inspect.signature(fn).bind(None, None)
        except TypeError:
            raise TypeError(
                f"handler {_handler_name(fn)} must accept two arguments (ctx, item)"
            ) from None
        except ValueError:
            pass  # a builtin without a signature: trust it
        name = _placeholder(name)
        if name is None:
            name = getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        is_async = is_async_callable(fn)
        process = read_executor(_placeholder(executor), fn, name)
        self.executor_kind = "async" if is_async else "thread" if process is None else "process"
        concurrency = check_concurrency(concurrency, self.executor_kind)
        timeout_s = _placeholder(timeout_s)
        if timeout_s is not None:
            timeout_s = check_delay("timeout_s", timeout_s, exclusive=True)
        retry = _placeholder(retry)
        if retry is None:
            retry = NoRetry()
        if not isinstance(retry, RetryPolicy):
            raise TypeError(
                f"retry must be a RetryPolicy such as MaxAttempts(3), got {type(retry).__name__}"
            )
        source = _placeholder(source)
        if source is not None:
            missing = missing_source_methods(source)
            if missing:
                raise TypeError(
                    f"source must be a Source implementing fetch, ack, retry and fail; "
                    f"{type(source).__name__} lacks {', '.join(missing)}"
                )
        self.app = app
        self.fn = fn
        self.name = name
        self.source = source
        self.source_name = "" if source is None else str(getattr(source, "name", ""))
        self.emit = _sink_list("emit", emit)
        self.dead_letter = _sink_list("dead_letter", dead_letter)
        self.retry = retry
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.concurrency = concurrency
        self.is_async = is_async
        self.logger = logging.getLogger(f"onestep.task.{name}")
        prefix = f"{app.name}:{name}:"
        self.state: StateView | AsyncStateView = (
            AsyncStateView(app.state, prefix) if self.is_async else StateView(app.state, prefix)
        )
        self._routes: tuple[SinkRoute, ...] | None = None
        self._lock = threading.Lock()
        self.process: ExecutorOptions | None = process
        self.executor: ExecutorPort | None = None
        # flow control (onestep/flow): the engine asks `gate` before it runs a message;
        # None, the usual case, costs nothing on the hot path
        self.flow = flow if flow is not None and flow.active else None
        self.gate = (
            None
            if self.flow is None
            else Gate(self.flow, app.state, f"onestep-flow:{prefix}", self.timeout_s)
        )
        tracing = app.internals.tracing
        if tracing is not None:
            tracing.instrument(self)  # traced invoke, invoke_async and result_meta

    # -- running (called by the engine) --------------------------------------------------

    #: The meta of the results the handler returns, from the delivery (read by the
    #: engine's TaskRuntime as it starts): None here; tracing sets one that carries the
    #: execution's span, so that the next hop continues its trace.
    result_meta: Callable[[Delivery], dict[str, Any] | None] | None = None

    def invoke(self, delivery: Delivery, cancelled: threading.Event, deadline: float | None) -> Any:
        """Runs on a worker thread of the task."""
        delivery.task = self.name
        result = self.fn(TaskContext(self, delivery, cancelled, deadline), delivery.payload)
        # the common results skip inspect.isawaitable (3% of a no-op message's cost)
        if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(
                f"task {self.name!r}: the handler returned an awaitable; declare it `async def`"
            )
        return result

    async def invoke_async(self, delivery: Delivery, deadline: float | None) -> Any:
        """Runs on the event-loop thread."""
        delivery.task = self.name
        ctx = TaskContext(self, delivery, None, deadline)
        try:
            return await self.fn(ctx, delivery.payload)
        except BaseException:
            if ctx._cancelled is not None:
                ctx._cancelled.set()
            raise

    def dead_letter_record(
        self, delivery: Delivery, failure: Failure
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The DESIGN §3 dead-letter body and meta; `original_attempts` counts executions,
        and `dead_letter_id` (a random uuid4 hex) names this dead letter, so that the
        dead-letter tooling finds it again in a queue that has no ids of its own."""
        executions = delivery.attempts + (0 if failure.kind == "decode" else 1)
        body = {"payload": delivery.payload, "failure": failure.as_dict()}
        meta = {
            "app": self.app.name,
            "task": self.name,
            "source": self.source_name,
            "original_meta": dict(delivery.meta),
            "original_attempts": executions,
            "dead_letter_id": uuid.uuid4().hex,
        }
        return body, meta

    # -- routes for ctx.emit -------------------------------------------------------------

    def bind(self, route: Callable[[Any], SinkRoute] | None) -> None:
        """Called by the app at start (with the system's route lookup) and at stop (None).
        A process-executor task gets its worker pool here (not started yet: its TaskActor
        starts it), or drops it at stop."""
        self._route = route
        self._routes = None if route is None else tuple(route(sink) for sink in self.emit)
        if self.process is None:
            return
        if route is None:
            self.executor = None
            return
        # the task's worker threads call its run in place of invoke
        executor = self.process.bind(self)
        tracing = self.app.internals.tracing
        self.executor = executor if tracing is None else tracing.wrap_executor(self, executor)

    _route: Callable[[Any], SinkRoute] | None = None

    def has_route(self, sink: Any) -> bool:
        return self._routes is not None and any(r.sink is sink for r in self._routes)

    def routes_for(self, sink: Any) -> tuple[SinkRoute, ...]:
        """The emit routes, or the route to one sink; may start that sink's actor."""
        if self._routes is None or self._route is None:
            raise RuntimeError(f"task {self.name!r}: ctx.emit works only while the app runs")
        if sink is None:
            if not self._routes:
                raise ValueError(f"task {self.name!r} has no emit sink; pass sink=...")
            return self._routes
        if not is_sink(sink):
            raise TypeError(f"sink must be a Sink, got {type(sink).__name__}")
        return (self._route(sink),)

    # -- introspection -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        def sink_info(sink: Any) -> dict[str, Any]:
            describe = getattr(sink, "describe", None)
            if callable(describe):
                return dict(describe())
            return {"type": type(sink).__name__, "name": getattr(sink, "name", "")}

        return {
            "name": self.name,
            "handler": f"{getattr(self.fn, '__module__', '?')}.{_handler_name(self.fn)}",
            "async": self.is_async,
            "source": None if self.source is None else sink_info(self.source),
            "emit": [sink_info(s) for s in self.emit],
            "dead_letter": [sink_info(s) for s in self.dead_letter],
            "retry": self.retry.describe(),
            "timeout_s": self.timeout_s,
            "concurrency": self.concurrency,
            "executor": (self.executor_kind if self.process is None else self.process.describe()),
            "limits": None if self.gate is None else self.gate.describe(),
        }

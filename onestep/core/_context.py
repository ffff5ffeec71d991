"""TaskContext: the `ctx` every handler receives, one per message.

Built on the thread that runs the handler (a worker thread for `def` handlers, the
event-loop thread for `async def` ones). Its I/O members follow the parity rule: the
same names and arguments, awaitable in async handlers and direct in sync ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import TYPE_CHECKING, Any

from actors import PublishJob, SinkRoute

from . import _encoding
from ._delivery import Delivery

if TYPE_CHECKING:
    import logging

    from .._onestep_app import OneStepApp
    from ..state import AsyncStateView, StateView
    from ._task import TaskSpec


class TaskContext:
    """What a handler can reach: `app`, `config`, `state`, `current`, `emit`, `logger`,
    `cancelled` (an Event set at the deadline or at shutdown) and `deadline` (a
    `time.monotonic()` value, or None without `timeout_s`).

    Attributes:
        current: The Delivery being handled: `payload`, `meta`, `attempts`, `task`.
        deadline: The `time.monotonic()` deadline of this execution, or None without
            `timeout_s`.
    """

    __slots__ = ("_cancelled", "_spec", "current", "deadline")

    def __init__(
        self,
        spec: TaskSpec,
        current: Delivery,
        cancelled: threading.Event | None,
        deadline: float | None,
    ) -> None:
        self._spec = spec
        self.current = current
        self._cancelled = cancelled
        self.deadline = deadline

    @property
    def app(self) -> OneStepApp:
        """The app running the task."""
        # every app that runs is a onestep.OneStepApp; the core knows only its own part
        return self._spec.app  # type: ignore[return-value]

    @property
    def config(self) -> dict[str, Any]:
        """The app's config dict."""
        return self._spec.app.config

    @property
    def state(self) -> StateView | AsyncStateView:
        """The task's state (`get`, `set`, `delete`, `incr`), its keys prefixed
        `"<app>:<task>:"`; awaitable in an async handler, direct in a sync one."""
        return self._spec.state

    @property
    def logger(self) -> logging.Logger:
        """The logger `onestep.task.<task name>`."""
        return self._spec.logger

    @property
    def task_name(self) -> str:
        """The name of the task."""
        return self._spec.name

    @property
    def cancelled(self) -> threading.Event:
        """Set at the deadline or at shutdown: a sync handler that can stop early checks
        it (or waits on it instead of sleeping)."""
        if self._cancelled is None:
            self._cancelled = threading.Event()
        return self._cancelled

    @property
    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def emit(self, body: Any, *, sink: Any = None, meta: dict[str, Any] | None = None) -> Any:
        """Publish `body` now to `sink`, or to every emit sink of the task, and wait until
        each accepted it. Awaitable in an async handler. With tracing on, the meta
        carries the handler's span (`traceparent`), so the next hop continues it."""
        inject = _encoding.meta_injector
        if inject is not None:
            meta = inject(meta)
        if self._spec.is_async:
            return self._emit_async(body, sink, meta)
        routes = self._spec.routes_for(sink)
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        PublishJob(body, meta, routes, _settle_future, future).advance()
        future.result()
        return None

    async def _emit_async(self, body: Any, sink: Any, meta: dict[str, Any] | None) -> None:
        routes: tuple[SinkRoute, ...]
        if sink is None or self._spec.has_route(sink):
            routes = self._spec.routes_for(sink)
        else:
            routes = await asyncio.to_thread(self._spec.routes_for, sink)
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        PublishJob(body, meta, routes, _settle_future, future).advance()
        await asyncio.wrap_future(future)


def _settle_future(job: PublishJob, error: BaseException | None) -> None:
    future: concurrent.futures.Future[None] = job.context
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

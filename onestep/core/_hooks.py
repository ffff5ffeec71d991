"""The app's hooks, event handlers and signal handlers: how the actor system's callbacks
reach user code. Used by `onestep.core._app.AppCore` only.
"""

from __future__ import annotations

import inspect
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from actors import ActorSystem, EventRecord

from ._events import _KIND_OF, TaskEvent
from ._task import is_async_callable

logger = logging.getLogger("onestep.app")

Hook = Callable[[Any], Any]


def callable_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def wants_app(hook: Any) -> bool:
    """Whether `hook` takes the app as its argument; False for a hook that takes none
    (`@app.on_startup def f(): ...`, upstream's spelling), True when it cannot tell."""
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(None)
    except TypeError:
        try:
            signature.bind()
        except TypeError:
            return True
        return False
    return True


def call_hook(system: ActorSystem, app: Any, hook: Hook) -> None:
    """Runs `hook(app)` (or `hook()` for one that takes no argument) on the calling
    thread; an async hook on the event-loop thread, waited for."""
    result = hook(app) if wants_app(hook) else hook()  # type: ignore[call-arg]
    if inspect.isawaitable(result):
        system.loop.wait(result)


def run_startup_hooks(system: ActorSystem, app: Any, hooks: list[Hook]) -> None:
    """Runs on the thread that called start(); the first failing hook stops the start."""
    for hook in hooks:
        try:
            call_hook(system, app, hook)
        except Exception as exc:
            raise RuntimeError(
                f"startup hook {callable_name(hook)} failed: {type(exc).__name__}: {exc}"
            ) from exc


def run_shutdown_hooks(system: ActorSystem, app: Any, hooks: list[Hook]) -> None:
    """Runs on the thread that called stop(); a failing hook is logged, the rest run."""
    for hook in hooks:
        try:
            call_hook(system, app, hook)
        except Exception:
            logger.exception("shutdown hook %s failed", callable_name(hook))


class EventDispatch:
    """The app's event handlers (TaskEvents, public) and taps (raw records, for onestep's
    own extensions such as `onestep.testing.run_until_idle`). Events flow while either
    list is non-empty."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.handlers: list[Callable[[TaskEvent], Any]] = []
        self.taps: list[Callable[[EventRecord], None]] = []

    @property
    def wanted(self) -> bool:
        return bool(self.handlers or self.taps)

    def deliver(self, record: EventRecord, system: ActorSystem | None) -> None:
        """Runs on the event actor's thread."""
        for tap in self.taps:
            tap(record)
        if not self.handlers:
            return
        kind, task, source, attempts, emitted_at, duration_s, failure, meta = record
        event = TaskEvent(
            _KIND_OF.get(kind, kind),  # type: ignore[arg-type]
            self.app_name,
            task,
            source,
            attempts,
            emitted_at,
            duration_s,
            None if failure is None else failure.as_dict(),
            meta,
        )
        for handler in self.handlers:
            try:
                if is_async_callable(handler) and system is not None:
                    system.loop.submit(handler(event)).add_done_callback(_log_event_failure)
                else:
                    handler(event)
            except Exception:
                logger.exception("event handler %s failed on %s", callable_name(handler), kind)


def _log_event_failure(future: Any) -> None:
    error = future.exception()
    if error is not None:
        logger.error("async event handler failed", exc_info=error)


#: The signals that start a graceful shutdown: Ctrl-C, systemd's and Docker's SIGTERM, and
#: a hangup (a closed terminal or SSH session), which would otherwise end the process at
#: once with messages in flight.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def install_signal_handlers(
    is_requested: Callable[[], bool], request_shutdown: Callable[[], None]
) -> Callable[[], None]:
    """The STOP_SIGNALS request shutdown while the app runs on the main thread; returns
    the function that puts the previous handlers back. Nothing on other threads."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum: int, frame: FrameType | None) -> None:
        if is_requested():
            logger.warning("shutdown already in progress")
            return
        logger.info("got %s; shutting down", signal.Signals(signum).name)
        request_shutdown()

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def on_runtime_thread() -> bool:
    name = threading.current_thread().name
    return name.startswith("onestep-") or "Actor-" in name

"""AppInternals: the named interface through which onestep's own extensions (HTTP
endpoints, metrics, `--processes`, the testing helpers) reach into a running app.

For onestep's own extensions, not for applications: it may change in any release. It is
the one module besides `_app.py` that touches AppCore's private state, so that no
extension does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from actors import ActorSystem, EventRecord, RuntimeStats

if TYPE_CHECKING:
    from ._app import AppCore
    from ._tracing_port import TracingPort


class AppInternals:
    """`app.internals`: what the parts that extend an app need of it. Every method may be
    called from any thread unless it says otherwise."""

    def __init__(self, app: AppCore) -> None:
        self._app = app

    # -- counters and the actor system (metrics, status page, testing helpers) ---------

    def enable_stats(self) -> RuntimeStats:
        """The app's RuntimeStats, made on first use: from the next start on, every task
        counts its outcomes. RuntimeError while the app runs without them (its tasks
        were started without counters)."""
        app = self._app
        with app._lifecycle:
            if app._stats is None:
                app._check_not_running("turn metrics on")
                app._stats = RuntimeStats()
            return app._stats

    @property
    def system(self) -> ActorSystem | None:
        """The running app's actor system (its runtimes, timer, loop); None when stopped."""
        return self._app._system

    # -- tracing (`OneStepApp(tracing=True)`) -------------------------------------------

    def set_tracing(self, tracing: TracingPort) -> None:
        """Trace every task registered from now on (call it before the first
        `@app.task`); called by OneStepApp as it is made."""
        self._app._tracing = tracing

    @property
    def tracing(self) -> TracingPort | None:
        """The app's tracing, or None (the default: nothing is traced)."""
        return self._app._tracing

    # -- the HTTP endpoints serving the app -------------------------------------------

    def set_http_url(self, url: str) -> None:
        """Called by onestep.http.HttpServer once it serves this app at `url`."""
        self._app._http_url = url

    def clear_http_url(self, url: str) -> None:
        """Called by the HttpServer at `url` when it stops; a newer server's URL stays."""
        if self._app._http_url == url:
            self._app._http_url = None

    # -- raw event records (onestep.testing counts outcomes with a tap) ---------------

    def add_event_tap(self, tap: Callable[[EventRecord], None]) -> None:
        """Call `tap(record)` for every event record, on the event actor's thread, from
        the next start on. Unlike an event handler a tap sees no TaskEvent and is not
        part of describe()."""
        self._app._events.taps.append(tap)

    def remove_event_tap(self, tap: Callable[[EventRecord], None]) -> None:
        self._app._events.taps.remove(tap)

    # -- shutdown requests and running in this process (`--processes`) -----------------

    def add_shutdown_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when shutdown is requested, on the requesting thread."""
        self._app._shutdown_callbacks.append(callback)

    def remove_shutdown_callback(self, callback: Callable[[], None]) -> None:
        """Forget `callback`; nothing if it is not registered."""
        if callback in self._app._shutdown_callbacks:
            self._app._shutdown_callbacks.remove(callback)

    def clear_shutdown_request(self) -> None:
        """Mark a shutdown request as served (the `--processes` parent stopped its
        workers), so that the app can run again."""
        self._app._shutdown_requested.clear()

    def run_in_this_process(self, on_started: Callable[[], None] | None = None) -> None:
        """`app.run()` in this process, on the calling thread; `on_started()` is called
        once the app started (a worker of `--processes N` tells its parent so)."""
        self._app._run_in_this_process(on_started)

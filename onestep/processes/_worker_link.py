"""The worker's side of `onestep run --processes N`: its two pipes to the parent.

Used by the hidden `onestep _worker` command that the parent (`onestep.processes`)
starts in each worker process. The parent writes `S` on the control pipe to stop the
worker gracefully; end of file there means the parent is gone (killed with SIGKILL), and
the worker then drains and exits too, so that no worker outlives its parent. The worker
writes `R` on the status pipe once its app has started.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from types import FrameType

from ..core import STOP_SIGNALS
from ..core import AppCore as OneStepApp
from ._sockets import adopt_inherited

logger = logging.getLogger("onestep.worker")

#: What the parent writes on the control pipe to stop a worker gracefully.
STOP = b"S"
#: What a worker writes on the status pipe once its app started.
READY = b"R"
#: Environment variable naming the worker (`w1`...) in each worker process; user code
#: may read it (to label its output, say).
WORKER_ENV = "ONESTEP_WORKER"
#: Environment variable naming a directory private to one run of the parent, shared by
#: its workers and removed when the parent exits: the place for per-worker files (such
#: as Prometheus multiprocess metrics).
RUN_DIR_ENV = "ONESTEP_RUN_DIR"
#: Seconds past the app's shutdown_timeout_s that an orphaned worker (its parent gone)
#: may take to drain before it exits anyway.
ORPHAN_GRACE_S = 15.0

#: The name of this process when it is a worker (`w1`...), else None.
current_worker: str | None = None


class WorkerLink:
    """Built first thing in a worker process (on its main thread): takes over the pipes
    and the inherited listening sockets, watches the parent, and records SIGINT/SIGTERM/
    SIGHUP until the app's own handlers take over, so that a stop that comes while the target
    loads stops the worker as soon as it has loaded."""

    def __init__(self, index: int, control_fd: int, status_fd: int) -> None:
        global current_worker
        self.name = f"w{index}"
        current_worker = self.name
        os.environ[WORKER_ENV] = self.name
        self._control_fd = control_fd
        self._status_fd = status_fd
        # passed on by the parent only: not to the processes this worker's app starts
        for fd in (control_fd, status_fd):
            os.set_inheritable(fd, False)
        adopt_inherited()
        self._lock = threading.Lock()
        self._app: OneStepApp | None = None
        self.stop_requested = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        threading.Thread(target=self._watch_parent, name="onestep-parent-link", daemon=True).start()

    def run(self, app: OneStepApp) -> None:
        """Run `app` on this (the main) thread until the parent, a signal or the app stops
        it; raises what `app.run()` raises."""
        with self._lock:
            self._app = app
            stop_requested = self.stop_requested
        if stop_requested:
            logger.info("stopped before the app started")
            return
        app.internals.run_in_this_process(on_started=self._ready)

    def _stop(self) -> None:
        with self._lock:
            self.stop_requested = True
            app = self._app
        if app is not None:
            app.request_shutdown()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Runs on the main thread, for a signal that came before the app's handlers."""
        self.stop_requested = True  # no lock: the main thread may hold it already
        if self._app is not None:
            self._app.request_shutdown()

    def _ready(self) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: the watcher stops the app
            os.write(self._status_fd, READY)

    def _watch_parent(self) -> None:
        """Runs on the `onestep-parent-link` thread: blocks on the control pipe."""
        while True:
            try:
                data = os.read(self._control_fd, 1)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if data == STOP:
                logger.info("the parent asked this worker to stop")
                self._stop()
                continue
            if not data:
                self._orphaned()
                return

    def _orphaned(self) -> None:
        logger.warning("the parent process is gone; shutting down")
        self._stop()
        with self._lock:
            app = self._app
        timeout_s = 30.0 if app is None else app.shutdown_timeout_s
        if math.isinf(timeout_s):
            return
        # A backstop: a worker whose drain (or load) hangs must not outlive its parent.
        backstop = threading.Timer(timeout_s + ORPHAN_GRACE_S, os._exit, (1,))
        backstop.daemon = True
        backstop.name = "onestep-orphan-backstop"
        backstop.start()

"""`onestep run TARGET --processes N`: a parent that runs an app in N worker processes and
supervises them, doing no task work itself (docs/deploying.md says what users see).

Called by the CLI and by `app.run(processes=N)` (_run.py) with the app loaded once and
checked (_preflight.py). Each worker is a fresh interpreter in a session of its own
(_app_worker.py, _worker_link.py). The parent binds the sources' server addresses
once for all (_run_resources.py); starts `w1` alone first, the others once it runs (a
`w1` that cannot start ends the run with its code); restarts a worker that dies, with the
actors' RestartPolicy, until more than `max_deaths` deaths within `death_window_s` stop
the run (exit 1); kills a worker not ready `start_timeout_s` after its start, as a death,
and says it is `stalled()` once none has been ready that long; and on SIGINT/SIGTERM/
SIGHUP (only the parent gets those sent to its group) or `app.request_shutdown()` asks
every worker to drain over its control pipe, killing the process group of any still
running `shutdown_timeout_s + stop_margin_s` later. A worker that exits 0 by itself is
done: not restarted; once all are done the parent exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections import deque

from actors import RestartPolicy

from .._exit_codes import EXIT_BAD_TARGET, EXIT_CRASHED, EXIT_OK
from ..core import STOP_SIGNALS
from ..core import AppCore as OneStepApp
from . import _worker_link
from ._app_worker import AppWorker, clean_stop_exit, describe_exit
from ._preflight import check_processes, resolve_processes
from ._run_resources import ListenFailed, RunResources

logger = logging.getLogger("onestep.processes")

#: Seconds past the app's shutdown_timeout_s a stopping worker gets before SIGKILL: room
#: for closing sinks, shutdown hooks and a webhook server's drain (up to 10 s).
STOP_MARGIN_S = 15.0
#: Deaths of workers allowed within DEATH_WINDOW_S; one more stops the parent (exit 1).
MAX_DEATHS = 5
DEATH_WINDOW_S = 60.0
#: Seconds a worker may take from its start to running its app (importing the target,
#: opening sources, startup hooks); one that is not ready by then is killed and counted
#: as a death, and `/healthz` fails once no worker has been ready for this long.
START_TIMEOUT_S = 60.0
# The parent looks at its workers at least this often even when nothing woke it.
_POLL_S = 1.0
# ...and this often while a worker's status pipe closed but its exit is not reaped yet.
_REAP_POLL_S = 0.02


class ProcessSupervisor:
    """Runs the app `target` (already loaded as `app`) in `count` worker processes until
    they stop; `run()` returns the exit code and leaves a one-line `error` when it is
    not 0. Construction raises ProcessesRefused (a ValueError) for an app that cannot run
    in `count` processes, before anything is bound or started."""

    def __init__(
        self,
        app: OneStepApp,
        target: str,
        count: int,
        *,
        log_level: str = "INFO",
        log_format: str = "text",
        max_deaths: int = MAX_DEATHS,
        death_window_s: float = DEATH_WINDOW_S,
        stop_margin_s: float = STOP_MARGIN_S,
        start_timeout_s: float = START_TIMEOUT_S,
        snapshots: bool = False,
    ) -> None:
        self.app = app
        self.target = target
        self.count = resolve_processes(count)
        # what check_processes has to say, logged as the run starts; refused here
        self._notes = check_processes(app, self.count)
        # the worker command's options besides its target, index and pipes
        self._worker_options = ["--log-level", log_level, "--log-format", log_format]
        self._worker_options += ["--snapshots"] if snapshots else []
        self.stop_margin_s = stop_margin_s
        self.start_timeout_s = start_timeout_s
        #: Why the run failed, one line, when run() returned non-zero.
        self.error: str | None = None
        self.workers = [AppWorker(i + 1) for i in range(self.count)]
        self._exit_code = EXIT_OK
        self._deaths: deque[float] = deque()
        self._restarts = RestartPolicy(max_deaths, death_window_s)
        self._others_started = False
        self._all_ready_logged = False
        self._stopping = False
        self._kill_at: float | None = None
        # Since when no worker has been ready (monotonic; None while one is, or before
        # the run): read by stalled() on the HTTP thread, a float replaced whole.
        self._none_ready_since: float | None = None
        self._resources = RunResources()
        self._wakeup = self._resources.wakeup

    # -- read by the parent's metrics (onestep.ops._metrics.WorkersMonitor), any thread ------

    @property
    def run_dir(self) -> str:
        """The run's private directory ('' before it exists and after it is removed)."""
        return self._resources.run_dir

    @property
    def stopping(self) -> bool:
        return self._stopping

    def worker_states(self) -> list[tuple[str, int | None, bool]]:
        """(name, pid or None, ready) of each worker slot."""
        return [(w.name, w.pid, w.ready) for w in self.workers]

    def stalled(self) -> str | None:
        """Why the workers are failing as a whole: no worker has been ready for longer
        than `start_timeout_s` (None otherwise, and while stopping)."""
        since = self._none_ready_since
        if since is None or self._stopping:
            return None
        waited = time.monotonic() - since
        if waited <= self.start_timeout_s:
            return None
        return (
            f"no worker has been ready for {waited:.0f} s "
            f"(start timeout {self.start_timeout_s:g} s)"
        )

    # -- the run (the calling thread) ----------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until they all stopped. Runs on the
        calling thread; SIGINT/SIGTERM/SIGHUP handlers are installed when that is the
        main thread, and `app.request_shutdown()` from any thread stops the workers too."""
        self.app.internals.add_shutdown_callback(self._wakeup.wake)
        try:
            with self._wakeup.catching(STOP_SIGNALS):
                try:
                    self._resources.bind(self.app, self.count)
                except ListenFailed as exc:
                    self._fail(EXIT_CRASHED, str(exc))
                else:
                    self._resources.make_run_dir()
                    self._supervise()
        finally:
            self._cleanup()
        return self._exit_code

    def _supervise(self) -> None:
        for note in self._notes:
            logger.info("%s", note)
        logger.info(
            "starting %d worker processes for app %r (this parent does no task work)",
            self.count,
            self.app.name,
        )
        self._none_ready_since = time.monotonic()
        self._start(self.workers[0])
        while True:
            self._wait()
            self._take_signals()
            if not self._stopping and self.app.wait_for_shutdown_request(0):
                logger.info("shutdown requested; stopping the workers")
                self._begin_stop()
            for worker in self.workers:
                self._read_status(worker)
                self._reap(worker)
            if self._stopping:
                if not any(w.alive for w in self.workers):
                    break
                self._kill_overdue()
                continue
            if all(w.done for w in self.workers):
                logger.info("every worker stopped by itself")
                return
            self._kill_unready()
            self._start_due()
        self._finish_stop()

    def _wait(self) -> None:
        """Sleep until a signal, a worker's status byte or exit, or the next deadline."""
        now = time.monotonic()
        timeout = _POLL_S
        if any(w.status_closed and w.alive for w in self.workers):
            timeout = _REAP_POLL_S
        deadlines = [
            deadline
            for w in self.workers
            for deadline in (w.restart_at, None if self._stopping else w.ready_by)
            if deadline is not None
        ]
        if self._kill_at is not None:
            deadlines.append(self._kill_at)
        for deadline in deadlines:
            timeout = min(timeout, max(0.0, deadline - now))
        self._wakeup.wait(timeout)

    # -- starting workers ------------------------------------------------------------

    def _start_due(self) -> None:
        first = self.workers[0]
        if not self._others_started and (first.ever_ready or first.done):
            self._others_started = True
            for worker in self.workers[1:]:
                self._start(worker)
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and worker.restart_at <= now:
                worker.restart_at = None
                self._start(worker)

    def _start(self, worker: AppWorker) -> None:
        resources = self._resources
        try:
            worker.spawn(self.target, self._worker_options, resources.run_dir, resources.sockets)
        except OSError as exc:
            logger.error("worker %s could not be started: %s", worker.name, exc)
            self._died(worker, f"could not be started ({exc})", EXIT_CRASHED)
            return
        assert worker.status is not None and worker.process is not None
        worker.ready_by = time.monotonic() + self.start_timeout_s
        self._wakeup.register(worker.status, worker)
        logger.info("worker %s started (pid %d)", worker.name, worker.process.pid)

    def _kill_unready(self) -> None:
        """Kill each worker not ready by its `ready_by` (its import hangs, say): its
        exit is then reaped and counted as a death like any other."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.process is None or worker.ready_by is None or worker.ready_by > now:
                continue
            logger.error(
                "worker %s (pid %d) was not ready within %g s of its start; killing it",
                worker.name,
                worker.process.pid,
                self.start_timeout_s,
            )
            worker.ready_by = None
            worker.start_timed_out = True
            worker.kill()

    # -- what workers say and do ---------------------------------------------------------

    def _read_status(self, worker: AppWorker) -> None:
        if not worker.read_status(self._wakeup):
            return
        self._none_ready_since = None
        logger.info("worker %s (pid %s) is running", worker.name, worker.pid)
        if not self._all_ready_logged and all(w.ever_ready for w in self.workers):
            self._all_ready_logged = True
            logger.info("all %d workers are running", self.count)

    def _reap(self, worker: AppWorker) -> None:
        process = worker.process
        if process is None:
            return
        code = process.poll()
        if code is None:
            return
        if not worker.status_closed:
            self._read_status(worker)  # a READY written just before it exited
        worker.close_pipes(self._wakeup)
        worker.process = None
        worker.ready_by = None
        was_ready, worker.ready = worker.ready, False
        if self._none_ready_since is None and not any(w.ready for w in self.workers):
            self._none_ready_since = time.monotonic()
        what = describe_exit(code)
        if worker.start_timed_out:
            what = f"was not ready within {self.start_timeout_s:g} s, killed"
        if self._stopping:
            worker.stop_code = code
            log = logger.info if clean_stop_exit(code) else logger.warning
            log("worker %s (pid %d) stopped (%s)", worker.name, process.pid, what)
            return
        if code == 0:
            worker.done = True
            logger.info(
                "worker %s (pid %d) stopped by itself (exit code 0); not restarted",
                worker.name,
                process.pid,
            )
            return
        if worker.index == 1 and not was_ready and not self._others_started:
            self._fail(
                EXIT_BAD_TARGET if code == EXIT_BAD_TARGET else EXIT_CRASHED,
                f"worker w1 failed to start ({what}); no other worker was started",
            )
            self._begin_stop()
            return
        self._died(worker, f"(pid {process.pid}) died ({what})", code)

    def _died(self, worker: AppWorker, what: str, code: int) -> None:
        """Count a death; restart the worker after its backoff, or stop everything."""
        now = time.monotonic()
        # the actors' restart policy, applied to processes: every death counts against
        # the run's limit, and a worker's own deaths set its backoff
        policy = self._restarts
        deaths = policy.record(self._deaths, now)
        worker_deaths = policy.record(worker.deaths, now)
        if policy.exceeded(deaths):
            self._fail(
                EXIT_CRASHED,
                f"workers died {deaths} times within {policy.window_s:g} s "
                f"(limit {policy.max_restarts}); the last: worker {worker.name} {what}",
            )
            logger.error("%s; stopping the other workers", self.error)
            self._begin_stop()
            return
        backoff = policy.backoff_s(worker_deaths)
        worker.restart_at = now + backoff
        logger.warning(
            "worker %s %s; restarting it in %.2f s (%d of at most %d deaths in %g s)",
            worker.name,
            what,
            backoff,
            deaths,
            policy.max_restarts,
            policy.window_s,
        )

    # -- stopping --------------------------------------------------------------------

    def _take_signals(self) -> None:
        for signum in self._wakeup.take_signals():
            name = signal.Signals(signum).name
            if not self._stopping:
                logger.info("got %s; stopping the workers gracefully", name)
                self._begin_stop()
                continue
            live = [w.name for w in self.workers if w.alive]
            left = (
                ""
                if self._kill_at is None
                else f" at most {self._kill_at - time.monotonic():.0f} s more"
            )
            logger.warning(
                "got %s again: already stopping; waiting for %s%s (SIGKILL after that)",
                name,
                ", ".join(live) or "no worker",
                left,
            )

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for worker in self.workers:
            worker.restart_at = None
            if worker.alive and worker.control is not None:
                with contextlib.suppress(OSError):  # it is exiting already
                    os.write(worker.control, _worker_link.STOP)
        timeout = self.app.shutdown_timeout_s
        if not math.isinf(timeout):
            self._kill_at = time.monotonic() + timeout + self.stop_margin_s

    def _kill_overdue(self) -> None:
        if self._kill_at is None or time.monotonic() < self._kill_at:
            return
        for worker in self.workers:
            if worker.process is not None and not worker.killed:
                logger.error(
                    "worker %s (pid %d) did not stop within %g s; killing it",
                    worker.name,
                    worker.process.pid,
                    self.app.shutdown_timeout_s + self.stop_margin_s,
                )
                worker.killed = True
                worker.kill()

    def _finish_stop(self) -> None:
        """After every worker exited: a stop that some worker did not survive cleanly
        (killed at the deadline, crashed while draining) fails the run."""
        if self._exit_code != EXIT_OK:
            return
        unclean = [w for w in self.workers if not w.stopped_cleanly()]
        if unclean:
            names = ", ".join(f"{w.name} ({w.how_stopped()})" for w in unclean)
            self._fail(EXIT_CRASHED, f"worker(s) did not stop cleanly: {names}")
            return
        logger.info("all workers stopped")

    def _fail(self, code: int, error: str) -> None:
        if self.error is None:
            self.error = error
            self._exit_code = code

    def _cleanup(self) -> None:
        """Whatever happened: no worker left running, every descriptor closed, the run
        directory removed, the app's shutdown request cleared (it is served)."""
        try:
            for worker in self.workers:
                worker.discard(self._wakeup)
            self.app.internals.remove_shutdown_callback(self._wakeup.wake)
            self.app.internals.clear_shutdown_request()
        finally:
            self._resources.release()

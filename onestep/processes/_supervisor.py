"""`onestep run TARGET --processes N` and `app.run(processes=N)`: a parent that runs an app
in N worker processes and supervises them, doing no task work itself.

Called by the CLI (`ProcessSupervisor`) and by `OneStepApp.run` (`run_processes`); what
an app must be to run so is checked in `onestep._process_checks`. Each worker is a fresh
interpreter (`python -m onestep _worker TARGET --index I ...`, see `onestep._worker_link`),
never a fork of a process that may hold threads or connections. The parent:

- is given the app loaded once and checked (schedules on the in-memory state store are
  refused before any worker starts: every worker would fire every tick);
- binds each standalone server address (a WebhookSource's `listen_address`) once and
  passes the sockets to every worker (`onestep._listen`), so N workers serve one port;
- starts `w1` alone first: if it cannot start (a wrong broker URL), its error is shown
  once and the parent exits with its code, as one process would; then the others;
- restarts a worker that dies, with backoff (0.5 s doubling to 10 s per worker); more
  than 5 deaths within 60 s stop every worker and the parent exits 1;
- on SIGINT/SIGTERM (or `app.request_shutdown()` in the parent) asks every worker to
  drain over its control pipe, gives it the app's `shutdown_timeout_s` plus
  `stop_margin_s`, then SIGKILLs it; a second signal only says so in the log;
- keeps a directory private to the run (`ONESTEP_RUN_DIR` in the workers), removed at
  exit: the seam for per-worker files such as Prometheus multiprocess metrics.

A worker that exits 0 stopped by itself (its app requested shutdown): it is not
restarted, and once every worker did so the parent exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import selectors
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from actors import AppFailed

from ..core import AppCore as OneStepApp
from ..core import JsonFormatter
from . import _sockets as _listen
from . import _worker_link
from ._preflight import check_processes, resolve_processes, target_of

logger = logging.getLogger("onestep.processes")

#: Seconds past the app's shutdown_timeout_s a stopping worker gets before SIGKILL: room
#: for closing sinks, shutdown hooks and a webhook server's drain (up to 10 s).
STOP_MARGIN_S = 15.0
#: Deaths of workers allowed within DEATH_WINDOW_S; one more stops the parent (exit 1).
MAX_DEATHS = 5
DEATH_WINDOW_S = 60.0
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
# The parent looks at its workers at least this often even when nothing woke it.
_POLL_S = 1.0
# ...and this often while a worker's status pipe closed but its exit is not reaped yet.
_REAP_POLL_S = 0.02

EXIT_OK = 0
EXIT_CRASHED = 1
EXIT_BAD_TARGET = 2


def run_processes(app: OneStepApp, processes: Any) -> bool:
    """`app.run(processes=...)`: False when that is one process (the caller runs the app
    itself); otherwise run `app` in worker processes until they stop, and return True.
    Raises ValueError before anything starts (bad count, refused, not importable), and
    AppFailed when the workers failed (died too often, could not start)."""
    count = resolve_processes(processes)
    if count == 1:
        return False
    if _worker_link.current_worker is not None:
        raise RuntimeError(
            f"app.run(processes={processes!r}) ran inside worker {_worker_link.current_worker} "
            "while it imported the app: call it under `if __name__ == '__main__':`"
        )
    if not app.tasks:
        raise ValueError(f"app {app.name!r} has no tasks: nothing to run in {count} processes")
    target = target_of(app)
    level, fmt = _logging_of_this_process()
    supervisor = ProcessSupervisor(app, target, count, log_level=level, log_format=fmt)
    if supervisor.run() != EXIT_OK:
        raise AppFailed(supervisor.error or "the worker processes failed")
    return True


def _logging_of_this_process() -> tuple[str, str]:
    """The level and format workers log with under `app.run(processes=N)`: the root
    logger's level, and JSON when one of its handlers formats JSON."""
    root = logging.getLogger()
    level = logging.getLevelName(root.getEffectiveLevel())
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        level = "INFO"
    json_logs = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return level, "json" if json_logs else "text"


def describe_exit(code: int) -> str:
    """`exit code 1`, or `killed by SIGKILL` for a process that a signal ended."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    """One worker slot (`w1`...): its current process, pipes and history. Used only on
    the thread that runs ProcessSupervisor.run()."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"w{index}"
        self.process: subprocess.Popen[bytes] | None = None
        self.control: int | None = None  # write end of the parent -> worker pipe
        self.status: int | None = None  # read end of the worker -> parent pipe
        self.status_closed = False
        self.ready = False
        self.ever_ready = False
        self.done = False  # exited 0 on its own: not restarted
        self.restart_at: float | None = None
        self.deaths: deque[float] = deque()
        self.killed = False  # SIGKILLed by the parent at the stop deadline
        self.stop_code: int | None = None  # exit code after the parent asked it to stop

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None


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
        snapshots: bool = False,
    ) -> None:
        self.app = app
        # Workers write their metrics snapshots into the run directory (`--http`, the
        # status line: onestep._metrics.WorkersMonitor sums them).
        self.snapshots = snapshots
        self.target = target
        self.count = resolve_processes(count)
        # what check_processes has to say, logged as the run starts; refused here
        self._notes = check_processes(app, self.count)
        self.log_level = log_level
        self.log_format = log_format
        self.max_deaths = max_deaths
        self.death_window_s = death_window_s
        self.stop_margin_s = stop_margin_s
        #: Why the run failed, one line, when run() returned non-zero.
        self.error: str | None = None
        self.workers = [_Worker(i + 1) for i in range(self.count)]
        self._exit_code = EXIT_OK
        self._deaths: deque[float] = deque()
        self._others_started = False
        self._all_ready_logged = False
        self._stopping = False
        self._kill_at: float | None = None
        self._signals: list[int] = []
        self._sockets: dict[tuple[str, int], socket.socket] = {}
        self._run_dir = ""
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # -- read by the parent's metrics (onestep._metrics.WorkersMonitor), any thread ------

    @property
    def run_dir(self) -> str:
        """The run's private directory ('' before it exists and after it is removed)."""
        return self._run_dir

    @property
    def stopping(self) -> bool:
        return self._stopping

    def worker_states(self) -> list[tuple[str, int | None, bool]]:
        """(name, pid or None, ready) of each worker slot."""
        return [(w.name, w.pid, w.ready) for w in self.workers]

    # -- the run (the calling thread) ----------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until they all stopped. Runs on the
        calling thread; SIGINT/SIGTERM handlers are installed when that is the main
        thread, and `app.request_shutdown()` from any thread stops the workers too."""
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.app.internals.add_shutdown_callback(self._wake)
        try:
            with self._signal_handlers():
                if self._bind_sockets():
                    self._run_dir = tempfile.mkdtemp(prefix="onestep-run-")
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
            self._start_due()
        self._finish_stop()

    def _wait(self) -> None:
        """Sleep until a signal, a worker's status byte or exit, or the next deadline."""
        now = time.monotonic()
        timeout = _POLL_S
        if any(w.status_closed and w.alive for w in self.workers):
            timeout = _REAP_POLL_S
        deadlines = [w.restart_at for w in self.workers if w.restart_at is not None]
        if self._kill_at is not None:
            deadlines.append(self._kill_at)
        for deadline in deadlines:
            timeout = min(timeout, max(0.0, deadline - now))
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wake_r:
                _drain(self._wake_r)  # only a wake-up: what woke it is looked at next

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

    def _start(self, worker: _Worker) -> None:
        control_r, control_w = os.pipe()
        status_r, status_w = os.pipe()
        command = [
            sys.executable,
            *_interpreter_options(),
            "-m",
            "onestep",
            "_worker",
            self.target,
            "--index",
            str(worker.index),
            "--log-level",
            self.log_level,
            "--log-format",
            self.log_format,
            "--control-fd",
            str(control_r),
            "--status-fd",
            str(status_w),
            *(["--snapshots"] if self.snapshots else []),
        ]
        fds = (control_r, status_w, *(sock.fileno() for sock in self._sockets.values()))
        try:
            process = subprocess.Popen(command, pass_fds=fds, env=self._worker_env(worker))
        except OSError as exc:
            for fd in (control_r, control_w, status_r, status_w):
                os.close(fd)
            logger.error("worker %s could not be started: %s", worker.name, exc)
            self._died(worker, f"could not be started ({exc})", EXIT_CRASHED)
            return
        os.close(control_r)
        os.close(status_w)
        os.set_blocking(status_r, False)
        worker.process = process
        worker.control, worker.status = control_w, status_r
        worker.status_closed = worker.ready = False
        self._selector.register(status_r, selectors.EVENT_READ, worker)
        logger.info("worker %s started (pid %d)", worker.name, process.pid)

    def _worker_env(self, worker: _Worker) -> dict[str, str]:
        env = dict(os.environ)
        env[_worker_link.WORKER_ENV] = worker.name
        env[_worker_link.RUN_DIR_ENV] = self._run_dir
        if self._sockets:
            env[_listen.ENV_VAR] = _listen.encode(self._sockets)
        else:
            env.pop(_listen.ENV_VAR, None)
        # The worker must import this same onestep: a source checkout that is not
        # installed is found through PYTHONPATH (site-packages never is put there, where
        # it would shadow the standard library).
        package_root = str(Path(__file__).resolve().parents[2])
        if package_root not in _site_dirs():
            paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            if package_root not in paths:
                env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
        return env

    def _bind_sockets(self) -> bool:
        """Bind every standalone server address of the app's sources once. False (with
        `error` set) when one cannot be bound."""
        for name, spec in self.app.tasks.items():
            address = getattr(spec.source, "listen_address", None)
            if address is None or tuple(address) in self._sockets:
                continue
            host, port = address
            try:
                sock = _listen.bind(host, port)
            except OSError as exc:
                self._fail(EXIT_CRASHED, f"task {name!r} cannot listen on {host}:{port}: {exc}")
                return False
            self._sockets[(host, port)] = sock
            bound_host, bound_port = sock.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            logger.info(
                "listening on http://%s:%d (task %r), shared by the %d workers",
                shown,
                bound_port,
                name,
                self.count,
            )
        return True

    # -- what workers say and do ---------------------------------------------------------

    def _read_status(self, worker: _Worker) -> None:
        if worker.status is None or worker.status_closed:
            return
        data, eof = _drain(worker.status)
        if _worker_link.READY in data and not worker.ready:
            worker.ready = worker.ever_ready = True
            logger.info("worker %s (pid %s) is running", worker.name, worker.pid)
            if not self._all_ready_logged and all(w.ever_ready for w in self.workers):
                self._all_ready_logged = True
                logger.info("all %d workers are running", self.count)
        if eof:  # the worker exited (or is exiting): _reap() follows it up
            worker.status_closed = True
            self._selector.unregister(worker.status)

    def _reap(self, worker: _Worker) -> None:
        process = worker.process
        if process is None:
            return
        code = process.poll()
        if code is None:
            return
        if not worker.status_closed:
            self._read_status(worker)  # a READY written just before it exited
        self._close_pipes(worker)
        worker.process = None
        was_ready, worker.ready = worker.ready, False
        what = describe_exit(code)
        if self._stopping:
            worker.stop_code = code
            clean = code == 0 or -code in (signal.SIGTERM, signal.SIGINT)
            log = logger.info if clean else logger.warning
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

    def _died(self, worker: _Worker, what: str, code: int) -> None:
        """Count a death; restart the worker after its backoff, or stop everything."""
        now = time.monotonic()
        for history in (self._deaths, worker.deaths):
            history.append(now)
            while history and now - history[0] > self.death_window_s:
                history.popleft()
        if len(self._deaths) > self.max_deaths:
            self._fail(
                EXIT_CRASHED,
                f"workers died {len(self._deaths)} times within {self.death_window_s:g} s "
                f"(limit {self.max_deaths}); the last: worker {worker.name} {what}",
            )
            logger.error("%s; stopping the other workers", self.error)
            self._begin_stop()
            return
        backoff = min(MAX_BACKOFF_S, MIN_BACKOFF_S * 2 ** (len(worker.deaths) - 1))
        worker.restart_at = now + backoff
        logger.warning(
            "worker %s %s; restarting it in %.2f s (%d of at most %d deaths in %g s)",
            worker.name,
            what,
            backoff,
            len(self._deaths),
            self.max_deaths,
            self.death_window_s,
        )

    # -- stopping --------------------------------------------------------------------

    def _take_signals(self) -> None:
        signals, self._signals[:] = list(self._signals), []
        for signum in signals:
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
                worker.process.kill()

    def _finish_stop(self) -> None:
        """After every worker exited: a stop that some worker did not survive cleanly
        (killed at the deadline, crashed while draining) fails the run."""
        if self._exit_code != EXIT_OK:
            return
        unclean = [w for w in self.workers if not _stopped_cleanly(w)]
        if unclean:
            names = ", ".join(f"{w.name} ({_how_stopped(w)})" for w in unclean)
            self._fail(EXIT_CRASHED, f"worker(s) did not stop cleanly: {names}")
            return
        logger.info("all workers stopped")

    def _fail(self, code: int, error: str) -> None:
        if self.error is None:
            self.error = error
            self._exit_code = code

    # -- plumbing --------------------------------------------------------------------

    @contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: FrameType | None) -> None:
            self._signals.append(signum)
            self._wake()

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _wake(self) -> None:
        """Wake the supervising thread (from a signal handler or any thread)."""
        with contextlib.suppress(OSError):  # the pipe is full: it is awake already
            os.write(self._wake_w, b"!")

    def _close_pipes(self, worker: _Worker) -> None:
        if worker.status is not None:
            if not worker.status_closed:
                self._selector.unregister(worker.status)
            os.close(worker.status)
        if worker.control is not None:
            os.close(worker.control)
        worker.status = worker.control = None
        worker.status_closed = False

    def _cleanup(self) -> None:
        """Whatever happened: no worker left running, every descriptor closed, the run
        directory removed, the app's shutdown request cleared (it is served)."""
        for worker in self.workers:
            if worker.process is not None:
                worker.process.kill()
                worker.process.wait()
                worker.process = None
            self._close_pipes(worker)
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self.app.internals.remove_shutdown_callback(self._wake)
        self.app.internals.clear_shutdown_request()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._run_dir:
            run_dir, self._run_dir = self._run_dir, ""
            shutil.rmtree(run_dir, ignore_errors=True)


def _stopped_cleanly(worker: _Worker) -> bool:
    """True for a worker that exited 0 when asked to stop, or that the stop signal
    itself ended (it came to the whole process group before the worker could handle
    it), or that was not running when the stop began."""
    code = worker.stop_code
    if code is None:
        return True
    return not worker.killed and (code == 0 or -code in (signal.SIGTERM, signal.SIGINT))


def _how_stopped(worker: _Worker) -> str:
    if worker.killed:
        return "killed at the stop deadline"
    return describe_exit(worker.stop_code or 0)


def _drain(fd: int) -> tuple[bytes, bool]:
    """Everything readable now on a non-blocking pipe, and whether it reached end of
    file (every writer closed it)."""
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return b"".join(chunks), False
        if not data:
            return b"".join(chunks), True
        chunks.append(data)


def _interpreter_options() -> list[str]:
    """The parent's command-line options that its environment does not carry to a worker:
    -O, -X and -W (multiprocessing passes the same to the processes it spawns)."""
    options = ["-" + "O" * sys.flags.optimize] if sys.flags.optimize else []
    for key, value in sys._xoptions.items():
        options += ["-X", key if value is True else f"{key}={value}"]
    for option in sys.warnoptions:
        options.append(f"-W{option}")
    return options


def _site_dirs() -> set[str]:
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return {str(Path(d).resolve()) for d in dirs}

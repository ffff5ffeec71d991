"""Everything of `executor="process"` that touches thespian (the only module importing it):
the app process's one ActorSystem, started guarded (the watchdog exists before the admin
does), quiet (thespian's log lines under `onestep.thespian`, no `$TMPDIR/thespian.log`) and
stopped within a bound whatever state thespian is in; a worker's endpoint (create, exit);
and the worker's actor.

Used by `onestep.executor._pool` (on a task's actor and worker threads); the actor runs
in the worker processes (control plane only: the data goes over `_channel`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from thespian.actors import (  # type: ignore[import-untyped]
    Actor,
    ActorExitRequest,
    ActorSystem,
)
from thespian.system.utilis import thesplog_control  # type: ignore[import-untyped]

from ._channel import Ready, Setup
from ._handler_side import HandlerSide
from ._watchdog import kill_marked

logger = logging.getLogger("onestep.process")

# Signals that the app's process group receives (Ctrl-C, systemd's and Docker's SIGTERM):
# blocked in the admin and the workers, which inherit the mask, so that only the app
# drains and then stops them; a message in flight is not cut short by the group signal.
GROUP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# How long a stop waits for thespian's own shutdown before it kills what is left: the
# admin can be stuck (a crash loop deadlocks it with the app on full queues), and nothing
# of value is lost by killing idle workers, the admin and its logger.
SHUTDOWN_S = 0.5
# How long a stop waits for the watchdog to exit once told to.
_WATCHDOG_EXIT_S = 2.0
# The environment variable that marks spawned processes of the tree (see _watchdog).
_TOKEN_VAR = "ONESTEP_EXECUTOR_TREE"


class _Relay(logging.Handler):
    """thespian's log records (the admin's `++++ Actor System gen ... started`, the
    logger process's) re-emitted under `onestep.thespian`, below WARNING at DEBUG, through
    the app's handlers (inherited by fork) or, in a spawned process, stderr."""

    def __init__(self, handlers: list[logging.Handler] | None = None) -> None:
        super().__init__()
        self.handlers = list(handlers or [])
        if not self.handlers:
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            self.handlers.append(stream)

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("onestep."):
            suffix = "" if record.name == "root" else f".{record.name}"
            record.name = f"onestep.thespian{suffix}"
        if record.levelno < logging.WARNING:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        if record.levelno < logging.getLogger(record.name).getEffectiveLevel():
            return
        for handler in self.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


# The app's root handlers, kept in the processes forked while the ActorSystem starts.
_app_handlers: list[logging.Handler] = []


def relay_handler() -> logging.Handler:
    """The handler of thespian's logger process (named in LOG_DEFS)."""
    return _Relay(_app_handlers)


# thespian's logger process is configured with this (never logDefs=False: that crashes
# every actor). WARNING: the actors send it nothing below that.
LOG_DEFS = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"onestep": {"()": "onestep.executor._thespian.relay_handler"}},
    "root": {"level": "WARNING", "handlers": ["onestep"]},
}


def _after_fork_in_child() -> None:
    """In the process forked while the ActorSystem starts (thespian's daemonizing fork,
    whose memory its admin inherits): thespian logs on the root logger, so the root logger
    relays. Once: a process the admin or a handler forks later is left alone."""
    if not _System.starting:
        return
    _System.starting = False
    root = logging.getLogger()
    _app_handlers[:] = root.handlers
    root.handlers[:] = [_Relay(_app_handlers)]


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables while the admin starts (a spawned admin, and the workers
    it spawns, inherit them); the app's own environment is restored after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class _System:
    """The ActorSystem shared by the app's process-executor tasks; the private directory
    of their workers' channel sockets; and the watchdog that kills the tree (and removes
    that directory) if the app dies without stopping it."""

    lock = threading.Lock()
    starting = False
    users = 0
    asys: Any = None
    start_method = ""
    watchdog: subprocess.Popen[bytes] | None = None
    channels = ""
    channel_count = 0
    marker = 0
    token = b""


def acquire(start_method: str, task: str) -> Any:
    """The ActorSystem, started if it is not yet; on a task actor's thread."""
    with _System.lock:
        if _System.asys is None:
            _start(start_method)
        elif start_method != _System.start_method:
            raise ValueError(
                f"task {task!r}: start_method={start_method!r}, but the app's worker "
                f"processes already start with {_System.start_method!r}; one app uses one"
            )
        _System.users += 1
        return _System.asys


def _start(start_method: str) -> None:
    # mode 0700: only this user reaches the sockets (each also needs its key)
    channels = tempfile.mkdtemp(prefix="onestep-")
    token = f"{_TOKEN_VAR}={os.urandom(16).hex()}"
    read_end, write_end = os.pipe()  # the marker: see _watchdog
    marker = os.fstat(read_end).st_ino
    command = [sys.executable, "-m", "onestep.executor._watchdog", str(os.getpid())]
    try:
        # a session of its own: a SIGKILL to the app's whole process group (`timeout`, a
        # shell's job control) must not take the watchdog with the app
        watchdog = subprocess.Popen(
            [*command, str(marker), token, channels],
            stdin=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        shutil.rmtree(channels, ignore_errors=True)
        raise
    user_log = "THESPLOG_FILE" in os.environ  # the user asked for thespian's file: kept
    env: dict[str, str] = {}
    if not user_log:
        thesplog_control(logging.WARNING, False, 0)  # in this process and its forks
        env["THESPLOG_FILE_MAXSIZE"] = "0"  # in spawned processes
    if start_method == "spawn":
        env[_TOKEN_VAR] = token.split("=", 1)[1]
    # blocked here, so the admin (forked by this thread) and its workers inherit the mask:
    # see GROUP_SIGNALS
    old = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    before = _children()
    _System.starting = True
    try:
        with _environment(env):
            asys = ActorSystem(
                "multiprocQueueBase",
                capabilities={"Process Startup Method": start_method},
                logDefs=LOG_DEFS,
                transientUnique=True,
            )
    except BaseException:
        _System.starting = False
        _stop_watchdog(watchdog, marker, token.encode(), kill=True)
        shutil.rmtree(channels, ignore_errors=True)
        raise
    finally:
        _System.starting = False
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(read_end)
        os.close(write_end)
        _reap_new(before)
    _System.asys, _System.start_method, _System.watchdog = asys, start_method, watchdog
    _System.channels, _System.marker, _System.token = channels, marker, token.encode()


def channel_path() -> str:
    """A new socket path for a worker's channel, in the private directory."""
    with _System.lock:
        _System.channel_count += 1
        return os.path.join(_System.channels, f"w{_System.channel_count}")


def release() -> None:
    """One task stopped using the system; the last one stops it, within a bound: thespian's
    shutdown is given SHUTDOWN_S, then every process of the tree is killed."""
    with _System.lock:
        _System.users -= 1
        if _System.users > 0 or _System.asys is None:
            return
        asys, _System.asys = _System.asys, None
        watchdog, _System.watchdog = _System.watchdog, None
        channels, _System.channels = _System.channels, ""
        marker, token = _System.marker, _System.token
    # taken now: a finished shutdown drops it (thespian's transport, private attributes)
    transport = getattr(getattr(asys, "_systemBase", None), "transport", None)
    done = threading.Event()

    def shut_down() -> None:
        try:
            asys.shutdown()
        except Exception:
            logger.debug("thespian's shutdown failed", exc_info=True)
        finally:
            done.set()

    # a daemon thread: if the admin is stuck, the thread is left to thespian's own
    # timeouts, and the app goes on
    threading.Thread(target=shut_down, name="onestep-thespian-shutdown", daemon=True).start()
    if not done.wait(SHUTDOWN_S):
        logger.debug("thespian's shutdown did not finish within %s s: killing", SHUTDOWN_S)
    _abandon_queues(transport)
    if watchdog is not None:
        _stop_watchdog(watchdog, marker, token, kill=True)
    shutil.rmtree(channels, ignore_errors=True)


def _abandon_queues(transport: Any) -> None:
    """Let the interpreter exit without flushing this process's thespian queues: their
    feeder threads can be blocked for good writing to the admin's full pipe (the app
    itself holds its read end, so killing the admin does not break it), and
    multiprocessing joins them at exit. What they hold is for processes that are killed.
    (thespian's transport keeps them as `_adminQ` and `_myInputQ`.)"""
    for name in ("_adminQ", "_myInputQ"):
        cancel = getattr(getattr(transport, name, None), "cancel_join_thread", None)
        if cancel is not None:
            with contextlib.suppress(Exception):
                cancel()


def _stop_watchdog(
    watchdog: subprocess.Popen[bytes], marker: int, token: bytes, *, kill: bool
) -> None:
    """Kill the tree (here, not in the watchdog: done when this returns), then tell the
    watchdog to exit and wait for it, bounded."""
    if kill:
        kill_marked(marker, token)
    with contextlib.suppress(OSError):
        assert watchdog.stdin is not None
        watchdog.stdin.write(b"stop\n")
        watchdog.stdin.close()
    try:
        watchdog.wait(_WATCHDOG_EXIT_S)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


def _children() -> set[int]:
    """This process's children (Linux /proc; empty elsewhere)."""
    me = str(os.getpid())
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{me}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{me}/task/{task}/children") as f:
                found.update(int(pid) for pid in f.read().split())
    return found


def _reap_new(before: set[int]) -> None:
    """Reap the child that thespian forks to daemonize its admin (the admin runs in a
    new session under init, watched by the watchdog); it exits at once and would stay
    a zombie of the app."""
    for pid in _children() - before:
        with contextlib.suppress(OSError):
            os.waitpid(pid, os.WNOHANG)


class Endpoint:
    """A private thespian endpoint that creates one worker process and can ask it to
    exit; used by one worker thread at a time (a thespian endpoint is not thread-safe)."""

    def __init__(self, asys: Any) -> None:
        self._cm = asys.private()
        self._context = self._cm.__enter__()
        self._address: Any = None

    def start_worker(self, setup: Setup, timeout_s: float) -> Ready | None:
        """Create the worker process and hand it `setup`; its answer (None: none in time)."""
        self._address = self._context.createActor(HandlerWorker)
        answer: Ready | None = self._context.ask(self._address, setup, timeout_s)
        return answer

    def exit_worker(self) -> None:
        """Ask the worker process to exit (it is idle, or never said its pid)."""
        if self._address is not None:
            with contextlib.suppress(Exception):
                self._context.tell(self._address, ActorExitRequest())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cm.__exit__(None, None, None)


class HandlerWorker(Actor):  # type: ignore[misc]
    """A worker process's thespian actor (its main thread): takes `Setup` and its exit
    from thespian; the work is `HandlerSide`'s, on a thread of its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._side = HandlerSide()

    def receiveMessage(self, message: Any, sender: Any) -> None:
        """Runs on the worker process's main thread."""
        if isinstance(message, Setup):
            self.send(sender, self._side.start(message))

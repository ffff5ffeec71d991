"""AppWorker: one worker slot of `onestep run --processes N`, a whole app in a process: how
it is started (command, environment, pipes, own session), killed (its whole process group)
and how its exit reads. Used by the supervisor (_supervisor.py), on its thread only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import site
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path

from ..core import STOP_SIGNALS
from . import _sockets as _listen
from . import _worker_link
from ._wakeup import Wakeup, drain

#: Exits that a stop signal explains: a worker ended by one of them before it could
#: handle it stopped as it was asked to.
_STOP_EXITS = frozenset(-sig for sig in STOP_SIGNALS)

_Sockets = dict[tuple[str, int], socket.socket]


class AppWorker:
    """One worker slot (`w1`...): its current process, pipes and history."""

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
        #: When the current process must have said it is ready (monotonic), else None.
        self.ready_by: float | None = None
        self.start_timed_out = False  # killed because it was not ready in time
        self.deaths: deque[float] = deque()
        self.killed = False  # SIGKILLed by the parent at the stop deadline
        self.stop_code: int | None = None  # exit code after the parent asked it to stop

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None

    def spawn(
        self,
        target: str,
        options: list[str],
        run_dir: str,
        sockets: dict[tuple[str, int], socket.socket],
    ) -> None:
        """Start the worker process: `python -m onestep _worker TARGET --index I ...`
        with `options`, the pipes and `sockets` passed on. It runs in a session of its
        own, so that signals to the parent's process group (Ctrl-C in a terminal, a
        hangup) reach the parent only, which stops every worker over its control pipe:
        a worker that is still starting is never interrupted halfway through an import.
        Raises OSError (with every pipe closed) when it cannot be started."""
        control_r, control_w = os.pipe()
        status_r, status_w = os.pipe()
        command = [
            sys.executable,
            *interpreter_options(),
            "-m",
            "onestep",
            "_worker",
            target,
            "--index",
            str(self.index),
            "--control-fd",
            str(control_r),
            "--status-fd",
            str(status_w),
            *options,
        ]
        fds = (control_r, status_w, *(sock.fileno() for sock in sockets.values()))
        try:
            process = subprocess.Popen(
                command,
                pass_fds=fds,
                env=self._env(run_dir, sockets),
                start_new_session=True,
            )
        except OSError:
            for fd in (control_r, control_w, status_r, status_w):
                os.close(fd)
            raise
        os.close(control_r)
        os.close(status_w)
        os.set_blocking(status_r, False)
        self.process = process
        self.control, self.status = control_w, status_r
        self.status_closed = self.ready = self.start_timed_out = False

    def _env(self, run_dir: str, sockets: _Sockets) -> dict[str, str]:
        env = dict(os.environ)
        env[_worker_link.WORKER_ENV] = self.name
        env[_worker_link.RUN_DIR_ENV] = run_dir
        if sockets:
            env[_listen.ENV_VAR] = _listen.encode(sockets)
        else:
            env.pop(_listen.ENV_VAR, None)
        # The worker must import this same onestep: a source checkout that is not
        # installed is found through PYTHONPATH (site-packages never is put there, where
        # it would shadow the standard library).
        package_root = str(Path(__file__).resolve().parents[2])
        if package_root not in site_dirs():
            paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            if package_root not in paths:
                env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
        return env

    def read_status(self, wakeup: Wakeup) -> bool:
        """Read what the worker wrote on its status pipe: True when it just said it is
        ready. At end of file (the worker exited or is exiting) the pipe is unregistered
        and `status_closed` set; the supervisor reaps the process next."""
        if self.status is None or self.status_closed:
            return False
        data, eof = drain(self.status)
        became_ready = _worker_link.READY in data and not self.ready
        if became_ready:
            self.ready = self.ever_ready = True
            self.ready_by = None
        if eof:
            self.status_closed = True
            wakeup.unregister(self.status)
        return became_ready

    def close_pipes(self, wakeup: Wakeup) -> None:
        if self.status is not None:
            if not self.status_closed:
                wakeup.unregister(self.status)
            os.close(self.status)
        if self.control is not None:
            os.close(self.control)
        self.status = self.control = None
        self.status_closed = False

    def discard(self, wakeup: Wakeup) -> None:
        """Kill and reap the process if there is one, and close its pipes."""
        if self.process is not None:
            self.kill()
            self.process.wait()
            self.process = None
        self.close_pipes(wakeup)

    def kill(self) -> None:
        """SIGKILL the worker and whatever it started in its process group (its session
        is its own). Only while the process is not reaped: its pid, and so its group's
        id, cannot have been reused."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # no group left: the worker alone
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def stopped_cleanly(self) -> bool:
        """True for a worker that exited 0 when asked to stop, or that a stop signal
        itself ended, or that was not running when the stop began."""
        code = self.stop_code
        if code is None:
            return True
        return not self.killed and (code == 0 or code in _STOP_EXITS)

    def how_stopped(self) -> str:
        if self.killed:
            return "killed at the stop deadline"
        return describe_exit(self.stop_code or 0)


def clean_stop_exit(code: int) -> bool:
    """An exit code of a worker that stopped as asked (0, or ended by a stop signal)."""
    return code == 0 or code in _STOP_EXITS


def describe_exit(code: int) -> str:
    """`exit code 1`, or `killed by SIGKILL` for a process that a signal ended."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def interpreter_options() -> list[str]:
    """The parent's command-line options that its environment does not carry to a worker:
    -O, -X and -W (multiprocessing passes the same to the processes it spawns)."""
    options = ["-" + "O" * sys.flags.optimize] if sys.flags.optimize else []
    for key, value in sys._xoptions.items():
        options += ["-X", key if value is True else f"{key}={value}"]
    for option in sys.warnoptions:
        options.append(f"-W{option}")
    return options


def site_dirs() -> set[str]:
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return {str(Path(d).resolve()) for d in dirs}

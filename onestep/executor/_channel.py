"""The messages of `executor="process"` and the direct data channel between the app and
each worker process: a Unix socket in a private directory, authenticated both ways with a
per-worker key before anything is unpickled.

Used by `onestep.executor._pool` (the app's side: `accept`, `send_reply`) and
`onestep.executor._handler_side` (the worker's side). Setup and Ready travel through thespian;
the others through the channel. No thespian here.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import TYPE_CHECKING, Any

from actors import Failure

from ._watchdog import alive

if TYPE_CHECKING:
    from ..core._task import TaskSpec

# How often a waiting worker thread looks whether its worker process is still alive
# (so a crash is noticed within this) and whether its message was cancelled.
POLL_S = 0.1
# How long a new worker process may take to answer its Setup and connect.
START_TIMEOUT_S = 30.0


class Setup:
    """App -> worker, once: what the worker needs to run the task's handler, and where
    its channel to the app listens (`address`, `authkey`: set per worker)."""

    def __init__(self, spec: TaskSpec, level: int) -> None:
        self.fn = spec.fn
        self.task = spec.name
        self.config = spec.app.config
        self.level = level
        self.address = ""
        self.authkey = b""

    def for_channel(self, address: str, authkey: bytes) -> Setup:
        setup = copy.copy(self)
        setup.address, setup.authkey = address, authkey
        return setup


class Ready:
    """Worker -> app: the worker's pid and its parent's (the thespian admin)."""

    def __init__(self, pid: int, ppid: int, error: str | None = None) -> None:
        self.pid = pid
        self.ppid = ppid
        self.error = error


class Run:
    """App -> worker: run the handler on one delivery (the payload pickled already)."""

    def __init__(
        self, seq: int, payload: bytes, meta: dict[str, Any], attempts: int, deadline: Any
    ) -> None:
        self.seq = seq
        self.payload = payload
        self.meta = meta
        self.attempts = attempts
        self.deadline = deadline


class Call:
    """Worker -> app: a `ctx.state` or `ctx.emit` call to run in the app's process."""

    def __init__(self, seq: int, op: str, args: bytes) -> None:
        self.seq = seq
        self.op = op
        self.args = args


class CallReply:
    """App -> worker: the value (or the exception) of a Call."""

    def __init__(self, value: Any, error: BaseException | None) -> None:
        self.value = value
        self.error = error


class Log:
    """Worker -> app: a record logged by the handler, re-emitted in the app's process."""

    def __init__(self, seq: int, record: logging.LogRecord) -> None:
        self.seq = seq
        self.record = record


class Done:
    """Worker -> app: the handler returned (`result`, pickled) or failed (`failure`)."""

    def __init__(self, seq: int, result: bytes | None, failure: Failure | None) -> None:
        self.seq = seq
        self.result = result
        self.failure = failure


def accept(
    listener: socket.socket,
    authkey: bytes,
    pid: int,
    stopped: Callable[[], bool] = lambda: False,
) -> Connection:
    """The channel of the worker process `pid`: its connection to `listener`, once it
    proved it holds `authkey` (and this side proved it too). Gives up once `stopped()`:
    a stop does not wait for a worker that is still starting."""
    listener.settimeout(POLL_S)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            sock, _ = listener.accept()
            break
        except TimeoutError:
            if stopped():
                raise RuntimeError("the worker processes were stopped") from None
            if not alive(pid):
                raise RuntimeError(
                    f"the worker process (pid {pid}) exited before it connected to the app"
                ) from None
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"the worker process (pid {pid}) did not connect to the app within "
                    f"{START_TIMEOUT_S:g} s"
                ) from None
    with sock:
        sock.setblocking(True)
        # a peer that stops answering during the handshake fails it, not hangs it
        _set_receive_timeout(sock, START_TIMEOUT_S)
        conn = Connection(os.dup(sock.fileno()))
        try:
            # raw bytes both ways (recv_bytes with a size limit): nothing unpickled yet
            deliver_challenge(conn, authkey)
            answer_challenge(conn, authkey)
            _set_receive_timeout(sock, 0)
        except BaseException as exc:
            conn.close()
            raise RuntimeError(
                f"the worker process (pid {pid}) failed the channel's authentication: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return conn


def _set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO (0: none): applies to the fd, so to the Connection's reads too."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


def send_reply(conn: Connection, reply: CallReply) -> None:
    """Send a CallReply; a value that does not pickle is sent as an error instead."""
    try:
        conn.send(reply)  # pickled whole before anything is written
    except OSError:
        raise
    except Exception as exc:
        conn.send(
            CallReply(
                None,
                TypeError(
                    f"the value ({type(reply.value).__name__}) cannot be sent to the worker "
                    f"process (it does not pickle): {exc}"
                ),
            )
        )

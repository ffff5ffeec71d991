"""The worker process's side of `executor="process"`: the handler's thread, its `ctx`
(state and emit forwarded to the app's process) and its log records sent to the app.

Driven by `onestep.executor._thespian.HandlerWorker`, the thespian actor of a worker
process; nothing here imports thespian.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import time
import traceback
from multiprocessing.connection import Client, Connection
from typing import Any

from actors import Failure, failure_from

from ..core._delivery import Delivery
from ._channel import Call, Done, Log, Ready, Run, Setup


class HandlerSide:
    """A worker process: runs the task's handler, one delivery at a time.

    Its thespian actor (`_thespian.HandlerWorker`, on the process's main thread) hands it
    `Setup` and sends back what `start` returns. The handler runs on a thread of its own
    that connects to the app's channel and reads `Run` from it, writing back `Done`,
    `Call` (then reading its `CallReply`) and, from any thread, `Log`.
    """

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._cancelled = threading.Event()
        self._seq = 0

    def start(self, setup: Setup) -> Ready:
        """Set the process up and start the handler thread; on the process's main
        thread."""
        try:
            # its own process group: a kill (timeout, crash, stop) takes what the handler
            # started with it (subprocess.Popen, multiprocessing)
            os.setpgid(0, 0)
            # SIGUSR1 from the app sets ctx.cancelled (at shutdown)
            signal.signal(signal.SIGUSR1, lambda *_: self._cancelled.set())
            task_logger = logging.getLogger(f"onestep.task.{setup.task}")
            task_logger.handlers[:] = [ForwardLogs(self)]
            task_logger.propagate = False
            task_logger.setLevel(setup.level)
            threading.Thread(
                target=self._handler_loop, args=(setup,), name="onestep-handler", daemon=True
            ).start()
        except BaseException as exc:
            return Ready(os.getpid(), os.getppid(), f"{type(exc).__name__}: {exc}")
        return Ready(os.getpid(), os.getppid())

    def _handler_loop(self, setup: Setup) -> None:
        """The handler thread: connects to the app, then one Run at a time until the app
        closes the channel (recycling, shutdown: the actor's exit ends the process)."""
        try:
            conn = Client(setup.address, family="AF_UNIX", authkey=setup.authkey)
        except BaseException:
            # the app, waiting for this connection, sees the process gone: "did not start"
            os._exit(70)
        self._conn = conn
        while True:
            try:
                run = conn.recv()
                self._seq = run.seq
                self._cancelled.clear()
                self.post(self._run(setup, run))
            except (EOFError, OSError):
                return

    def post(self, message: Any) -> None:
        """Send a message to the app on the channel; any thread."""
        conn = self._conn
        if conn is None:
            raise OSError("not connected to the app")
        with self._send_lock:
            conn.send(message)

    def _run(self, setup: Setup, run: Run) -> Done:
        try:
            payload = pickle.loads(run.payload)
            ctx = HandlerContext(self, setup, run, payload)
            result = setup.fn(ctx, payload)
        except BaseException as exc:  # SystemExit too: it fails this message only
            return Done(run.seq, None, failure_from(exc))
        try:
            data = pickle.dumps(result)
        except Exception as exc:
            return Done(
                run.seq,
                None,
                Failure(
                    kind="error",
                    exception_type=type(exc).__name__,
                    message=f"task {setup.task!r}: the handler's result "
                    f"({type(result).__name__}) cannot be sent back to the app (it does "
                    f"not pickle): {exc}",
                    traceback="".join(traceback.format_exception(exc)),
                ),
            )
        return Done(run.seq, data, None)

    def call(self, op: str, *args: Any) -> Any:
        """Run a state or emit call in the app's process; on the handler's thread (or
        one it started: calls take turns)."""
        try:
            data = pickle.dumps(args)
        except Exception as exc:
            raise TypeError(
                f"ctx.{op}: its arguments cannot be sent to the app's process (they do not "
                f"pickle): {exc}"
            ) from exc
        with self._call_lock:
            self.post(Call(self._seq, op, data))
            assert self._conn is not None
            reply = self._conn.recv()
        if reply.error is not None:
            raise reply.error
        return reply.value


# The attributes every LogRecord has; the rest came from `extra=`.


_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"worker_pid"}


class ForwardLogs(logging.Handler):
    """Sends the handler's log records to the app's process, formatted already (like
    logging.handlers.QueueHandler.prepare), where the task's logger handles them."""

    def __init__(self, worker: HandlerSide) -> None:
        super().__init__()
        self.worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.msg, record.args, record.exc_info = message, None, None
            record.__dict__.pop("message", None)
            record.worker_pid = os.getpid()
            try:
                self.worker.post(Log(self.worker._seq, record))  # pickled before any write
            except OSError:
                raise
            except Exception:  # an `extra` value that does not pickle: sent as text
                for key, value in list(record.__dict__.items()):
                    if key not in _RECORD_FIELDS:
                        record.__dict__[key] = repr(value)
                self.worker.post(Log(self.worker._seq, record))
        except Exception:
            self.handleError(record)


class StateProxy:
    """`ctx.state` in a worker process: each call runs in the app's process."""

    __slots__ = ("_worker",)

    def __init__(self, worker: HandlerSide) -> None:
        self._worker = worker

    def get(self, key: str, default: Any = None) -> Any:
        return self._worker.call("state.get", key, default)

    def set(self, key: str, value: Any) -> None:
        self._worker.call("state.set", key, value)

    def delete(self, key: str) -> None:
        self._worker.call("state.delete", key)

    def incr(self, key: str, amount: int = 1) -> int:
        result: int = self._worker.call("state.incr", key, amount)
        return result


class HandlerContext:
    """The `ctx` of a handler in a worker process: the same members as TaskContext in a
    sync handler; `state` and `emit` run in the app's process. `ctx.app` is not there:
    the app object lives in the app's process."""

    def __init__(self, worker: HandlerSide, setup: Setup, run: Run, payload: Any) -> None:
        self._worker = worker
        self._setup = setup
        current = Delivery(payload, meta=run.meta, attempts=run.attempts)
        current.task = setup.task
        self.current = current
        self.deadline = run.deadline
        self.state = StateProxy(worker)

    @property
    def config(self) -> dict[str, Any]:
        return self._setup.config

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"onestep.task.{self._setup.task}")

    @property
    def task_name(self) -> str:
        return self._setup.task

    @property
    def cancelled(self) -> threading.Event:
        return self._worker._cancelled

    @property
    def remaining_s(self) -> float | None:
        deadline: float | None = self.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    @property
    def app(self) -> Any:
        raise AttributeError(
            f"task {self._setup.task!r}: ctx.app is not available in a worker process "
            "(executor='process'); use ctx.config, ctx.state and ctx.emit"
        )

    def emit(self, body: Any, *, sink: Any = None, meta: dict[str, Any] | None = None) -> None:
        """Publish `body` from the app's process and wait until it was accepted. `sink`
        may be one of the task's emit sinks (found by its type and name)."""
        key = None if sink is None else sink_key(sink)
        self._worker.call("emit", body, key, meta)


def sink_key(sink: Any) -> tuple[str, str]:
    """How a worker names a sink to the app (`ctx.emit(sink=...)`): its type and name."""
    return (type(sink).__name__, str(getattr(sink, "name", "")))

"""The thespian side of `executor="process"`: worker processes that are thespian actors,
and the pool through which a task's worker threads hand them deliveries.

Imported by `ProcessExecutor.bind` as a process-executor task starts; nothing else in
onestep imports thespian. Two planes:

- Control, through thespian (`multiprocQueueBase`: multiprocessing queues between local
  processes, no listening socket): creating a worker actor, its `Setup` and `Ready`, its
  exit (`ActorExitRequest`, the ActorSystem's shutdown, bounded: see
  `onestep._thespian_system`). The tree is guarded by the orphan watchdog
  (`onestep._orphan_watch`), a plain subprocess started before thespian's admin.
- Data, one direct channel per worker process: the app listens on a Unix socket in a
  private directory (mode 0700, made by `tempfile.mkdtemp`) with a random 32-byte key,
  sends the path and the key in `Setup`, accepts one connection, authenticates it with
  `multiprocessing.connection`'s challenge (HMAC of a random nonce, raw bytes: nothing is
  unpickled before the peer proved it holds the key) and removes the socket file. Every
  message of a delivery (`Run`, `Call`/`CallReply`, `Log`, `Done`) then goes straight
  between the app's worker thread and the worker process. Through thespian each went
  app -> admin -> worker -> admin -> app, about 1 ms per round trip (measured: 740-1,060
  us for thespian's ask against 40-145 us for the connection), during which a worker's
  core idled.

Each worker thread of the task takes an idle worker process from the pool, sends it one
delivery (`Run`) and waits for its answer, serving on the way the handler's `ctx.state`
and `ctx.emit` calls (`Call`, answered with `CallReply`: they run in the app's process,
so `state.incr` stays atomic) and its log records. The waiting thread also enforces the
hard deadline (SIGKILL of the worker's process group and what is under it, then a fresh
worker) and notices a worker that died (`crashed`): its end of the channel closes, or it
is found gone at the next poll (what it started is then killed with its group).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import queue
import signal
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge
from typing import TYPE_CHECKING, Any

from thespian.actors import Actor, ActorExitRequest  # type: ignore[import-untyped]

from actors import Failure, RemoteFailure, failure_from

from . import _thespian_system as system
from ._delivery import Delivery
from ._orphan_watch import kill_worker
from ._process_executor import check_importable

if TYPE_CHECKING:
    from ._process_executor import ProcessExecutor
    from ._task import TaskSpec

logger = logging.getLogger("onestep.process")

# How often a waiting worker thread looks whether its worker process is still alive
# (so a crash is noticed within this) and whether its message was cancelled.
_POLL_S = 0.1
# How long a new worker process may take to answer its Setup.
_START_TIMEOUT_S = 30.0


# -- messages ---------------------------------------------------------------------------
# Setup and Ready go through thespian; the others through the worker's channel.


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


# -- the worker process ------------------------------------------------------------------


class HandlerWorker(Actor):  # type: ignore[misc]
    """A worker process: runs the task's handler, one delivery at a time.

    The actor (on the process's main thread) takes only `Setup` and its exit from
    thespian. The handler runs on a thread of its own that connects to the app's channel
    and reads `Run` from it, writing back `Done`, `Call` (then reading its `CallReply`)
    and, from any thread, `Log`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._cancelled = threading.Event()
        self._seq = 0

    def receiveMessage(self, message: Any, sender: Any) -> None:
        """Runs on the worker process's main thread."""
        if isinstance(message, Setup):
            self.send(sender, self._start(message))

    def _start(self, setup: Setup) -> Ready:
        try:
            # its own process group: a kill (timeout, crash, stop) takes what the handler
            # started with it (subprocess.Popen, multiprocessing)
            os.setpgid(0, 0)
            # SIGUSR1 from the app sets ctx.cancelled (at shutdown)
            signal.signal(signal.SIGUSR1, lambda *_: self._cancelled.set())
            task_logger = logging.getLogger(f"onestep.task.{setup.task}")
            task_logger.handlers[:] = [_ForwardLogs(self)]
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
            ctx = WorkerContext(self, setup, run, payload)
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


class _ForwardLogs(logging.Handler):
    """Sends the handler's log records to the app's process, formatted already (like
    logging.handlers.QueueHandler.prepare), where the task's logger handles them."""

    def __init__(self, worker: HandlerWorker) -> None:
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


class _StateProxy:
    """`ctx.state` in a worker process: each call runs in the app's process."""

    __slots__ = ("_worker",)

    def __init__(self, worker: HandlerWorker) -> None:
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


class WorkerContext:
    """The `ctx` of a handler in a worker process: the same members as TaskContext in a
    sync handler; `state` and `emit` run in the app's process. `ctx.app` is not there:
    the app object lives in the app's process."""

    def __init__(self, worker: HandlerWorker, setup: Setup, run: Run, payload: Any) -> None:
        self._worker = worker
        self._setup = setup
        current = Delivery(payload, meta=run.meta, attempts=run.attempts)
        current.task = setup.task
        self.current = current
        self.deadline = run.deadline
        self.state = _StateProxy(worker)

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
        key = None if sink is None else _sink_key(sink)
        self._worker.call("emit", body, key, meta)


def _sink_key(sink: Any) -> tuple[str, str]:
    """How a worker names a sink to the app (`ctx.emit(sink=...)`): its type and name."""
    return (type(sink).__name__, str(getattr(sink, "name", "")))


# -- the app's side ------------------------------------------------------------------------


class PayloadError(TypeError):
    """A payload that cannot be sent to a worker process: fails its message only."""


# In the idle queue in place of a worker process that could not be started.
_MISSING = object()


class WorkerProcess:
    """One worker process as the app sees it: its thespian address and private endpoint
    (control), its channel (data) and its pid; used by one worker thread at a time."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.conn: Connection | None = None
        self._endpoint_cm = pool.asys.private()
        self.endpoint = self._endpoint_cm.__enter__()
        self.messages = 0
        self.pid = 0
        self.address: Any = None
        path = system.channel_path()
        authkey = os.urandom(32)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                listener.bind(path)
                listener.listen(1)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot listen for a worker's channel at {path}: {exc}"
                ) from exc
            self.address = self.endpoint.createActor(HandlerWorker)
            setup = pool.setup
            assert setup is not None
            ready = self.endpoint.ask(
                self.address, setup.for_channel(path, authkey), _START_TIMEOUT_S
            )
            if isinstance(ready, Ready):
                self.pid = ready.pid  # so that kill() below can stop a failed start
            if not isinstance(ready, Ready) or ready.error is not None:
                reason = "no answer" if ready is None else getattr(ready, "error", repr(ready))
                raise RuntimeError(f"a worker process did not start: {reason}")
            self.conn = _accept(listener, authkey, self.pid, lambda: pool.stopped)
        except BaseException as exc:
            self.kill()
            if isinstance(exc, RuntimeError):
                raise RuntimeError(f"task {pool.spec.name!r}: {exc}") from exc
            raise
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(path)

    def run(self, delivery: Any, cancelled: threading.Event, deadline: float | None) -> Any:
        """Run the handler on `delivery` in this process; on the worker thread."""
        spec = self.pool.spec
        try:
            payload = pickle.dumps(delivery.payload)
        except Exception as exc:
            raise PayloadError(
                f"task {spec.name!r}: the payload ({type(delivery.payload).__name__}) cannot "
                f"be sent to a worker process (it does not pickle): {exc}"
            ) from exc
        conn = self.conn
        assert conn is not None
        self.messages += 1
        seq = self.messages
        signalled = False
        try:
            conn.send(Run(seq, payload, dict(delivery.meta), delivery.attempts, deadline))
            while True:
                # checked before each wait: a handler that keeps logging still times out
                if deadline is not None and time.monotonic() >= deadline:
                    self.kill()
                    logger.warning(
                        "task %r: handler exceeded timeout_s=%s; its worker process (pid %d) "
                        "and its process group were killed",
                        spec.name,
                        spec.timeout_s,
                        self.pid,
                    )
                    raise RemoteFailure(self._timeout_failure(spec))
                wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
                if not conn.poll(max(0.0, wait)):
                    if not system.alive(self.pid):
                        self.kill()
                        raise RemoteFailure(self._crash_failure(spec))
                    if cancelled.is_set() and not signalled:
                        signalled = True
                        with contextlib.suppress(OSError):
                            os.kill(self.pid, signal.SIGUSR1)
                    continue
                reply = conn.recv()
                if isinstance(reply, Log):  # a record may come from any thread of the handler
                    record = reply.record
                    logging.getLogger(record.name).handle(record)
                elif getattr(reply, "seq", None) != seq:
                    continue
                elif isinstance(reply, Done):
                    if reply.failure is not None:
                        raise RemoteFailure(reply.failure)
                    return pickle.loads(reply.result) if reply.result is not None else None
                elif isinstance(reply, Call):
                    _send_reply(conn, self.pool.serve(reply))
        except (EOFError, OSError):
            # the worker's end closed (it died), or this end was closed by a stop
            self.kill()
            raise RemoteFailure(self._crash_failure(spec)) from None

    def _timeout_failure(self, spec: TaskSpec) -> Failure:
        return Failure(
            kind="timeout",
            exception_type="TimeoutError",
            message=(
                f"handler did not finish within timeout_s={spec.timeout_s}; its worker "
                f"process (pid {self.pid}) was killed"
            ),
            traceback="",
        )

    def _crash_failure(self, spec: TaskSpec) -> Failure:
        return Failure(
            kind="crashed",
            exception_type="WorkerCrashed",
            message=(
                f"task {spec.name!r}: the worker process (pid {self.pid}) running the handler "
                "died (os._exit, a fatal signal such as SIGSEGV, or the OOM killer)"
            ),
            traceback="",
        )

    def kill(self) -> None:
        """SIGKILL the process at once (it is stuck or dead), with its process group and
        what is still under it, and drop its channel and endpoint; the admin reaps it.
        Any thread; never waits for the process."""
        if self.pid:
            kill_worker(self.pid)
        elif self.address is not None:  # created, but it never said its pid
            with contextlib.suppress(Exception):
                self.endpoint.tell(self.address, ActorExitRequest())
        self.close()

    def retire(self) -> None:
        """Ask the process to exit (it is idle: recycling); any thread."""
        with contextlib.suppress(Exception):
            self.endpoint.tell(self.address, ActorExitRequest())
        self.close()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        cm, self._endpoint_cm = self._endpoint_cm, None
        if cm is not None:
            with contextlib.suppress(Exception):
                cm.__exit__(None, None, None)


def _accept(
    listener: socket.socket,
    authkey: bytes,
    pid: int,
    stopped: Callable[[], bool] = lambda: False,
) -> Connection:
    """The channel of the worker process `pid`: its connection to `listener`, once it
    proved it holds `authkey` (and this side proved it too). Gives up once `stopped()`:
    a stop does not wait for a worker that is still starting."""
    listener.settimeout(_POLL_S)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            sock, _ = listener.accept()
            break
        except TimeoutError:
            if stopped():
                raise RuntimeError("the worker processes were stopped") from None
            if not system.alive(pid):
                raise RuntimeError(
                    f"the worker process (pid {pid}) exited before it connected to the app"
                ) from None
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"the worker process (pid {pid}) did not connect to the app within "
                    f"{_START_TIMEOUT_S:g} s"
                ) from None
    with sock:
        sock.setblocking(True)
        # a peer that stops answering during the handshake fails it, not hangs it
        _set_receive_timeout(sock, _START_TIMEOUT_S)
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


def _send_reply(conn: Connection, reply: CallReply) -> None:
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


class WorkerPool:
    """A task's worker processes (implements `actors.ExecutorPort`); its `run` is the
    task's `invoke` and runs on the task's worker threads."""

    def __init__(self, spec: TaskSpec, options: ProcessExecutor) -> None:
        self.spec = spec
        self.options = options
        self.asys: Any = None
        self.setup: Setup | None = None
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._all: set[WorkerProcess] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._sinks: dict[tuple[str, str], Any] | None = None

    def start(self, workers: int) -> None:
        """Start `workers` worker processes; on the task actor's thread."""
        spec = self.spec
        check_importable(spec.fn, spec.name)
        try:
            setup = Setup(spec, logging.getLogger(f"onestep.task.{spec.name}").getEffectiveLevel())
            pickle.dumps(setup)
        except Exception as exc:
            raise TypeError(
                f"task {spec.name!r}: executor='process' cannot send the handler and the app's "
                f"config to a worker process (they must pickle): {exc}"
            ) from exc
        self.setup = setup
        self.asys = system.acquire(self.options.start_method, spec.name)
        self._stopped = False
        try:
            for _ in range(workers):
                self._idle.put(self._new_worker())
        except BaseException:
            self.stop()
            raise

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _new_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self)
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._all.add(worker)
        if stopped:  # started while the pool stopped: its stop did not see it
            worker.kill()
            raise RuntimeError(f"task {self.spec.name!r}: its worker processes are stopped")
        return worker

    def run(self, delivery: Any, cancelled: threading.Event, deadline: float | None) -> Any:
        """The task's `invoke`: run the handler in an idle worker process; on a worker
        thread of the task. Raises RemoteFailure for a failure, timeout or crash."""
        delivery.task = self.spec.name
        if deadline is None and self.spec.timeout_s is not None:
            deadline = time.monotonic() + self.spec.timeout_s
        worker = self._take()
        replace = True
        try:
            result = worker.run(delivery, cancelled, deadline)
            replace = False
            return result
        except PayloadError:
            replace = False
            raise
        except RemoteFailure as exc:
            replace = exc.failure.kind in ("timeout", "crashed")
            raise
        finally:
            self._give_back(worker, replace)

    def _take(self) -> WorkerProcess:
        """An idle worker process; starts one in place of a replacement that could not
        start before (RuntimeError naming the reason if it still cannot)."""
        worker = self._idle.get()
        if worker is None or self._stopped:
            self._idle.put(None)
            raise RuntimeError(f"task {self.spec.name!r}: its worker processes are stopped")
        if isinstance(worker, WorkerProcess):
            return worker
        try:
            return self._new_worker()
        except Exception as exc:
            self._idle.put(_MISSING)
            raise RuntimeError(
                f"task {self.spec.name!r}: no worker process to run the handler: {exc}"
            ) from exc

    def _give_back(self, worker: WorkerProcess, replace: bool) -> None:
        limit = self.options.max_messages_per_worker
        recycle = limit is not None and worker.messages >= limit
        if not replace and not recycle:
            self._idle.put(worker)
            return
        if recycle and not replace:
            worker.retire()
        else:
            worker.kill()
        with self._lock:
            self._all.discard(worker)
        if self._stopped:
            return
        try:
            self._idle.put(self._new_worker())
        except Exception:
            if self.stopped:  # a stop came while it started: nothing to report
                return
            # the failure at hand is this message's own; the next message tries again
            logger.exception(
                "task %r: a replacement worker process failed to start", self.spec.name
            )
            self._idle.put(_MISSING)

    def serve(self, call: Call) -> CallReply:
        """Run a handler's state or emit call here; on the worker thread."""
        try:
            args = pickle.loads(call.args)
            op = call.op
            if op == "emit":
                body, key, meta = args
                self._emit(body, key, meta)
                return CallReply(None, None)
            state = self.spec.state
            method = {
                "state.get": state.get,
                "state.set": state.set,
                "state.delete": state.delete,
                "state.incr": state.incr,
            }[op]
            return CallReply(method(*args), None)
        except BaseException as exc:
            try:
                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            return CallReply(None, exc)

    def _emit(self, body: Any, key: tuple[str, str] | None, meta: Any) -> None:
        from ._context import TaskContext

        sink = None if key is None else self._find_sink(key)
        # the sync ctx.emit of a handler in the app's process, on this worker thread
        ctx = TaskContext(self.spec, Delivery(None), None, None)
        ctx.emit(body, sink=sink, meta=meta)

    def _find_sink(self, key: tuple[str, str]) -> Any:
        if self._sinks is None:
            found: dict[tuple[str, str], Any] = {}
            for spec in self.spec.app.tasks.values():
                for sink in (*spec.emit, *spec.dead_letter, spec.source):
                    if sink is not None and callable(getattr(sink, "publish", None)):
                        found[_sink_key(sink)] = sink
            self._sinks = found
        sink = self._sinks.get(key)
        if sink is None:
            raise ValueError(
                f"task {self.spec.name!r}: ctx.emit(sink=...) in a worker process finds the "
                f"sink by type and name among the app's sinks; no {key[0]} named {key[1]!r}"
            )
        return sink

    def stop(self) -> None:
        """Stop every worker process; on the task actor's thread, after its worker
        threads were released. A worker still running a handler (or crashing, or
        starting) is killed; nothing here waits for a worker or, beyond a bound, for
        thespian (see `_thespian_system.release`)."""
        if self._stopped or self.asys is None:
            return
        with self._lock:  # with _new_worker's look: a worker started from now is killed
            self._stopped = True
        idle = []
        with contextlib.suppress(queue.Empty):
            while True:
                worker = self._idle.get_nowait()
                if isinstance(worker, WorkerProcess):
                    idle.append(worker)
        self._idle.put(None)
        with self._lock:
            busy, self._all = self._all - set(idle), set()
        # A busy one is still in a handler after the shutdown cut-off: killed. An idle one
        # exits with the ActorSystem's shutdown, or is killed with the tree once that
        # shutdown's bound ran out.
        for worker in busy:
            worker.kill()
        for worker in idle:
            worker.close()
        self.asys = None
        system.release()

"""The thespian side of `executor="process"`: worker processes that are thespian actors,
and the pool through which a task's worker threads hand them deliveries.

Imported by `ProcessExecutor.bind` as a process-executor task starts; nothing else in
onestep imports thespian. Runs on `multiprocQueueBase`: multiprocessing queues between
local processes, no listening socket, so nothing is unpickled from a network.

Each worker thread of the task takes an idle worker process from the pool, sends it one
delivery (`Run`) and waits for its answer, serving on the way the handler's `ctx.state`
and `ctx.emit` calls (`Call`, answered with `CallReply`: they run in the app's process,
so `state.incr` stays atomic) and its log records. The waiting thread also enforces the
hard deadline (SIGKILL, then a fresh worker) and notices a worker that died (`crashed`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from thespian.actors import Actor, ActorExitRequest, ActorSystem  # type: ignore[import-untyped]

from actors import Failure, RemoteFailure, failure_from

from ._delivery import Delivery
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
# Signals that the app's process group receives (Ctrl-C, systemd's and Docker's SIGTERM):
# blocked in the admin and the workers, which inherit the mask, so that only the app
# drains and then stops them; a message in flight is not cut short by the group signal.
_GROUP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


# -- messages (pickled through multiprocessing queues between local processes) ----------


class Setup:
    """App -> worker, once: what the worker needs to run the task's handler."""

    def __init__(self, spec: TaskSpec, level: int) -> None:
        self.fn = spec.fn
        self.task = spec.name
        self.app_name = spec.app.name
        self.config = spec.app.config
        self.emit_count = len(spec.emit)
        self.level = level


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

    The handler runs on a thread of its own, so that the actor (on the process's main
    thread) can pass the handler's calls to the app and their replies back while it runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup: Setup | None = None
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._seq = 0

    def receiveMessage(self, message: Any, sender: Any) -> None:
        """Runs on the worker process's main thread."""
        if isinstance(message, Run):
            self._seq = message.seq
            self._cancelled.clear()
            self._inbox.put(message)
            self._pump(sender)
        elif isinstance(message, CallReply):
            self._inbox.put(message)
            self._pump(sender)
        elif isinstance(message, Setup):
            self.send(sender, self._start(message))

    def _start(self, setup: Setup) -> Ready:
        try:
            self._setup = setup
            # SIGUSR1 from the app sets ctx.cancelled (at shutdown)
            signal.signal(signal.SIGUSR1, lambda *_: self._cancelled.set())
            task_logger = logging.getLogger(f"onestep.task.{setup.task}")
            task_logger.handlers[:] = [_ForwardLogs(self._outbox)]
            task_logger.propagate = False
            task_logger.setLevel(setup.level)
            threading.Thread(target=self._handler_loop, name="onestep-handler", daemon=True).start()
        except BaseException as exc:
            return Ready(os.getpid(), os.getppid(), f"{type(exc).__name__}: {exc}")
        return Ready(os.getpid(), os.getppid())

    def _pump(self, sender: Any) -> None:
        """Pass what the handler thread produces to the app until it needs an answer
        (a Call) or is done."""
        while True:
            item = self._outbox.get()
            if isinstance(item, logging.LogRecord):
                self.send(sender, Log(self._seq, item))
                continue
            self.send(sender, item)
            return

    def _handler_loop(self) -> None:
        """The handler thread: one Run at a time from the inbox."""
        setup = self._setup
        assert setup is not None
        while True:
            run = self._inbox.get()
            self._outbox.put(self._run(setup, run))

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
        """Run a state or emit call in the app's process; on the handler thread."""
        try:
            data = pickle.dumps(args)
        except Exception as exc:
            raise TypeError(
                f"ctx.{op}: its arguments cannot be sent to the app's process (they do not "
                f"pickle): {exc}"
            ) from exc
        self._outbox.put(Call(self._seq, op, data))
        reply = self._inbox.get()
        if reply.error is not None:
            raise reply.error
        return reply.value


# The attributes every LogRecord has; the rest came from `extra=`.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"worker_pid"}


class _ForwardLogs(logging.Handler):
    """Sends the handler's log records to the app's process, formatted already (like
    logging.handlers.QueueHandler.prepare), where the task's logger handles them."""

    def __init__(self, outbox: queue.SimpleQueue[Any]) -> None:
        super().__init__()
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.msg, record.args, record.exc_info = message, None, None
            record.__dict__.pop("message", None)
            record.worker_pid = os.getpid()
            try:
                pickle.dumps(record)
            except Exception:  # an `extra` value that does not pickle: sent as text
                for key, value in list(record.__dict__.items()):
                    if key not in _RECORD_FIELDS:
                        record.__dict__[key] = repr(value)
            self.outbox.put(record)
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
        key = None if sink is None else (type(sink).__name__, str(getattr(sink, "name", "")))
        self._worker.call("emit", body, key, meta)


# -- the app's side ------------------------------------------------------------------------


class _System:
    """The app process's one thespian ActorSystem, shared by its process-executor tasks,
    and the watchdog that kills the admin's process tree if the app dies without
    shutting it down (SIGKILL, the OOM killer)."""

    lock = threading.Lock()
    users = 0
    asys: Any = None
    start_method = ""
    watchdog: subprocess.Popen[bytes] | None = None

    @classmethod
    def acquire(cls, start_method: str, task: str) -> Any:
        with cls.lock:
            if cls.asys is None:
                # blocked here, so the admin (forked by this thread) and its workers inherit
                # the mask: see _GROUP_SIGNALS
                old = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
                before = _children()
                try:
                    cls.asys = ActorSystem(
                        "multiprocQueueBase",
                        capabilities={"Process Startup Method": start_method},
                        transientUnique=True,
                    )
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                    _reap_new(before)
                cls.start_method = start_method
            elif start_method != cls.start_method:
                raise ValueError(
                    f"task {task!r}: start_method={start_method!r}, but the app's worker "
                    f"processes already start with {cls.start_method!r}; one app uses one"
                )
            cls.users += 1
            return cls.asys

    @classmethod
    def watch(cls, admin_pid: int) -> None:
        """Start the watchdog for the admin's process tree (once per ActorSystem)."""
        with cls.lock:
            if cls.watchdog is not None or cls.asys is None:
                return
            started = _start_time(admin_pid)
            if started is None:
                return
            cls.watchdog = subprocess.Popen(
                [sys.executable, "-m", "onestep._orphan_watch", str(admin_pid), started],
                stdin=subprocess.PIPE,
                close_fds=True,
            )

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.users -= 1
            if cls.users > 0 or cls.asys is None:
                return
            asys, cls.asys = cls.asys, None
            watchdog, cls.watchdog = cls.watchdog, None
        try:
            asys.shutdown()
        except Exception:
            logger.exception("shutting down the thespian ActorSystem failed")
        if watchdog is not None:
            # EOF tells it to kill what is left of the admin's tree, and to exit
            assert watchdog.stdin is not None
            watchdog.stdin.close()
            try:
                watchdog.wait(10.0)
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


def _start_time(pid: int) -> str | None:
    """The start time of a process (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not): /proc on Linux, kill(0) elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PayloadError(TypeError):
    """A payload that cannot be sent to a worker process: fails its message only."""


# In the idle queue in place of a worker process that could not be started.
_MISSING = object()


class WorkerProcess:
    """One worker process as the app sees it: its address, pid, and a private thespian
    endpoint; used by one worker thread at a time."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._endpoint_cm = pool.asys.private()
        self.endpoint = self._endpoint_cm.__enter__()
        self.messages = 0
        self.seq = 0
        self.pid = 0
        try:
            self.address = self.endpoint.createActor(HandlerWorker)
            ready = self.endpoint.ask(self.address, pool.setup, _START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        if not isinstance(ready, Ready) or ready.error is not None:
            self.kill()
            reason = "no answer" if ready is None else getattr(ready, "error", repr(ready))
            raise RuntimeError(f"task {pool.spec.name!r}: a worker process did not start: {reason}")
        self.pid = ready.pid
        _System.watch(ready.ppid)

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
        self.seq += 1
        self.messages += 1
        seq = self.seq
        self.endpoint.tell(
            self.address, Run(seq, payload, dict(delivery.meta), delivery.attempts, deadline)
        )
        signalled = False
        while True:
            # checked before each wait: a handler that keeps logging still times out
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                raise RemoteFailure(self._timeout_failure(spec))
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            reply = self.endpoint.listen(max(0.0, wait))
            if isinstance(reply, Log):  # a record may come from any thread of the handler
                record = reply.record
                logging.getLogger(record.name).handle(record)
                continue
            if reply is None or getattr(reply, "seq", None) != seq:
                if not _alive(self.pid):
                    self.kill()
                    raise RemoteFailure(self._crash_failure(spec))
                if cancelled.is_set() and not signalled:
                    signalled = True
                    with contextlib.suppress(OSError):
                        os.kill(self.pid, signal.SIGUSR1)
                continue
            if isinstance(reply, Done):
                if reply.failure is not None:
                    raise RemoteFailure(reply.failure)
                return pickle.loads(reply.result) if reply.result is not None else None
            if isinstance(reply, Call):
                self.endpoint.tell(self.address, self.pool.serve(reply))

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
        """SIGKILL the process at once (it is stuck or dead) and drop its endpoint; the
        admin reaps it. Any thread."""
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        self.close()

    def retire(self) -> None:
        """Ask the process to exit once idle (recycling, shutdown); any thread."""
        with contextlib.suppress(Exception):
            self.endpoint.tell(self.address, ActorExitRequest())
        self.close()

    def close(self) -> None:
        cm, self._endpoint_cm = self._endpoint_cm, None
        if cm is not None:
            with contextlib.suppress(Exception):
                cm.__exit__(None, None, None)


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
        self.asys = _System.acquire(self.options.start_method, spec.name)
        self._stopped = False
        try:
            for _ in range(workers):
                self._idle.put(self._new_worker())
        except BaseException:
            self.stop()
            raise

    def _new_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self)
        with self._lock:
            self._all.add(worker)
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
                        found[(type(sink).__name__, str(getattr(sink, "name", "")))] = sink
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
        threads were released. A worker still running a handler is killed."""
        if self._stopped or self.asys is None:
            return
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
        # exits with the ActorSystem's shutdown (killing it would make that wait about 2 s
        # for thespian to notice).
        for worker in busy:
            worker.kill()
        for worker in idle:
            worker.close()
        self.asys = None
        _System.release()

"""The app's side of `executor="process"`: a task's pool of worker processes, through
which the task's worker threads hand them deliveries (`HandlerPool.run`, the
`actors.ExecutorPort` the TaskActor drives).

Each worker thread takes an idle worker process, sends it one delivery (`Run`) over its
channel and waits for its answer, serving on the way the handler's `ctx.state` and
`ctx.emit` calls (`Call`, answered with `CallReply`: they run in the app's process, so
`state.incr` stays atomic) and its log records. The waiting thread also enforces the hard
deadline (SIGKILL of the worker's process group and what is under it, then a fresh
worker) and notices a worker that died (`crashed`): its end of the channel closes, or it
is found gone at the next poll (what it started is then killed with its group).
Created by `ProcessExecutor.bind` as a process-executor task starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from actors import FAILURES, Failure, RemoteFailure

from ..core._delivery import Delivery
from . import check_importable
from ._channel import (
    POLL_S,
    START_TIMEOUT_S,
    Call,
    CallReply,
    Done,
    Log,
    Ready,
    Run,
    Setup,
    accept,
    send_reply,
)
from ._handler_side import sink_key
from ._thespian import Endpoint, acquire, channel_path, release
from ._watchdog import alive, kill_worker

if TYPE_CHECKING:
    from ..core._task import TaskSpec
    from . import ProcessExecutor

logger = logging.getLogger("onestep.process")


class PayloadError(TypeError):
    """A payload that cannot be sent to a worker process: fails its message only."""


# In the idle queue in place of a worker process that could not be started.
_MISSING = object()


class HandlerProcess:
    """One worker process as the app sees it: its thespian endpoint (control), its
    channel (data) and its pid; used by one worker thread at a time."""

    def __init__(self, pool: HandlerPool) -> None:
        self.pool = pool
        self.conn: Connection | None = None
        self.endpoint: Endpoint | None = Endpoint(pool.asys)
        self.messages = 0
        self.pid = 0
        path = channel_path()
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
            setup = pool.setup
            assert setup is not None
            ready = self.endpoint.start_worker(setup.for_channel(path, authkey), START_TIMEOUT_S)
            if isinstance(ready, Ready):
                self.pid = ready.pid  # so that kill() below can stop a failed start
            if not isinstance(ready, Ready) or ready.error is not None:
                reason = "no answer" if ready is None else getattr(ready, "error", repr(ready))
                raise RuntimeError(f"a worker process did not start: {reason}")
            self.conn = accept(listener, authkey, self.pid, lambda: pool.stopped)
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
                    FAILURES.timed_out(
                        spec.name,
                        delivery.attempts + 1,
                        spec.timeout_s,
                        f"its worker process (pid {self.pid}) and its process group were killed",
                    )
                    raise RemoteFailure(self._timeout_failure(spec))
                wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
                if not conn.poll(max(0.0, wait)):
                    if not alive(self.pid):
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
                    send_reply(conn, self.pool.serve(reply))
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
        elif self.endpoint is not None:  # created, but it never said its pid
            self.endpoint.exit_worker()
        self.close()

    def retire(self) -> None:
        """Ask the process to exit (it is idle: recycling); any thread."""
        if self.endpoint is not None:
            self.endpoint.exit_worker()
        self.close()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            endpoint.close()


class HandlerPool:
    """A task's worker processes (implements `actors.ExecutorPort`): its `run` is what the
    task's worker threads call in place of `invoke`."""

    def __init__(self, spec: TaskSpec, options: ProcessExecutor) -> None:
        self.spec = spec
        self.options = options
        self.asys: Any = None
        self.setup: Setup | None = None
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._all: set[HandlerProcess] = set()
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
        self.asys = acquire(self.options.start_method, spec.name)
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

    def _new_worker(self) -> HandlerProcess:
        worker = HandlerProcess(self)
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._all.add(worker)
        if stopped:  # started while the pool stopped: its stop did not see it
            worker.kill()
            raise RuntimeError(f"task {self.spec.name!r}: its worker processes are stopped")
        return worker

    def run(self, delivery: Any, cancelled: threading.Event, deadline: float | None) -> Any:
        """`ExecutorPort.run`: run the handler in an idle worker process; on a worker
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

    def _take(self) -> HandlerProcess:
        """An idle worker process; starts one in place of a replacement that could not
        start before (RuntimeError naming the reason if it still cannot)."""
        worker = self._idle.get()
        if worker is None or self._stopped:
            self._idle.put(None)
            raise RuntimeError(f"task {self.spec.name!r}: its worker processes are stopped")
        if isinstance(worker, HandlerProcess):
            return worker
        try:
            return self._new_worker()
        except Exception as exc:
            self._idle.put(_MISSING)
            raise RuntimeError(
                f"task {self.spec.name!r}: no worker process to run the handler: {exc}"
            ) from exc

    def _give_back(self, worker: HandlerProcess, replace: bool) -> None:
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
        from ..core._context import TaskContext

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
                        found[sink_key(sink)] = sink
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
        thespian (see `_thespian.release`)."""
        if self._stopped or self.asys is None:
            return
        with self._lock:  # with _new_worker's look: a worker started from now is killed
            self._stopped = True
        idle = []
        with contextlib.suppress(queue.Empty):
            while True:
                worker = self._idle.get_nowait()
                if isinstance(worker, HandlerProcess):
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
        release()

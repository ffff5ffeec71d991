"""The small protocols through which the actor engine talks to the domain layer.

`onestep` implements these for its sources, sinks, tasks and policies; the engine knows
nothing else about them, so it imports only pykka and the standard library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a message failed: `kind` is `error` (the handler raised), `timeout`, `decode`
    (the source could not decode the message), `encode` (a sink could not encode the
    result), `crashed` (the worker process running the handler died) or `key` (a task's key
    function raised: `concurrency_key`, `dedup_key`)."""

    kind: str
    exception_type: str
    message: str
    traceback: str

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "exception_type": self.exception_type,
            "message": self.message,
            "traceback": self.traceback,
        }


class SourcePort(Protocol):
    """A message source. Every method runs on the owning SourceActor's thread.

    Methods may return awaitables; the actor then waits for them on the event loop.
    A source may define `keepalive()` and `keepalive_interval_s` (see SinkPort).
    Optional members: `flush()` (called once the actor's mailbox is empty after
    settling, and before close: a source may buffer acks and write them in one batch),
    `poll_delay()` (a clocked source: seconds until it should be fetched again; it is
    also fetched with limit 0 while the task has no credit), `subscribe(wakeup)` (the
    source calls `wakeup()` from any thread when it has messages after an empty fetch;
    if it also takes a `call_later` argument, the runtime passes its timer's
    `call_later(delay_s, callback)` so the source can wake it when a delayed message
    falls due),
    `poll_interval_s` (idle polling period otherwise), `thread_safe` with `take` (direct
    mode, see TaskRuntime).
    """

    name: str

    def open(self) -> Any: ...
    def fetch(self, limit: int) -> Any: ...
    def ack(self, delivery: Any) -> Any: ...
    def retry(self, delivery: Any, delay_s: float | None = None) -> Any: ...
    def fail(self, delivery: Any, error: BaseException | None = None) -> Any: ...
    def release(self, delivery: Any) -> Any: ...
    def close(self) -> Any: ...


class SinkPort(Protocol):
    """A message sink. Every method runs on the owning SinkActor's thread, except
    `offer`, which a sink may define to accept a message from any thread without
    blocking (it returns False when it would block).

    A sink may also define `publish_batch(items)` and `max_batch`: the SinkActor then
    hands it every job waiting in its mailbox at once, as a list of (body, meta). If it
    raises, every item fails (each message's retry policy applies). It may instead
    return a mapping `{index: exception}` of the items it did not publish (encode each
    item before sending anything, and report the ones that cannot be encoded with
    `EncodeError`): those fail alone and the rest count as published.

    Sources and sinks that hold a connection may define `keepalive()` and
    `keepalive_interval_s` (seconds, > 0): the owning actor calls `keepalive()` on its
    own thread that often while the endpoint is open (answering broker heartbeats,
    renewing leases) however long the handlers run. It must not block for long; if it
    raises, a source's actor fails (and is restarted by the supervisor), a sink's error
    is logged."""

    name: str

    def open(self) -> Any: ...
    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> Any: ...
    def close(self) -> Any: ...


class RetryPort(Protocol):
    """Decides what happens to a failed message."""

    def next_delay(self, attempts: int, failure: Failure) -> float | None:
        """Return the delay before the next attempt, or None to give up.

        `attempts` is the number of executions so far, this one included.
        """
        ...


class TaskPort(Protocol):
    """A task as the engine sees it: a handler plus its policies and routes."""

    @property
    def name(self) -> str: ...
    @property
    def source(self) -> Any:
        """The SourcePort feeding the task, or None."""
        ...

    @property
    def source_name(self) -> str: ...
    @property
    def is_async(self) -> bool: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def timeout_s(self) -> float | None: ...
    @property
    def retry(self) -> RetryPort: ...
    @property
    def emit(self) -> Sequence[Any]: ...
    @property
    def dead_letter(self) -> Sequence[Any]: ...

    @property
    def executor(self) -> ExecutorPort | None:
        """Where a sync handler runs: None for the task's worker threads (`invoke`), else
        an ExecutorPort (worker processes) whose `run` the worker threads call instead."""
        ...

    def invoke(self, delivery: Any, cancelled: threading.Event, deadline: float | None) -> Any:
        """Run a sync handler for one delivery; runs on a worker thread of the task."""
        ...

    async def invoke_async(self, delivery: Any, deadline: float | None) -> Any:
        """Run an async handler for one delivery; runs on the event-loop thread."""
        ...

    def dead_letter_record(self, delivery: Any, failure: Failure) -> tuple[Any, dict[str, Any]]:
        """Build the body and meta a dead-letter sink receives."""
        ...

    # Optional: `result_meta(delivery)`, the meta of the result a handler returned (read
    # once as the task starts; None or absent: results carry no meta). Called where the
    # handler finished, right after it returned, on that same thread.


class ExecutorPort(Protocol):
    """Runs a sync task's handler outside the process (worker processes, one per worker
    thread). The task's worker threads still take and settle the deliveries; each blocks
    in `TaskPort.invoke` while the executor runs the handler elsewhere, and the executor
    enforces `timeout_s` itself (it kills what overran), so the TaskActor never abandons
    such a thread. `run` raises `RemoteFailure` for a handler that failed elsewhere,
    timed out or crashed.
    """

    def run(self, delivery: Any, cancelled: threading.Event, deadline: float | None) -> Any:
        """Run the handler on one delivery elsewhere and return its result; runs on a
        worker thread of the task, in place of `TaskPort.invoke`. `cancelled` is set at
        shutdown; `deadline` (monotonic) is None unless the task has a `timeout_s`."""
        ...

    def start(self, workers: int) -> None:
        """Start `workers` workers; runs on the task actor's thread as it starts. Raises
        (naming the task) when they cannot start."""
        ...

    def stop(self) -> None:
        """Stop every worker and leave no process behind; runs on the task actor's thread
        after the worker threads were released. Idempotent, and bounded: it never waits
        on a worker that is crashing or stuck."""
        ...


class AdmissionPort(Protocol):
    """Flow control in front of a task's handler: a task that has one exposes it as
    `gate` (a task without one has no `gate`, or None, and pays nothing for it). See
    actors/_admission.py for who calls what on which thread. `blocking` (default True)
    False promises that `admit` never blocks: an async task then asks it on the
    event-loop thread, in direct mode. `needs_settle` (default True) False says that
    `settled` has nothing to do for an admitted delivery: the engine then skips it;
    `settles_acks` (default True) False, that it has nothing to do for a plain ack. If it
    has an attribute `wake`, the engine sets it to a callable the gate may call from any
    thread with a delivery it told to wait, to be asked again about it at once."""

    def admit(self, delivery: Any) -> float:
        """0.0: run the delivery now; above 0: ask again after that many seconds (the
        engine parks it on the timer, holding no worker thread); below 0: a duplicate, to
        be acked without running (event `skipped`). May raise AdmissionRefused to fail
        the delivery with a failure kind of its own (`key`); any other error fails it
        with kind `error`. Runs on a direct-mode worker thread or the TaskActor's."""
        ...

    def settled(self, delivery: Any, action: str, error: BaseException | None) -> None:
        """The delivery ended (`ack`, `retry`, `fail`, or `release` at shutdown): free what
        its admission holds. Any thread; called at least once per settled delivery,
        possibly twice (a settle racing a shutdown release), so it must be idempotent."""
        ...


EventRecord = tuple[str, str, str, int, float, float | None, Failure | None, dict[str, Any]]
"""(kind, task, source, attempts, emitted_at, duration_s, failure, meta)."""

EventCallback = Callable[[EventRecord], None]

"""SinkActor and PublishJob: how a result or a dead letter reaches its sinks.

A PublishJob walks its sinks in order, on each sink's own actor thread (or inline through
a sink's non-blocking `offer`), and calls its `done` callback once all have accepted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ._base import KEEPALIVE, EngineActor, Request
from ._keepalive import Keepalive
from ._loop import EventLoopThread
from ._ports import SinkPort
from ._timer import Timer

logger = logging.getLogger("onestep.actors.sink")


class Open(Request):
    __slots__ = ()


class Close(Request):
    __slots__ = ()


class SinkActor(EngineActor):
    """Owns one sink object: every call into it runs on this actor's thread."""

    def __init__(self, sink: SinkPort, loop: EventLoopThread, timer: Timer) -> None:
        super().__init__()
        self.sink = sink
        self.label = f"sink {getattr(sink, 'name', type(sink).__name__)!r}"
        self._loop = loop
        self._opened = False
        self._keepalive = Keepalive(sink, timer)
        # A sink with publish_batch(items) gets consecutive jobs in one call (one
        # transaction, one round of confirms): while more jobs wait in the mailbox the
        # batch grows, up to the sink's max_batch; then it is published.
        self._publish_batch = getattr(sink, "publish_batch", None)
        self._max_batch = int(getattr(sink, "max_batch", 500))
        self._batch: list[PublishJob] = []
        self._handlers[PublishJob] = self._on_publish
        self._handlers[JobBatch] = self._on_job_batch
        self._handlers[Open] = self._on_open
        self._handlers[Close] = self._on_close
        self._handlers[KEEPALIVE] = self._on_keepalive

    def _on_open(self, _: Open) -> None:
        """Runs on the sink actor's thread; errors go back to the caller of `ask`."""
        opener = getattr(self.sink, "open", None)
        if opener is not None:
            self._loop.call(opener)
        self._opened = True
        self._keepalive.start(self.actor_ref)

    def _on_keepalive(self, _: Any) -> None:
        """Let the open sink keep its connection alive between publishes; runs on this
        actor's thread every `keepalive_interval_s`. A failure is logged: the next
        publish reconnects or fails its messages."""
        keepalive = self._keepalive
        if not keepalive.running:
            return
        if keepalive.call is not None:
            try:
                self._loop.call(keepalive.call)
            except Exception as exc:
                logger.warning("%s: keepalive failed: %s: %s", self.label, type(exc).__name__, exc)
        keepalive.schedule()

    def _on_close(self, _: Close) -> BaseException | None:
        """Runs on the sink actor's thread; returns the error instead of raising it.
        A sink whose open() failed is not closed."""
        self._keepalive.stop()
        closer = getattr(self.sink, "close", None)
        if closer is None or not self._opened:
            return None
        self._opened = False
        try:
            self._loop.call(closer)
        except Exception as exc:
            return exc
        return None

    def on_receive(self, message: Any) -> Any:
        if self._batch and not isinstance(message, PublishJob | JobBatch):
            self._flush_batch()  # keep the order: jobs before a later Close
        return super().on_receive(message)

    def _on_publish(self, job: PublishJob) -> None:
        """Runs on the sink actor's thread: publish, then pass the job on."""
        if self._publish_batch is not None:
            self._batch.append(job)
            if len(self._batch) >= self._max_batch or self.actor_inbox.empty():
                self._flush_batch()
            return
        try:
            self._loop.call(self.sink.publish, job.body, job.meta)
        except Exception as exc:
            job.finish(exc)
            return
        job.index += 1
        job.advance()

    def _on_job_batch(self, message: JobBatch) -> None:
        if self._publish_batch is None:
            for job in message.jobs:
                self._on_publish(job)
            return
        self._batch.extend(message.jobs)
        if len(self._batch) >= self._max_batch or self.actor_inbox.empty():
            self._flush_batch()

    def _flush_batch(self) -> None:
        """Publish the gathered jobs in one call. All of them fail if it raises; the items
        it reports as refused (`{index: error}`, such as a body it cannot encode) fail
        alone and the others go on."""
        jobs, self._batch = self._batch, []
        assert self._publish_batch is not None
        try:
            refused = self._loop.call(self._publish_batch, [(job.body, job.meta) for job in jobs])
        except Exception as exc:
            for job in jobs:
                job.finish(exc)
            return
        for index, job in enumerate(jobs):
            if refused and index in refused:
                job.finish(refused[index])
                continue
            job.index += 1
            job.advance()


class JobBatch:
    """Several PublishJobs for one SinkActor in one mailbox message."""

    __slots__ = ("jobs",)

    def __init__(self, jobs: list[PublishJob]) -> None:
        self.jobs = jobs


class SinkRoute:
    """A sink as seen by publishers: its actor, and its inline `offer`, if it has one.

    Jobs submitted on the event-loop thread are gathered until the loop's next turn and
    sent as one JobBatch: async handlers finishing together cost one mailbox message
    instead of one each (benchmarks/mysql.py, sink case: see the CHANGELOG).
    """

    __slots__ = ("_gathered", "loop", "name", "offer", "ref", "sink")

    def __init__(self, sink: SinkPort, ref: Any, loop: EventLoopThread | None = None) -> None:
        self.sink = sink
        self.ref = ref
        self.loop = loop
        self.name = getattr(sink, "name", type(sink).__name__)
        self.offer: Callable[[Any, Any], bool] | None = getattr(sink, "offer", None)
        self._gathered: list[PublishJob] = []

    def submit(self, job: PublishJob) -> None:
        """Hand `job` to the sink actor; callable from any thread."""
        loop = self.loop
        if loop is None or threading.get_ident() != loop.thread.ident:
            self.ref.tell(job)
            return
        if not self._gathered:
            loop.loop.call_soon(self._send_gathered)
        self._gathered.append(job)

    def _send_gathered(self) -> None:
        """Runs on the event-loop thread, once per turn that gathered jobs."""
        jobs, self._gathered = self._gathered, []
        if len(jobs) == 1:
            self.ref.tell(jobs[0])
        else:
            self.ref.tell(JobBatch(jobs))


class PublishJob:
    """One body on its way through a sequence of sinks."""

    __slots__ = ("body", "context", "done", "index", "meta", "routes")

    def __init__(
        self,
        body: Any,
        meta: dict[str, Any] | None,
        routes: Sequence[SinkRoute],
        done: Callable[[PublishJob, BaseException | None], None],
        context: Any = None,
    ) -> None:
        self.body = body
        self.meta = meta
        self.routes = routes
        self.done = done
        self.context = context
        self.index = 0

    def advance(self) -> None:
        """Publish to the remaining sinks; runs on whichever thread calls it."""
        routes = self.routes
        while self.index < len(routes):
            route = routes[self.index]
            if route.offer is not None:
                try:
                    accepted = route.offer(self.body, self.meta)
                except Exception as exc:
                    self.finish(exc)
                    return
                if accepted:
                    self.index += 1
                    continue
            route.submit(self)
            return
        self.finish(None)

    def finish(self, error: BaseException | None) -> None:
        self.done(self, error)

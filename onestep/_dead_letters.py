"""Dead-letter tooling: list, replay and discard a task's dead letters where its
`dead_letter` sink keeps them; `app.dead_letters("task")` returns the DeadLetters of
one task, and `onestep dlq` calls it. Every method runs on the calling thread.

Browsing belongs to the endpoint, so that the tooling uses the same Source and Sink
objects as a run (DESIGN §7): a sink that keeps dead letters where another process can
read them implements

    browse(limit=None, match=None) -> list[DeadLetterEntry]   # read, consume nothing
    remove(ids) -> int                                        # delete these entries

(RabbitMQQueue and TableQueue do). A MemoryQueue is browsed here, through its public
methods: it lives in the memory of one process, so only code in that process sees its
dead letters.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import queue
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._delivery import Delivery
from ._memory import MemoryQueue

if TYPE_CHECKING:
    from ._app import OneStepApp
    from ._task import TaskSpec

logger = logging.getLogger("onestep.dead_letters")

DEAD_LETTER_ID = "dead_letter_id"
"""The meta key of the id the dead-letter path gives every dead letter (a uuid4 hex), so
that a dead letter can be found again in a queue that has no ids of its own."""

#: A replay removes the dead letters it put back on the source after every this many:
#: a crash mid-replay duplicates at most this many messages (never loses one), and a
#: queue that must be scanned to remove entries (RabbitMQ) is scanned once per chunk.
REPLAY_CHUNK = 100


class NotBrowsable(TypeError):
    """The dead-letter sink cannot list its dead letters (a sink without `browse` and
    `remove`, a table sink that keeps no meta); the message says why and what would
    work. (A MemoryQueue can be listed, from its own process only: see
    `DeadLetters.process_local`.)"""


class NotReplayable(TypeError):
    """The task's source cannot take its dead letters back (no source, no `put`, or a
    `put` that cannot carry the attempt count `keep_attempts` asks for); raised before
    anything is touched."""


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One message as a browsable sink keeps it: its `id` in that sink (a row id, a
    message id), its `body` and its `meta` (for a dead letter: the DESIGN §3 body
    `{"payload", "failure"}` and meta `{"app", "task", "source", "original_meta",
    "original_attempts", "dead_letter_id"}`)."""

    id: Hashable
    body: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter of one task: the payload that failed, the failure (`kind`,
    `exception_type`, `message`, `traceback`), the message's meta and executions
    before it was given up (`attempts`), and its `id` in the dead-letter sink."""

    id: Hashable
    payload: Any
    failure: dict[str, Any]
    meta: dict[str, Any]
    attempts: int
    task: str
    source: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON form `onestep dlq list --json` prints, one object per dead letter."""
        return {
            "id": self.id,
            "payload": self.payload,
            "failure": self.failure,
            "meta": self.meta,
            "attempts": self.attempts,
            "task": self.task,
            "source": self.source,
        }


class DeadLetters:
    """The dead letters of one task in one of its dead-letter sinks.

    `list` reads them without consuming anything; `replay` puts each payload back on
    the task's source with its original meta and removes the dead letter only once the
    source accepted it (a crash in between duplicates, never loses); `discard` removes
    them. Each takes `limit` (the first so many, oldest first; None: all). Only dead
    letters of this app and task are touched, so several tasks may share a sink.
    """

    def __init__(self, app: OneStepApp, spec: TaskSpec, sink: Any) -> None:
        self.app = app
        self.task = spec.name
        self.source = spec.source
        self.source_name = spec.source_name
        self.sink = sink
        self.sink_name = str(getattr(sink, "name", type(sink).__name__))
        self._store = _browser(sink, self.sink_name)
        #: True when the sink lives in this process's memory (a MemoryQueue): another
        #: process (`onestep dlq`) always sees it empty.
        self.process_local = is_process_local(sink)
        #: True when the task's source lives in this process's memory: a replay from
        #: another process would put the messages where this app never reads them.
        self.process_local_source = spec.source is not None and is_process_local(spec.source)

    def __repr__(self) -> str:
        return f"DeadLetters(task={self.task!r}, sink={self.sink_name!r})"

    def _matches(self, entry: DeadLetterEntry) -> bool:
        meta = entry.meta
        return (
            isinstance(meta, dict)
            and meta.get("task") == self.task
            and meta.get("app") == self.app.name
            and isinstance(entry.body, dict)
            and "payload" in entry.body
        )

    def _entries(self, limit: int | None) -> builtins.list[DeadLetterEntry]:
        limit = _check_limit(limit)
        if limit == 0:
            return []
        return builtins.list(self._store.browse(limit, self._matches))

    def list(self, limit: int | None = None) -> builtins.list[DeadLetter]:
        """The first `limit` dead letters (all with None), oldest first; consumes
        nothing."""
        return [_dead_letter(entry, self.task) for entry in self._entries(limit)]

    def replay(self, limit: int | None = None, *, keep_attempts: bool = False) -> int:
        """Put the first `limit` dead letters back on the task's source, each payload
        with its original meta, attempts starting from 0 again (or from the executions
        it had, with `keep_attempts`); returns how many. A dead letter is removed only
        after the source accepted its payload, in chunks of REPLAY_CHUNK: if this
        raises, what was put back and not yet removed is still a dead letter too."""
        put_back = _put_back_for(self.source, self.task, keep_attempts)
        replayed = 0
        # put back on the source and not yet removed from the dead-letter sink
        pending: builtins.list[Hashable] = []
        try:
            for entry in self._entries(limit):
                letter = _dead_letter(entry, self.task)
                put_back(letter.payload, letter.meta, letter.attempts if keep_attempts else 0)
                pending.append(entry.id)
                if len(pending) >= REPLAY_CHUNK:
                    chunk, pending = pending, []
                    replayed += self._remove(chunk)
        except BaseException:
            # a put failed: remove what the source did accept, so that only a failed
            # removal (here or of a chunk) leaves duplicates
            if pending:
                try:
                    self._remove(pending)
                except Exception:
                    logger.exception(
                        "replay of task %r: %d dead letter(s) put back on the source but "
                        "not removed from %r: they will be replayed again",
                        self.task,
                        len(pending),
                        self.sink_name,
                    )
            raise
        if pending:
            replayed += self._remove(pending)
        return replayed

    def discard(self, limit: int | None = None) -> int:
        """Remove the first `limit` dead letters (all with None); returns how many."""
        ids = [entry.id for entry in self._entries(limit)]
        return self._remove(ids) if ids else 0

    def _remove(self, ids: builtins.list[Hashable]) -> int:
        removed = int(self._store.remove(ids))
        if removed < len(ids):
            logger.warning(
                "%d of %d dead letter(s) of task %r were no longer in %r when removed "
                "(another process consumed or removed them)",
                len(ids) - removed,
                len(ids),
                self.task,
                self.sink_name,
            )
        return removed


def dead_letters_of(app: OneStepApp, task: str, sink: Any = None) -> DeadLetters:
    """`app.dead_letters(task, sink=...)`: the DeadLetters of `task` in its one
    dead-letter sink, or in `sink` (the object or its name) when it has several.
    ValueError for an unknown task, a task without a dead-letter sink, or an ambiguous
    or unknown sink; NotBrowsable for a sink that cannot list its dead letters."""
    spec = app.tasks.get(task)
    if spec is None:
        known = ", ".join(repr(name) for name in app.tasks) or "none"
        raise ValueError(f"app {app.name!r} has no task {task!r} (its tasks: {known})")
    sinks = spec.dead_letter
    if not sinks:
        raise ValueError(f"task {task!r} has no dead_letter sink: its failures are not kept")
    names = [str(getattr(s, "name", type(s).__name__)) for s in sinks]
    if sink is None:
        if len(sinks) > 1:
            listed = ", ".join(map(repr, names))
            raise ValueError(
                f"task {task!r} has {len(sinks)} dead_letter sinks ({listed}); "
                "choose one with sink=... (--sink)"
            )
        return DeadLetters(app, spec, sinks[0])
    for candidate, name in zip(sinks, names, strict=True):
        if candidate is sink or name == sink:
            return DeadLetters(app, spec, candidate)
    raise ValueError(
        f"task {task!r} has no dead_letter sink {sink!r} (its sinks: {', '.join(map(repr, names))})"
    )


def is_process_local(endpoint: Any) -> bool:
    """Whether `endpoint` keeps its messages in this process's memory (a MemoryQueue,
    a WebhookSource's queue), where another process cannot see them."""
    return bool(getattr(endpoint, "process_local", isinstance(endpoint, MemoryQueue)))


# -- browsing ----------------------------------------------------------------------------


class _MemoryBrowser:
    """browse/remove for a MemoryQueue, through its public `remove_if` (which calls its
    predicate under the queue's lock, in queue order): a predicate that keeps every
    message reads them without taking any."""

    def __init__(self, memory: MemoryQueue) -> None:
        self._queue = memory

    def browse(
        self, limit: int | None, match: Callable[[DeadLetterEntry], bool] | None
    ) -> builtins.list[DeadLetterEntry]:
        found: builtins.list[DeadLetterEntry] = []

        def look(delivery: Delivery) -> bool:
            if limit is None or len(found) < limit:
                entry = _memory_entry(delivery)
                if match is None or match(entry):
                    found.append(entry)
            return False

        self._queue.remove_if(look)
        return found

    def remove(self, ids: Iterable[Hashable]) -> int:
        wanted = IdTally(ids)
        return self._queue.remove_if(lambda delivery: wanted.take(_memory_entry(delivery).id))


def _memory_entry(delivery: Delivery) -> DeadLetterEntry:
    meta = delivery.meta
    # a dead letter made by this onestep carries its id; anything else is known by
    # its identity, which is stable while it stays in the queue
    entry_id = meta.get(DEAD_LETTER_ID) if isinstance(meta, dict) else None
    return DeadLetterEntry(entry_id or f"memory-{id(delivery):x}", delivery.payload, meta)


class IdTally:
    """The ids still to remove, as counts: two entries may share an id (a fallback id
    made from equal contents), and each named occurrence removes one."""

    def __init__(self, ids: Iterable[Hashable]) -> None:
        self._counts: dict[Hashable, int] = {}
        for entry_id in ids:
            self._counts[entry_id] = self._counts.get(entry_id, 0) + 1

    def take(self, entry_id: Hashable) -> bool:
        """Whether `entry_id` is still wanted; counts it taken if so."""
        left = self._counts.get(entry_id, 0)
        if left <= 0:
            return False
        if left == 1:
            del self._counts[entry_id]
        else:
            self._counts[entry_id] = left - 1
        return True

    def empty(self) -> bool:
        """Whether every id was taken."""
        return not self._counts


def _browser(sink: Any, name: str) -> Any:
    if callable(getattr(sink, "browse", None)) and callable(getattr(sink, "remove", None)):
        return sink
    if isinstance(sink, MemoryQueue):
        return _MemoryBrowser(sink)
    raise NotBrowsable(
        f"dead-letter sink {name!r} ({type(sink).__name__}) cannot list its dead letters: "
        "it has no browse() and remove(); use a RabbitMQ queue, a MySQL table queue or "
        "a MemoryQueue (same process only) as dead_letter"
    )


def _dead_letter(entry: DeadLetterEntry, task: str) -> DeadLetter:
    body, meta = entry.body, entry.meta
    original = meta.get("original_meta")
    attempts = meta.get("original_attempts")
    failure = body.get("failure")
    return DeadLetter(
        id=entry.id,
        payload=body.get("payload"),
        failure=dict(failure) if isinstance(failure, dict) else {},
        meta=dict(original) if isinstance(original, dict) else {},
        attempts=attempts if type(attempts) is int and attempts >= 0 else 0,
        task=task,
        source=str(meta.get("source", "")),
    )


def _check_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if type(limit) is not int or limit < 0:
        raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
    return limit


# -- putting back --------------------------------------------------------------------------


def _put_back_for(
    source: Any, task: str, keep_attempts: bool
) -> Callable[[Any, dict[str, Any], int], None]:
    """How a replay puts one payload back on `source`; NotReplayable, before anything
    is touched, when it cannot (no source, no `put`, attempts it cannot carry)."""
    name = str(getattr(source, "name", type(source).__name__))
    put = getattr(source, "put", None)
    if source is None or not callable(put):
        why = "no source" if source is None else f"{type(source).__name__} {name!r} has no put()"
        raise NotReplayable(
            f"task {task!r} has no source that takes messages back ({why}): its dead "
            "letters cannot be replayed"
        )
    if _takes_attempts(put):

        def put_with_attempts(payload: Any, meta: dict[str, Any], attempts: int) -> None:
            put(payload, meta or None, attempts=attempts)

        return put_with_attempts
    if keep_attempts:
        offer = getattr(source, "offer_delivery", None)
        if not callable(offer):
            raise NotReplayable(
                f"source {name!r} ({type(source).__name__}) cannot take a message with its "
                "attempt count (its put() has no attempts=): replay without keep_attempts"
            )

        def offer_with_attempts(payload: Any, meta: dict[str, Any], attempts: int) -> None:
            if not offer(Delivery(payload, meta=meta or None, attempts=attempts)):
                raise queue.Full(f"source {name!r} is full")

        return offer_with_attempts

    def plain_put(payload: Any, meta: dict[str, Any], attempts: int) -> None:
        put(payload, meta or None)

    return plain_put


def _takes_attempts(put: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(put).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get("attempts")
    return parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY

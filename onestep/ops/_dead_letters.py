"""Dead-letter tooling: list, replay and discard a task's dead letters where its
`dead_letter` sink keeps them; `app.dead_letters("task")` returns the DeadLetters of
one task, and `onestep dlq` calls it. Every method runs on the calling thread.

Browsing belongs to the endpoint, so that the tooling uses the same Source and Sink
objects as a run (DESIGN §7): a sink that keeps dead letters where another process can
read them implements `browse`, `remove` and `take` (see _dead_letter_store; the RabbitMQ
queue, the MySQL and PostgreSQL table queues and the Redis stream do). Replays and
discards take each dead letter under the sink's claim, so that two of them at once, or a
running app, never handle one twice. A MemoryQueue is handled here, through its public
methods: it lives in the memory of one process, so only code in that process sees its
dead letters.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..sources import MemoryQueue
from ._dead_letter_store import (
    DEAD_LETTER_ID,
    DeadLetterClaim,
    DeadLetterEntry,
    IdTally,
    MemoryDeadLetters,
)
from ._put_back import NotReplayable, put_back_for

if TYPE_CHECKING:
    from ..core import AppCore as OneStepApp
    from ..core import TaskSpec

__all__ = [
    "DEAD_LETTER_ID",
    "REPLAY_CHUNK",
    "DeadLetter",
    "DeadLetterClaim",
    "DeadLetterEntry",
    "DeadLetters",
    "IdTally",
    "NotBrowsable",
    "NotReplayable",
    "dead_letters_of",
    "is_process_local",
]

logger = logging.getLogger("onestep.dead_letters")

#: A replay claims (and removes) the dead letters it puts back on the source this many
#: at a time: a crash mid-replay duplicates at most this many messages (never loses
#: one), and a claim holds no more than this many at once.
REPLAY_CHUNK = 100


class NotBrowsable(TypeError):
    """The dead-letter sink cannot list its dead letters (a sink without `browse` and
    `remove`, a table sink that keeps no meta); the message says why and what would
    work. (A MemoryQueue can be listed, from its own process only: see
    `DeadLetters.process_local`.)"""


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
        # whether the sink claims what it hands out (see _dead_letter_store)
        self._claims = callable(getattr(self._store, "take", None))
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
        it had, with `keep_attempts`); returns how many were moved. Each is claimed
        first (see _dead_letter_store), so replays running at once, and a running app,
        never put one back twice; with None, as many as the sink held when the replay
        began (so dead letters that fail again meanwhile are not replayed round and
        round). A dead letter is removed only after the source accepted its payload, in
        chunks of REPLAY_CHUNK: if this raises, what was put back and not yet removed
        is still a dead letter too."""
        put_back = put_back_for(self.source, self.task, keep_attempts)

        def replay_one(entry: DeadLetterEntry) -> None:
            letter = _dead_letter(entry, self.task)
            put_back(letter.payload, letter.meta, letter.attempts if keep_attempts else 0)

        if self._claims:
            return self._claimed(limit, replay_one, "replay")
        return self._browsed(limit, replay_one)

    def discard(self, limit: int | None = None) -> int:
        """Remove the first `limit` dead letters (all with None, as for `replay`);
        returns how many. Claimed first, like a replay's."""
        if self._claims:
            return self._claimed(limit, lambda entry: None, "discard")
        ids = [entry.id for entry in self._entries(limit)]
        return self._remove(ids) if ids else 0

    def _claimed(
        self, limit: int | None, handle: Callable[[DeadLetterEntry], None], doing: str
    ) -> int:
        """`handle` each dead letter the sink's `take` claims, REPLAY_CHUNK at a time,
        and settle the ones handled; returns how many were removed."""
        left = _check_limit(limit)
        if left is None:
            depth = getattr(self._store, "depth", None)
            left = int(depth()) if callable(depth) else None
        moved = 0
        while left is None or left > 0:
            size = REPLAY_CHUNK if left is None else min(REPLAY_CHUNK, left)
            with self._store.take(size, self._matches) as claim:
                entries = claim.entries
                if not entries:
                    break
                done: builtins.list[Hashable] = []
                try:
                    for entry in entries:
                        handle(entry)
                        done.append(entry.id)
                except BaseException:
                    # a put failed: remove what the source did accept (and give back
                    # the rest), so that only a failed removal leaves duplicates
                    self._settle_after_failure(claim, done, doing)
                    raise
                moved += self._settle(claim, done)
            if left is not None:
                left -= len(entries)
            if len(entries) < size:
                break  # nothing more to claim (others may hold some)
        return moved

    def _settle(self, claim: DeadLetterClaim, ids: builtins.list[Hashable]) -> int:
        removed = claim.settle(ids)
        if removed < len(ids):
            logger.warning(
                "%d of %d claimed dead letter(s) of task %r were not removed from %r",
                len(ids) - removed,
                len(ids),
                self.task,
                self.sink_name,
            )
        return removed

    def _settle_after_failure(
        self, claim: DeadLetterClaim, ids: builtins.list[Hashable], doing: str
    ) -> None:
        try:
            if ids:
                claim.settle(ids)
            else:
                claim.release()
        except Exception:
            logger.exception(
                "%s of task %r: %d dead letter(s) put back on the source but not removed "
                "from %r: they will be replayed again",
                doing,
                self.task,
                len(ids),
                self.sink_name,
            )

    def _browsed(self, limit: int | None, handle: Callable[[DeadLetterEntry], None]) -> int:
        """The replay of a sink without `take`: browse, then remove in chunks. It holds
        for one replay at a time only (two at once may put a dead letter back twice)."""
        replayed = 0
        # put back on the source and not yet removed from the dead-letter sink
        pending: builtins.list[Hashable] = []
        try:
            for entry in self._entries(limit):
                handle(entry)
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


def _browser(sink: Any, name: str) -> Any:
    if callable(getattr(sink, "browse", None)) and callable(getattr(sink, "remove", None)):
        return sink
    if isinstance(sink, MemoryQueue):
        return MemoryDeadLetters(sink)
    raise NotBrowsable(
        f"dead-letter sink {name!r} ({type(sink).__name__}) cannot list its dead letters: "
        "it has no browse() and remove(); use a RabbitMQ queue, a MySQL or PostgreSQL "
        "table queue, a Redis stream or a MemoryQueue (same process only) as dead_letter"
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

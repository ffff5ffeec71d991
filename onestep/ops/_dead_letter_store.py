"""What a dead-letter sink offers the dead-letter tooling: its entries, claims on them, and
the MemoryQueue's implementation of both; used by DeadLetters (`onestep dlq`,
`app.dead_letters`) on the calling thread, and by connectors through onestep.kit.

A sink that keeps dead letters where another process can read them implements

    browse(limit=None, match=None) -> list[DeadLetterEntry]   # read, consume nothing
    remove(ids) -> int                                        # delete these entries
    take(limit, match) -> DeadLetterClaim                     # claim, see below

`take` claims up to `limit` entries that `match` accepts, oldest first: while the claim
lasts no other `take` (another replay, in any process) and no consumer of the sink (a
running app) gets them. `claim.settle(ids)` deletes the named entries for good and gives
the others back; `claim.release()` gives them all back; a claim whose holder dies (its
connection closes) gives them back by itself. A replay puts each entry back on the task's
source and then settles, so two replays at once never put one back twice. Without `take`
(a sink written before it) the tooling falls back to browse and remove, which holds for
one replay at a time only.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ..core import Delivery
from ..sources import MemoryQueue

#: The meta key of the id the dead-letter path gives every dead letter (a uuid4 hex),
#: so that a dead letter can be found again in a queue that has no ids of its own.
DEAD_LETTER_ID = "dead_letter_id"
"""The meta key of the id the dead-letter path gives every dead letter (a uuid4 hex), so
that a dead letter can be found again in a queue that has no ids of its own."""

Match = Callable[["DeadLetterEntry"], bool]


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One message as a browsable sink keeps it: its `id` in that sink (a row id, a
    message id), its `body` and its `meta` (for a dead letter: the DESIGN §3 body
    `{"payload", "failure"}` and meta `{"app", "task", "source", "original_meta",
    "original_attempts", "dead_letter_id"}`)."""

    id: Hashable
    body: Any
    meta: dict[str, Any] = field(default_factory=dict)


class DeadLetterClaim:
    """Entries a sink's `take` claimed: nobody else gets them until this claim ends.

    A connector subclasses it and implements `_settle(ids)` (delete those entries for
    good, give the others back, end the claim; return how many were deleted) and
    `_release()` (give every entry back). The claim ends once, by `settle`, `release`
    or leaving its `with` block (which releases whatever was not settled); after an
    error in `_settle` it is ended too, and the connector must have given back what it
    did not delete (closing its connection does, on RabbitMQ and MySQL). The methods run
    on the thread that took the claim.
    """

    def __init__(self, entries: Iterable[DeadLetterEntry]) -> None:
        #: The claimed entries, oldest first.
        self.entries: builtins.list[DeadLetterEntry] = builtins.list(entries)
        self._ended = False

    def settle(self, ids: Iterable[Hashable]) -> int:
        """Delete the claimed entries with these ids (each named id once) and give the
        others back; returns how many were deleted. Ends the claim."""
        if self._ended:
            raise RuntimeError("this dead-letter claim has ended (settled or released)")
        self._ended = True
        return int(self._settle(builtins.list(ids)))

    def release(self) -> None:
        """Give every entry back, unchanged. Ends the claim; does nothing once ended."""
        if self._ended:
            return
        self._ended = True
        self._release()

    def _settle(self, ids: builtins.list[Hashable]) -> int:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> DeadLetterClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


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


# -- a MemoryQueue -----------------------------------------------------------------------


class MemoryDeadLetters:
    """browse, remove and take for a MemoryQueue, through its public `remove_if` (which
    calls its predicate under the queue's lock, in queue order): a predicate that keeps
    every message reads them without taking any; `take` removes the claimed ones, and
    gives back those it does not settle at the front, in their order."""

    def __init__(self, memory: MemoryQueue) -> None:
        self._queue = memory

    def depth(self) -> int:
        return self._queue.depth()

    def browse(self, limit: int | None, match: Match | None) -> builtins.list[DeadLetterEntry]:
        found: builtins.list[DeadLetterEntry] = []

        def look(delivery: Delivery) -> bool:
            if limit is None or len(found) < limit:
                entry = memory_entry(delivery)
                if match is None or match(entry):
                    found.append(entry)
            return False

        self._queue.remove_if(look)
        return found

    def remove(self, ids: Iterable[Hashable]) -> int:
        wanted = IdTally(ids)
        return self._queue.remove_if(lambda delivery: wanted.take(memory_entry(delivery).id))

    def take(self, limit: int, match: Match | None) -> DeadLetterClaim:
        taken: builtins.list[Delivery] = []

        def claim(delivery: Delivery) -> bool:
            if len(taken) >= limit or (match is not None and not match(memory_entry(delivery))):
                return False
            taken.append(delivery)
            return True

        self._queue.remove_if(claim)
        return _MemoryClaim(self._queue, taken)


class _MemoryClaim(DeadLetterClaim):
    """Deliveries taken out of a MemoryQueue; the ones not settled go back to its front."""

    def __init__(self, memory: MemoryQueue, deliveries: builtins.list[Delivery]) -> None:
        super().__init__(memory_entry(delivery) for delivery in deliveries)
        self._queue = memory
        self._deliveries = deliveries

    def _settle(self, ids: builtins.list[Hashable]) -> int:
        wanted = IdTally(ids)
        kept = [d for d in self._deliveries if not wanted.take(memory_entry(d).id)]
        self._give_back(kept)
        return len(self._deliveries) - len(kept)

    def _release(self) -> None:
        self._give_back(self._deliveries)

    def _give_back(self, deliveries: builtins.list[Delivery]) -> None:
        for delivery in reversed(deliveries):  # each goes to the front: last one first
            self._queue.release(delivery)


def memory_entry(delivery: Delivery) -> DeadLetterEntry:
    """A MemoryQueue's delivery as an entry."""
    meta = delivery.meta
    # a dead letter made by this onestep carries its id; anything else is known by
    # its identity, which is stable while it stays in the queue
    entry_id = meta.get(DEAD_LETTER_ID) if isinstance(meta, dict) else None
    return DeadLetterEntry(entry_id or f"memory-{id(delivery):x}", delivery.payload, meta)

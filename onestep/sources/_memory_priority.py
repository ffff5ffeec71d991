"""The prioritized messages of a MemoryQueue: a heap of (-priority, sequence, delivery)
beside its deque; MemoryStore calls these with its lock held."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from ..core import Delivery

#: One entry of the heap: (-priority, sequence, delivery); a lower sequence comes first
#: among equal priorities (a release takes a negative one, ahead of its peers).
Entry = tuple[int, int, Delivery]


def pop_merged(heap: list[Entry], items: deque[Delivery], limit: int) -> list[Delivery]:
    """Up to `limit` ready deliveries, highest priority first: the heap's positive
    priorities, then the deque (priority 0, every message put without one), then its
    negative ones. Lock held; lock-free consumers may pop from `items` meanwhile."""
    batch: list[Delivery] = []
    while len(batch) < limit:
        if heap and heap[0][0] < 0:
            batch.append(heapq.heappop(heap)[2])
            continue
        try:
            batch.append(items.popleft())
            continue
        except IndexError:  # empty, or a lock-free worker took the last one
            pass
        if not heap:
            break
        batch.append(heapq.heappop(heap)[2])
    return batch


def remove_matching(heap: list[Entry], predicate: Callable[[Delivery], bool]) -> int:
    """Remove the entries whose delivery `predicate` accepts, in place; how many. Lock
    held."""
    kept = [entry for entry in heap if not predicate(entry[2])]
    removed = len(heap) - len(kept)
    if removed:
        heap[:] = kept
        heapq.heapify(heap)
    return removed

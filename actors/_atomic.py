"""Whether one dict or deque operation is atomic in this interpreter (it is under the GIL).

Read once at import by the Ledger and by onestep's MemoryQueue: when it is true they keep
their locks off the per-message path (benchmarks/README.md, "The lock convoy").
"""

from __future__ import annotations

import sys


def _gil_enabled() -> bool:
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)  # CPython 3.13+
    return True if is_gil_enabled is None else bool(is_gil_enabled())


#: True when the GIL serialises every bytecode and every C call that does not release it.
#: Then a single `deque.append`/`appendleft`/`popleft`, `dict[key] = value`,
#: `dict.pop(key, default)` or `dict.popitem()` on int keys (whose hash and compare run in
#: C, never in Python code that could switch threads) happens whole or not at all, and
#: all threads see such operations in one order: a thread that writes its own flag and
#: then reads the other side's cannot miss the other side doing the same in reverse (the
#: GIL hand-off is a full memory barrier). The lock-free paths rely on both facts.
#:
#: False on a free-threaded build running without the GIL (CPython 3.13t): dict and
#: deque lock themselves per object there, but plain attribute reads do not, and nothing
#: orders a write to one object before a read of another. The Ledger and MemoryQueue
#: then take their locks on every operation, as before the lock-free paths.
GIL_ATOMIC = _gil_enabled()

"""State stores: the StateStore protocol, the in-memory store, the task views and the
SQLite store. Imported by the core (the app's default store) and the schedules; imports
only `onestep._values`.
"""

from ._sqlite import SQLiteStateStore
from ._store import AsyncStateView, InMemoryStateStore, StateStore, StateView, check_ttl

__all__ = [
    "AsyncStateView",
    "InMemoryStateStore",
    "SQLiteStateStore",
    "StateStore",
    "StateView",
    "check_ttl",
]

"""State stores: where `ctx.state` keeps a task's values between messages.

`StateStore` is the interface (sync methods); `ctx.state` wraps it per task with a key
prefix, awaitable in async handlers and direct in sync ones.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from ._checks import check_number

_MISSING = object()


class StateStore(ABC):
    """Key-value state shared by an app's tasks. Methods are called from worker threads
    and, for a store whose `blocking` is False, from the event-loop thread."""

    #: True when a call may block on I/O: async handlers then run it in a thread.
    blocking: bool = True

    @abstractmethod
    def get(self, key: str, default: Any = None) -> Any: ...

    @abstractmethod
    def set(self, key: str, value: Any) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def incr(self, key: str, amount: int = 1) -> int:
        """Add `amount` to an integer value (0 when absent) and return the new value."""
        value = self.get(key, 0) + amount
        self.set(key, value)
        return int(value)

    def claim(self, key: str, ttl_s: float, value: Any = True) -> bool:
        """Set `key` only if it is absent (or its earlier claim expired), atomically, for
        `ttl_s` seconds; True for the one caller that won. Schedules claim each tick with
        it so that replicas sharing the store fire it once."""
        raise NotImplementedError(f"{type(self).__name__} does not implement claim()")


def check_ttl(ttl_s: Any) -> float:
    return check_number("ttl_s", ttl_s, exclusive=True)


class InMemoryStateStore(StateStore):
    """A dict behind a lock; values are copied in and out so callers cannot alias them."""

    blocking = False

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._claims: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            value = self._data.get(key, _MISSING)
            if self._claims and key in self._claims and self._claims[key] <= time.monotonic():
                value = _MISSING  # an expired claim reads as absent
        return default if value is _MISSING else copy.deepcopy(value)

    def set(self, key: str, value: Any) -> None:
        value = copy.deepcopy(value)
        with self._lock:
            self._data[key] = value

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)
            self._claims.pop(key, None)

    def incr(self, key: str, amount: int = 1) -> int:
        with self._lock:
            value = self._data.get(key, 0) + amount
            self._data[key] = value
        return int(value)

    def claim(self, key: str, ttl_s: float, value: Any = True) -> bool:
        """Atomic within this process (the store is not shared between processes)."""
        ttl_s = check_ttl(ttl_s)
        now = time.monotonic()
        value = copy.deepcopy(value)
        with self._lock:
            expires = self._claims.get(key)
            if key in self._data and (expires is None or expires > now):
                return False
            if len(self._claims) > 1024:
                self._claims = {k: t for k, t in self._claims.items() if t > now}
            self._claims[key] = now + ttl_s
            self._data[key] = value
            return True

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self._data if k.startswith(prefix))


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"state key must be a str, got {type(key).__name__}")
    return key


class StateView:
    """`ctx.state` in a sync handler: the store's methods under the task's key prefix."""

    __slots__ = ("prefix", "store")

    def __init__(self, store: StateStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def get(self, key: str, default: Any = None) -> Any:
        return self.store.get(self.prefix + _check_key(key), default)

    def set(self, key: str, value: Any) -> None:
        self.store.set(self.prefix + _check_key(key), value)

    def delete(self, key: str) -> None:
        self.store.delete(self.prefix + _check_key(key))

    def incr(self, key: str, amount: int = 1) -> int:
        return self.store.incr(self.prefix + _check_key(key), amount)


class AsyncStateView:
    """`ctx.state` in an async handler: the same names and arguments, awaitable."""

    __slots__ = ("_sync",)

    def __init__(self, store: StateStore, prefix: str) -> None:
        self._sync = StateView(store, prefix)

    @property
    def prefix(self) -> str:
        return self._sync.prefix

    async def _call(self, method: str, *args: Any) -> Any:
        bound = getattr(self._sync, method)
        if self._sync.store.blocking:
            return await asyncio.to_thread(bound, *args)
        return bound(*args)

    async def get(self, key: str, default: Any = None) -> Any:
        return await self._call("get", key, default)

    async def set(self, key: str, value: Any) -> None:
        await self._call("set", key, value)

    async def delete(self, key: str) -> None:
        await self._call("delete", key)

    async def incr(self, key: str, amount: int = 1) -> int:
        return int(await self._call("incr", key, amount))

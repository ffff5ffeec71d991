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
from collections.abc import Callable
from typing import Any

from .._values import check_number

_MISSING = object()


class StateStore(ABC):
    """Key-value state shared by an app's tasks. Methods are called from worker threads
    and, for a store whose `blocking` is False, from the event-loop thread."""

    #: True when a call may block on I/O: async handlers then run it in a thread.
    blocking: bool = True

    @abstractmethod
    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default` when it is absent (or expired)."""

    @abstractmethod
    def set(self, key: str, value: Any) -> None:
        """Store `value` (JSON-able for a store that leaves the process) under `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; nothing happens when it is absent."""

    def incr(self, key: str, amount: int = 1) -> int:
        """Add `amount` to an integer value (0 when absent) and return the new value."""
        value = self.get(key, 0) + amount
        self.set(key, value)
        return int(value)

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """Replace the value of `key` (or `default`) with `fn(value)` and return it. Stores
        make this atomic; this fallback is not."""
        value = fn(self.get(key, default))
        self.set(key, value)
        return value

    def pop(self, key: str, default: Any = None) -> Any:
        """Remove `key` and return its value (or `default`). Stores make this atomic; this
        fallback is not."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            return default
        self.delete(key)
        return value

    def claim(self, key: str, ttl_s: float, value: Any = True) -> bool:
        """Set `key` only if it is absent (or its earlier claim expired), atomically, for
        `ttl_s` seconds; True for the one caller that won. Schedules claim each tick with
        it so that replicas sharing the store fire it once."""
        raise NotImplementedError(f"{type(self).__name__} does not implement claim()")

    def take_tokens(
        self, key: str, count: int, rate_per_s: float, burst: float
    ) -> tuple[int, float]:
        """Take up to `count` tokens from the token bucket at `key` (it refills at
        `rate_per_s` up to `burst`; a new bucket is full), atomically: returns how many
        were taken and, when none was, the seconds until the next one. Rate limits
        (onestep.flow) take their tokens here, in batches, so a store shared by several
        processes makes one limit hold across them.

        This fallback runs on `update` (atomic on every built-in store) and the
        caller's wall clock, keeping `[tokens, at]` under `key`; a store may do it in
        one step of its own (RedisStateStore: one script on the server's clock)."""
        taken = 0
        wait_s = 0.0

        def refill(state: Any) -> list[float]:
            nonlocal taken, wait_s
            now = time.time()
            tokens, at = _bucket_state(state, burst, now)
            tokens = min(burst, tokens + max(0.0, now - at) * rate_per_s)
            taken = min(count, int(tokens))
            tokens -= taken
            wait_s = 0.0 if taken else (1.0 - tokens) / rate_per_s
            return [tokens, now]

        self.update(key, refill)
        return taken, wait_s


def _bucket_state(state: Any, burst: float, now: float) -> tuple[float, float]:
    """A bucket's `[tokens, at]` as kept by `take_tokens`, or a full new one."""
    if isinstance(state, list) and len(state) >= 2:  # a store may keep more after them
        try:
            return float(state[0]), float(state[1])
        except (TypeError, ValueError):
            pass
    return burst, now


def check_ttl(ttl_s: Any) -> float:
    """`ttl_s` as a float if it is a finite number above 0 (a `claim`'s lifetime);
    ValueError naming `ttl_s` otherwise."""
    return check_number("ttl_s", ttl_s, exclusive=True)


class InMemoryStateStore(StateStore):
    """A dict behind a lock; values are copied in and out so callers cannot alias them.
    Shared by the threads of one process, not between processes."""

    blocking = False

    #: How often claim() sweeps out expired claims, so that the store does not grow by
    #: one key per schedule tick.
    PURGE_EVERY_S = 60.0

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()
        self._last_purge = time.monotonic()

    def _live(self, key: str, now: float) -> Any:
        """The value of `key`, or _MISSING; forgets it if its claim expired. Lock held."""
        expires = self._expires.get(key)
        if expires is not None and expires <= now:
            del self._expires[key]
            self._data.pop(key, None)
            return _MISSING
        return self._data.get(key, _MISSING)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            value = self._live(key, time.monotonic())
        return default if value is _MISSING else copy.deepcopy(value)

    def set(self, key: str, value: Any) -> None:
        value = copy.deepcopy(value)
        with self._lock:
            self._data[key] = value
            self._expires.pop(key, None)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)
            self._expires.pop(key, None)

    def incr(self, key: str, amount: int = 1) -> int:
        with self._lock:
            value = self._live(key, time.monotonic())
            value = (0 if value is _MISSING else value) + amount
            self._data[key] = value
            self._expires.pop(key, None)
        return int(value)

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        with self._lock:
            value = self._live(key, time.monotonic())
            new = fn(copy.deepcopy(default if value is _MISSING else value))
            self._data[key] = copy.deepcopy(new)
            self._expires.pop(key, None)
        return new

    def pop(self, key: str, default: Any = None) -> Any:
        with self._lock:
            value = self._live(key, time.monotonic())
            self._data.pop(key, None)
            self._expires.pop(key, None)
        return default if value is _MISSING else value

    def claim(self, key: str, ttl_s: float, value: Any = True) -> bool:
        """Atomic within this process."""
        ttl_s = check_ttl(ttl_s)
        value = copy.deepcopy(value)
        with self._lock:
            now = time.monotonic()
            if now - self._last_purge >= self.PURGE_EVERY_S:
                self._purge(now)
            if self._live(key, now) is not _MISSING:
                return False
            self._data[key] = value
            self._expires[key] = now + ttl_s
            return True

    def _purge(self, now: float) -> None:
        self._last_purge = now
        for key in [k for k, t in self._expires.items() if t <= now]:
            del self._expires[key]
            self._data.pop(key, None)

    def purge_expired(self) -> int:
        """Delete expired claims now; returns how many."""
        with self._lock:
            before = len(self._data)
            self._purge(time.monotonic())
            return before - len(self._data)

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            now = time.monotonic()
            return sorted(
                k
                for k in list(self._data)
                if k.startswith(prefix) and self._live(k, now) is not _MISSING
            )


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

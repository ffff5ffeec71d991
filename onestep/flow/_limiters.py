"""The three limiters behind a task's gate, each in two kinds: kept in the process (for
the InMemoryStateStore, which is per process anyway) or in a shared state store.

Called by the Gate (onestep/flow/_gate.py) from direct-mode worker threads and the
task actor's thread; every method is thread-safe.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import Any

from ..state import StateStore

# A store key longer than this is hashed (MySQLStateStore keys hold 255 characters).
_MAX_KEY_PART = 120

#: Of a shared bucket, a process takes the tokens of this many seconds at a time (at
#: least one) and hands them out locally: "1000000/s" costs one store call per 50,000
#: messages, "20/s" one per message, so a shared limit stays exact for slow rates.
_BATCH_S = 0.05


def key_part(key: str) -> str:
    """`key` as a part of a store key: kept when short, else a hash of it."""
    if len(key) <= _MAX_KEY_PART:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class _Bucket:
    """A token bucket as the gate sees it: `take()` is 0.0 for a token, else the seconds
    until the next one. Each thread keeps a stash of tokens it took in one batch (the
    tokens of `_BATCH_S`, at least one), so that the usual take is one thread-local
    read and write: with one lock per take, eight workers convoyed on it
    (benchmarks/memory_pipeline.py --flow, sync-c8 +rate: 0.39 of the same case without
    the limit with the lock, see benchmarks/README.md for the ratio with the stash)."""

    shared = False

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.batch = max(1, min(int(burst), math.floor(rate_per_s * _BATCH_S)))
        self._stash = threading.local()

    def take(self) -> float:
        stash = self._stash
        left = getattr(stash, "left", 0)
        if left > 0:
            stash.left = left - 1
            return 0.0
        taken, wait_s = self.grab(self.batch)
        if taken <= 0:
            return max(wait_s, 0.001)
        stash.left = taken - 1
        return 0.0

    def grab(self, count: int) -> tuple[int, float]:
        raise NotImplementedError


class LocalBucket(_Bucket):
    """A token bucket in this process."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        super().__init__(rate_per_s, burst)
        self._tokens = burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def grab(self, count: int) -> tuple[int, float]:
        with self._lock:
            now = time.monotonic()
            tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            taken = min(count, int(tokens))
            self._tokens = tokens - taken
            return taken, 0.0 if taken else (1.0 - self._tokens) / self.rate


class StoreBucket(_Bucket):
    """A token bucket in a shared store (`StateStore.take_tokens`)."""

    shared = True

    def __init__(self, store: StateStore, key: str, rate_per_s: float, burst: float) -> None:
        super().__init__(rate_per_s, burst)
        self.store = store
        self.key = key

    def grab(self, count: int) -> tuple[int, float]:
        return self.store.take_tokens(self.key, count, self.rate, self.burst)


class LocalSlots:
    """Per-key slots in this process: slot i of a key is an entry of one dict, taken
    with `setdefault` and given back with `pop` (each one atomic step), so no lock is
    taken per message."""

    shared = False

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[Any, object] = {}

    def acquire(self, key: str, holder: object) -> int | None:
        """A slot number for `key` for `holder` (the delivery: a mark no other holder
        shares), or None while all of its slots are taken."""
        mark = holder
        held = self._held
        if self.limit == 1:
            return 0 if held.setdefault(key, mark) is mark else None
        for slot in range(self.limit):
            if held.setdefault((key, slot), mark) is mark:
                return slot
        return None

    def release(self, key: str, slot: int) -> None:
        self._held.pop(key if self.limit == 1 else (key, slot), None)


class StoreSlots:
    """Per-key slots in a shared store: slot i of a key is a `claim` on
    `<prefix><key>:<i>` with a lease, so a crashed holder's slot frees itself when the
    lease ends; this process counts its own holders first and asks the store only when
    it holds fewer than `limit`."""

    shared = True

    def __init__(self, store: StateStore, prefix: str, limit: int, lease_s: float) -> None:
        self.store = store
        self.prefix = prefix
        self.limit = limit
        self.lease_s = lease_s
        self._mine: dict[str, int] = {}
        self._lock = threading.Lock()

    def _count(self, key: str, change: int) -> bool:
        with self._lock:
            held = self._mine.get(key, 0)
            if change > 0 and held >= self.limit:
                return False
            held += change
            if held > 0:
                self._mine[key] = held
            else:
                self._mine.pop(key, None)
            return True

    def acquire(self, key: str, holder: object = None) -> int | None:
        if not self._count(key, 1):
            return None
        base = self.prefix + key_part(key) + ":"
        try:
            for slot in range(self.limit):
                if self.store.claim(base + str(slot), self.lease_s):
                    return slot
        except BaseException:
            self._count(key, -1)
            raise
        self._count(key, -1)
        return None

    def release(self, key: str, slot: int) -> None:
        self._count(key, -1)
        self.store.delete(self.prefix + key_part(key) + ":" + str(slot))


class LocalDedup:
    """Dedup keys in this process, each kept `ttl_s` seconds after it was first seen: a
    new key is one `setdefault`; only an expired one takes the lock."""

    shared = False

    #: How often expired keys are swept out.
    PURGE_EVERY_S = 60.0

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()
        self._last_purge = time.monotonic()

    def claim(self, key: str) -> bool:
        """True for the first message with `key` within the TTL."""
        now = time.monotonic()
        expires = now + self.ttl_s
        found = self._expires.setdefault(key, expires)
        if found is expires:
            if now - self._last_purge >= self.PURGE_EVERY_S:
                self._purge(now)
            return True
        if found > now:
            return False
        with self._lock:  # expired: one of the racing claimers takes it over
            if self._expires.get(key, 0.0) > now:
                return False
            self._expires[key] = expires
            return True

    def _purge(self, now: float) -> None:
        with self._lock:
            self._last_purge = now
            for key, expires in list(self._expires.items()):
                if expires <= now:
                    self._expires.pop(key, None)

    def release(self, key: str) -> None:
        self._expires.pop(key, None)


class StoreDedup:
    """Dedup keys in a shared store: one `claim` per key for `ttl_s` seconds."""

    shared = True

    def __init__(self, store: StateStore, prefix: str, ttl_s: float) -> None:
        self.store = store
        self.prefix = prefix
        self.ttl_s = ttl_s

    def claim(self, key: str) -> bool:
        return self.store.claim(self.prefix + key_part(key), self.ttl_s)

    def release(self, key: str) -> None:
        self.store.delete(self.prefix + key_part(key))

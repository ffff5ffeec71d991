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


class LocalBucket:
    """A token bucket in this process: `take()` is 0.0 for a token, else the seconds
    until the next one."""

    shared = False

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        with self._lock:
            tokens = self._tokens
            if tokens < 1.0:
                now = time.monotonic()
                tokens = min(self.burst, tokens + (now - self._at) * self.rate)
                self._at = now
                if tokens < 1.0:
                    self._tokens = tokens
                    return (1.0 - tokens) / self.rate
            self._tokens = tokens - 1.0
            return 0.0


class StoreBucket:
    """A token bucket in a shared store (`StateStore.take_tokens`), taken in batches of
    `_BATCH_S` worth of tokens that this process then hands out locally."""

    shared = True

    def __init__(self, store: StateStore, key: str, rate_per_s: float, burst: float) -> None:
        self.store = store
        self.key = key
        self.rate = rate_per_s
        self.burst = burst
        self.batch = max(1, min(int(burst), math.floor(rate_per_s * _BATCH_S)))
        self._local = 0
        self._lock = threading.Lock()

    def take(self) -> float:
        with self._lock:
            if self._local > 0:
                self._local -= 1
                return 0.0
            taken, wait_s = self.store.take_tokens(self.key, self.batch, self.rate, self.burst)
            if taken <= 0:
                return max(wait_s, 0.001)
            self._local = taken - 1
            return 0.0


class LocalSlots:
    """Per-key slots in this process: at most `limit` holders of one key."""

    shared = False

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> int | None:
        """A slot number for `key`, or None while all of its slots are taken."""
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.limit:
                return None
            self._held[key] = held + 1
            return held

    def release(self, key: str, slot: int) -> None:
        with self._lock:
            held = self._held.get(key, 0) - 1
            if held > 0:
                self._held[key] = held
            else:
                self._held.pop(key, None)


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
        self._mine = LocalSlots(limit)

    def acquire(self, key: str) -> int | None:
        if self._mine.acquire(key) is None:
            return None
        base = self.prefix + key_part(key) + ":"
        try:
            for slot in range(self.limit):
                if self.store.claim(base + str(slot), self.lease_s):
                    return slot
        except BaseException:
            self._mine.release(key, 0)
            raise
        self._mine.release(key, 0)
        return None

    def release(self, key: str, slot: int) -> None:
        self._mine.release(key, slot)
        self.store.delete(self.prefix + key_part(key) + ":" + str(slot))


class LocalDedup:
    """Dedup keys in this process, each kept `ttl_s` seconds after it was first seen."""

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
        with self._lock:
            expires = self._expires.get(key)
            if expires is not None and expires > now:
                return False
            self._expires[key] = now + self.ttl_s
            if now - self._last_purge >= self.PURGE_EVERY_S:
                self._last_purge = now
                for stale in [k for k, t in self._expires.items() if t <= now]:
                    del self._expires[stale]
            return True

    def release(self, key: str) -> None:
        with self._lock:
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

"""Gate: a task's flow control (dedup key, per-key slot, rate-limit token), the
`actors.AdmissionPort` that the engine asks before it runs a message.

Built by TaskSpec for a task with any of the options; `admit` runs on a direct-mode
worker thread or the task actor's thread, `settled` on whichever thread settles the
message, `snapshot` on any thread (metrics, status page).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from actors import AdmissionRefused

from ..state import InMemoryStateStore, StateStore
from ._limiters import LocalBucket, LocalDedup, LocalSlots, StoreBucket, StoreDedup, StoreSlots
from ._options import FlowOptions

#: `admit`'s answer for a duplicate: ack without running.
SKIP = -1.0

# How long a message whose key is busy waits before it asks again: doubling from the
# first to the last (a slot freed in this process is found at the next ask; one freed
# by another process within the last wait).
_KEY_WAIT_FIRST_S = 0.005
_KEY_WAIT_MAX_S = 0.25

#: A per-key slot's lease in a shared store when the task has no `timeout_s`: a
#: crashed holder's slot frees itself after it. With `timeout_s`, the lease is
#: `timeout_s` plus `_LEASE_MARGIN_S`.
DEFAULT_SLOT_LEASE_S = 600.0
_LEASE_MARGIN_S = 30.0


class _Held:
    """What one admitted (or waiting) message holds."""

    __slots__ = ("dedup", "key_wait", "parked_at", "reason", "slot", "slot_key", "token")

    def __init__(self) -> None:
        self.dedup: str | None = None
        self.slot_key: str | None = None
        self.slot: int | None = None
        self.token = False
        self.parked_at = 0.0
        self.reason = ""
        self.key_wait = _KEY_WAIT_FIRST_S


class Gate:
    """The AdmissionPort of one task. In-process limiters for an InMemoryStateStore (the
    limits are then per process), store-backed ones for any other store (shared by
    every process and host using it)."""

    def __init__(
        self,
        options: FlowOptions,
        store: StateStore,
        prefix: str,
        timeout_s: float | None,
    ) -> None:
        self.options = options
        self.shared = not isinstance(store, InMemoryStateStore)
        self._held: dict[int, _Held] = {}
        self._stats_lock = threading.Lock()
        self._waited = {"rate": 0.0, "key": 0.0}
        self._waits = {"rate": 0, "key": 0}
        rate = options.rate_limit
        self.bucket: LocalBucket | StoreBucket | None = None
        if rate is not None:
            burst = float(rate.count)
            self.bucket = (
                StoreBucket(store, prefix + "rate", rate.rate_per_s, burst)
                if self.shared
                else LocalBucket(rate.rate_per_s, burst)
            )
        self.slots: LocalSlots | StoreSlots | None = None
        self._slot_key = options.concurrency_key
        if self._slot_key is not None:
            lease = DEFAULT_SLOT_LEASE_S if timeout_s is None else timeout_s + _LEASE_MARGIN_S
            self.slots = (
                StoreSlots(store, prefix + "slot:", options.max_per_key, lease)
                if self.shared
                else LocalSlots(options.max_per_key)
            )
        self.dedup: LocalDedup | StoreDedup | None = None
        self._dedup_key = options.dedup_key
        if self._dedup_key is not None:
            ttl = options.dedup_ttl_s
            self.dedup = (
                StoreDedup(store, prefix + "dedup:", ttl) if self.shared else LocalDedup(ttl)
            )
        # the common rate-limit-only case needs no record per admitted message
        self._keeps = self.slots is not None or self.dedup is not None

    # -- the engine's calls ------------------------------------------------------------

    def admit(self, delivery: Any) -> float:
        """0.0 to run, seconds to wait, or SKIP for a duplicate."""
        ident = id(delivery)
        held = self._held.get(ident)
        if held is None:
            if not self._keeps:
                wait_s = self.bucket.take()  # type: ignore[union-attr]
                if wait_s == 0.0:
                    return 0.0
                held = self._held[ident] = _Held()
                return self._park(held, "rate", wait_s)
            held = _Held()
            if self.dedup is not None:
                key = _key_of(self._dedup_key, delivery, "dedup_key")
                if key is not None:
                    # a retry runs although its key is held: by its own first attempt
                    if not self.dedup.claim(key) and delivery.attempts == 0:
                        return SKIP
                    held.dedup = key
            self._held[ident] = held
            if self.slots is not None:
                try:
                    held.slot_key = _key_of(self._slot_key, delivery, "concurrency_key")
                except AdmissionRefused:
                    self._drop(ident, held, keep_dedup=False)
                    raise
        elif held.parked_at:
            self._count_wait(held)
        if held.slot_key is not None and held.slot is None:
            try:
                slot = self.slots.acquire(held.slot_key)  # type: ignore[union-attr]
            except BaseException:
                self._drop(ident, held, keep_dedup=False)
                raise
            if slot is None:
                wait_s = held.key_wait
                held.key_wait = min(2 * wait_s, _KEY_WAIT_MAX_S)
                return self._park(held, "key", wait_s)
            held.slot = slot
        if self.bucket is not None and not held.token:
            wait_s = self.bucket.take()
            if wait_s > 0.0:
                return self._park(held, "rate", wait_s)
            held.token = True
        if not self._keeps:
            del self._held[ident]
        return 0.0

    def settled(self, delivery: Any, action: str, error: BaseException | None) -> None:
        """Free the message's slot; its dedup key too unless it succeeded or will be
        retried (a failure for good, or a release at shutdown, lets a resend run)."""
        if not self._held:
            return
        held = self._held.pop(id(delivery), None)
        if held is None:
            return
        keep = action == "retry" or (action == "ack" and error is None)
        self._release(held, keep_dedup=keep)

    # -- helpers -----------------------------------------------------------------------

    def _park(self, held: _Held, reason: str, wait_s: float) -> float:
        held.parked_at = time.monotonic()
        held.reason = reason
        return wait_s

    def _count_wait(self, held: _Held) -> None:
        waited = time.monotonic() - held.parked_at
        held.parked_at = 0.0
        with self._stats_lock:
            self._waited[held.reason] += waited
            self._waits[held.reason] += 1

    def _drop(self, ident: int, held: _Held, *, keep_dedup: bool) -> None:
        self._held.pop(ident, None)
        self._release(held, keep_dedup=keep_dedup)

    def _release(self, held: _Held, *, keep_dedup: bool) -> None:
        if held.slot is not None and held.slot_key is not None and self.slots is not None:
            self.slots.release(held.slot_key, held.slot)
            held.slot = None
        if held.dedup is not None and not keep_dedup and self.dedup is not None:
            self.dedup.release(held.dedup)
            held.dedup = None

    # -- what it shows -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """`{"rate": {"waited_s", "waits"}, "key": {...}, "waiting": n}`; cumulative."""
        with self._stats_lock:
            out: dict[str, Any] = {
                reason: {"waited_s": self._waited[reason], "waits": self._waits[reason]}
                for reason in ("rate", "key")
            }
        out["waiting"] = sum(1 for held in list(self._held.values()) if held.parked_at)
        return out

    def describe(self) -> dict[str, Any]:
        info = self.options.describe()
        info["scope"] = "shared" if self.shared else "per process"
        return info


def _key_of(fn: Any, delivery: Any, param: str) -> str | None:
    """The key `fn(body)` as a string (None: the message has no key); AdmissionRefused
    with kind `key` if `fn` raised."""
    try:
        key = fn(delivery.payload)
    except Exception as exc:
        raise AdmissionRefused("key", exc) from exc
    if key is None:
        return None
    return key if type(key) is str else str(key)

"""Gate: a task's flow control (dedup key, per-key slot, rate-limit token), the
`actors.AdmissionPort` that the engine asks before it runs a message.

Built by TaskSpec for a task with any of the options; `admit` runs on a direct-mode
worker thread or the task actor's thread, `settled` on whichever thread settles the
message, `snapshot` on any thread (metrics, status page).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
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


class _Waiting:
    """What a message that waits (for a slot or a token) holds so far."""

    __slots__ = ("dedup", "key_wait", "parked_at", "reason", "slot", "slot_key", "token")

    def __init__(self, dedup: str | None, slot_key: str | None, slot: int | None) -> None:
        self.dedup = dedup
        self.slot_key = slot_key
        self.slot = slot
        self.token = False
        self.parked_at = 0.0
        self.reason = ""
        self.key_wait = _KEY_WAIT_FIRST_S


#: Key types the in-process limiters keep as they are; others become `str(key)`.
_PLAIN_KEYS: frozenset[type] = frozenset({str, int})

#: What a running message holds: (dedup key, slot key, slot number).
_Held = tuple[str | None, str | None, int | None]


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
        # in-process limiters never block: an async task may ask on the loop thread
        self.blocking = self.shared
        # keys as the key functions give them: a store needs strings, the process does
        # not (an int key is not turned into a new string per message)
        self._key_types: frozenset[type] = frozenset({str}) if self.shared else _PLAIN_KEYS
        self._held: dict[int, _Held] = {}
        self._waiting: dict[int, _Waiting] = {}
        # messages waiting for a slot, by key (under _stats_lock), and the engine's
        # call that asks about one again now (AdmissionPort.wake)
        self._key_waiters: dict[Any, deque[Any]] = {}
        self.wake: Callable[[Any], None] | None = None
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

        # The engine calls settled() only while this is True (a rate limit alone holds
        # nothing a settle gives back).
        self.needs_settle = self.slots is not None or self.dedup is not None
        # False: the engine calls settled() only for what is not a plain ack
        self.settles_acks = True
        self._pick_fast_path()

    def _pick_fast_path(self) -> None:
        """One option alone, in the process: `admit` is a shorter method for it (the
        general one tests every option; about 0.3 us a message on the 2-core machine)."""
        if self.shared:
            return
        alone = [self.bucket is not None, self.slots is not None, self.dedup is not None]
        if alone == [True, False, False]:
            self._stash = self.bucket._stash  # type: ignore[union-attr]
            self.admit = self._admit_rate_local  # type: ignore[method-assign]
        elif alone == [False, True, False] and self.options.max_per_key == 1:
            self._slot_held = self.slots._held  # type: ignore[union-attr]
            self.admit = self._admit_key_local  # type: ignore[method-assign]
            self.settled = self._settled_key_local  # type: ignore[method-assign]
        elif alone == [False, False, True]:
            self._claim = self.dedup.claim  # type: ignore[union-attr]
            self.admit = self._admit_dedup_local  # type: ignore[method-assign]
            self.settles_acks = False  # only a failure gives a dedup key back

    # -- the engine's calls ------------------------------------------------------------

    def _admit_rate_local(self, delivery: Any) -> float:
        """`admit` for a rate limit alone in the process."""
        if self._waiting:
            waiting = self._take_waiting(delivery)
            if waiting is not None:
                return self._admit_again(delivery, waiting)
        stash = self._stash
        left = getattr(stash, "left", 0)
        if left > 0:
            stash.left = left - 1
            return 0.0
        wait_s = self.bucket.take()  # type: ignore[union-attr]
        if wait_s == 0.0:
            return 0.0
        return self._wait(delivery, _Waiting(None, None, None), "rate", wait_s)

    def _admit_key_local(self, delivery: Any) -> float:
        """`admit` for `max_per_key=1` alone in the process."""
        if self._waiting:
            waiting = self._take_waiting(delivery)
            if waiting is not None:
                return self._admit_again(delivery, waiting)
        try:
            key = self._slot_key(delivery.payload)
        except Exception as exc:
            raise AdmissionRefused("key", exc) from exc
        if key is None:
            return 0.0
        if type(key) not in _PLAIN_KEYS:
            key = str(key)
        if self._slot_held.setdefault(key, delivery) is delivery:
            self._held[id(delivery)] = (None, key, 0)
            return 0.0
        return self._wait(delivery, _Waiting(None, key, None), "key")

    def _settled_key_local(self, delivery: Any, action: str, error: BaseException | None) -> None:
        """`settled` for `max_per_key=1` alone in the process: free (or hand over) the
        slot."""
        held = self._held.pop(id(delivery), None)
        if held is not None:
            key = held[1]
            if not (self._key_waiters and self._hand_over(key, 0)):
                self._slot_held.pop(key, None)
            return
        if self._waiting:  # released at shutdown while it waited
            waiting = self._take_waiting(delivery)
            if waiting is not None:
                self._release(None, waiting.slot_key, waiting.slot, keep_dedup=False)

    def _admit_dedup_local(self, delivery: Any) -> float:
        """`admit` for a dedup key alone in the process (it never waits)."""
        try:
            key = self._dedup_key(delivery.payload)
        except Exception as exc:
            raise AdmissionRefused("key", exc) from exc
        if key is None or delivery.attempts:
            # a retry runs although its key is held: by its own first attempt
            if key is not None:
                self._claim(key if type(key) in _PLAIN_KEYS else str(key))
            return 0.0
        if self._claim(key if type(key) in _PLAIN_KEYS else str(key)):
            return 0.0
        return SKIP

    def admit(self, delivery: Any) -> float:
        """0.0 to run, seconds to wait, or SKIP for a duplicate."""
        if self._waiting:
            waiting = self._take_waiting(delivery)
            if waiting is not None:
                return self._admit_again(delivery, waiting)
        dedup = None
        if self.dedup is not None:
            try:
                dedup = self._dedup_key(delivery.payload)
            except Exception as exc:
                raise AdmissionRefused("key", exc) from exc
            if dedup is not None:
                if type(dedup) not in self._key_types:
                    dedup = str(dedup)
                # a retry runs although its key is held: by its own first attempt
                if not self.dedup.claim(dedup) and delivery.attempts == 0:
                    return SKIP
        slot_key = slot = None
        if self.slots is not None:
            try:
                try:
                    slot_key = self._slot_key(delivery.payload)
                except Exception as exc:
                    raise AdmissionRefused("key", exc) from exc
                if slot_key is not None:
                    if type(slot_key) not in self._key_types:
                        slot_key = str(slot_key)
                    slot = self.slots.acquire(slot_key, delivery)
            except BaseException:
                self._release(dedup, None, None, keep_dedup=False)
                raise
            if slot_key is not None and slot is None:
                return self._wait(delivery, _Waiting(dedup, slot_key, None), "key")
        if self.bucket is not None:
            wait_s = self.bucket.take()
            if wait_s > 0.0:
                return self._wait(delivery, _Waiting(dedup, slot_key, slot), "rate", wait_s)
        if slot is not None:
            # a dedup key alone needs no record: only a failure gives it back, and the
            # key is computed again then (the usual success costs nothing more)
            self._held[id(delivery)] = (dedup, slot_key, slot)
        return 0.0

    def _admit_again(self, delivery: Any, waiting: _Waiting) -> float:
        """A message that waited asks again (on the task actor's thread)."""
        waited = time.monotonic() - waiting.parked_at
        with self._stats_lock:
            self._waited[waiting.reason] += waited
            self._waits[waiting.reason] += 1
        if waiting.slot_key is not None and waiting.slot is None:
            try:
                waiting.slot = self.slots.acquire(waiting.slot_key, delivery)  # type: ignore[union-attr]
            except BaseException:
                self._release(waiting.dedup, None, None, keep_dedup=False)
                raise
            if waiting.slot is None:
                wait_s = waiting.key_wait
                waiting.key_wait = min(2 * wait_s, _KEY_WAIT_MAX_S)
                return self._wait(delivery, waiting, "key", wait_s)
        if self.bucket is not None and not waiting.token:
            wait_s = self.bucket.take()
            if wait_s > 0.0:
                return self._wait(delivery, waiting, "rate", wait_s)
            waiting.token = True
        if waiting.slot is not None:
            self._held[id(delivery)] = (waiting.dedup, waiting.slot_key, waiting.slot)
        return 0.0

    def _wait(
        self, delivery: Any, waiting: _Waiting, reason: str, wait_s: float | None = None
    ) -> float:
        waiting.parked_at = time.monotonic()
        waiting.reason = reason
        with self._stats_lock:
            self._waiting[id(delivery)] = waiting
            if wait_s is None and self.wake is not None:
                # handed a slot of the key as soon as this process frees one; the wait
                # returned is for a slot another process frees
                self._key_waiters.setdefault(waiting.slot_key, deque()).append(delivery)
        return waiting.key_wait if wait_s is None else wait_s

    def _take_waiting(self, delivery: Any) -> _Waiting | None:
        """The record of a message that waited, taken out (under the lock, so that a
        slot is never handed to a message being admitted at the same moment)."""
        with self._stats_lock:
            return self._waiting.pop(id(delivery), None)

    def _hand_over(self, slot_key: Any, slot: int) -> bool:
        """A slot of `slot_key` is being freed here: give it to the first message still
        waiting for it (in order: a new message cannot take it first) and have the
        engine ask about that one again now. False when none waits."""
        with self._stats_lock:
            waiters = self._key_waiters.get(slot_key)
            while waiters:
                delivery = waiters.popleft()
                waiting = self._waiting.get(id(delivery))
                if waiting is None or waiting.slot is not None or waiting.slot_key != slot_key:
                    continue  # admitted or released meanwhile
                waiting.slot = slot
                break
            else:
                self._key_waiters.pop(slot_key, None)
                return False
            if not waiters:
                del self._key_waiters[slot_key]
        if self.wake is not None:
            self.wake(delivery)
        return True

    def settled(self, delivery: Any, action: str, error: BaseException | None) -> None:
        """Free the message's slot; its dedup key too unless it succeeded or will be
        retried (a failure for good, or a release at shutdown, lets a resend run)."""
        keep = (action == "ack" and error is None) or action == "retry"
        if self._held:
            held = self._held.pop(id(delivery), None)
            if held is not None:
                dedup, slot_key, slot = held
                if slot is not None and not (self._key_waiters and self._hand_over(slot_key, slot)):
                    self.slots.release(slot_key, slot)  # type: ignore[union-attr,arg-type]
                if dedup is not None and not keep:
                    self.dedup.release(dedup)  # type: ignore[union-attr]
                return
        if not keep and self.dedup is not None and id(delivery) not in self._waiting:
            self._release_dedup_of(delivery)
        if self._waiting:  # released at shutdown while it waited
            waiting = self._take_waiting(delivery)
            if waiting is not None:
                self._release(waiting.dedup, waiting.slot_key, waiting.slot, keep_dedup=False)

    def _release_dedup_of(self, delivery: Any) -> None:
        """A message admitted with a dedup key alone failed for good (or was released):
        give its key back, computed again from its body."""
        try:
            key = self._dedup_key(delivery.payload)
        except Exception:
            return  # it never got a key: the key function failed at admission
        if key is not None:
            self.dedup.release(key if type(key) in self._key_types else str(key))  # type: ignore[union-attr]

    def _release(
        self, dedup: str | None, slot_key: str | None, slot: int | None, *, keep_dedup: bool
    ) -> None:
        handed = slot is not None and bool(self._key_waiters) and self._hand_over(slot_key, slot)
        if slot is not None and slot_key is not None and self.slots is not None and not handed:
            self.slots.release(slot_key, slot)
        if dedup is not None and not keep_dedup and self.dedup is not None:
            self.dedup.release(dedup)

    # -- what it shows -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """`{"rate": {"waited_s", "waits"}, "key": {...}, "waiting": n}`; cumulative."""
        with self._stats_lock:
            out: dict[str, Any] = {
                reason: {"waited_s": self._waited[reason], "waits": self._waits[reason]}
                for reason in ("rate", "key")
            }
        out["waiting"] = len(self._waiting)
        return out

    def describe(self) -> dict[str, Any]:
        info = self.options.describe()
        info["scope"] = "shared" if self.shared else "per process"
        return info

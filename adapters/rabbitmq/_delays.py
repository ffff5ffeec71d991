"""Delay queues: where a retry or a delayed `put` waits, one queue per distinct delay, so a
short delay never waits behind a long one; used by RabbitMQQueue on any thread that
publishes (the source actor for retries, producers for `put(delay_s=...)`).

A delay of `d` ms goes to `<queue>.delay.<d>`, declared with `x-message-ttl=d`: every
message in it has the same TTL, so the one at its head is always the first due, and the
broker dead-letters it back to the work queue (default exchange, routing key = the work
queue's name) the moment it expires. (RabbitMQ expires messages only at the head of a
queue: the old single `<queue>.retry` queue with per-message expirations held a 1 s retry
behind a 20 s one.)

Delays are rounded up to two significant figures of milliseconds, so jittered backoff
uses a bounded set of queues (at most 90 per factor of ten) and a delay is never
shortened (apart from rounding to the millisecond) and lengthened by less than 10%. A delay
queue removes itself (`x-expires`) once nobody declared it for its TTL plus
`DELAY_QUEUE_GRACE_S`; publishers declare it again at least every half grace, so a
message can never be inside when it goes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from onestep.kit import MAX_DELAY_S

#: A delay queue is deleted by the broker this long (plus its TTL) after it was last
#: declared; publishers re-declare it every half of this while they use it.
DELAY_QUEUE_GRACE_S = 600.0
_REDECLARE_AFTER_S = DELAY_QUEUE_GRACE_S / 2
_MAX_DELAY_MS = int(MAX_DELAY_S * 1000)


def delay_bucket_ms(delay_s: float) -> int:
    """The TTL in milliseconds of the delay queue for `delay_s`: rounded to the
    millisecond, then up to two significant figures (1.234 s -> 1300, 47 ms -> 47,
    5 s -> 5000, 86,400 s -> 87,000,000), at least 1 ms and at most 30 days."""
    ms: int = min(max(1, round(delay_s * 1000)), _MAX_DELAY_MS)
    if ms < 100:
        return ms
    unit: int = 10 ** (len(str(ms)) - 2)
    return min(-(-ms // unit) * unit, _MAX_DELAY_MS)


def delay_queue_arguments(ms: int, work_queue: str) -> dict[str, Any]:
    """The arguments of the delay queue holding messages for `ms` before `work_queue`.
    They depend on `ms` and the work queue only, so every process declares them alike."""
    return {
        "x-message-ttl": ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": work_queue,
        "x-expires": ms + int(DELAY_QUEUE_GRACE_S * 1000),
    }


class DelayQueues:
    """The delay queues of one work queue and when this process last declared each."""

    def __init__(self, work_queue: str, durable: bool) -> None:
        self.work_queue = work_queue
        self.durable = durable
        self._declared_at: dict[int, float] = {}
        self._lock = threading.Lock()

    def name(self, delay_s: float) -> str:
        """The queue a message delayed by `delay_s` waits in."""
        return f"{self.work_queue}.delay.{delay_bucket_ms(delay_s)}"

    def route(self, delay_s: float, connection: Any) -> str:
        """The routing key (default exchange) for a message delayed by `delay_s`,
        declaring its queue on `connection` first when it is new to this process or was
        last declared half a grace ago. Runs on the thread that owns `connection`."""
        ms = delay_bucket_ms(delay_s)
        name = f"{self.work_queue}.delay.{ms}"
        now = time.monotonic()
        with self._lock:
            last = self._declared_at.get(ms)
        if last is None or now - last >= _REDECLARE_AFTER_S:
            channel = connection.channel()
            try:
                channel.queue_declare(
                    name,
                    durable=self.durable,
                    arguments=delay_queue_arguments(ms, self.work_queue),
                )
            finally:
                if channel.is_open:
                    channel.close()
            with self._lock:
                self._declared_at[ms] = now
        return name

    def in_use(self) -> list[str]:
        """The delay queues this process declared (for retries or delayed puts)."""
        with self._lock:
            return [f"{self.work_queue}.delay.{ms}" for ms in sorted(self._declared_at)]

    def forget(self) -> None:
        """Declare every delay queue again before its next use (after a publish to one
        came back unroutable: someone deleted it). Callable from any thread."""
        with self._lock:
            self._declared_at.clear()

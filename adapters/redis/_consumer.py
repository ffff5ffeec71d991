"""The source side of a Redis stream: reading as one consumer of a group, reclaiming what
dead consumers left pending, keeping the entries in flight alive, and settling in
batches; owned by RedisStream, every method runs on its SourceActor's thread."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis.exceptions

from onestep.kit import Delivery

from ._codec import (
    decode_entries,
    decode_entry,
    decode_upstream,
    pack_delayed,
    upstream_with_attempts,
    with_attempts,
)
from ._scripts import KEEP_CHUNK

if TYPE_CHECKING:
    from ._stream import RedisStream

logger = logging.getLogger("onestep.redis")

#: The delay set is looked at (and its due entries moved) at most this often per
#: consumer while messages flow; an idle consumer's blocking read also ends when the
#: next delayed entry falls due.
MOVE_EVERY_S = 0.05
#: How long the runtime's flush leaves plain acks buffered, so that they go with the next
#: read in one pipelined round trip. A task with concurrency 8 settles a handful of
#: entries per flush: draining 50,000 entries took 6,250 XACK round trips besides the
#: 522 reads; now all 50,000 acks ride on those reads. The source's own close and
#: keepalive write them whatever their age.
ACK_DELAY_S = 0.02
#: Due delayed entries moved into the stream per look.
MOVE_LIMIT = 1000


class Consumer:
    """One consumer of the stream's group: the entries it read ahead (`ready`), those
    read and not settled (`held`, kept alive by `keep_alive`), and its settlements
    waiting for `flush`.

    Reading ahead up to `batch_size` entries whatever the task's free credits (as an
    AMQP prefetch does) keeps one XREADGROUP per batch even for a task with a
    concurrency of 1. Measured with concurrency 8 draining 50,000 entries (2 loaded
    CPUs): 11,100 entries/s reading only the free credits (0.11 of the raw loop),
    25,800 reading ahead (0.39)."""

    def __init__(self, stream: RedisStream) -> None:
        self.stream = stream
        self.key = stream.name
        self.group = stream.group
        self.name = stream.consumer
        #: ids of the entries read and not yet settled (in `ready` or handed out)
        self.held: dict[bytes, None] = {}
        #: entries read ahead (up to `batch_size`) and not yet handed out
        self.ready: deque[Delivery] = deque()
        self._acks: list[bytes] = []
        # when the oldest buffered ack was made
        self._acks_since = 0.0
        # entries to add again (a retry, a release): (delay in ms, fields)
        self._readds: list[tuple[int, dict[bytes, bytes]]] = []
        self._next_move = 0.0
        # monotonic time the earliest delayed entry falls due (inf: none known)
        self._next_due = float("inf")
        self._next_reclaim = 0.0
        self._cursor: bytes = b"-"
        #: called (by the runtime's `subscribe`) to fetch again at once; None otherwise
        self.wakeup: Callable[[], None] | None = None
        self.call_later: Callable[..., Any] | None = None
        self.wake_pending = False
        # upstream onestep's envelope (wire_format="upstream") or onestep's fields
        self._upstream = stream.wire_format == "upstream"

    @property
    def buffered(self) -> bool:
        return bool(self._acks or self._readds)

    # -- the group ----------------------------------------------------------------------

    def create_group(self) -> None:
        """Create the group at the stream's `start_id` (and the stream, MKSTREAM) unless
        it exists."""
        try:
            self.stream.client.xgroup_create(
                self.key, self.group, id=self.stream.start_id, mkstream=True
            )
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- fetching -----------------------------------------------------------------------

    def fetch(self, limit: int) -> list[Delivery]:
        """Up to `limit` deliveries from the read-ahead buffer, topped up first (with up
        to `batch_size` entries per read) when it holds fewer than `limit`."""
        if limit <= 0:
            return []
        if self._readds:
            self.flush()
        ready = self.ready
        blocked = False
        if len(ready) < limit:
            blocked = self._top_up()
        count = min(limit, len(ready))
        if not count:
            self._after_empty(blocked=blocked)
            return []
        popleft = ready.popleft
        return [popleft() for _ in range(count)]

    def _top_up(self) -> bool:
        """Fill the buffer up to `batch_size`: due delayed entries moved into the
        stream, then reclaimed entries, then new ones (waiting on the server when
        nothing is in flight). True if the read waited on the server."""
        now = time.monotonic()
        if now >= self._next_move or now >= self._next_due:
            self._move_due(now)
        ready = self.ready
        room = self.stream.batch_size - len(ready)
        if room > 0 and now >= self._next_reclaim:
            ready.extend(self._reclaim(room, now))
            room = self.stream.batch_size - len(ready)
        if room <= 0:
            return False
        block_ms = None if self.held else self._block_ms(now)
        if self._readds:
            self.flush()
        try:
            ready.extend(self._read(room, block_ms))
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # the stream or group was deleted (or the server restarted without
            # persistence): make them again and read on
            logger.warning(
                "Redis stream %r has no group %r any more; creating it again",
                self.key,
                self.group,
            )
            self.create_group()
            return False
        return block_ms is not None

    def release_ready(self) -> None:
        """Give back what was read ahead and not handed out (added again, attempts
        unchanged, at the next flush); runs before the source closes."""
        ready = self.ready
        while ready:
            delivery = ready.popleft()
            self.readd(delivery, delivery.attempts, None)

    def _block_ms(self, now: float) -> int:
        """How long an idle read may wait on the server: `poll_interval_s`, shorter
        when a delayed entry falls due sooner; never 0 (BLOCK 0 waits for ever)."""
        wait = min(self.stream.poll_interval_s, self._next_due - now)
        return max(1, int(wait * 1000))

    def _read(self, count: int, block_ms: int | None) -> list[Delivery]:
        """Read up to `count` new entries; the buffered acks go in the same round trip
        (a pipeline of XACK and XREADGROUP)."""
        client = self.stream.client
        acks = self._acks
        if acks:
            pipe = client.pipeline(transaction=False)
            pipe.xack(self.key, self.group, *acks)
            pipe.xreadgroup(self.group, self.name, {self.key: ">"}, count=count, block=block_ms)
            response = pipe.execute()[1]
            self._acks = []
        else:
            response = client.xreadgroup(
                self.group, self.name, {self.key: ">"}, count=count, block=block_ms
            )
        if not response:
            return []
        entries = response[0][1]
        held = self.held
        for entry_id, _ in entries:
            held[entry_id] = None
        if self._upstream:
            return [decode_upstream(entry_id, fields) for entry_id, fields in entries]
        return decode_entries(entries)

    def _after_empty(self, *, blocked: bool) -> None:
        """After an empty fetch: with the runtime's wakeup, fetch again at once after an
        idle blocking read (it waited already), or after `poll_interval_s` while
        handlers run (a settlement fetches sooner)."""
        wakeup = self.wakeup
        if wakeup is None:
            return
        if blocked:
            wakeup()
        elif not self.wake_pending and self.call_later is not None:
            self.wake_pending = True
            self.call_later(self.stream.poll_interval_s, self._wake_later)

    def _wake_later(self) -> None:
        """Runs on the runtime's timer thread."""
        self.wake_pending = False
        if self.wakeup is not None:
            self.wakeup()

    def _move_due(self, now: float) -> None:
        moved, next_ms = self.stream.scripts.move_due(
            keys=[self.stream.delay_key, self.key],
            args=[MOVE_LIMIT, self.stream.maxlen or 0],
        )
        self._next_move = now + MOVE_EVERY_S
        if moved >= MOVE_LIMIT:
            self._next_due = now  # more are due: move on at the next fetch
        else:
            self._next_due = now + next_ms / 1000 if next_ms >= 0 else float("inf")

    def _reclaim(self, count: int, now: float) -> list[Delivery]:
        """Take over up to `count` entries left pending for longer than `claim_idle_s`
        (their consumer died, or stalled without keepalive), each counted as one more
        attempt. XPENDING IDLE finds them with their delivery counts, skipping this
        consumer's own entries in flight; XCLAIM with the same min-idle takes them, so
        an entry whose owner kept it alive in between stays with its owner. Scans the
        pending list a page per fetch, and starts again every `claim_idle_s / 2`."""
        stream = self.stream
        min_idle_ms = int(stream.claim_idle_s * 1000)
        page = stream.client.xpending_range(
            self.key, self.group, self._cursor, "+", count, idle=min_idle_ms
        )
        if len(page) < count:
            self._cursor = b"-"
            self._next_reclaim = now + stream.claim_idle_s / 2
        else:
            self._cursor = b"(" + page[-1]["message_id"]
        held = self.held
        delivered = {
            item["message_id"]: int(item["times_delivered"])
            for item in page
            if item["message_id"] not in held
        }
        if not delivered:
            return []
        claimed = stream.client.xclaim(
            self.key, self.group, self.name, min_idle_ms, list(delivered)
        )
        claimed = [(i, f) for i, f in claimed if f is not None]
        if not claimed:
            return []
        logger.warning(
            "Redis stream %r: consumer %r took over %d entr%s idle for more than %g s "
            "(their consumer stopped or stalled)",
            self.key,
            self.name,
            len(claimed),
            "y" if len(claimed) == 1 else "ies",
            stream.claim_idle_s,
        )
        deliveries = []
        for entry_id, fields in claimed:
            held[entry_id] = None
            # handed out n times before this claim: n executions, each an attempt
            decode = decode_upstream if self._upstream else decode_entry
            deliveries.append(decode(entry_id, fields, delivered.get(entry_id, 1)))
        return deliveries

    # -- keeping entries alive ----------------------------------------------------------

    def keep_alive(self) -> None:
        """Reset the idle time of the entries in flight, so that no other consumer
        reclaims one while its handler runs; an entry someone else owns by now is
        reported (it may run twice) and no longer kept."""
        if self.buffered:
            self.flush()
        ids = list(self.held)
        stream = self.stream
        for start in range(0, len(ids), KEEP_CHUNK):
            lost = stream.scripts.keep(
                keys=[self.key], args=[self.group, self.name, *ids[start : start + KEEP_CHUNK]]
            )
            for entry_id in lost:
                self.held.pop(entry_id, None)
                logger.warning(
                    "Redis stream %r: entry %s is no longer pending to consumer %r (another "
                    "consumer reclaimed it after more than claim_idle_s=%g s): it may run "
                    "twice",
                    self.key,
                    entry_id.decode(),
                    self.name,
                    stream.claim_idle_s,
                )

    # -- settling -----------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        entry_id = delivery.handle[0]
        self.held.pop(entry_id, None)
        if not self._acks:
            self._acks_since = time.monotonic()
        self._acks.append(entry_id)

    def readd(self, delivery: Delivery, attempts: int, delay_s: float | None) -> None:
        """Add the message again with `attempts` (after `delay_s`) and ack this entry,
        both at the next flush, in one transaction."""
        entry_id, fields = delivery.handle
        self.held.pop(entry_id, None)
        delay_ms = int((delay_s or 0.0) * 1000)
        recount = upstream_with_attempts if self._upstream else with_attempts
        self._readds.append((delay_ms, recount(fields, attempts)))
        if not self._acks:
            self._acks_since = time.monotonic()
        self._acks.append(entry_id)

    def flush(self, *, force: bool = True) -> None:
        """Write the buffered settlements: one XACK for every settled entry, with the
        re-added entries in the same MULTI/EXEC when there are any. If it fails they
        stay buffered for the next flush (the entries stay pending meanwhile).

        Unless `force`d, plain acks wait (for at most ACK_DELAY_S, or until a batch is
        full) to go with the next read in one round trip; see ACK_DELAY_S."""
        acks, readds = self._acks, self._readds
        if not acks and not readds:
            return
        if (
            not force
            and not readds
            and len(acks) < self.stream.batch_size
            and time.monotonic() - self._acks_since < ACK_DELAY_S
        ):
            return
        stream = self.stream
        if not readds:
            stream.client.xack(self.key, self.group, *acks)
        else:
            pipe = stream.client.pipeline(transaction=True)
            maxlen = stream.maxlen
            for delay_ms, fields in readds:
                if delay_ms > 0:
                    stream.scripts.delay(
                        keys=[stream.delay_key], args=[delay_ms, pack_delayed(fields)], client=pipe
                    )
                    self._next_due = min(self._next_due, time.monotonic() + delay_ms / 1000)
                else:
                    pipe.xadd(self.key, fields, maxlen=maxlen, approximate=True)
            pipe.xack(self.key, self.group, *acks)
            pipe.execute()
        self._acks, self._readds = [], []

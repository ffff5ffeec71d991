"""Dead-letter claims on a Redis stream: `take` hands entries to a consumer of the
stream's group that belongs to one claim; RedisStream.take calls it (the dead-letter
tooling, `onestep dlq replay` and `discard`) on the calling thread.

A claim is a consumer of the stream's own group, named `onestep-claim-<uuid>`: what it
holds is pending to it, so the group's other readers (another claim, a running app
reading the stream) do not get those entries while it lasts. It takes the entries that
wait, oldest first: pending ones that are free (given back by an earlier claim, or left
idle for longer than the stream's `claim_idle_s` by a claim or consumer that died), by a
script that checks the owner and moves them in one step; then new ones with XREADGROUP,
which hands each to one reader only. Entries `match` refuses are given back at once.

Given back means: pending to the consumer `onestep-dead-letters` (a name no claim and
no app uses), where the next claim takes them at once and a consumer of the stream after
`claim_idle_s`, with their delivery count as it was. Settling (XACK and XDEL the named
entries, give back the rest) and giving back are one script each, so a claim that dies
half way leaves every entry either deleted or pending. While a claim lasts, a thread of
its own resets the idle time of its entries every `claim_idle_s / 3`, so a slow replay
keeps them; a replay whose process dies leaves them pending to its consumer, and the next
`take` (or a consumer of the stream) takes them over once they were idle for
`claim_idle_s` (60 s by default): they are put back again, never lost.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import redis.exceptions

from onestep.kit import DeadLetterClaim, DeadLetterEntry, IdTally

from ._codec import decode_entry
from ._scripts import KEEP_CHUNK

if TYPE_CHECKING:
    from ._stream import RedisStream

#: The consumer that holds the entries claims gave back (and passed over).
FREE = "onestep-dead-letters"
#: The prefix of a claim's own consumer.
CLAIM_PREFIX = "onestep-claim-"
#: Pending entries looked at per XPENDING round trip.
_PAGE = 500

#: KEYS[1] the stream; ARGV[1] the group, ARGV[2] the claim's consumer, ARGV[3] FREE,
#: ARGV[4] min idle ms, ARGV[5..] ids. Moves each id that is pending to FREE, or to
#: anyone (but this claim) for at least min idle, to the claim (XCLAIM JUSTID: the
#: delivery count stays); returns {id, delivery count, fields} of each moved entry. An
#: id pending but deleted from the stream is acked (there is nothing to claim).
CLAIM = """
local out = {}
local min_idle = tonumber(ARGV[4])
for i = 5, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if entry and entry[2] ~= ARGV[2] and (entry[2] == ARGV[3] or entry[3] >= min_idle) then
    local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
    if found then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
      out[#out + 1] = {ARGV[i], entry[4], found[2]}
    else
      redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    end
  end
end
return out
"""

#: KEYS[1] the stream; ARGV[1] the group, ARGV[2] the claim's consumer, ARGV[3] FREE,
#: ARGV[4] how many ids to delete (n), ARGV[5..4+n] those ids, then (id, delivery
#: count) pairs to give back. Acks and deletes each id to delete that the claim still
#: holds, gives each other one it holds back to FREE with its delivery count, and drops
#: the claim's consumer once it holds nothing; returns how many were deleted (0 when the
#: stream is gone).
FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local function held(id)
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  return entry and entry[2] == ARGV[2]
end
local deleted = 0
local last = 4 + tonumber(ARGV[4])
for i = 5, last do
  if held(ARGV[i]) then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    deleted = deleted + redis.call('XDEL', KEYS[1], ARGV[i])
  end
end
for i = last + 1, #ARGV, 2 do
  if held(ARGV[i]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[i], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
  end
end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return deleted
"""

Match = Callable[[DeadLetterEntry], bool]


class Held:
    """One entry a claim holds: its entry, and the delivery count to give it back with."""

    __slots__ = ("count", "entry")

    def __init__(self, entry: DeadLetterEntry, count: int) -> None:
        self.entry = entry
        self.count = count


def take(stream: RedisStream, limit: int, match: Match | None) -> RedisClaim:
    """Claim the first `limit` waiting entries of `stream` that `match` accepts (see the
    module's docstring); the others it looked at are given back before it returns."""
    claim = RedisClaim(stream, f"{CLAIM_PREFIX}{uuid.uuid4().hex}")
    if limit <= 0 or not stream.client.exists(stream.name):
        return claim
    try:
        # as browse sees it: without a group, every entry waits
        stream.client.xgroup_create(stream.name, stream.group, id="0")
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    kept: list[Held] = []
    passed: list[Held] = []
    try:
        _take_pending(stream, claim.consumer, limit, match, kept, passed)
        while len(kept) < limit:
            wanted = limit - len(kept)
            fresh = _read_new(stream, claim.consumer, wanted)
            for held in fresh:
                (kept if _accepts(match, held.entry) else passed).append(held)
            if len(fresh) < wanted:
                break  # nothing more to read
        claim.give_back(passed)
    except BaseException:
        claim.held = kept + passed
        # what cannot be given back now (the server is away) comes back after
        # claim_idle_s, as a dead claim's does; the first error is the one to see
        with contextlib.suppress(Exception):
            claim.release()
        raise
    claim.held = kept
    claim.start()
    return claim


def _accepts(match: Match | None, entry: DeadLetterEntry) -> bool:
    return match is None or match(entry)


def _take_pending(
    stream: RedisStream,
    consumer: str,
    limit: int,
    match: Match | None,
    kept: list[Held],
    passed: list[Held],
) -> None:
    """Move free pending entries (see CLAIM) to `consumer`, oldest first, no more at a
    time than `kept` still lacks (so that a concurrent claim finds the rest free), until
    `kept` holds `limit`; what `match` refuses goes to `passed`."""
    min_idle_ms = int(stream.claim_idle_s * 1000)
    free = FREE.encode()
    start: Any = "-"
    while len(kept) < limit:
        page = stream.client.xpending_range(stream.name, stream.group, start, "+", _PAGE)
        ids = [
            item["message_id"]
            for item in page
            if item["consumer"] == free or item["time_since_delivered"] >= min_idle_ms
        ]
        while ids and len(kept) < limit:
            batch, ids = ids[: limit - len(kept)], ids[limit - len(kept) :]
            moved = stream.client.eval(
                CLAIM, 1, stream.name, stream.group, consumer, FREE, min_idle_ms, *batch
            )
            for entry_id, count, fields in moved:
                held = _held(entry_id, fields, int(count))
                (kept if _accepts(match, held.entry) else passed).append(held)
        if len(page) < _PAGE:
            return
        start = b"(" + page[-1]["message_id"]


def _read_new(stream: RedisStream, consumer: str, count: int) -> list[Held]:
    """Up to `count` entries the group has not read yet, read by `consumer`."""
    response = stream.client.xreadgroup(stream.group, consumer, {stream.name: ">"}, count=count)
    if not response:
        return []
    # never handed out before this read: given back with a delivery count of 0
    return [_held(entry_id, fields, 0) for entry_id, fields in response[0][1]]


def _held(entry_id: bytes, fields: Any, count: int) -> Held:
    if isinstance(fields, list):  # from the script: a flat field/value list
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    delivery = decode_entry(entry_id, fields)
    return Held(DeadLetterEntry(entry_id.decode(), delivery.payload, delivery.meta), count)


class RedisClaim(DeadLetterClaim):
    """Entries pending to the consumer `consumer` of the stream's group; see the
    module's docstring. `settle` and `release` run on the thread that took the claim,
    the keepalive on a thread of its own."""

    def __init__(self, stream: RedisStream, consumer: str) -> None:
        super().__init__([])
        self.stream = stream
        self.consumer = consumer
        self.held: list[Held] = []
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def start(self) -> None:
        """Publish the entries and start the keepalive thread (if it holds any)."""
        self.entries = [held.entry for held in self.held]
        if self.held:
            self._keeper = threading.Thread(
                target=self._keep, name=f"onestep-claim-keepalive-{self.stream.name}", daemon=True
            )
            self._keeper.start()

    def _keep(self) -> None:
        """Runs on the claim's keepalive thread until the claim ends: resets the idle
        time of the entries it holds, so that no other claim or consumer takes them."""
        interval = self.stream.claim_idle_s / 3
        ids = [held.entry.id for held in self.held]
        while not self._stop.wait(interval):
            try:
                for start in range(0, len(ids), KEEP_CHUNK):
                    self.stream.scripts.keep(
                        keys=[self.stream.name],
                        args=[self.stream.group, self.consumer, *ids[start : start + KEEP_CHUNK]],
                    )
            except redis.exceptions.RedisError:
                continue  # the server is away: try again at the next tick

    def _finish(self, delete: list[Hashable], back: list[Held]) -> int:
        self._stop.set()
        args: list[Any] = [self.stream.group, self.consumer, FREE, len(delete), *delete]
        for held in back:
            args += [held.entry.id, held.count]
        with self.stream.connector.errors(f"settle a claim on Redis stream {self.stream.name!r}"):
            return int(self.stream.client.eval(FINISH, 1, self.stream.name, *args))

    def _settle(self, ids: list[Hashable]) -> int:
        wanted = IdTally(ids)
        delete: list[Hashable] = []
        back: list[Held] = []
        for held in self.held:
            if wanted.take(held.entry.id):
                delete.append(held.entry.id)
            else:
                back.append(held)
        return self._finish(delete, back)

    def _release(self) -> None:
        self._finish([], self.held)

    def give_back(self, passed: list[Held]) -> None:
        """Give back entries looked at and not claimed (the claim goes on)."""
        if passed:
            args: list[Any] = [self.stream.group, self.consumer, FREE, 0]
            for held in passed:
                args += [held.entry.id, held.count]
            self.stream.client.eval(FINISH, 1, self.stream.name, *args)

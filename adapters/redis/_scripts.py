"""The Lua scripts a Redis stream runs on the server, where a read and the write that
depends on it must be one atomic step: delaying entries in a sorted set by the server's
clock, moving due ones into the stream, and keeping the consumer's own entries alive.
Registered per client by `Scripts`; called from RedisStream's threads (any)."""

from __future__ import annotations

from typing import Any

# The server's clock in milliseconds: every due time is decided by it, never by the
# clocks of the hosts that put or consume.
_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

#: KEYS[1] the delay set; ARGV[1] the delay in ms, ARGV[2..] members (`pack_delayed`).
#: Each member is due at the server's now + delay.
DELAY = (
    _NOW_MS
    + """
local due = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], due, ARGV[i])
end
return #ARGV - 1
"""
)

#: KEYS[1] the delay set, KEYS[2] the stream; ARGV[1] how many to move at most, ARGV[2]
#: the stream's approximate maxlen (0: none). Adds every due member to the stream as an
#: entry and removes it from the set, in one step (no entry is moved twice, or lost, by
#: consumers racing); returns {moved, ms until the next one is due or -1}.
MOVE_DUE = (
    _NOW_MS
    + """
local maxlen = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local fields = {}
  local pos = 25
  while pos <= #member do
    local colon = string.find(member, ':', pos, true)
    local length = tonumber(string.sub(member, pos, colon - 1))
    fields[#fields + 1] = string.sub(member, colon + 1, colon + length)
    pos = colon + length + 1
  end
  if maxlen > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(fields))
  else
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
  redis.call('ZREM', KEYS[1], member)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then
  return {#due, math.max(0, tonumber(first[2]) - now)}
end
return {#due, -1}
"""
)

#: KEYS[1] the stream; ARGV[1] the group, ARGV[2] the consumer, ARGV[3..] entry ids.
#: Resets the idle time of each entry this consumer still owns (XCLAIM JUSTID with
#: min-idle 0: the delivery count stays) so that no one reclaims it while its handler
#: runs; returns the ids another consumer owns by now, or no one (acked, deleted).
KEEP = """
local owned = {}
local lost = {}
for i = 3, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if entry[1] and entry[1][2] == ARGV[2] then
    owned[#owned + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #owned > 0 then
  owned[#owned + 1] = 'JUSTID'
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(owned))
end
return lost
"""

#: Ids per KEEP call (Lua's unpack takes a few thousand arguments at most).
KEEP_CHUNK = 1000


class Scripts:
    """The scripts registered on one client (redis-py loads each once per server and
    loads it again after a server restart forgot it)."""

    def __init__(self, client: Any) -> None:
        self.delay = client.register_script(DELAY)
        self.move_due = client.register_script(MOVE_DUE)
        self.keep = client.register_script(KEEP)

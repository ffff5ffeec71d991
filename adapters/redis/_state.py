"""RedisStateStore: a StateStore in Redis keys under one prefix, shared by every process
that uses the server; made by RedisConnector.state_store, called from worker threads
(each call borrows a connection from the connector's pool). Expiry follows the
server's clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis.exceptions

from onestep import StateStore
from onestep.kit import check_ttl, encode_json

if TYPE_CHECKING:
    from ._connector import RedisConnector

_MISSING = object()

# How often an optimistic read-modify-write (`update`) is tried again after another
# client changed the key between its read and its write.
_UPDATE_TRIES = 100


# INCRBY on the JSON of an integer (its decimal text), and the value no longer expires,
# as after `set`; a value that is not an integer is an error the caller sees.
_INCR = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PERSIST', KEYS[1])
return value
"""

# A token bucket (`take_tokens`) in one step on the server's clock: the key holds the
# JSON `[tokens, at]` (at in seconds), refilled at ARGV[2] a second up to ARGV[3], and
# expires once it would be full again, so an idle limit leaves nothing behind.
_TAKE_TOKENS = """
local want, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens, at = burst, now
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, state = pcall(cjson.decode, raw)
  if ok and type(state) == 'table' and #state == 2 then
    tokens, at = tonumber(state[1]), tonumber(state[2])
  end
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = math.min(want, math.floor(tokens))
tokens = tokens - taken
local ttl = math.ceil((burst - tokens) / rate * 1000) + 1000
redis.call('SET', KEYS[1], cjson.encode({tokens, now}), 'PX', ttl)
local wait = 0
if taken == 0 then wait = (1 - tokens) / rate end
return {taken, tostring(wait)}
"""


class RedisStateStore(StateStore):
    """Values as JSON strings in keys `<prefix><key>`. `incr` is one server-side step,
    `pop` one GETDEL, `update` an optimistic transaction (WATCH, retried when another
    client wrote the key in between), `claim` one `SET NX PX` (the key expires by the
    server's clock, so the hosts' clocks do not matter): all atomic across processes.
    """

    blocking = True

    def __init__(self, connector: RedisConnector, prefix: str = "onestep:") -> None:
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, got {prefix!r}")
        self.connector = connector
        self.prefix = prefix
        self._client = connector.client
        self._incr = self._client.register_script(_INCR)
        self._take_tokens = self._client.register_script(_TAKE_TOKENS)

    def __repr__(self) -> str:
        return f"RedisStateStore(prefix={self.prefix!r}, connector={self.connector!r})"

    def close(self) -> None:
        """Close the connector's pooled connections."""
        self.connector.close()

    def _key(self, key: Any) -> str:
        if not isinstance(key, str):
            raise TypeError(f"state key must be a str, got {type(key).__name__}")
        return self.prefix + key

    @staticmethod
    def _encode(key: str, value: Any) -> str:
        return encode_json(value, f"state value for {key!r}")

    def get(self, key: str, default: Any = None) -> Any:
        full = self._key(key)
        with self.connector.errors("read state"):
            raw = self._client.get(full)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any) -> None:
        full = self._key(key)
        encoded = self._encode(key, value)
        with self.connector.errors("write state"):
            self._client.set(full, encoded)

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self.connector.errors("write state"):
            self._client.delete(full)

    def incr(self, key: str, amount: int = 1) -> int:
        full = self._key(key)
        if type(amount) is not int:
            raise TypeError(f"amount must be an int, got {amount!r}")
        try:
            with self.connector.errors("write state"):
                return int(self._incr(keys=[full], args=[amount]))
        except redis.exceptions.ResponseError as exc:
            raise TypeError(f"state value for {key!r} is not an integer: {exc}") from None

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        full = self._key(key)
        with self.connector.errors("write state"), self._client.pipeline() as pipe:
            for _ in range(_UPDATE_TRIES):
                try:
                    pipe.watch(full)
                    raw = pipe.get(full)
                    new = fn(default if raw is None else json.loads(raw))
                    encoded = self._encode(key, new)
                    pipe.multi()
                    pipe.set(full, encoded)
                    pipe.execute()
                    return new
                except redis.exceptions.WatchError:
                    continue  # another client wrote the key: read it again
        raise RuntimeError(
            f"state key {key!r} changed under {_UPDATE_TRIES} updates in a row; giving up"
        )

    def pop(self, key: str, default: Any = None) -> Any:
        full = self._key(key)
        with self.connector.errors("write state"):
            raw = self._client.getdel(full)
        return default if raw is None else json.loads(raw)

    def claim(self, key: str, ttl_s: float, value: Any = True) -> bool:
        """Set `key` for `ttl_s` seconds unless it exists (`SET NX PX`); the one caller
        that set it wins. Expired claims are gone by themselves."""
        ttl_s = check_ttl(ttl_s)
        full = self._key(key)
        encoded = self._encode(key, value)
        with self.connector.errors("write state"):
            return bool(self._client.set(full, encoded, nx=True, px=max(1, int(ttl_s * 1000))))

    def take_tokens(
        self, key: str, count: int, rate_per_s: float, burst: float
    ) -> tuple[int, float]:
        """The token bucket in one script on the server, by the server's clock (see
        StateStore.take_tokens)."""
        full = self._key(key)
        with self.connector.errors("write state"):
            taken, wait = self._take_tokens(keys=[full], args=[count, rate_per_s, burst])
        return int(taken), float(wait)

    def keys(self, prefix: str = "") -> list[str]:
        """The keys (without the store's prefix) that start with `prefix`, sorted."""
        pattern = _glob_escape(self.prefix + prefix) + "*"
        strip = len(self.prefix)
        with self.connector.errors("read state"):
            found = {raw.decode()[strip:] for raw in self._client.scan_iter(match=pattern)}
        return sorted(found)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

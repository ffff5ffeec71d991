"""RedisConnector: one Redis URL (its password kept out of messages), the redis-py client
its streams and state stores share, and their factory; built by users, its client used
from any thread (redis-py's connection pool hands each command a connection of its own)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from onestep.kit import check_int, check_number

from ._state import RedisStateStore
from ._stream import RedisStream

#: How often redis-py runs a command again after a lost connection (a stale pooled
#: socket after a server restart, a failover) before the error reaches onestep, and the
#: backoff between tries; a longer outage is the supervisor's to ride out.
COMMAND_RETRIES = 3


def safe_url(url: str) -> str:
    """`url` with its password replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


class RedisConnector:
    """Where streams live: one Redis URL (`redis://[user:password@]host[:port][/db]`, or
    `rediss://` for TLS); user and password may be URL-encoded.

    One redis-py client (with its connection pool) serves every stream, state store and
    producer made here, on any thread; a blocking read holds one pooled connection for at
    most the stream's `poll_interval_s`. `connect_timeout_s` bounds a connection attempt,
    `socket_timeout_s` any one command (a server that stops answering counts as lost
    after it). The password never appears in repr, logs or errors.

    `max_message_bytes` is the largest body (or meta) a stream adds: a larger one is
    refused before it is sent with MessageTooLarge (an EncodeError: as a sink's result it
    fails alone), where the server would drop the connection. None (the default) reads
    the server's `proto-max-bulk-len` (CONFIG GET, once) and falls back to its default,
    512 MiB, where CONFIG is not allowed (a managed Redis, an ACL user without it).
    """

    #: Redis's default `proto-max-bulk-len`: 512 MiB.
    DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 10,
        socket_timeout_s: float = 30,
        name: str | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty redis:// or rediss:// URL, got {url!r}")
        safe = safe_url(url)
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError(f"url must start with redis:// or rediss://, got {safe!r}")
        self.connect_timeout_s = check_number(
            "connect_timeout_s", connect_timeout_s, exclusive=True
        )
        self.socket_timeout_s = check_number("socket_timeout_s", socket_timeout_s, exclusive=True)
        self._max_message_bytes = (
            None
            if max_message_bytes is None
            else check_int("max_message_bytes", max_message_bytes, minimum=1)
        )
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        try:
            parts = urlsplit(url)
            host, port = parts.hostname or "localhost", parts.port or 6379
            self.client: Any = redis.Redis.from_url(
                url,
                socket_connect_timeout=self.connect_timeout_s,
                socket_timeout=self.socket_timeout_s,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), COMMAND_RETRIES),
                retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ValueError(f"url is not a valid Redis URL ({exc}): {safe!r}") from None
        self._password = unquote(parts.password or "")
        self.url = safe
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        user = f" as user {parts.username!r}" if parts.username else ""
        self.where = f"{host}:{port} db {db}{user}"
        self.name = name or f"redis://{host}:{port}/{db}"

    def __repr__(self) -> str:
        return f"RedisConnector({self.url!r}, name={self.name!r})"

    def describe_target(self) -> str:
        return f"Redis at {self.where}"

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn redis-py's connection errors inside the block into one ConnectionError
        that says what was being done and where (never the password); other errors
        (a command the server refused) pass through, their text scrubbed too."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise ConnectionError(f"cannot {doing} at {self.where}: {self._scrub(exc)}") from None
        except redis.exceptions.RedisError as exc:
            if self._password and self._password in str(exc):
                raise type(exc)(self._scrub(exc)) from None
            raise

    def _scrub(self, exc: BaseException) -> str:
        detail = f"{type(exc).__name__}: {exc}"
        return detail.replace(self._password, "***") if self._password else detail

    def ping(self) -> None:
        """Check the server answers (and accepts the credentials); any thread."""
        with self.errors("connect to Redis"):
            self.client.ping()

    def max_message_bytes(self, doing: str = "read the server's proto-max-bulk-len") -> int:
        """The largest body or meta a stream adds, in bytes: `max_message_bytes` if
        given, else the server's `proto-max-bulk-len` (read once; its default where
        CONFIG GET is refused). A ConnectionError says it could not `doing`. Any
        thread."""
        limit = self._max_message_bytes
        if limit is None:
            limit = self.DEFAULT_MAX_MESSAGE_BYTES
            with self.errors(doing):
                try:
                    found = self.client.config_get("proto-max-bulk-len")
                except redis.exceptions.ResponseError:
                    found = {}  # CONFIG is not allowed here (NOPERM, renamed)
            value = found.get("proto-max-bulk-len") if isinstance(found, dict) else None
            if value is not None and str(value).isdigit():
                limit = int(value)
            self._max_message_bytes = limit
        return limit

    def close(self) -> None:
        """Close the pooled connections (the next command connects again); any thread."""
        self.client.connection_pool.disconnect()

    def stream(
        self,
        name: str,
        *,
        group: str = "onestep",
        consumer: str | None = None,
        batch_size: int = 100,
        poll_interval_s: float = 0.5,
        maxlen: int | None = None,
        claim_idle_s: float = 60.0,
        start_id: str = "0",
        wire_format: str = "onestep",
    ) -> RedisStream:
        """A stream that is a Source, a Sink and a producer; see RedisStream.
        `wire_format="upstream"` reads and writes onestep-redis's entries (one field,
        `body`, holding the `{"body", "meta", "attempts"}` envelope)."""
        return RedisStream(
            self,
            name,
            group=group,
            consumer=consumer,
            batch_size=batch_size,
            poll_interval_s=poll_interval_s,
            maxlen=maxlen,
            claim_idle_s=claim_idle_s,
            start_id=start_id,
            wire_format=wire_format,
        )

    def state_store(self, prefix: str = "onestep:") -> RedisStateStore:
        """A StateStore under `prefix`, shared by every process using this server."""
        return RedisStateStore(self, prefix)

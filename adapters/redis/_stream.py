"""RedisStream: a Redis stream read through a consumer group, as a Source, a Sink and a
producer; made by RedisConnector.stream. Its source methods run on its SourceActor's
thread, `publish`/`publish_batch` on its SinkActor's, `put`/`put_many` and the
operations tooling (`browse`, `remove`, `take`, `depth`) on any thread."""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from onestep.kit import (
    DeadLetterClaim,
    DeadLetterEntry,
    Delivery,
    EncodeError,
    Sink,
    Source,
    check_bodies,
    check_delay,
    check_int,
    check_number,
    check_wire_format,
)

from . import _browse, _claims
from ._codec import encode_fields, encode_meta, encode_upstream, pack_delayed
from ._consumer import Consumer
from ._scripts import Scripts

if TYPE_CHECKING:
    from ._connector import RedisConnector

#: Entries per pipeline round trip when putting many.
PUT_CHUNK = 5000


def default_consumer() -> str:
    """A consumer name unique to this process: `<host>-<pid>`."""
    return f"{socket.gethostname()}-{os.getpid()}"


class RedisStream(Source, Sink):
    """A Redis stream (`name` is its key) read by consumer group `group`.

    Every process that reads with the same group shares the entries; each reads as consumer
    `consumer` (default `<host>-<pid>`). The group is made when the stream opens (as a
    source or a sink), at `start_id` ("0": entries already in the stream are read too; "$":
    only entries added afterwards). An entry is acked once settled (XACK, one per batch of
    settlements). A retry adds the message again with one more attempt (through the delay
    set when delayed) and acks the old entry, in one transaction; an entry that a consumer
    left pending for longer than `claim_idle_s` (it died) is reclaimed by a living one and
    counts one more attempt. While a handler runs, `keepalive` (every `claim_idle_s / 3`)
    resets its entry's idle time, so a slow job is never reclaimed.

    An idle consumer waits on the server for new entries for at most `poll_interval_s`
    (XREADGROUP BLOCK), which bounds how long it can hold up a shutdown. `maxlen` trims
    the stream to about that many entries on every add (`MAXLEN ~`): entries no consumer
    read yet may be trimmed too. Delayed messages wait in the sorted set `<name>:delayed`
    and are moved into the stream by the server when due.
    """

    #: Results waiting for this sink are added together, in one pipeline.
    max_batch = 1000
    #: tracing's `messaging.system`
    messaging_system = "redis"

    def message_id(self, delivery: Delivery) -> Any:
        """The message's stream entry id (tracing's `messaging.message.id`)."""
        entry_id = delivery.handle[0]
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    def __init__(
        self,
        connector: RedisConnector,
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
    ) -> None:
        for param, value in (("name", name), ("group", group), ("start_id", start_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{param} must be a non-empty string, got {value!r}")
        if consumer is not None and (not isinstance(consumer, str) or not consumer):
            raise ValueError(f"consumer must be a non-empty string or None, got {consumer!r}")
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        poll = check_number("poll_interval_s", poll_interval_s, exclusive=True)
        if poll >= connector.socket_timeout_s:
            raise ValueError(
                f"poll_interval_s must be shorter than the connector's socket_timeout_s "
                f"({connector.socket_timeout_s:g}), got {poll_interval_s!r}"
            )
        # per stream, where Source declares a class-wide default
        self.poll_interval_s = poll  # type: ignore[misc]
        if maxlen is not None:
            check_int("maxlen", maxlen, minimum=1)
        self.maxlen = maxlen
        self.claim_idle_s = check_number("claim_idle_s", claim_idle_s, exclusive=True)
        #: The source actor resets the idle time of the entries in flight this often.
        self.keepalive_interval_s = self.claim_idle_s / 3
        self.connector = connector
        self.client = connector.client
        self.name = name
        self.group = group
        self.consumer = consumer or default_consumer()
        self.start_id = start_id
        #: "onestep" (fields body, meta, attempts) or "upstream" (upstream onestep's
        #: `{"body", "meta", "attempts"}` envelope in the one field `body`)
        self.wire_format = check_wire_format(wire_format)
        #: The sorted set where delayed messages wait (score: due time, server clock).
        self.delay_key = f"{name}:delayed"
        self.scripts = Scripts(self.client)
        self._consumer = Consumer(self)
        self._source_thread: int | None = None
        self._adding = f"add to Redis stream {name!r}"

    def __repr__(self) -> str:
        return f"RedisStream({self.name!r}, group={self.group!r}, url={self.connector.url!r})"

    def describe(self) -> dict[str, Any]:
        return {
            "type": "RedisStream",
            "name": self.name,
            "group": self.group,
            "consumer": self.consumer,
            "batch_size": self.batch_size,
            "claim_idle_s": self.claim_idle_s,
            "maxlen": self.maxlen,
            "wire_format": self.wire_format,
            "server": self.connector.url,
        }

    # -- set-up (the opening actor's thread) ---------------------------------------------

    def open(self) -> None:
        """Check the server answers, make the group (MKSTREAM) unless it exists, and, on
        the source actor's thread, write settlements buffered while the connection was
        down. One attempt: after a lost connection the supervisor reopens with its
        backoff."""
        self.connector.ping()
        with self.connector.errors(f"open Redis stream {self.name!r}"):
            self._consumer.create_group()
            if self._on_source_thread() and self._consumer.buffered:
                self._consumer.flush()

    def close(self) -> None:
        """On the source actor's thread, give back the entries read ahead and write the
        buffered settlements (what cannot be written stays buffered for the next open,
        and pending in Redis: nothing is lost)."""
        if not self._on_source_thread():
            return
        self._consumer.release_ready()
        if self._consumer.buffered:
            with self.connector.errors(f"settle entries of Redis stream {self.name!r}"):
                self._consumer.flush()

    def _on_source_thread(self) -> bool:
        return threading.get_ident() == self._source_thread

    def subscribe(self, wakeup: Callable[[], None], call_later: Any = None) -> None:
        """The runtime's way to be told to fetch again (from any thread): after an idle
        blocking read, at once; while handlers run, after `poll_interval_s`."""
        self._consumer.wakeup = wakeup
        self._consumer.call_later = call_later
        self._consumer.wake_pending = False  # a timer of an earlier run never fired

    # -- the source side (the source actor's thread) -------------------------------------

    def fetch(self, limit: int) -> list[Delivery]:
        """Up to `limit` entries, read ahead `batch_size` at a time: due delayed ones,
        reclaimed ones, then new ones (waiting up to `poll_interval_s` on the server when
        nothing is in flight)."""
        ident = threading.get_ident()
        if ident != self._source_thread:
            self._source_thread = ident
        with self.connector.errors(f"read Redis stream {self.name!r}"):
            return self._consumer.fetch(limit)

    def ack(self, delivery: Delivery) -> None:
        """Ack at the next flush."""
        self._consumer.ack(delivery)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        """Add the message again with one more attempt, after `delay_s`; ack this entry
        (both at the next flush, in one transaction)."""
        self._consumer.readd(delivery, delivery.attempts + 1, delay_s)

    def release(self, delivery: Delivery) -> None:
        """Give the message back at once with its attempts unchanged (added again at the
        end of the stream: its place in the order is not kept)."""
        self._consumer.readd(delivery, delivery.attempts, None)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """Ack (the entry stays in the stream's history until trimmed)."""
        self._consumer.ack(delivery)

    def flush(self) -> None:
        """Write the buffered settlements (plain acks may wait up to 20 ms to go with
        the next read); runs when the actor's mailbox is empty."""
        if self._consumer.buffered and self._on_source_thread():
            with self.connector.errors(f"settle entries of Redis stream {self.name!r}"):
                self._consumer.flush(force=False)

    def keepalive(self) -> None:
        """Reset the idle time of the entries in flight; runs on the source actor's
        thread every `claim_idle_s / 3`, however long handlers run."""
        if not self._on_source_thread():
            return
        with self.connector.errors(f"keep entries of Redis stream {self.name!r} alive"):
            self._consumer.keep_alive()

    # -- the sink side (the sink actor's thread) -----------------------------------------

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        refused = self.publish_batch([(body, meta)])
        if refused:
            raise refused[0]

    def publish_batch(
        self, items: list[tuple[Any, dict[str, Any] | None]]
    ) -> dict[int, BaseException] | None:
        """Add every item that encodes, in one pipeline; the ones that do not come back
        as {index: EncodeError} and fail alone."""
        entries: list[dict[bytes, bytes]] = []
        refused: dict[int, BaseException] | None = None
        limit = self.connector.max_message_bytes(self._adding)
        for index, (body, meta) in enumerate(items):
            try:
                entries.append(self._encode(body, meta, limit))
            except (EncodeError, TypeError) as exc:
                if refused is None:
                    refused = {}
                refused[index] = exc if isinstance(exc, EncodeError) else EncodeError(str(exc))
        if entries:
            self._add(entries, 0.0)
        return refused

    # -- producers (any thread) ----------------------------------------------------------

    def put(
        self,
        body: Any,
        meta: dict[str, Any] | None = None,
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
        attempts: int = 0,
    ) -> None:
        """Add one message (JSON, or `bytes` as they are) with `meta`, after `delay_s`
        seconds if given; returns once the server has it. Any thread, with or without a
        running app. `attempts` is the executions the message already had (a
        dead-letter replay that keeps them sets it). Nothing is added on an error:
        TypeError for meta that is not a mapping, EncodeError for a body or meta that is
        not JSON, MessageTooLarge (an EncodeError) for one over the connector's
        `max_message_bytes`; ConnectionError when the server cannot be reached. A
        `priority` is refused (ValueError): a stream delivers in the order of its
        entries."""
        self._refuse_priority(priority)
        check_int("attempts", attempts, minimum=0)
        delay = check_delay("delay_s", delay_s)
        limit = self.connector.max_message_bytes(self._adding)
        self._add([self._encode(body, meta, limit, attempts)], delay)

    def put_many(
        self,
        bodies: Iterable[Any],
        meta: dict[str, Any] | None = None,
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> int:
        """Add every body (each with `meta`), pipelined, PUT_CHUNK per round trip;
        returns how many. Every body is checked and encoded before any is sent, so
        TypeError (meta not a mapping, `bodies` not an iterable of bodies) and
        EncodeError (MessageTooLarge included, naming `bodies[i]`) add none. If it
        raises otherwise, some of them may have been added. A `priority` is refused, as
        by `put`."""
        self._refuse_priority(priority)
        delay = check_delay("delay_s", delay_s)
        check_bodies(bodies)
        limit = self.connector.max_message_bytes(self._adding)
        if self.wire_format == "upstream":
            encode = functools.partial(encode_upstream, self.name, meta=meta, limit=limit)
        else:
            encoded_meta = encode_meta(self.name, meta, limit)
            encode = functools.partial(encode_fields, self.name, meta=encoded_meta, limit=limit)
        items = bodies if isinstance(bodies, list) else list(bodies)
        try:
            entries = [encode(body=body) for body in items]
        except EncodeError:
            # say which body (the common case, every body good, pays nothing for it)
            for index, body in enumerate(items):
                encode(body=body, what=f"bodies[{index}]")
            raise
        if entries:
            self._add(entries, delay)
        return len(entries)

    def _encode(self, body: Any, meta: Any, limit: int, attempts: int = 0) -> dict[bytes, bytes]:
        """The fields of one entry in the stream's wire format (see `_codec`)."""
        if self.wire_format == "upstream":
            return encode_upstream(self.name, body, meta, limit, attempts)
        return encode_fields(self.name, body, encode_meta(self.name, meta, limit), limit, attempts)

    def _refuse_priority(self, priority: Any) -> None:
        if priority is not None:
            raise ValueError(
                f"priority={priority!r} given, but Redis stream {self.name!r} cannot honour "
                "priorities: a stream delivers its entries in the order they were added "
                "(use a RabbitMQ queue with max_priority, a MySQL or PostgreSQL table "
                "queue, or a stream per priority)"
            )

    def _add(self, entries: list[dict[bytes, bytes]], delay_s: float) -> None:
        """XADD every entry (or, delayed, put them in the delay set by the server's
        clock), PUT_CHUNK per round trip; runs on the calling thread."""
        client, maxlen = self.client, self.maxlen
        with self.connector.errors(self._adding):
            if delay_s > 0:
                delay_ms = max(1, int(delay_s * 1000))
                for start in range(0, len(entries), PUT_CHUNK):
                    members = [pack_delayed(f) for f in entries[start : start + PUT_CHUNK]]
                    self.scripts.delay(keys=[self.delay_key], args=[delay_ms, *members])
                return
            if len(entries) == 1:
                client.xadd(self.name, entries[0], maxlen=maxlen, approximate=True)
                return
            for start in range(0, len(entries), PUT_CHUNK):
                pipe = client.pipeline(transaction=False)
                for fields in entries[start : start + PUT_CHUNK]:
                    pipe.xadd(self.name, fields, maxlen=maxlen, approximate=True)
                pipe.execute()

    # -- operations tooling (any thread) -------------------------------------------------

    def browse(
        self,
        limit: int | None = None,
        match: Callable[[DeadLetterEntry], bool] | None = None,
    ) -> list[DeadLetterEntry]:
        """The first `limit` entries (all with None) that `match` accepts and that the
        group has not settled (not yet read, or read and pending), oldest first; reads
        without consuming. The entry's id is its stream id."""
        with self.connector.errors(f"browse Redis stream {self.name!r}"):
            return _browse.browse(self, limit, match)

    def take(
        self, limit: int, match: Callable[[DeadLetterEntry], bool] | None = None
    ) -> DeadLetterClaim:
        """Claim the first `limit` waiting entries that `match` accepts, oldest first
        (see onestep.kit.DeadLetterClaim): they are pending to a consumer of the group
        that is the claim's own until it is settled or released, so another claim and
        the stream's consumers do not get them; a claim whose process dies gives them
        back after `claim_idle_s` (see adapters/redis/_claims.py)."""
        with self.connector.errors(f"claim entries of Redis stream {self.name!r}"):
            return _claims.take(self, limit, match)

    def remove(self, ids: Iterable[Hashable]) -> int:
        """Delete the entries with these stream ids (and ack them, if pending); returns
        how many were found and removed."""
        with self.connector.errors(f"remove entries from Redis stream {self.name!r}"):
            return _browse.remove(self, ids)

    def depth(self) -> int:
        """Messages waiting: entries the group has not read yet, read and not acked
        (pending), and delayed ones; the whole stream when the group does not exist."""
        with self.connector.errors(f"count Redis stream {self.name!r}"):
            return _browse.depth(self)

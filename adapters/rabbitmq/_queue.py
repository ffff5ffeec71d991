"""RabbitMQQueue: a RabbitMQ queue as a Source, a Sink and a producer, with one connection
per actor thread; made by RabbitMQConnector.queue, run on its SourceActor's and SinkActor's
threads, and `put`/`put_many` on any thread through the connector's producer pool."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions

from actors import EncodeError
from onestep.kit import (
    DeadLetterClaim,
    DeadLetterEntry,
    Delivery,
    Sink,
    Source,
    check_delay,
    check_int,
    check_wire_format,
    envelope_with_attempts,
)

from . import _browse
from ._consumer import _Consumer, _Handle
from ._delays import DelayQueues
from ._link import _Link
from ._message import ATTEMPTS_HEADER, decode_message, decode_upstream, encode_message
from ._publisher import PublishRefused, _Publisher
from ._queue_links import ThreadLinks
from ._queue_producer import Producing

if TYPE_CHECKING:
    from ._connector import RabbitMQConnector

logger = logging.getLogger("onestep.rabbitmq")

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
#: How long an empty fetch waits for the broker when no delivery is out with a handler;
#: the runtime's timer polls again after `poll_interval_s` otherwise.
IDLE_WAIT_S = 0.005
#: Headers the broker adds when it dead-letters a message (from a delay queue back to the
#: work queue); a retry drops them, so the republished message starts clean.
_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
#: The queue argument that makes RabbitMQ honour message priorities (0 to its value).
MAX_PRIORITY_ARGUMENT = "x-max-priority"


def _max_priority(max_priority: Any, arguments: dict[str, Any]) -> int | None:
    """The queue's max_priority: the parameter, or an `x-max-priority` in `arguments`
    (they must agree); ValueError naming `max_priority` unless an int from 1 to 255."""
    given = arguments.get(MAX_PRIORITY_ARGUMENT)
    if max_priority is None:
        max_priority = given
    elif given is not None and given != max_priority:
        raise ValueError(
            f"max_priority={max_priority!r} disagrees with arguments"
            f"[{MAX_PRIORITY_ARGUMENT!r}]={given!r}: give one of them"
        )
    if max_priority is None:
        return None
    if type(max_priority) is not int or not 1 <= max_priority <= 255:
        raise ValueError(f"max_priority must be an int from 1 to 255 or None, got {max_priority!r}")
    return max_priority


class RabbitMQQueue(ThreadLinks, Producing, Source, Sink):
    """A RabbitMQ queue that is a Source, a Sink and a producer (`put`, `put_many`).

    The runtime may use one queue object as one task's source and another's emit sink:
    each role runs on its own actor thread, so every thread that opens the queue gets its
    own connection. The consumer is made on the first `fetch`, the publisher on the first
    publish, both on the calling thread; `close()` closes the calling thread's connection
    (or, on a thread that never opened the queue, the connector's producer connections).
    """

    #: The engine polls again this soon after an empty fetch (the broker pushes to a
    #: buffer that only this thread reads, so there is nothing to wake the actor).
    poll_interval_s = 0.002
    #: Results waiting for this sink are published together, one round of confirms.
    max_batch = 1000
    #: tracing's `messaging.system`
    messaging_system = "rabbitmq"

    def __init__(
        self,
        connector: RabbitMQConnector,
        name: str,
        *,
        exchange: str | None = None,
        exchange_type: str = "direct",
        routing_key: str | None = None,
        durable: bool = True,
        prefetch: int = 100,
        arguments: Mapping[str, Any] | None = None,
        publisher_confirms: bool = True,
        persistent: bool = True,
        wire_format: str = "onestep",
        max_priority: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or len(name.encode()) > 200:
            raise ValueError(f"name must be a non-empty string of at most 200 bytes, got {name!r}")
        if exchange is not None and (not isinstance(exchange, str) or not exchange):
            raise ValueError(f"exchange must be a non-empty string or None, got {exchange!r}")
        if exchange_type not in EXCHANGE_TYPES:
            raise ValueError(
                f"exchange_type must be one of {EXCHANGE_TYPES}, got {exchange_type!r}"
            )
        if routing_key is not None:
            if not isinstance(routing_key, str):
                raise ValueError(f"routing_key must be a string or None, got {routing_key!r}")
            if exchange is None:
                raise ValueError(
                    "routing_key needs an exchange (the default exchange routes by name)"
                )
        for param, flag in (
            ("durable", durable),
            ("publisher_confirms", publisher_confirms),
            ("persistent", persistent),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{param} must be a bool, got {flag!r}")
        check_int("prefetch", prefetch, minimum=1)
        if prefetch > 65535:
            raise ValueError(f"prefetch must be an int <= 65535, got {prefetch!r}")
        if arguments is not None and not isinstance(arguments, Mapping):
            raise ValueError(f"arguments must be a mapping or None, got {arguments!r}")
        self.connector = connector
        self.name = name
        self.queue_name = name
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.routing_key = name if routing_key is None else routing_key
        self.durable = durable
        self.prefetch = prefetch
        self.arguments = dict(arguments or {})
        self.max_priority = _max_priority(max_priority, self.arguments)
        if self.max_priority is not None:
            self.arguments[MAX_PRIORITY_ARGUMENT] = self.max_priority
        self.publisher_confirms = publisher_confirms
        self.persistent = persistent
        #: "onestep" (meta and attempts in headers) or "upstream" (upstream onestep's
        #: `{"body", "meta", "attempts"}` envelope as the body): see _upstream.
        self.wire_format = check_wire_format(wire_format)
        self._decode = decode_upstream if self.wire_format == "upstream" else decode_message
        self._links: weakref.WeakKeyDictionary[threading.Thread, _Link] = (
            weakref.WeakKeyDictionary()
        )
        self._links_lock = threading.Lock()
        self._delays = DelayQueues(name, durable)
        # whether this process declared the queue (and exchange, binding): producers
        # declare it before their first put, and again after a put came back unroutable
        self._declared = False

    def __repr__(self) -> str:
        return f"RabbitMQQueue({self.name!r}, url={self.connector.url!r})"

    def describe(self) -> dict[str, Any]:
        return {
            "type": "RabbitMQQueue",
            "name": self.name,
            "url": self.connector.url,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "prefetch": self.prefetch,
            "wire_format": self.wire_format,
            "max_priority": self.max_priority,
        }

    def delay_queue_name(self, delay_s: float) -> str:
        """The queue where a message delayed by `delay_s` (a retry, a delayed put) waits:
        `<name>.delay.<milliseconds, rounded up to two significant figures>`."""
        return self._delays.name(check_delay("delay_s", delay_s, exclusive=True))

    # -- source side (the source actor's thread) -------------------------------------------

    def fetch(self, limit: int) -> list[Delivery]:
        """Up to `limit` deliveries the broker pushed (at most `prefetch` are buffered)."""
        link = self._link()
        consumer = link.consumer
        if consumer is None:
            consumer = link.consumer = _Consumer(self, link.connection)
        elif consumer.channel.is_closed:
            raise ConnectionError(f"RabbitMQ closed the channel consuming {self.name!r}")
        buffer = consumer.buffer
        if buffer and len(buffer) >= limit:
            link.connection.process_data_events(time_limit=0)
        else:
            # Nothing is out with a handler: nothing can want this thread for a moment.
            idle = not buffer and not consumer.handed_out
            link.connection.process_data_events(time_limit=IDLE_WAIT_S if idle else 0)
        count = min(limit, len(buffer))
        if not count:
            return []
        consumer.handed_out += count
        popleft = buffer.popleft
        decode = self._decode
        return [decode(consumer, *popleft()) for _ in range(count)]

    def _settling(self, delivery: Delivery) -> _Consumer | None:
        """The delivery's consumer if it is still live; None for a delivery from a
        channel that is gone (the broker redelivers it: settling it is impossible)."""
        consumer: _Consumer = delivery.handle.consumer
        consumer.handed_out -= 1
        return consumer if consumer.live else None

    def ack(self, delivery: Delivery) -> None:
        """Buffer the ack; `flush()` writes it (with `multiple=True` where it can)."""
        consumer = self._settling(delivery)
        if consumer is not None:
            consumer.to_ack.add(delivery.handle.tag)

    def flush(self) -> None:
        """Write the buffered acks; the engine calls it when its mailbox is empty."""
        link = self._link()
        if link.consumer is not None and link.consumer.live:
            link.consumer.flush_acks()

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> None:
        """Republish the message with one more attempt, through the delay queue of its
        delay when delayed (its TTL dead-letters it back here); once confirmed, ack the
        original."""
        consumer = self._settling(delivery)
        if consumer is None:
            return
        handle: _Handle = delivery.handle
        link = self._link()
        properties = handle.properties
        headers = {
            key: value
            for key, value in (properties.headers or {}).items()
            if not key.startswith(_DEATH_HEADERS)
        }
        body = handle.body
        if self.wire_format == "upstream":
            body = envelope_with_attempts(body, delivery.attempts + 1)
        else:
            headers[ATTEMPTS_HEADER] = delivery.attempts + 1
        routing_key = self.queue_name
        if delay_s:
            routing_key = self._delays.route(delay_s, link.connection)
        republished = pika.BasicProperties(
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=headers,
            delivery_mode=properties.delivery_mode,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            message_id=properties.message_id,
            timestamp=properties.timestamp,
            type=properties.type,
            app_id=properties.app_id,
            # a retry keeps its priority; a delay queue dead-letters the message back
            # with its properties, so a delayed retry keeps it too
            priority=properties.priority,
        )
        if link.publisher is None or not link.publisher.is_open:
            link.publisher = _Publisher(link.connection, True)
        try:
            link.publisher.publish([("", routing_key, body, republished)])
        except PublishRefused as exc:
            if exc.returned:
                self._delays.forget()  # someone deleted the delay queue: declare it again
            raise PublishRefused(exc.nacked, exc.returned, exc.count, repr(routing_key)) from None
        consumer.to_ack.add(handle.tag)

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """Drop the message (nack without requeue; a queue with its own
        x-dead-letter-exchange argument hands it there)."""
        consumer = self._settling(delivery)
        if consumer is not None:
            consumer.nack(delivery.handle.tag, requeue=False)

    def release(self, delivery: Delivery) -> None:
        """Give the message back unfinished (nack with requeue), attempts unchanged."""
        consumer = self._settling(delivery)
        if consumer is not None:
            consumer.nack(delivery.handle.tag, requeue=True)

    # -- sink side (the sink actor's thread) -----------------------------------------------

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> None:
        refused = self.publish_batch([(body, meta)])
        if refused:
            raise refused[0]

    def publish_batch(
        self, items: list[tuple[Any, dict[str, Any] | None]]
    ) -> dict[int, BaseException] | None:
        """Publish every item and wait for their confirms together (one round trip per
        batch); raise if the broker refused or returned any. Items that cannot be encoded
        are not sent: they come back as `{index: EncodeError}` and fail alone. A lost
        connection is made again once, and the batch published again on it
        (at-least-once)."""
        messages: list[tuple[str, str, bytes, Any]] = []
        refused: dict[int, BaseException] | None = None
        append = messages.append
        for index, (body, meta) in enumerate(items):
            try:
                append(encode_message(self, body, meta))
            except EncodeError as exc:
                if refused is None:
                    refused = {}
                refused[index] = exc
        if messages:
            self._publish_messages(messages)
        return refused

    def _publish_messages(self, messages: list[tuple[str, str, bytes, Any]]) -> None:
        link = self._link()
        if link.connection.is_open:
            try:
                self._publish_on(link, messages)
                return
            except pika.exceptions.AMQPChannelError:
                link.publisher = None  # the broker closed the channel: a new one next time
                if link.connection.is_open:
                    raise
            except (
                pika.exceptions.AMQPConnectionError,
                pika.exceptions.ConnectionWrongStateError,
            ):
                pass
        # lost (found by this publish, or earlier by a keepalive): nothing was confirmed
        logger.warning("RabbitMQ sink %r lost its connection; reconnecting", self.name)
        self.open()
        self._publish_on(self._link(), messages)

    def _publish_on(self, link: _Link, messages: list[tuple[str, str, bytes, Any]]) -> None:
        publisher = link.publisher
        if publisher is None or not publisher.is_open:  # closed by the broker
            publisher = link.publisher = _Publisher(link.connection, self.publisher_confirms)
        publisher.publish(messages)

    # -- operations tooling (any thread) -----------------------------------------------

    def browse(
        self,
        limit: int | None = None,
        match: Callable[[DeadLetterEntry], bool] | None = None,
    ) -> list[DeadLetterEntry]:
        """The first `limit` messages (all with None) that `match` accepts, head first,
        without consuming any (see `_browse`: they are given back to the queue, marked
        redelivered). The dead-letter tooling calls it on its own thread, on a
        connection of its own that it closes."""
        return _browse.browse(self, limit, match)

    def take(
        self, limit: int, match: Callable[[DeadLetterEntry], bool] | None = None
    ) -> DeadLetterClaim:
        """Claim the first `limit` messages that `match` accepts, head first (see
        onestep.kit.DeadLetterClaim): they are taken with `basic.get` and held unacked,
        invisible to every other consumer and claim, until the claim is settled (acked)
        or released (given back). Runs on the calling thread, on a connection of the
        claim's own."""
        return _browse.take(self, limit, match)

    def remove(self, ids: Iterable[Hashable]) -> int:
        """Delete the messages with these ids (as `browse` gives them), each named id
        once; returns how many were found and removed. Runs on the calling thread."""
        return _browse.remove(self, ids)

    def depth(self) -> int:
        """Messages waiting: ready in the queue plus those in the delay queues this
        process used (retries, delayed puts); not those delivered and not yet acked.
        Three round trips per queue on a producer connection; any thread."""
        return _browse.depth(self, self._delays.in_use())

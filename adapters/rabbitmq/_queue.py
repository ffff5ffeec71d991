"""RabbitMQQueue: a RabbitMQ queue as a Source and a Sink, with one connection per actor
thread; made by RabbitMQConnector.queue, run on its SourceActor's and SinkActor's threads."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions

from onestep._checks import check_int
from onestep._delivery import Delivery, Sink, Source

from ._consumer import _Consumer, _Handle
from ._link import _Link, close_link
from ._message import ATTEMPTS_HEADER, decode_message, encode_message
from ._publisher import _Publisher

if TYPE_CHECKING:
    from ._connector import RabbitMQConnector

logger = logging.getLogger("onestep.rabbitmq")

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
#: How long an empty fetch waits for the broker when no delivery is out with a handler;
#: the runtime's timer polls again after `poll_interval_s` otherwise.
IDLE_WAIT_S = 0.005


class RabbitMQQueue(Source, Sink):
    """A RabbitMQ queue that is both a Source and a Sink.

    The runtime may use one queue object as one task's source and another's emit sink:
    each role runs on its own actor thread, so every thread that opens the queue gets its
    own connection. The consumer is made on the first `fetch`, the publisher on the first
    publish, both on the calling thread; `close()` closes the calling thread's connection.
    """

    #: The engine polls again this soon after an empty fetch (the broker pushes to a
    #: buffer that only this thread reads, so there is nothing to wake the actor).
    poll_interval_s = 0.002
    #: Results waiting for this sink are published together, one round of confirms.
    max_batch = 1000

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
        self.retry_queue_name = f"{name}.retry"
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.routing_key = name if routing_key is None else routing_key
        self.durable = durable
        self.prefetch = prefetch
        self.arguments = dict(arguments or {})
        self.publisher_confirms = publisher_confirms
        self.persistent = persistent
        self._links: weakref.WeakKeyDictionary[threading.Thread, _Link] = (
            weakref.WeakKeyDictionary()
        )
        self._links_lock = threading.Lock()

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
        }

    # -- connection per thread -------------------------------------------------------------

    def open(self) -> None:
        """Connect and declare the topology; runs on the opening actor's thread (the
        source's or the sink's). One attempt after close(): a source actor restarted by
        the supervisor retries with the supervisor's backoff (no actor sleeps). A sink
        whose connection broke mid-publish reopens without close() and keeps trying for
        up to `max(30 s, connect_timeout_s)`, holding its results back meanwhile."""
        thread = threading.current_thread()
        with self._links_lock:
            old = self._links.get(thread)
        if old is not None:
            close_link(old)
        link = _Link(self._connect(reconnecting=old is not None))
        try:
            self._declare(link.connection)
        except Exception as exc:
            close_link(link)
            raise ConnectionError(
                f"cannot declare queue {self.queue_name!r} at {self.connector.where}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        with self._links_lock:
            self._links[thread] = link

    def _connect(self, *, reconnecting: bool) -> Any:
        if not reconnecting:
            return self.connector.connect()
        deadline = time.monotonic() + max(30.0, self.connector.connect_timeout_s)
        delay = 0.2
        while True:
            try:
                return self.connector.connect()
            except ConnectionError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("%s; retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _declare(self, connection: Any) -> None:
        channel = connection.channel()
        if self.exchange is not None:
            channel.exchange_declare(
                self.exchange, exchange_type=self.exchange_type, durable=self.durable
            )
        channel.queue_declare(self.queue_name, durable=self.durable, arguments=self.arguments)
        if self.exchange is not None:
            channel.queue_bind(self.queue_name, self.exchange, routing_key=self.routing_key)
        channel.close()

    def close(self) -> None:
        """Write buffered acks and close the calling thread's connection; the broker
        requeues whatever it delivered and nobody acked. Runs on the closing actor's
        thread."""
        with self._links_lock:
            link = self._links.pop(threading.current_thread(), None)
        if link is not None:
            close_link(link)

    def _link(self) -> _Link:
        with self._links_lock:
            link = self._links.get(threading.current_thread())
        if link is None or not link.open:
            raise ConnectionError(f"RabbitMQ queue {self.name!r} is not open on this thread")
        return link

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
        decode = decode_message
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
        """Republish the message with one more attempt, through the retry queue when
        delayed (its TTL dead-letters it back here); once confirmed, ack the original."""
        consumer = self._settling(delivery)
        if consumer is None:
            return
        handle: _Handle = delivery.handle
        link = self._link()
        properties = handle.properties
        headers = dict(properties.headers or {})
        headers[ATTEMPTS_HEADER] = delivery.attempts + 1
        for name in ("x-death", "x-first-death-exchange", "x-first-death-queue"):
            headers.pop(name, None)
        headers.pop("x-first-death-reason", None)
        expiration = None
        routing_key = self.queue_name
        if delay_s:
            routing_key = self.retry_queue_name
            expiration = str(max(1, round(delay_s * 1000)))
            if not link.retry_declared:
                self._declare_retry_queue(link.connection)
                link.retry_declared = True
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
            expiration=expiration,
        )
        if link.publisher is None:
            link.publisher = _Publisher(link.connection, True)
        link.publisher.publish([("", routing_key, handle.body, republished)])
        consumer.to_ack.add(handle.tag)

    def _declare_retry_queue(self, connection: Any) -> None:
        channel = connection.channel()
        channel.queue_declare(
            self.retry_queue_name,
            durable=self.durable,
            arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.queue_name,
            },
        )
        channel.close()

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
        self.publish_batch([(body, meta)])

    def publish_batch(self, items: list[tuple[Any, dict[str, Any] | None]]) -> None:
        """Publish every item and wait for their confirms together (one round trip per
        batch); raise if the broker refused or returned any. A lost connection is made
        again once, and the batch published again on it (at-least-once)."""
        messages = [encode_message(self, body, meta) for body, meta in items]
        link = self._link()
        try:
            self._publish_on(link, messages)
        except pika.exceptions.AMQPChannelError:
            link.publisher = None  # the broker closed the channel: a new one next time
            raise
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionWrongStateError):
            logger.warning("RabbitMQ sink %r lost its connection; reconnecting", self.name)
            self.open()
            self._publish_on(self._link(), messages)

    def _publish_on(self, link: _Link, messages: list[tuple[str, str, bytes, Any]]) -> None:
        publisher = link.publisher
        if publisher is None:
            publisher = link.publisher = _Publisher(link.connection, self.publisher_confirms)
        publisher.publish(messages)

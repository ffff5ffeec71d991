"""RabbitMQConnector: RabbitMQ queues (on pika) as onestep sources and sinks.

Users build queues with `RabbitMQConnector(url).queue(name)`; the runtime calls each queue's
source methods on its SourceActor's thread and its sink methods on its SinkActor's thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

from onestep._checks import check_int, check_number
from onestep._delivery import Delivery, Sink, Source

logger = logging.getLogger("onestep.rabbitmq")

#: Every header onestep writes starts with this prefix.
HEADER_PREFIX = "x-onestep-"
#: Executions of the message so far (an int); a retry republishes it with one more.
ATTEMPTS_HEADER = HEADER_PREFIX + "attempts"
#: The message's onestep meta, as a JSON object (exact round trip of any JSON value).
META_HEADER = HEADER_PREFIX + "meta"

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
#: How long a publish waits for the broker's confirms before it gives up.
CONFIRM_TIMEOUT_S = 60.0
#: How long an empty fetch waits for the broker when no delivery is out with a handler;
#: the runtime's timer polls again after `poll_interval_s` otherwise.
IDLE_WAIT_S = 0.005


def _noop() -> None:
    return None


def _safe_url(url: str) -> str:
    """`url` with its password replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


class RabbitMQConnector:
    """Where queues live: one broker URL (`amqp://user:password@host:port/vhost`).

    It holds no connection itself: each queue connects on the thread that uses it.
    """

    def __init__(
        self,
        url: str,
        *,
        heartbeat_s: float = 30,
        connect_timeout_s: float = 10,
        name: str | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty amqp:// or amqps:// URL, got {url!r}")
        safe = _safe_url(url)
        if not url.startswith(("amqp://", "amqps://")):
            raise ValueError(f"url must start with amqp:// or amqps://, got {safe!r}")
        heartbeat = check_number("heartbeat_s", heartbeat_s)
        connect_timeout = check_number("connect_timeout_s", connect_timeout_s, exclusive=True)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        try:
            params = pika.URLParameters(url)
        except Exception as exc:
            raise ValueError(
                f"url is not a valid AMQP URL ({type(exc).__name__}): {safe!r}"
            ) from None
        params.heartbeat = round(heartbeat)
        params.socket_timeout = connect_timeout
        params.stack_timeout = connect_timeout
        params.blocked_connection_timeout = CONFIRM_TIMEOUT_S
        params.connection_attempts = 1
        self._params = params
        self._password = unquote(urlsplit(url).password or "")
        self.heartbeat_s = heartbeat
        self.connect_timeout_s = connect_timeout
        self.url = safe
        self.where = (
            f"{params.host}:{params.port} vhost {params.virtual_host!r} "
            f"as user {params.credentials.username!r}"
        )
        self.name = name or f"rabbitmq://{params.host}:{params.port}"

    def __repr__(self) -> str:
        return f"RabbitMQConnector({self.url!r}, name={self.name!r})"

    def queue(
        self,
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
    ) -> RabbitMQQueue:
        """A queue that is both a Source and a Sink (declared when it opens)."""
        return RabbitMQQueue(
            self,
            name,
            exchange=exchange,
            exchange_type=exchange_type,
            routing_key=routing_key,
            durable=durable,
            prefetch=prefetch,
            arguments=arguments,
            publisher_confirms=publisher_confirms,
            persistent=persistent,
        )

    def connect(self) -> Any:
        """A new BlockingConnection, or ConnectionError naming the broker and user (never
        the password). Runs on the calling thread, which then owns the connection."""
        try:
            return pika.BlockingConnection(self._params)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if self._password:
                detail = detail.replace(self._password, "***")
            raise ConnectionError(f"cannot connect to RabbitMQ at {self.where}: {detail}") from None


class _Handle:
    """What a delivery needs to be settled: its consumer, tag and the raw message."""

    __slots__ = ("body", "consumer", "properties", "tag")

    def __init__(self, consumer: _Consumer, tag: int, properties: Any, body: bytes) -> None:
        self.consumer = consumer
        self.tag = tag
        self.properties = properties
        self.body = body


class _Publisher:
    """A channel in confirm mode whose confirms are awaited per batch, not per message.

    pika's BlockingChannel.confirm_delivery() waits for each message's confirm inside
    basic_publish (one round trip per message). Instead the underlying channel
    (`BlockingChannel._impl`, pika's asynchronous Channel) is put in confirm mode with
    our own callback, a batch is written without waiting, and process_data_events runs
    until every confirm of the batch arrived.
    """

    def __init__(self, connection: Any, confirms: bool) -> None:
        self._connection = connection
        self._channel = connection.channel()
        self._impl = self._channel._impl
        self._confirms = confirms
        self._published = 0  # the broker numbers confirms 1, 2, ... per channel
        self._unconfirmed: set[int] = set()
        self._nacked = 0
        self._returned = 0
        self._ready = False
        self._impl.add_on_return_callback(self._on_return)
        if confirms:
            self._impl.confirm_delivery(self._on_confirm, callback=self._on_select_ok)
            self._wait(lambda: self._ready, "Confirm.Select")

    def _on_select_ok(self, _: Any) -> None:
        self._ready = True
        self._connection.call_later(0, _noop)  # ends the wait in process_data_events

    def _on_return(self, *_: Any) -> None:
        self._returned += 1

    def _on_confirm(self, frame: Any) -> None:
        """Runs inside process_data_events for each Basic.Ack or Basic.Nack."""
        method = frame.method
        tag = method.delivery_tag
        if isinstance(method, pika.spec.Basic.Nack):
            self._nacked += 1
        unconfirmed = self._unconfirmed
        if method.multiple:
            self._unconfirmed = {t for t in unconfirmed if t > tag}
        else:
            unconfirmed.discard(tag)
        if not self._unconfirmed:
            self._connection.call_later(0, _noop)

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        process = self._connection.process_data_events
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"RabbitMQ did not answer {what} in {CONFIRM_TIMEOUT_S:g} s")
            process(time_limit=remaining)

    def publish(self, messages: Iterable[tuple[str, str, bytes, Any]]) -> None:
        """Publish (exchange, routing_key, body, properties) messages and wait until the
        broker confirmed all of them; raise if any was nacked or returned unroutable."""
        self._nacked = self._returned = 0
        publish = self._impl.basic_publish
        first = self._published + 1
        for exchange, routing_key, body, properties in messages:
            publish(exchange, routing_key, body, properties, mandatory=True)
            self._published += 1
        count = self._published - first + 1
        if self._confirms:
            self._unconfirmed.update(range(first, self._published + 1))
            self._wait(lambda: not self._unconfirmed, "publisher confirms")
        else:
            self._connection.process_data_events(time_limit=0)  # write them out
        if self._nacked or self._returned:
            raise RuntimeError(
                f"RabbitMQ refused {self._nacked} and returned {self._returned} "
                f"(unroutable) of {count} published message(s)"
            )


class _Consumer:
    """One consuming channel: the messages it buffered and the tags still unsettled."""

    def __init__(self, queue: RabbitMQQueue, connection: Any) -> None:
        self.connection = connection
        self.channel = connection.channel()
        self.channel.basic_qos(prefetch_count=queue.prefetch)
        self.buffer: deque[tuple[Any, Any, bytes]] = deque()
        # delivery tags not yet acked or nacked, in delivery order (dicts keep it)
        self.unsettled: dict[int, None] = {}
        self.to_ack: set[int] = set()
        self.handed_out = 0
        self.live = True
        self.channel.basic_consume(queue.queue_name, self._on_message)

    def _on_message(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """Runs inside process_data_events on the source actor's thread."""
        self.buffer.append((method.delivery_tag, properties, body))
        self.unsettled[method.delivery_tag] = None

    def flush_acks(self) -> None:
        """Ack what is buffered: the longest run of unsettled tags that are all acked with
        one `multiple=True` ack, the rest one by one."""
        to_ack = self.to_ack
        if not to_ack:
            return
        unsettled = self.unsettled
        last = 0
        for tag in unsettled:
            if tag not in to_ack:
                break
            last = tag
        channel = self.channel
        if last:
            for tag in list(unsettled):
                if tag > last:
                    break
                del unsettled[tag]
                to_ack.discard(tag)
            channel.basic_ack(last, multiple=True)
        for tag in sorted(to_ack):
            unsettled.pop(tag, None)
            channel.basic_ack(tag)
        to_ack.clear()

    def nack(self, tag: int, requeue: bool) -> None:
        self.unsettled.pop(tag, None)
        self.to_ack.discard(tag)
        self.channel.basic_nack(tag, requeue=requeue)


class _Link:
    """One thread's connection to the broker, and what that thread made on it."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.consumer: _Consumer | None = None
        self.publisher: _Publisher | None = None
        self.retry_declared = False
        self.open = True


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
            self._close_link(old)
        link = _Link(self._connect(reconnecting=old is not None))
        try:
            self._declare(link.connection)
        except Exception as exc:
            self._close_link(link)
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
            self._close_link(link)

    @staticmethod
    def _close_link(link: _Link) -> None:
        if not link.open:
            return
        link.open = False
        consumer = link.consumer
        try:
            if consumer is not None and consumer.live:
                consumer.live = False
                consumer.flush_acks()
            if link.connection.is_open:
                link.connection.close()
        except Exception as exc:
            logger.debug("closing a RabbitMQ connection: %s", exc)
        if consumer is not None:
            consumer.live = False

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
        decode = self._decode
        return [decode(consumer, *popleft()) for _ in range(count)]

    def _decode(self, consumer: _Consumer, tag: int, properties: Any, body: bytes) -> Delivery:
        headers = properties.headers or {}
        attempts = headers.get(ATTEMPTS_HEADER, 0)
        if type(attempts) is not int or attempts < 0:
            attempts = 0
        meta = headers.get(META_HEADER)
        error: BaseException | None = None
        try:
            meta = json.loads(meta) if meta else {}
            if not isinstance(meta, dict):
                meta = {"meta": meta}
        except (ValueError, TypeError):
            meta = {}
        content_type = properties.content_type or ""
        payload: Any = body
        if content_type == JSON_TYPE or content_type.endswith("+json"):
            try:
                payload = json.loads(body)
            except (ValueError, TypeError) as exc:
                payload = body.decode("utf-8", "replace")
                error = ValueError(f"message claims {content_type} but does not parse: {exc}")
        elif content_type.startswith("text/"):
            try:
                payload = body.decode(properties.content_encoding or "utf-8")
            except (LookupError, UnicodeDecodeError) as exc:
                payload = body.decode("utf-8", "replace")
                error = ValueError(f"message claims {content_type} but does not decode: {exc}")
        handle = _Handle(consumer, tag, properties, body)
        return Delivery(payload, meta=meta, attempts=attempts, handle=handle, error=error)

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
        messages = [self._encode(body, meta) for body, meta in items]
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

    def _encode(self, body: Any, meta: dict[str, Any] | None) -> tuple[str, str, bytes, Any]:
        if isinstance(body, bytes | bytearray | memoryview):
            data, content_type = bytes(body), BINARY_TYPE
        else:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            content_type = JSON_TYPE
        headers = {META_HEADER: json.dumps(meta, separators=(",", ":"))} if meta else None
        properties = pika.BasicProperties(
            content_type=content_type,
            delivery_mode=2 if self.persistent else 1,
            headers=headers,
        )
        return (self.exchange or "", self.routing_key, data, properties)

"""One connection per actor thread for a RabbitMQQueue: open, declare, keep alive and close
the calling thread's connection; mixed into RabbitMQQueue, run on its actors' threads."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions

from ._link import _Link, close_link
from ._quiet import quiet

if TYPE_CHECKING:
    from ._connector import RabbitMQConnector

logger = logging.getLogger("onestep.rabbitmq")


class ThreadLinks:
    """The connection of each thread that opened the queue (the source's actor, the sink's
    actor): a queue object may be one task's source and another's sink at once."""

    connector: RabbitMQConnector
    name: str
    queue_name: str
    exchange: str | None
    exchange_type: str
    routing_key: str
    durable: bool
    arguments: dict[str, Any]
    _links: weakref.WeakKeyDictionary[threading.Thread, _Link]
    _links_lock: threading.Lock
    _declared: bool

    @property
    def keepalive_interval_s(self) -> float:
        """How often the owning actor calls `keepalive()`: half the heartbeat timeout, 0
        (never) with heartbeats off."""
        return self.connector.keepalive_interval_s

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
        self._declared = True

    def _connect(self, *, reconnecting: bool) -> Any:
        purpose = f"onestep queue {self.name!r} on {threading.current_thread().name}"
        if not reconnecting:
            return self.connector.connect(purpose)
        deadline = time.monotonic() + max(30.0, self.connector.connect_timeout_s)
        delay = 0.2
        while True:
            try:
                return self.connector.connect(purpose)
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
        thread. Called from any other thread (your own code, after `put`), it closes the
        connector's producer connections instead, like `RabbitMQConnector.close()`."""
        with self._links_lock:
            link = self._links.pop(threading.current_thread(), None)
        if link is not None:
            close_link(link)
        else:
            self.connector.close()

    def keepalive(self) -> None:
        """Pump the calling actor's connection: send and answer heartbeats, and buffer what
        the broker pushed meanwhile (prefetch bounds it). Runs on the owning actor's
        thread every `keepalive_interval_s`, also while every credit is out with a long
        handler. Raises ConnectionError once when the connection (or the consuming
        channel) is gone: the source actor is then restarted; a sink reconnects on its
        next publish."""
        with self._links_lock:
            link = self._links.get(threading.current_thread())
        if link is None or not link.open or link.broken:
            return
        connection = link.connection
        problem = None
        try:
            with quiet():
                connection.process_data_events(time_limit=0)
        except pika.exceptions.AMQPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None and not connection.is_open:
            problem = "the connection is closed"
        consumer = link.consumer
        if problem is None and consumer is not None and consumer.channel.is_closed:
            problem = "the broker closed the consuming channel"
        if problem is not None:
            link.broken = True
            raise ConnectionError(
                f"RabbitMQ queue {self.name!r} lost its connection to "
                f"{self.connector.where}: {problem}"
            )

    def _link(self) -> _Link:
        with self._links_lock:
            link = self._links.get(threading.current_thread())
        if link is None or not link.open:
            raise ConnectionError(f"RabbitMQ queue {self.name!r} is not open on this thread")
        return link

    def _declare_for_producer(self, connection: Any) -> None:
        try:
            self._declare(connection)
        except pika.exceptions.AMQPChannelError as exc:
            raise ConnectionError(
                f"cannot declare queue {self.queue_name!r} at {self.connector.where}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        self._declared = True

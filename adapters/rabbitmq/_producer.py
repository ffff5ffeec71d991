"""The producer pool of a RabbitMQConnector: the connections behind `RabbitMQQueue.put` and
`put_many`, lent to one calling thread at a time; called from any thread (a web view, a
script, a handler), with or without a running app.

pika's BlockingConnection is not thread-safe, so a connection is never used by two threads
at once: `publish` takes one from the pool (or connects), uses it on the calling thread
and gives it back. An idle pooled connection answers no heartbeats, so the broker may have
closed it: a connection taken from the pool is pumped once first and replaced when it is
dead, and a publish that loses its connection is made again once on a fresh one (nothing
was confirmed, so sending it again is safe: at-least-once). `close()` closes the idle
connections and makes the busy ones close when they come back; the pool stays usable and
connects again on the next publish. Every pool is closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import pika.exceptions

from ._publisher import PublishRefused, _Publisher
from ._quiet import quiet

logger = logging.getLogger("onestep.rabbitmq")

T = TypeVar("T")

#: Connections kept open for the next `put` once their thread is done with them; more than
#: this many threads putting at once get connections of their own that close afterwards.
MAX_IDLE_PRODUCERS = 8

#: What a lost connection raises in pika (a broker restart, a missed heartbeat, a reset).
_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
)


class _Producer:
    """One connection with its confirm-mode channel, used by one thread at a time."""

    __slots__ = ("connection", "generation", "publisher")

    def __init__(self, connection: Any, generation: int) -> None:
        self.connection = connection
        self.generation = generation
        self.publisher = _Publisher(connection, True)

    def alive(self) -> bool:
        """Whether the connection still works: pumping it reads whatever the broker sent
        meanwhile (a close after missed heartbeats) and sends the heartbeats that are due."""
        if not self.connection.is_open or not self.publisher.is_open:
            return False
        try:
            with quiet():
                self.connection.process_data_events(time_limit=0)
        except _CONNECTION_ERRORS:
            return False
        return bool(self.connection.is_open)

    def close(self) -> None:
        try:
            with quiet():
                if self.connection.is_open:
                    self.connection.close()
        except Exception as exc:
            logger.debug("closing a RabbitMQ producer connection: %s", exc)


class ProducerPool:
    """Producer connections to one broker, lent to one thread at a time."""

    def __init__(self, connect: Callable[[], Any], where: str) -> None:
        self._connect = connect
        self._where = where
        self._idle: list[_Producer] = []
        self._lock = threading.Lock()
        # close() bumps it: a connection of an older generation closes when it comes back
        self._generation = 0
        _POOLS.add(self)

    def publish(
        self,
        messages: Callable[[Any], list[tuple[str, str, bytes, Any]]],
    ) -> int:
        """Publish what `messages(connection)` returns (it may declare what they need on
        that connection first) and wait for the broker's confirms; runs on the calling
        thread. Raises PublishRefused when the broker refused or returned any, and
        ConnectionError when it cannot be reached even on a fresh connection."""
        for attempt in (1, 2):
            producer = self._take()
            try:
                batch = messages(producer.connection)
                producer.publisher.publish(batch)
            except _CONNECTION_ERRORS as exc:
                producer.close()
                if attempt == 2:
                    raise ConnectionError(
                        f"lost the connection to RabbitMQ at {self._where} while publishing: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
                logger.info("a RabbitMQ producer connection was lost (%s); reconnecting", exc)
                continue
            except PublishRefused:
                self._give_back(producer)  # the channel is still usable
                raise
            except BaseException:
                producer.close()  # a channel the broker closed, a confirm that never came
                raise
            self._give_back(producer)
            return len(batch)
        raise AssertionError("unreachable")

    def run(self, operation: Callable[[Any], T]) -> T:
        """Return `operation(connection)` run on a pooled connection (it opens and
        closes the channels it needs); runs on the calling thread. A connection lost
        meanwhile is replaced and the operation run once more; ConnectionError when the
        broker cannot be reached even on a fresh connection."""
        for attempt in (1, 2):
            producer = self._take()
            try:
                result = operation(producer.connection)
            except _CONNECTION_ERRORS as exc:
                producer.close()
                if attempt == 2:
                    raise ConnectionError(
                        f"lost the connection to RabbitMQ at {self._where}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
                continue
            except BaseException:
                producer.close()
                raise
            self._give_back(producer)
            return result
        raise AssertionError("unreachable")

    def _take(self) -> _Producer:
        """An idle live producer, or a new one; runs on the calling thread."""
        while True:
            with self._lock:
                producer = self._idle.pop() if self._idle else None
                generation = self._generation
            if producer is None:
                return _Producer(self._connect(), generation)
            if producer.alive():
                return producer
            logger.debug("dropping a dead RabbitMQ producer connection to %s", self._where)
            producer.close()

    def _give_back(self, producer: _Producer) -> None:
        with self._lock:
            keep = (
                producer.generation == self._generation
                and len(self._idle) < MAX_IDLE_PRODUCERS
                and producer.connection.is_open
                and producer.publisher.is_open
            )
            if keep:
                self._idle.append(producer)
        if not keep:
            producer.close()

    def close(self) -> None:
        """Close the idle connections; busy ones close when their thread is done. The pool
        connects again on the next publish. Callable from any thread."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for producer in idle:
            producer.close()


_POOLS: weakref.WeakSet[ProducerPool] = weakref.WeakSet()


@atexit.register
def _close_all_pools() -> None:
    """At interpreter exit: close every pool's idle connections cleanly (the broker would
    otherwise log each as closed unexpectedly)."""
    for pool in list(_POOLS):
        pool.close()

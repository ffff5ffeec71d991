"""The producer side of a RabbitMQQueue (`put`, `put_many`): any thread, with or without a
running app, through the connector's pool of producer connections; mixed into RabbitMQQueue."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from onestep.kit import check_bodies, check_delay, check_int, check_meta, check_priority

from ._delays import DelayQueues
from ._message import encode_message
from ._publisher import PublishRefused

if TYPE_CHECKING:
    from ._connector import RabbitMQConnector


class Producing:
    """`put` and `put_many`: publish and wait for the broker's confirms."""

    connector: RabbitMQConnector
    name: str
    persistent: bool
    exchange: str | None
    routing_key: str
    wire_format: str
    max_priority: int | None
    _declared: bool
    _delays: DelayQueues
    #: declares the queue on a producer connection (ThreadLinks)
    _declare_for_producer: Callable[[Any], None]

    def put(
        self,
        body: Any,
        meta: dict[str, Any] | None = None,
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
        attempts: int = 0,
    ) -> None:
        """Publish `body` (JSON, or `bytes` as they are) with `meta`, after `delay_s`
        seconds if given, and return once the broker confirmed it. Callable from any
        thread, with or without a running app; declares the queue (and the delay queue)
        on first use. `attempts` is the executions the message already had (its
        `x-onestep-attempts` header; a dead-letter replay that keeps them sets it).
        `priority` (0 to the queue's `max_priority`; higher first) needs a queue declared
        with `max_priority`: ValueError otherwise, as RabbitMQ would ignore it.
        Before anything is sent: TypeError for a meta that is not a mapping, EncodeError
        for a body or meta that is not JSON, MessageTooLarge (an EncodeError) for a body
        over the connector's `max_message_bytes`. After: PublishRefused when the broker
        nacked or could not route it, ConnectionError when it cannot be reached."""
        if not attempts:
            self.put_many([body], meta, delay_s=delay_s, priority=priority)
            return
        check_int("attempts", attempts, minimum=0)
        meta = check_meta(meta)
        delay = check_delay("delay_s", delay_s)
        checked = self._checked_priority(priority)
        exchange, routing_key, data, properties = encode_message(self, body, meta, attempts)
        properties.priority = checked
        self._put_encoded([(exchange, routing_key, data, properties)], delay)

    def put_many(
        self,
        bodies: Iterable[Any],
        meta: dict[str, Any] | None = None,
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> int:
        """Publish every body in `bodies` (each with `meta` and `priority`) and wait for
        their confirms together; returns how many were published. Every body is encoded
        before any is sent, so an EncodeError sends none. Otherwise as `put`; if it
        raises, some of the batch may have been published."""
        delay = check_delay("delay_s", delay_s)
        meta = check_meta(meta)
        checked = self._checked_priority(priority)
        messages = [encode_message(self, body, meta) for body in check_bodies(bodies)]
        if not messages:
            return 0
        if checked is not None:
            for message in messages:
                message[3].priority = checked
        return self._put_encoded(messages, delay)

    def _checked_priority(self, priority: Any) -> int | None:
        """`priority` if this queue can honour it; ValueError naming it and saying why."""
        if priority is None:
            return None
        if self.max_priority is None:
            raise ValueError(
                f"priority={priority!r} given, but RabbitMQ queue {self.name!r} was not "
                "declared with max_priority, and RabbitMQ ignores the priority of messages "
                "on such a queue: declare it with queue(name, max_priority=10) (a queue "
                "that exists must be deleted first: its arguments cannot change)"
            )
        why = f" (queue {self.name!r} has max_priority={self.max_priority})"
        return check_priority(priority, maximum=self.max_priority, why=why)

    def _put_encoded(self, messages: list[tuple[str, str, bytes, Any]], delay: float) -> int:
        """Publish encoded messages through the producer pool, after `delay` seconds;
        runs on the calling thread."""

        def route(connection: Any) -> list[tuple[str, str, bytes, Any]]:
            """Runs on the calling thread with the producer connection it borrowed."""
            if not self._declared:
                self._declare_for_producer(connection)
            if not delay:
                return messages
            key = self._delays.route(delay, connection)
            return [("", key, data, properties) for _, _, data, properties in messages]

        try:
            return self.connector.producers.publish(route)
        except PublishRefused as exc:
            if exc.returned:
                # the queue (or delay queue) is gone: declare it again on the next put
                self._declared = False
                self._delays.forget()
            raise PublishRefused(
                exc.nacked, exc.returned, exc.count, f"queue {self.name!r}"
            ) from None

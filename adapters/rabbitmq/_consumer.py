"""The consuming channel of a queue's source thread and the handle each delivery settles
through; made by RabbitMQQueue.fetch, used on the source actor's thread."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._queue import RabbitMQQueue


class _Handle:
    """What a delivery needs to be settled: its consumer, tag and the raw message."""

    __slots__ = ("body", "consumer", "properties", "tag")

    def __init__(self, consumer: _Consumer | None, tag: int, properties: Any, body: bytes) -> None:
        self.consumer = consumer
        self.tag = tag
        self.properties = properties
        self.body = body


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

"""One thread's connection to the broker and what that thread made on it; RabbitMQQueue
keeps one per actor thread that opened it, and closes it on that thread."""

from __future__ import annotations

import logging
from typing import Any

from ._consumer import _Consumer
from ._publisher import _Publisher

logger = logging.getLogger("onestep.rabbitmq")


class _Link:
    """One thread's connection to the broker, and what that thread made on it."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.consumer: _Consumer | None = None
        self.publisher: _Publisher | None = None
        self.open = True
        # a keepalive found the connection dead and said so (once)
        self.broken = False


def close_link(link: _Link) -> None:
    """Write the consumer's buffered acks and close the connection, once; runs on the
    thread that owns the link."""
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

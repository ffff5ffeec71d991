"""Upstream onestep-rabbitmq's `RabbitMQConnector(url, options=None)` and its `queue(...)`
keywords, on onestep's RabbitMQ connector with upstream's wire format by default; built
by a migrant's code at import time, so it runs on the importing thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.rabbitmq import RabbitMQConnector as _RabbitMQConnector
from adapters.rabbitmq import RabbitMQQueue

from ._closing import CLOSED, Closed
from ._options import refuse

#: aio-pika connect options that have a onestep equivalent: theirs -> ours
_OPTIONS = {"heartbeat": "heartbeat_s", "timeout": "connect_timeout_s"}


class UpstreamQueue(RabbitMQQueue):
    """A RabbitMQQueue whose `publish` upstream code may await (`await
    queue.publish(body, meta=..., attempts=...)`): it publishes at once, on the calling
    thread's connection, and returns an awaitable that is already done."""

    def publish(  # type: ignore[override]
        self, body: Any, meta: dict[str, Any] | None = None, *, attempts: int = 0
    ) -> Closed:
        if attempts:
            self.put(body, meta, attempts=attempts)
        else:
            super().publish(body, meta)
        return CLOSED


class RabbitMQConnector(_RabbitMQConnector):
    """`onestep_rabbitmq.RabbitMQConnector` for migrants: the same constructor and
    `queue()` keywords, queues that speak upstream's `{"body", "meta", "attempts"}`
    envelope (`wire_format="upstream"`) unless told otherwise, and a `close()` that may
    be awaited. onestep's own keywords (`max_message_bytes`, `name`) are accepted too."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        extra = dict(options or {})
        for theirs, ours in _OPTIONS.items():
            if theirs in extra:
                kwargs.setdefault(ours, extra.pop(theirs))
        refuse("RabbitMQConnector", "options", extra, "onestep connects with pika")
        super().__init__(url, **kwargs)

    def queue(
        self,
        name: str,
        *,
        routing_key: str | None = None,
        exchange: str | None = None,
        exchange_type: str = "direct",
        bind: bool = True,
        bind_arguments: Mapping[str, Any] | None = None,
        durable: bool = True,
        auto_delete: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        exchange_durable: bool | None = None,
        exchange_auto_delete: bool = False,
        exchange_arguments: Mapping[str, Any] | None = None,
        prefetch: int = 100,
        batch_size: int = 100,
        poll_interval_s: float = 1.0,
        publisher_confirms: bool = True,
        persistent: bool = True,
        wire_format: str = "upstream",
        max_priority: int | None = None,
    ) -> UpstreamQueue:
        """A queue with upstream's keywords. `batch_size` and `poll_interval_s` are
        accepted and unused (the broker pushes up to `prefetch` messages to the
        consumer). Options onestep does not have raise ValueError naming them."""
        unsupported = {
            "bind": (bind, True),
            "bind_arguments": (dict(bind_arguments or {}), {}),
            "auto_delete": (auto_delete, False),
            "exclusive": (exclusive, False),
            "exchange_durable": (exchange_durable, None if exchange_durable is None else durable),
            "exchange_auto_delete": (exchange_auto_delete, False),
            "exchange_arguments": (dict(exchange_arguments or {}), {}),
        }
        refuse(
            "RabbitMQConnector.queue",
            "option",
            {key: given for key, (given, default) in unsupported.items() if given != default},
            "onestep declares durable, bound queues and exchanges",
        )
        if exchange is None:
            # upstream publishes to the default exchange with the queue's name
            if routing_key not in (None, name):
                raise ValueError(
                    f"routing_key={routing_key!r} without an exchange: the default exchange "
                    f"routes by queue name; give exchange=..., or leave routing_key out"
                )
            routing_key = None
        return UpstreamQueue(
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
            wire_format=wire_format,
            max_priority=max_priority,
        )

    def close(self) -> Closed:  # type: ignore[override]
        """Close the producer connections (see onestep's connector); `await` it or not."""
        super().close()
        return CLOSED

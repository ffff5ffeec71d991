"""RabbitMQConnector: one broker URL (its password kept out of messages), the factory of
its queues and the owner of their producer connections; built by users, its connections
made on the thread that uses each queue."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import pika

from onestep.kit import check_int, check_number

from ._producer import ProducerPool
from ._publisher import CONFIRM_TIMEOUT_S
from ._queue import RabbitMQQueue
from ._quiet import quiet

#: Bytes of a content-header frame kept for what is not the meta: the frame's own fields,
#: the content type, the header table's keys and types, the attempts header.
_PROPERTIES_ROOM = 512


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


def _reason(exc: BaseException) -> str:
    """Why a connection failed: pika's AMQPConnectionError says nothing in str() and
    keeps the cause as text in its args (`AMQPConnectorSocketConnectError:
    ConnectionRefusedError(111, ...)`)."""
    text = str(exc) or "; ".join(str(arg) for arg in exc.args) or repr(exc)
    if "ConnectionRefusedError" in text:
        return "connection refused (ConnectionRefusedError: nothing listens on that port)"
    return f"{type(exc).__name__}: {text}"


class RabbitMQConnector:
    """Where queues live: one broker URL (`amqp://user:password@host:port/vhost`).

    Each actor that uses a queue connects on its own thread; `put` and `put_many` borrow a
    connection from the connector's producer pool, which `close()` closes.

    `heartbeat_s` is the heartbeat timeout proposed to the broker (whole seconds; a value
    between 0 and 1 counts as 1; 0 turns heartbeats off). The actors that own a
    connection pump it every `keepalive_interval_s` (half of it), however long handlers
    run, so the broker never takes a busy worker for a dead one.

    `max_message_bytes` is the largest body a queue publishes: a larger one is refused
    before it is sent, with MessageTooLarge naming both sizes (an EncodeError, so as a
    result it fails alone). Set it to the broker's `max_message_size` (RabbitMQ's
    default, 128 MiB, is the default here; AMQP does not tell a client the broker's).
    """

    #: RabbitMQ's default `max_message_size` (since 3.8): 128 MiB.
    DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024

    def __init__(
        self,
        url: str,
        *,
        heartbeat_s: float = 30,
        connect_timeout_s: float = 10,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        name: str | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty amqp:// or amqps:// URL, got {url!r}")
        safe = _safe_url(url)
        if not url.startswith(("amqp://", "amqps://")):
            raise ValueError(f"url must start with amqp:// or amqps://, got {safe!r}")
        heartbeat = check_number("heartbeat_s", heartbeat_s)
        connect_timeout = check_number("connect_timeout_s", connect_timeout_s, exclusive=True)
        #: Bodies larger than this are refused before they are sent (see the class).
        self.max_message_bytes = check_int("max_message_bytes", max_message_bytes, minimum=1)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        try:
            params = pika.URLParameters(url)
        except Exception as exc:
            raise ValueError(
                f"url is not a valid AMQP URL ({type(exc).__name__}): {safe!r}"
            ) from None
        # pika and the broker take whole seconds; rounding 0.4 down to 0 would turn
        # heartbeats off instead of making them frequent
        params.heartbeat = max(1, round(heartbeat)) if heartbeat else 0
        params.socket_timeout = connect_timeout
        params.stack_timeout = connect_timeout
        params.blocked_connection_timeout = CONFIRM_TIMEOUT_S
        params.connection_attempts = 1
        self._params = params
        #: The largest meta (its JSON text) a message carries: the properties travel in
        #: one frame of at most `frame_max` bytes, with room kept for the other fields.
        self.max_meta_bytes = int(params.frame_max) - _PROPERTIES_ROOM
        self._password = unquote(urlsplit(url).password or "")
        self.heartbeat_s = heartbeat
        self.connect_timeout_s = connect_timeout
        self.url = safe
        self.where = (
            f"{params.host}:{params.port} vhost {params.virtual_host!r} "
            f"as user {params.credentials.username!r}"
        )
        self.name = name or f"rabbitmq://{params.host}:{params.port}"
        #: How often the actor owning a connection pumps it (half the heartbeat timeout,
        #: as pika sends heartbeats); 0 when heartbeats are off.
        self.keepalive_interval_s = params.heartbeat / 2 if params.heartbeat else 0.0
        self.producers = ProducerPool(lambda: self.connect("onestep producer"), self.where)

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
        wire_format: str = "onestep",
        max_priority: int | None = None,
    ) -> RabbitMQQueue:
        """A queue that is both a Source and a Sink (declared when it opens).
        `wire_format="upstream"` reads and writes upstream onestep's JSON envelope
        (`{"body", "meta", "attempts"}`), so its workers can share the queue. With
        `max_priority` (1 to 255; RabbitMQ advises 10 at most) it is declared with
        `x-max-priority` and `put(..., priority=0..max_priority)` delivers higher
        priorities first."""
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
            wire_format=wire_format,
            max_priority=max_priority,
        )

    def connect(self, purpose: str = "onestep") -> Any:
        """A new BlockingConnection, or ConnectionError naming the broker and user (never
        the password); pika's own log records of a failed attempt stay at DEBUG. The
        broker shows `purpose` as its connection name (the management UI, `rabbitmqctl
        list_connections client_properties`). Runs on the calling thread, which then owns
        the connection."""
        params = copy.copy(self._params)
        params.client_properties = {"connection_name": purpose}
        try:
            with quiet():
                return pika.BlockingConnection(params)
        except Exception as exc:
            detail = _reason(exc)
            if self._password:
                detail = detail.replace(self._password, "***")
            raise ConnectionError(f"cannot connect to RabbitMQ at {self.where}: {detail}") from None

    def close(self) -> None:
        """Close the producer connections that `put` and `put_many` opened (idle ones now,
        busy ones when their `put` returns); the next `put` connects again. The actors'
        connections are the app's: it closes them when it stops. Callable from any thread;
        also done at interpreter exit."""
        self.producers.close()

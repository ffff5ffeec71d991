"""How a delivery and a RabbitMQ message map onto each other: onestep's headers, JSON or
bytes bodies; called by RabbitMQQueue on its source and sink actors' threads."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

import pika

from onestep.kit import (
    Delivery,
    EncodeError,
    check_meta,
    check_size,
    encode_envelope,
    encode_json,
    envelope_of,
    utf8_size,
)

from ._consumer import _Consumer, _Handle

if TYPE_CHECKING:
    from ._connector import RabbitMQConnector

#: Every header onestep writes starts with this prefix.
HEADER_PREFIX = "x-onestep-"
#: Executions of the message so far (an int); a retry republishes it with one more.
ATTEMPTS_HEADER = HEADER_PREFIX + "attempts"
#: The message's onestep meta, as a JSON object (exact round trip of any JSON value).
META_HEADER = HEADER_PREFIX + "meta"

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


def decode_message(consumer: _Consumer | None, tag: int, properties: Any, body: bytes) -> Delivery:
    """The Delivery of a message `consumer` received; runs on the source actor's thread
    (and on the thread browsing a queue, without a consumer)."""
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


def decode_upstream(consumer: _Consumer | None, tag: int, properties: Any, body: bytes) -> Delivery:
    """The Delivery of a message on a `wire_format="upstream"` queue: the envelope's body,
    meta and attempts; a message that is no envelope (a onestep-format producer's, another
    client's) is decoded as `decode_message` does. Runs on the source actor's thread."""
    content_type = properties.content_type or ""
    if not content_type or content_type == JSON_TYPE or content_type.endswith("+json"):
        try:
            found = envelope_of(json.loads(body))
        except (ValueError, TypeError):
            found = None
        if found is not None:
            payload, meta, attempts = found
            handle = _Handle(consumer, tag, properties, body)
            return Delivery(payload, meta=meta, attempts=attempts, handle=handle)
    return decode_message(consumer, tag, properties, body)


class Destination(Protocol):
    """Where `encode_message` publishes: a RabbitMQQueue (or its producer side)."""

    name: str
    connector: RabbitMQConnector
    persistent: bool
    exchange: str | None
    routing_key: str
    wire_format: str


def encode_message(
    queue: Destination, body: Any, meta: dict[str, Any] | None, attempts: int = 0
) -> tuple[str, str, bytes, Any]:
    """(exchange, routing_key, body, properties) of a body published to `queue`; runs on
    the publishing thread (the sink actor's, or a producer's). Nothing is sent when it
    raises: EncodeError naming the queue and the problem for a body or meta that is not
    JSON (or a meta that is not a mapping), MessageTooLarge for a body over the
    connector's `max_message_bytes` (the broker's `max_message_size`, which would close
    the channel) or a meta too large for one frame. `attempts` (executions so far) goes
    in a header, or in the envelope of a `wire_format="upstream"` queue."""
    where = f"cannot publish to RabbitMQ queue {queue.name!r}"
    if queue.wire_format == "upstream":
        return _encode_upstream(queue, where, body, meta, attempts)
    try:
        if isinstance(body, bytes | bytearray | memoryview):
            data, content_type = bytes(body), BINARY_TYPE
        else:
            data, content_type = encode_json(body, "the body").encode(), JSON_TYPE
        meta_text = encode_json(check_meta(meta), "the meta") if meta else None
    except TypeError as exc:  # a meta that is not a mapping (put() raised it already)
        raise EncodeError(f"{where}: {exc}") from None
    except EncodeError as exc:
        raise EncodeError(f"{where}: {exc}") from None
    connector = queue.connector
    check_size(
        "the body",
        len(data),
        connector.max_message_bytes,
        "max_message_bytes, RabbitMQ's max_message_size",
        where,
    )
    headers: dict[str, Any] | None = None
    if meta_text is not None:
        # the properties travel in one frame: a larger one makes the broker close the
        # connection (FRAME_ERROR), and the put would fail twice
        size = utf8_size(meta_text)
        check_size("the meta", size, connector.max_meta_bytes, "one AMQP frame", where)
        headers = {META_HEADER: meta_text}
    if attempts:
        headers = {**(headers or {}), ATTEMPTS_HEADER: attempts}
    properties = pika.BasicProperties(
        content_type=content_type,
        delivery_mode=2 if queue.persistent else 1,
        headers=headers,
    )
    return (queue.exchange or "", queue.routing_key, data, properties)


def _encode_upstream(
    queue: Destination, where: str, body: Any, meta: dict[str, Any] | None, attempts: int
) -> tuple[str, str, bytes, Any]:
    """`encode_message` for an upstream-format queue: the envelope is the whole body."""
    data = encode_envelope(where, body, meta, attempts)
    connector = queue.connector
    check_size(
        "the message",
        len(data),
        connector.max_message_bytes,
        "max_message_bytes, RabbitMQ's max_message_size",
        where,
    )
    properties = pika.BasicProperties(
        content_type=JSON_TYPE, delivery_mode=2 if queue.persistent else 1
    )
    return (queue.exchange or "", queue.routing_key, data, properties)

"""How a delivery and a RabbitMQ message map onto each other: onestep's headers, JSON or
bytes bodies; called by RabbitMQQueue on its source and sink actors' threads."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pika

from actors import EncodeError
from onestep.kit import Delivery

from ._consumer import _Consumer, _Handle

if TYPE_CHECKING:
    from ._queue import RabbitMQQueue

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


# One encoder for every message: json.dumps with keyword arguments builds a new
# JSONEncoder per call. allow_nan=False: NaN and Infinity are not JSON, and a consumer in
# another language would fail to parse them.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _why(exc: Exception) -> str:
    """The reason json gave, made specific where it is vague."""
    text = str(exc)
    if isinstance(exc, ValueError) and "Out of range float" in text:
        return f"{text} (NaN and Infinity are not JSON)"
    return text


def encode_message(
    queue: RabbitMQQueue, body: Any, meta: dict[str, Any] | None
) -> tuple[str, str, bytes, Any]:
    """(exchange, routing_key, body, properties) of a body published to `queue`; runs on
    the publishing thread (the sink actor's, or a producer's). A body or meta that is not
    JSON raises EncodeError naming the queue and the problem; nothing is sent."""
    if isinstance(body, bytes | bytearray | memoryview):
        data, content_type = bytes(body), BINARY_TYPE
    else:
        try:
            data = _encode_json(body).encode()
        except (TypeError, ValueError) as exc:
            raise EncodeError(
                f"cannot publish to RabbitMQ queue {queue.name!r}: the body is not JSON: "
                f"{_why(exc)}"
            ) from None
        content_type = JSON_TYPE
    headers = None
    if meta:
        try:
            headers = {META_HEADER: _encode_json(meta)}
        except (TypeError, ValueError) as exc:
            raise EncodeError(
                f"cannot publish to RabbitMQ queue {queue.name!r}: the meta is not JSON: "
                f"{_why(exc)}"
            ) from None
    properties = pika.BasicProperties(
        content_type=content_type,
        delivery_mode=2 if queue.persistent else 1,
        headers=headers,
    )
    return (queue.exchange or "", queue.routing_key, data, properties)

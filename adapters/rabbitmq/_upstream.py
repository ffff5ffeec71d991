"""Upstream onestep's wire format on RabbitMQ (`wire_format="upstream"`): a JSON envelope
`{"body", "meta", "attempts"}` as the message body; called by _message and RabbitMQQueue
on the source, sink and producer threads; old and new workers share a queue this way."""

from __future__ import annotations

import json
from typing import Any

from onestep.kit import EncodeError, check_meta, encode_json

#: The wire formats a queue speaks: onestep's (headers carry meta and attempts) and
#: upstream onestep's (an envelope in the body).
WIRE_FORMATS = ("onestep", "upstream")


def check_wire_format(wire_format: object) -> str:
    """`wire_format` itself, or ValueError naming the parameter and the choices."""
    if wire_format not in WIRE_FORMATS:
        raise ValueError(f"wire_format must be one of {WIRE_FORMATS}, got {wire_format!r}")
    return str(wire_format)


def envelope_of(payload: Any) -> tuple[Any, dict[str, Any], int] | None:
    """(body, meta, attempts) of a parsed upstream envelope; None for anything else (a
    JSON value that is not an object with a `body` key)."""
    if not isinstance(payload, dict) or "body" not in payload:
        return None
    meta = payload.get("meta")
    attempts = payload.get("attempts")
    return (
        payload["body"],
        meta if isinstance(meta, dict) else {},
        attempts if type(attempts) is int and attempts >= 0 else 0,
    )


def encode_envelope(where: str, body: Any, meta: dict[str, Any] | None, attempts: int) -> bytes:
    """The JSON envelope of one message; EncodeError (naming `where`) for a body or meta
    that is not JSON, or a bytes body (upstream's envelope has no place for bytes)."""
    if isinstance(body, bytes | bytearray | memoryview):
        raise EncodeError(
            f"{where}: a bytes body cannot travel in upstream's JSON envelope "
            "(wire_format='upstream'); send JSON, or use wire_format='onestep'"
        )
    try:
        body_text = encode_json(body, "the body")
        meta_text = encode_json(check_meta(meta) or {}, "the meta")
    except (TypeError, EncodeError) as exc:
        raise EncodeError(f"{where}: {exc}") from None
    return f'{{"body":{body_text},"meta":{meta_text},"attempts":{int(attempts)}}}'.encode()


def with_attempts(body: bytes, attempts: int) -> bytes:
    """The message body `body` with `attempts` in its envelope (a body that is not an
    envelope is wrapped in one, so an upstream worker reads the count too)."""
    try:
        parsed = json.loads(body)
    except (ValueError, TypeError):
        parsed = body.decode("utf-8", "replace")
    found = envelope_of(parsed)
    payload, meta = (found[0], found[1]) if found is not None else (parsed, {})
    envelope = {"body": payload, "meta": meta, "attempts": attempts}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()

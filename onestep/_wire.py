"""Upstream onestep's wire format (`wire_format="upstream"`), shared by the connectors that
speak it: the JSON envelope `{"body", "meta", "attempts"}`. Re-exported by onestep.kit;
called at a queue's construction and on the threads that encode and decode messages."""

from __future__ import annotations

import json
from typing import Any

from actors import EncodeError

from .core._encoding import check_meta, encode_json

#: The formats a queue reads and writes: onestep's own (meta and attempts beside the
#: body) and upstream onestep's (an envelope is the whole message).
WIRE_FORMATS = ("onestep", "upstream")


def check_wire_format(wire_format: object) -> str:
    """`wire_format` itself, or ValueError naming the parameter and the choices."""
    if wire_format not in WIRE_FORMATS:
        raise ValueError(f"wire_format must be one of {WIRE_FORMATS}, got {wire_format!r}")
    return str(wire_format)


def envelope_of(parsed: Any) -> tuple[Any, dict[str, Any], int] | None:
    """(body, meta, attempts) of a parsed upstream envelope; None for anything else (a
    JSON value that is not an object with a `body` key). Only a queue configured with
    `wire_format="upstream"` asks: ordinary JSON is never sniffed."""
    if not isinstance(parsed, dict) or "body" not in parsed:
        return None
    meta = parsed.get("meta")
    attempts = parsed.get("attempts")
    return (
        parsed["body"],
        meta if isinstance(meta, dict) else {},
        attempts if type(attempts) is int and attempts >= 0 else 0,
    )


def encode_envelope(where: str, body: Any, meta: dict[str, Any] | None, attempts: int) -> bytes:
    """The UTF-8 JSON envelope of one message; EncodeError starting with `where` for a
    body or meta that is not JSON (a meta that is not a dict included), or a bytes body
    (upstream's envelope has no place for bytes)."""
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


def envelope_with_attempts(raw: bytes, attempts: int) -> bytes:
    """The message `raw` as an envelope that records `attempts` executions (a message
    that is no envelope is wrapped in one, so an upstream worker reads the count too)."""
    try:
        parsed: Any = json.loads(raw)
    except (ValueError, TypeError):
        parsed = raw.decode("utf-8", "replace")
    found = envelope_of(parsed)
    body, meta = (found[0], found[1]) if found is not None else (parsed, {})
    envelope = {"body": body, "meta": meta, "attempts": attempts}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()

"""The checks every queue's producer makes before it sends anything: meta, bodies, JSON and
size, with one set of errors; called by MemoryQueue and the connectors (through onestep.kit)
on the thread that calls `put`, `put_many` or a sink's `publish_batch`.

The errors are the same on every queue, so code tested on a MemoryQueue fails the same
way on a broker: TypeError for a meta that is not a mapping and for `bodies` that are not
an iterable of bodies; EncodeError for what cannot be encoded as JSON (objects, NaN and
Infinity, lone surrogates, nesting too deep, meta keys that are not strings); and
MessageTooLarge, an EncodeError, for a message over the destination's size limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from actors import EncodeError


class MessageTooLarge(EncodeError):
    """A message over the size limit of where it is sent (RabbitMQ's `max_message_size`,
    MySQL's `max_allowed_packet`), refused before anything was sent. An EncodeError: as
    a sink's result it fails alone, with kind `encode`, and is not retried."""

    def __init__(self, what: str, size: int, limit: int, setting: str, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}{what} is {size:,} bytes, over the limit of {limit:,} bytes ({setting})"
        )
        #: The message's size and the limit, in bytes.
        self.size = size
        self.limit = limit


def check_size(what: str, size: int, limit: int, setting: str, where: str = "") -> None:
    """MessageTooLarge, naming `what`, its `size`, the `limit` and the `setting` that
    sets it (and `where` it was going), when `size` is over `limit` bytes."""
    if size > limit:
        raise MessageTooLarge(what, size, limit, setting, where)


#: Set by `OneStepApp(tracing=True)` (onestep.ops._tracing), for the whole process: adds
#: the calling thread's trace context (`traceparent`, `tracestate`) to a message's meta,
#: returning a new dict (or the meta unchanged outside a span, or when it has a
#: `traceparent` already). None, the default, costs one global read per put.
meta_injector: Callable[[dict[str, Any] | None], dict[str, Any] | None] | None = None


def check_meta(meta: Any, *, trace: bool = True) -> dict[str, Any] | None:
    """A message's meta as a dict (None stays None, another mapping is copied into one).
    TypeError for anything that is not a mapping, EncodeError for a key that is not a
    string (JSON would turn it into one, and the consumer would see another key). Its
    values are checked where it is encoded (`encode_json(meta, what="meta")`).

    With tracing on (`OneStepApp(tracing=True)`) and a span current on the calling
    thread, the result also carries the span's W3C `traceparent` (and `tracestate`), so
    that every queue's `put()` continues the caller's trace; `trace=False` leaves that
    out (a table queue without a meta column)."""
    if meta is None:
        if meta_injector is not None and trace:
            return meta_injector(None)
        return None
    if type(meta) is not dict:
        if not isinstance(meta, Mapping):
            raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
        meta = dict(meta)
    checked: dict[str, Any] = meta
    for key in checked:
        if type(key) is not str:
            raise EncodeError(
                f"meta keys must be strings, got {key!r} ({type(key).__name__}): JSON would "
                "make it a string"
            )
    if meta_injector is not None and trace:
        return meta_injector(checked)
    return checked


def check_bodies(bodies: Any) -> Iterable[Any]:
    """`bodies` if it is an iterable of message bodies; TypeError for one body given where
    many are expected (a str, bytes, a mapping) and for anything not iterable."""
    if isinstance(bodies, str | bytes | bytearray | memoryview | Mapping) or not isinstance(
        bodies, Iterable
    ):
        raise TypeError(
            f"bodies must be an iterable of message bodies (a list, say), got "
            f"{type(bodies).__name__} (use put() for one body)"
        )
    return bodies


# One shared encoder: json.dumps with any non-default option builds a new encoder per
# call, which made a row with a nested value 15% slower to write (encode() keeps no
# state between calls, so threads may share it). ensure_ascii=False keeps text as it is
# (UTF-8 on the wire is shorter than \u escapes); allow_nan=False: NaN and Infinity are
# not JSON, and a consumer in another language would fail to parse them.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_json(value: Any, what: str = "body") -> str:
    """Compact JSON text of `value`; EncodeError naming `what` and the problem for what
    JSON cannot hold: an object, NaN or Infinity, a circular reference, nesting too
    deep for the encoder, a lone surrogate (UTF-8 cannot encode it)."""
    try:
        text = _ENCODER.encode(value)
    except RecursionError:
        raise EncodeError(f"{what} is not valid JSON: it is nested too deeply to encode") from None
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"{what} is not valid JSON: {_why(exc)}") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodeError(
                f"{what} is not valid JSON: it holds a lone surrogate "
                f"({text[exc.start : exc.end]!r}), which UTF-8 cannot encode"
            ) from None
    return text


def is_flat_json(meta: dict[str, Any]) -> bool:
    """Whether `meta` is a flat object JSON surely holds: ASCII keys, values that are
    ASCII strings, ints, bools, None or finite floats. A quick look for a check that need
    not encode (MemoryQueue.put); False means "encode it to know", not "invalid"."""
    for key, value in meta.items():
        if not key.isascii():
            return False
        kind = type(value)
        if kind is str:
            if not value.isascii():
                return False
        elif not (
            kind is int or kind is bool or value is None or (kind is float and not value - value)
        ):
            return False
    return True


def utf8_size(text: str) -> int:
    """The size of `text` in UTF-8, in bytes (without copying it when it is ASCII)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _why(exc: Exception) -> str:
    """The reason json gave, made specific where it is vague."""
    text = str(exc)
    if isinstance(exc, ValueError) and "Out of range float" in text:
        return f"{text} (NaN and Infinity are not JSON)"
    return text

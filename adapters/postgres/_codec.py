"""How a message is written: its body as JSON text, its meta as a JSON object for a
jsonb column; the producer and the sink side of a PostgreSQL table queue call
`encode_message` on the caller's thread, before anything is written.

Every check of what may be put lives in this one function, so that it can be swapped
for the connector kit's shared checks in one place.
"""

from __future__ import annotations

import json
from typing import Any

from onestep.kit import EncodeError, check_meta

# One shared encoder: json.dumps with a non-default option builds a new encoder per
# call (encode() keeps no state between calls, so threads may share it).
_STRICT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_json(value: Any, what: str) -> str:
    """Compact JSON text of `value`; EncodeError naming `what` and the problem when it
    is not valid JSON (an object, NaN or Infinity)."""
    try:
        return _STRICT_JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"{what} is not valid JSON: {exc}") from None


def encode_message(
    body: Any, meta: Any, *, body_name: str = "body", has_meta: bool = True
) -> tuple[str, str | None]:
    """(payload text, meta text or None) of one message.

    EncodeError for a body or meta that is not valid JSON, or meta holding the NUL
    character (a jsonb column cannot store it); TypeError for meta that is not a dict
    or None; ValueError for meta on a table without a meta column."""
    payload = encode_json(body, body_name)
    # with tracing on, the caller's trace context is added (not on a table without meta)
    meta = check_meta(meta, trace=has_meta)
    if meta is None:
        return payload, None
    if not has_meta:
        if not meta:
            return payload, None
        raise ValueError(
            "this table has no meta column (meta_column=None), so a message cannot carry meta"
        )
    text = encode_json(meta, "meta")
    if "\\u0000" in text:
        raise EncodeError(
            "meta cannot hold the NUL character (\\u0000): PostgreSQL jsonb refuses it"
        )
    return payload, text

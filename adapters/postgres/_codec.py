"""How a message is written: its body as JSON text, its meta as a JSON object for a
jsonb column, with the connector kit's put() checks; the producer and the sink side of a
PostgreSQL table queue call `encode_message` on the caller's thread, before anything is
written."""

from __future__ import annotations

from typing import Any

from onestep.kit import EncodeError, check_meta, check_size, encode_json, utf8_size

#: The largest text value PostgreSQL stores (1 GB), so the largest payload or meta.
MAX_VALUE_BYTES = 1024 * 1024 * 1024 - 1
_SETTING = "PostgresConnector(max_message_bytes=...), at most PostgreSQL's 1 GB text limit"


def encode_message(
    body: Any,
    meta: Any,
    *,
    body_name: str = "body",
    has_meta: bool = True,
    limit: int = MAX_VALUE_BYTES,
) -> tuple[str, str | None]:
    """(payload text, meta text or None) of one message.

    The kit's errors, the same as every queue's: TypeError for meta that is not a
    mapping, EncodeError for a body or meta that is not valid JSON (and for meta holding
    the NUL character, which a jsonb column cannot store), MessageTooLarge for a payload
    or meta over `limit` bytes (the connector's max_message_bytes); ValueError for meta
    on a table without a meta column."""
    payload = encode_json(body, body_name)
    check_size(body_name, utf8_size(payload), limit, _SETTING)
    checked = check_meta(meta)
    if checked is None:
        return payload, None
    if not has_meta:
        if not checked:
            return payload, None
        raise ValueError(
            "this table has no meta column (meta_column=None), so a message cannot carry meta"
        )
    text = encode_json(checked, "meta")
    if "\\u0000" in text:
        raise EncodeError(
            "meta cannot hold the NUL character (\\u0000): PostgreSQL jsonb refuses it"
        )
    check_size("meta", utf8_size(text), limit, _SETTING)
    return payload, text

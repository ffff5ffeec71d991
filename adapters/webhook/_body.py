"""Turns a request body into the payload's "body": JSON, form fields, text or bytes by
Content-Type; called by WebhookSource.handle on a server thread."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs

import falcon


@lru_cache(maxsize=64)
def _body_kind(content_type: str | None) -> tuple[str, str]:
    """('json' | 'form' | 'text' | 'bytes', charset) for a Content-Type header."""
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    charset = "utf-8"
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    if media == "application/json" or media.endswith("+json"):
        return "json", charset
    if media == "application/x-www-form-urlencoded":
        return "form", charset
    if media.startswith("text/"):
        return "text", charset
    return "bytes", charset


def _parse_body(content_type: str | None, body: bytes) -> Any:
    kind, charset = _body_kind(content_type)
    try:
        if kind == "json":
            return json.loads(body) if body else None
        if kind == "form":
            fields = parse_qs(body.decode(charset), keep_blank_values=True)
            return {
                key: values[0] if len(values) == 1 else values for key, values in fields.items()
            }
        if kind == "text":
            return body.decode(charset)
    except (ValueError, LookupError) as exc:  # JSONDecodeError and UnicodeError included
        raise falcon.HTTPBadRequest(
            title=f"Malformed {kind} body", description=f"{type(exc).__name__}: {exc}"
        ) from None
    return body

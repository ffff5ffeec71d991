"""Turns a request body into the payload's "body": JSON, form fields, text or bytes by
Content-Type; called by WebhookSource.handle on a server thread.

JSON is strict: NaN, Infinity and -Infinity (which Python's json accepts) and nesting
deeper than the source's `max_json_depth` are malformed bodies (400), never a
RecursionError.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, NoReturn
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


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every request: json.loads(parse_constant=...) would build one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

# A JSON string (skipped; an unterminated one runs to the end, so the scan stays linear)
# or a bracket.
_STRING_OR_BRACKET = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


class TooDeep(ValueError):
    """A JSON body nested deeper than the source allows."""


def _check_depth(body: bytes, max_depth: int) -> None:
    """TooDeep when `body` nests arrays and objects deeper than `max_depth`."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return  # the common case: too few brackets to nest that deep, nothing to scan
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(body):
        char = body[match.start()]
        if char == 0x22:  # a string: its brackets do not count
            continue
        if char == 0x5B or char == 0x7B:  # [ {
            depth += 1
            if depth > max_depth:
                raise TooDeep(f"nesting deeper than {max_depth} levels")
        else:
            depth -= 1


def _loads(body: bytes, max_depth: int) -> Any:
    _check_depth(body, max_depth)
    try:
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except RecursionError:  # only for a max_depth near the interpreter's recursion limit
        raise TooDeep("nesting deeper than the JSON parser can follow") from None


#: WebhookSource's `parser` choices: by Content-Type, or one kind for every request
#: (upstream onestep's names; "raw" keeps the bytes).
PARSERS = ("auto", "json", "form", "text", "raw")


def _parse_body(
    content_type: str | None, body: bytes, max_json_depth: int, parser: str = "auto"
) -> Any:
    kind, charset = _body_kind(content_type)
    if parser != "auto":
        kind = "bytes" if parser == "raw" else parser
    try:
        if kind == "json":
            return _loads(body, max_json_depth) if body else None
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

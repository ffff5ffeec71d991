"""Which request headers reach the task as `item["headers"]`: all but the credentials,
so that tokens and cookies never land in a queue, a log or a dead letter. Used by
WebhookSource (its constructor, and handle on a server thread)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Dropped from `item["headers"]` unless named in `forward_headers` (lower case), with
#: the signature header of an HmacSignature auth.
SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def dropped_headers(auth: Any, forward_headers: Iterable[str]) -> frozenset[str]:
    """The lower-case header names a source leaves out of its payloads."""
    if isinstance(forward_headers, str | bytes) or not isinstance(forward_headers, Iterable):
        raise ValueError(
            f"forward_headers must be an iterable of header names, got {forward_headers!r}"
        )
    forwarded = set()
    for name in forward_headers:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(
                f"forward_headers must hold non-empty header names, got {forward_headers!r}"
            )
        forwarded.add(name.strip().lower())
    secret = set(SECRET_HEADERS)
    signature_header = getattr(auth, "header", None)  # HmacSignature's
    if isinstance(signature_header, str):
        secret.add(signature_header.lower())
    return frozenset(secret - forwarded)


def forwarded_headers(headers: Mapping[str, str], dropped: frozenset[str]) -> dict[str, str]:
    """A copy of falcon's `req.headers_lower` without the `dropped` names."""
    return {name: value for name, value in headers.items() if name not in dropped}

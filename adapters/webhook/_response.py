"""WebhookResponse: the fixed answer a respond="accepted" webhook gives once a request is
queued (upstream onestep's `WebhookResponse(status_code=, body=, headers=)`); built by
users, rendered once at construction, sent by WebhookSource.handle on a server thread."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: What a request gets when no response is given (upstream's default body).
DEFAULT_BODY: dict[str, Any] = {"accepted": True}


class WebhookResponse:
    """The answer to a queued request: `status_code` (a 2xx: the request was taken),
    `body` (a dict or list is sent as JSON, a str as text, bytes as they are, None as
    no body) and extra `headers`. Pass it as `WebhookSource(response=...)`."""

    __slots__ = ("body", "content", "content_type", "headers", "status_code")

    def __init__(
        self,
        status_code: int = 202,
        body: Any = DEFAULT_BODY,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if type(status_code) is not int or not 200 <= status_code <= 299:
            raise ValueError(
                f"status_code must be a 2xx int (the request was queued), got {status_code!r}"
            )
        if headers is not None and not isinstance(headers, Mapping):
            raise ValueError(f"headers must be a mapping or None, got {headers!r}")
        self.status_code = status_code
        self.body = body
        self.headers = {str(key): str(value) for key, value in (headers or {}).items()}
        content_type: str | None
        if body is None:
            content, content_type = b"", None
        elif isinstance(body, bytes | bytearray):
            content, content_type = bytes(body), "application/octet-stream"
        elif isinstance(body, str):
            content, content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            try:
                content = json.dumps(body, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"body must be JSON, text, bytes or None: {exc}") from None
            content_type = "application/json"
        self.content = content
        # a Content-Type among `headers` wins
        if any(key.lower() == "content-type" for key in self.headers):
            content_type = None
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"WebhookResponse(status_code={self.status_code}, body={self.body!r})"

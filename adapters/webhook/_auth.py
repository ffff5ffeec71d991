"""How a webhook checks its caller: a bearer token or an HMAC signature of the body;
built by users and passed as WebhookSource(auth=...), checked on a server thread."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from hashlib import sha256


class BearerToken:
    """`Authorization: Bearer <token>`, compared in constant time."""

    needs_body = False

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token:
            raise ValueError(f"token must be a non-empty string, got {token!r}")
        self._expected = f"Bearer {token}".encode()
        self.challenge = 'Bearer realm="onestep"'

    def __repr__(self) -> str:
        return "BearerToken(***)"

    def check(self, headers: Mapping[str, str], body: bytes) -> bool:
        """True when the request carries the token; runs on a server thread."""
        given = headers.get("AUTHORIZATION", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._expected)


class HmacSignature:
    """An HMAC-SHA256 of the raw body in a header, hex encoded, optionally prefixed
    (GitHub sends `X-Hub-Signature-256: sha256=<hex>`)."""

    needs_body = True

    def __init__(
        self, secret: str | bytes, *, header: str = "X-Signature", prefix: str = "sha256="
    ) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("secret must be a non-empty str or bytes")
        if not isinstance(header, str) or not header:
            raise ValueError(f"header must be a non-empty string, got {header!r}")
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, got {prefix!r}")
        self._secret = secret
        self.header = header
        self.prefix = prefix
        self.challenge = f'HMAC-SHA256 header="{header}"'

    def __repr__(self) -> str:
        return f"HmacSignature(***, header={self.header!r})"

    def sign(self, body: bytes) -> str:
        """The header value a sender puts on `body`."""
        return self.prefix + hmac.new(self._secret, body, sha256).hexdigest()

    def check(self, headers: Mapping[str, str], body: bytes) -> bool:
        given = headers.get(self.header.upper(), "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self.sign(body).encode())

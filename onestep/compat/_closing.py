"""A `close()` result that may be awaited: upstream's connectors close with `await
db.close()`, onestep's with `db.close()`; the compat connectors' close supports both.
Used by onestep.compat's connectors, on the caller's thread."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any


class Closed:
    """What a compat connector's `close()` returns: the closing is already done, so
    awaiting it (upstream's `await connector.close()`) returns None at once."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once

    def __repr__(self) -> str:
        return "<closed>"


CLOSED = Closed()

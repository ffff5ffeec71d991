"""A result that may be awaited: upstream's connectors are async (`await db.close()`,
`await queue.publish(body)`), onestep's are not; the compat connectors' `close()` and
their queues' `publish()` do the work at once and return this, so both spellings work.
Used by onestep.compat's connectors, on the caller's thread."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any


class Closed:
    """What a compat `close()` or `publish()` returns: the work is already done, so
    awaiting it returns None at once."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once

    def __repr__(self) -> str:
        return "<closed>"


CLOSED = Closed()

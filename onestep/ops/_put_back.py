"""How a dead-letter replay puts a payload back on its task's source (its `put`, with
the attempt count when asked and possible); called by DeadLetters.replay on the calling
thread."""

from __future__ import annotations

import inspect
import queue
from collections.abc import Callable
from typing import Any

from ..core import Delivery


class NotReplayable(TypeError):
    """The task's source cannot take its dead letters back (no source, no `put`, or a
    `put` that cannot carry the attempt count `keep_attempts` asks for); raised before
    anything is touched."""


def put_back_for(
    source: Any, task: str, keep_attempts: bool
) -> Callable[[Any, dict[str, Any], int], None]:
    """How a replay puts one payload back on `source`; NotReplayable, before anything
    is touched, when it cannot (no source, no `put`, attempts it cannot carry)."""
    name = str(getattr(source, "name", type(source).__name__))
    put = getattr(source, "put", None)
    if source is None or not callable(put):
        why = "no source" if source is None else f"{type(source).__name__} {name!r} has no put()"
        raise NotReplayable(
            f"task {task!r} has no source that takes messages back ({why}): its dead "
            "letters cannot be replayed"
        )
    if _takes_attempts(put):

        def put_with_attempts(payload: Any, meta: dict[str, Any], attempts: int) -> None:
            put(payload, meta or None, attempts=attempts)

        return put_with_attempts
    if keep_attempts:
        offer = getattr(source, "offer_delivery", None)
        if not callable(offer):
            raise NotReplayable(
                f"source {name!r} ({type(source).__name__}) cannot take a message with its "
                "attempt count (its put() has no attempts=): replay without keep_attempts"
            )

        def offer_with_attempts(payload: Any, meta: dict[str, Any], attempts: int) -> None:
            if not offer(Delivery(payload, meta=meta or None, attempts=attempts)):
                raise queue.Full(f"source {name!r} is full")

        return offer_with_attempts

    def plain_put(payload: Any, meta: dict[str, Any], attempts: int) -> None:
        put(payload, meta or None)

    return plain_put


def _takes_attempts(put: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(put).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get("attempts")
    return parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY
